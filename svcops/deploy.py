"""The svcops deploy: everything a node gets, as pyinfra operations, for any deploy.py.

    # deploy.py (this is all of deploys/services.py)
    from svcops.deploy import services
    services()

    pyinfra -y inventory/lab.py deploys/services.py

`services()` compiles the site named by ``svcops_site`` in the inventory's data (or
its `site` argument) once per process, for the whole inventory (Local traffic
policies and load-balancer announcements depend on every node, not only the ones
``--limit`` selects), writes allocations to the site's ``svcops.lock`` as ``svcops
plan`` does, and then, for the current host, runs:

    svcops | begin                     the node's lock and transaction (svcops.operations.txn)
    svcops | iptables rules            one iptables-restore of the chains that differ
    svcops | nftables table            table ip svcops: chunked cold start, small updates
    svcops | ipvs                      IPVS mode (its first operation) / its removal
    svcops | load-balancer addresses   the addresses this node announces (gratuitous ARP)
    svcops | static address            ip addr replace, never removing the session's address
    svcops | ip forwarding             net.ipv4.ip_forward=1
    svcops | persisted files           boot payload, restore script, unit, sysctl, ifupdown file
    svcops | service dns               pdns-recursor for the cluster domain, resolv.conf (svcops.operations.dns);
                                       with serviceDNS: false, svcops's DNS taken off instead
    svcops | commit                    a fresh SSH login proves access, then the node commits

Between begin and commit everything is one transaction on the node: a failure, Ctrl-C,
the controller's death or a lost connection undoes every step on the node itself, so
each node ends wholly as it was or wholly as the site says.

The rule operations follow the site's proxy mode; the other modes' operations remove
what they left (switching a site's mode and applying leaves nothing of the old one):

    iptables   iptables rules, nftables table (none), ipvs (none)
    nftables   nftables table, iptables rules (none: old chains go), ipvs (none)
    ipvs       ipvs (sets, iptables chains, virtual servers), nftables table (none)

New rules go in before the old mode's are removed, so service traffic never stops.

`svcops apply` runs the same operations through pyinfra's API.
"""

from __future__ import annotations

import os
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.api.exceptions import PyinfraError

from svcops.compile.nodeplan import NodePlan, SitePlan, plan_site
from svcops.compile.pipeline import compile_site
from svcops.operations import dns, iptables, ipvs, nftables, node, txn
from svcops.facts.cache import reads_only
from svcops.operations.guard import set_nodelay
from svcops.site.diagnostics import Diagnostic, has_errors, sort_key
from svcops.site.hostdata import nodes_from_hosts
from svcops.site.files import folder_problem
from svcops.site.load import load_site
from svcops.site.lockfile import LockWriteError, read_lock, write_lock
from svcops.site.sitelock import DEFAULT_TIMEOUT, SiteLockError, site_lock

__all__ = ["SiteError", "TxnOptions", "WATCH", "watch_readiness", "compile_from_hosts", "compiled_site", "node_operations", "services", "LOCK_NAME"]

LOCK_NAME = "svcops.lock"


class SiteError(PyinfraError):
    """The site (or the inventory's svcops data) has errors: nothing was pushed."""


def _format(diags) -> str:
    return "\n".join(str(d) for d in sorted(diags, key=sort_key))


# compile_from_hosts's default readiness: the running watch's (svcops.site.watchstate).
WATCH = object()


def compile_from_hosts(
    site_root: str,
    hosts: list[tuple[str, Mapping]],
    source: str,
    write: bool = True,
    lock_timeout: float = DEFAULT_TIMEOUT,
    readiness=WATCH,
) -> SitePlan:
    """Load the site and its lock, compile it for `hosts` (name, data), and record
    new allocations in the lock (when `write`: the site is locked meanwhile, see
    svcops.site.sitelock, waiting at most `lock_timeout` s). Raises SiteError with
    every problem.

    readiness: which workloads are not ready (`Readiness`), None for all ready; by
    default the readiness of the watch running for this site, if one runs (so that a
    plain apply never puts back an endpoint the watch took out)."""
    diags: list[Diagnostic] = []
    nodes, node_diags = nodes_from_hosts(hosts, source)
    diags += node_diags
    why = folder_problem(site_root)
    if why is not None:
        raise SiteError(f"{site_root}: site folder {why}")
    try:
        with site_lock(site_root, lock_timeout) if write else nullcontext():
            if readiness is WATCH:
                readiness = watch_readiness(site_root)
            return _compile_locked(site_root, nodes, diags, write, readiness)
    except SiteLockError as e:
        raise SiteError(f"svcops: {e} (nothing was pushed)") from None


def watch_readiness(site_root: str):
    """The readiness of the watch running for `site_root`, or None (none runs)."""
    from svcops.site.watchstate import running_watch

    w = running_watch(site_root)
    return w.readiness if w is not None else None


def _compile_locked(site_root: str, nodes, diags: list[Diagnostic], write: bool, readiness=None) -> SitePlan:
    site, site_diags = load_site(site_root)
    diags += site_diags
    lock_path = Path(site_root) / LOCK_NAME
    lock, lock_diags = read_lock(lock_path)
    diags += lock_diags
    if site is None or lock is None or has_errors(diags):
        raise SiteError("svcops: the site has errors; nothing was pushed\n" + _format(diags))
    compiled, more = compile_site(site, nodes, lock, LOCK_NAME, readiness=readiness)
    diags += more
    if compiled is None:
        raise SiteError("svcops: the site has errors; nothing was pushed\n" + _format(diags))
    try:
        written = write_lock(lock_path, compiled.allocations) if write else False
    except LockWriteError as e:
        raise SiteError(f"svcops: the site has errors; nothing was pushed\n{e.diagnostic}") from None
    plan = plan_site(compiled)
    return SitePlan(plan.compiled, plan.announced, tuple(diags), written)


_CACHE: dict[tuple, SitePlan] = {}
_LOCK = threading.Lock()


def compiled_site(site: str | None = None, inventory=None) -> SitePlan:
    """The site compiled for the whole current pyinfra inventory, once per process.

    site: the site folder (default: ``svcops_site`` from the current host's data).
    """
    from pyinfra import context

    inv = inventory if inventory is not None else context.inventory
    root = site or host.data.get("svcops_site")
    if not root:
        raise SiteError("svcops: no site: set svcops_site in the inventory's data or pass site=")
    root = os.path.abspath(root)
    hosts = [(h.name, h.data.dict()) for h in inv]
    key = (root, tuple(name for name, _ in hosts))
    with _LOCK:
        plan = _CACHE.get(key)
        if plan is None:
            plan = compile_from_hosts(root, hosts, "inventory")
            for d in plan.diagnostics:
                logger.warning(f"svcops: {d}")
            if plan.lock_written:
                logger.info(f"svcops: allocations recorded in {os.path.join(root, LOCK_NAME)}")
            _CACHE[key] = plan
    return plan


@dataclass(frozen=True)
class TxnOptions:
    """How each node's transaction behaves (`svcops.operations.txn`)."""

    rollback_after: int = txn.DEFAULT_ROLLBACK_AFTER  # controller silence before a node undoes the apply
    lock_timeout: float = txn.DEFAULT_LOCK_TIMEOUT  # waiting for a node another apply holds
    node_timeout: float = txn.DEFAULT_NODE_TIMEOUT  # no answer for this long: unreachable
    deadline: int = txn.DEFAULT_STEP_DEADLINE  # one remote command or step at most
    verify_ssh: bool = True  # commit through a fresh SSH login
    verify: bool = False  # read the whole live state even when the record's canary agrees
    # Only these parts of the node's configuration (PARTS; None: all of it): the watch's
    # readiness pushes, which change nothing else.
    parts: frozenset[str] | None = None


# What `TxnOptions.parts` may name, and the fact areas (svcops.facts.cache.READS) each reads.
PARTS = {
    "rules": None,  # the proxy mode's own: see _rule_areas
    "addresses": frozenset({"node"}),
    "files": frozenset({"iptables", "nftables", "ipvs", "node"}),
    "dns": frozenset({"dns"}),
}


def _rule_areas(mode: str) -> frozenset[str]:
    return frozenset({"ipvs", "iptables", "node"}) if mode == "ipvs" else frozenset({mode})


def node_operations(plan: NodePlan, rollback_after: int | None = None, verify_ssh: bool = True, options: TxnOptions | None = None) -> list[tuple[str, object]]:
    """Add the svcops operations for the current host (inside a pyinfra deploy or state);
    returns (label, OperationMeta) for each. They run as one transaction on the node:
    `txn.begin` first, `txn.commit` last (`svcops.operations.txn`)."""
    o = options or TxnOptions(rollback_after if rollback_after is not None else txn.DEFAULT_ROLLBACK_AFTER, verify_ssh=verify_ssh)
    timeout = {"_timeout": o.deadline + 30}  # every command and fact read, on the controller's side too
    kwargs = {"rollback_after": o.rollback_after, **timeout}
    verify_ssh = o.verify_ssh
    out = plan.output
    parts = o.parts
    if parts is not None:
        unknown = parts - PARTS.keys()
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)} (known: {sorted(PARTS)})")
        areas = _rule_areas(out.mode) if "rules" in parts else frozenset()
        for p in parts - {"rules"}:
            areas |= PARTS[p]  # type: ignore[operator]
        reads_only(host.name, areas)
    else:
        reads_only(host.name, None)

    def wanted(part: str) -> bool:
        return parts is None or part in parts

    metas: list[tuple[str, object]] = [
        (
            "begin",
            txn.begin(
                name="svcops | begin",
                lock_timeout=o.lock_timeout,
                rollback_after=o.rollback_after,
                node_timeout=o.node_timeout,
                deadline=o.deadline,
                **timeout,
            ),
        )
    ]

    def add_iptables():
        metas.append(
            ("iptables rules", iptables.rules(name="svcops | iptables rules", rules=out.iptables, verify_ssh=verify_ssh, udp_ports=plan.udp_ports if out.mode == "iptables" else None, verify=o.verify, **kwargs))
        )

    def add_nftables(rules):
        metas.append(
            ("nftables table", nftables.rules(name="svcops | nftables table", rules=rules, verify_ssh=verify_ssh, udp_ports=plan.udp_ports if rules is not None else None, verify=o.verify, **kwargs))
        )

    # With parts (the watch): the mode's own rules only; the other modes' leftovers
    # went with the full apply before.
    whole = parts is None
    if wanted("rules"):
        if out.mode == "ipvs":
            # First: a node that cannot do IPVS fails here, before anything changed.
            metas.append(("ipvs", ipvs.rules(name="svcops | ipvs", rules=out.ipvs, verify_ssh=verify_ssh, verify=o.verify, **kwargs)))
            if whole:
                add_nftables(None)
        else:
            if out.mode == "nftables":
                add_nftables(out.nftables)
                if whole:
                    add_iptables()
            else:
                add_iptables()
                if whole:
                    add_nftables(None)
            if whole:
                metas.append(("ipvs", ipvs.absent(name="svcops | ipvs (none)", node_addresses=out.node_addresses, **timeout)))
    if wanted("addresses"):
        metas.append(("load-balancer addresses", node.lb_addresses(name="svcops | load-balancer addresses", announced=plan.announced, **timeout)))
    if whole:
        _node_settings(metas, plan, out, timeout)
    if wanted("files"):
        metas.append(("persisted files", node.files(name="svcops | persisted files", files=plan.files, **timeout)))
    if wanted("dns"):
        if plan.dns_zone is not None:
            metas.append(("service dns", dns.server(name="svcops | service dns", zone=plan.dns_zone, **timeout)))
        else:  # serviceDNS: false: svcops's DNS off the node, if it was there
            metas.append(("service dns", dns.absent(name="svcops | service dns (none)", **timeout)))
    metas.append(("commit", txn.commit(name="svcops | commit", verify_ssh=verify_ssh, **timeout)))
    return metas


def _node_settings(metas: list, plan: NodePlan, out, timeout: dict) -> None:
    """The static address and ip_forward (never changed by readiness). The static
    address is always added (a no-op without an address): every host gets the same
    operations in the same order, which is how pyinfra's API lines operations up
    across hosts."""
    metas.append(
        (
            "static address",
            node.static_address(
                name="svcops | static address",
                address=out.address if plan.prefixlen is not None else None,
                prefixlen=plan.prefixlen or 32,
                interface=out.node.interface,
                **timeout,
            ),
        )
    )
    metas.append(("ip forwarding", node.ip_forward(name="svcops | ip forwarding", **timeout)))


@deploy("svcops")
def services(site: str | None = None, rollback_after: int | None = None, verify_ssh: bool = True):
    """Push the site's services to the current host (see the module's docstring)."""
    plan = compiled_site(site)
    if host.name not in plan.compiled.outputs:
        raise SiteError(f"svcops: host {host.name} is not a node of the site (its host data has errors?)")
    set_nodelay(host)
    node_operations(plan.node(host.name), rollback_after, verify_ssh)
