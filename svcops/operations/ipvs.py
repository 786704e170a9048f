"""svcops's IPVS mode on a node: ``ipvs.rules``, and its removal: ``ipvs.absent``.

    from svcops.operations import ipvs

    ipvs.rules(name="svcops ipvs", rules=out.ipvs)                    # IPVS mode; run it first
    ipvs.absent(name="no svcops ipvs", node_addresses=out.node_addresses)   # the other modes

Each step (modules and sysctls, the dummy interface's addresses, ipsets, iptables
chains, virtual servers) is decided by the core from the node's facts
(`svcops.render.ipvs_sync.ipvs_plan`, `ipvs_removal`) and sent only when it differs.
"""

from __future__ import annotations

import shlex
from typing import Sequence

from pyinfra import host
from pyinfra.api import StringCommand, operation

from svcops.facts.cache import marks_changes, node_fact
from svcops.facts.iptables import NO_IPTABLES, SvcopsIptables
from svcops.facts.ipvs import SvcopsIpvs
from svcops.operations.conntrack import cleanup_commands
from svcops.operations import txn
from svcops.operations.txn import DEFAULT_ROLLBACK_AFTER
from svcops.operations.util import error, fail
from svcops.render.conntrack import udp_ports_from_ipvsadm
from svcops.render.ipvs import DUMMY_INTERFACE as DUMMY
from svcops.render.ipvs import ipvs_modules
from svcops.render.ipvs_sync import ipvs_plan, ipvs_removal, removal_undo

__all__ = ["rules", "absent"]


@operation()
@marks_changes
def rules(
    rules,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    verify_ssh: bool = True,
    conntrack_cleanup: bool = True,
):
    """
    Give the node svcops's IPVS mode for ``rules`` (``IpvsRules``): modules and
    sysctls, the dummy interface ``svcops-ipvs0`` and its virtual addresses, svcops's
    ipsets, its few iptables chains and jumps, and the virtual and real servers
    (`svcops.render.ipvs_sync`: kube-proxy's order, each step only when it differs).

    A node that cannot do IPVS (no module ip_vs or dummy, no ipvsadm or ipset) fails
    with what it lacks, and nothing is changed: run this operation first.

    SSH safety as in iptables mode: the transaction's undo restores the
    previous iptables chains and virtual servers.

    + conntrack_cleanup: after the change, delete the conntrack entries of UDP flows
      still pointing at real servers that are gone, as in `svcops.operations.iptables.rules` (the
      previous state is the live ``ipvsadm-save -n`` read before)
    """
    # iptables first: the first fact asked for makes the combined read include the whole
    # iptables state (IPVS mode's part is small), not just iptables mode's canary.
    live = node_fact(host, SvcopsIptables)
    state = node_fact(host, SvcopsIpvs)
    if state is None or live is None:
        yield fail("the node's IPVS and iptables state")
        return
    problems = list(state.missing) + (["missing iptables (Debian package iptables)"] if live is NO_IPTABLES else [])
    if problems:
        msg = "svcops: IPVS mode cannot run on this node: " + "; ".join(problems) + "; nothing changed"
        yield error(msg)
        return
    plan = ipvs_plan(rules, state.live, live, ipvs_modules(rules.ipvsadm))
    if plan.empty:
        host.noop("svcops's IPVS rules are in sync")
        return
    implicit = yield from txn.ensure(rollback_after=rollback_after)
    d = txn.files_dir()
    yield StringCommand(txn.dir_ready(d))
    run = ["set -e\n"]
    undo = []
    if plan.prepare:
        run.append(plan.prepare + "\n")
    if plan.addresses:
        yield StringCommand(f"cat > {d}/ipvs.addresses", _stdin=plan.addresses)
        run.append(f"ip -batch {d}/ipvs.addresses\n")
    if plan.ipset:
        yield StringCommand(f"cat > {d}/ipvs.ipset", _stdin=plan.ipset)
        run.append(f"ipset restore < {d}/ipvs.ipset\n")
    if plan.iptables:
        yield StringCommand(f"cat > {d}/ipvs.iptables", _stdin=plan.iptables)
        yield StringCommand(f"cat > {d}/ipvs.iptables-rollback", _stdin=plan.undo_iptables)
        run.append(f"iptables-restore -w 5 --noflush {d}/ipvs.iptables\n")
        undo.append(f"iptables-restore -w 5 --noflush {d}/ipvs.iptables-rollback\n")
    if plan.ipvsadm:
        yield StringCommand(f"cat > {d}/ipvs.ipvsadm", _stdin=plan.ipvsadm)
        yield StringCommand(f"cat > {d}/ipvs.ipvsadm-undo", _stdin=plan.undo_ipvsadm)
        if plan.iptables:
            # The virtual servers failed after the chains changed: put the chains back.
            run.append(f"ipvsadm -R < {d}/ipvs.ipvsadm || {{ iptables-restore -w 5 --noflush {d}/ipvs.iptables-rollback; exit 1; }}\n")
        else:
            run.append(f"ipvsadm -R < {d}/ipvs.ipvsadm\n")
        undo.insert(0, f"ipvsadm -R < {d}/ipvs.ipvsadm-undo\n")
    if plan.finish:
        yield StringCommand(f"cat > {d}/ipvs.stale-addresses", _stdin=plan.finish)
        run.append(f"ip -batch {d}/ipvs.stale-addresses\n")
    yield StringCommand(f"cat > {d}/ipvs.run", _stdin="".join(run))
    yield from txn.step("ipvs", f"sh {d}/ipvs.run", "".join(undo) or None)
    if conntrack_cleanup and plan.ipvsadm:
        owned = set(rules.addresses) | set(state.live.addresses)
        before = udp_ports_from_ipvsadm(state.live.ipvsadm, owned, rules.node_addresses)
        after = udp_ports_from_ipvsadm(rules.ipvsadm, owned, rules.node_addresses)
        yield from cleanup_commands(None, after, previous=before)
    if implicit:
        yield from txn.finish(verify_ssh)


@operation()
@marks_changes
def absent(node_addresses: Sequence[str] = ()):
    """
    Remove svcops's IPVS footprint, if any (the site is in another proxy mode): its
    ipsets, its virtual servers and the dummy interface ``svcops-ipvs0``. Run it after
    `svcops.operations.iptables.rules` has replaced svcops's IPVS-mode chains (they use the sets).

    + node_addresses: the node's own addresses (its node-port virtual servers are svcops's)
    """
    state = node_fact(host, SvcopsIpvs)
    if state is None:
        yield fail("the node's IPVS state")
        return
    removal = ipvs_removal(state.live, node_addresses)
    if removal.empty:
        host.noop("no svcops IPVS state")
        return
    # One step, so that the undo (everything back, should this apply be undone) is whole.
    d = txn.files_dir()
    run = []
    if removal.ipset:
        yield StringCommand(f"{txn.dir_ready(d)} && cat > {d}/ipvs-off.ipset", _stdin=removal.ipset)
        run.append(f"ipset restore < {d}/ipvs-off.ipset")
    if removal.ipvsadm:
        yield StringCommand(f"{txn.dir_ready(d)} && cat > {d}/ipvs-off.ipvsadm", _stdin=removal.ipvsadm)
        run.append(f"ipvsadm -R < {d}/ipvs-off.ipvsadm")
    if removal.link:
        run.append(f"ip link del {shlex.quote(DUMMY)}")
    if removal.sysctls:
        run.append(removal.sysctls)
    yield from txn.step("ipvs-off", " && ".join(run), removal_undo(state.live, node_addresses))
