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
from svcops.facts.ipvs import SvcopsIpvs, SvcopsIpvsBuckets, SvcopsIpvsCanary
from svcops.operations.conntrack import cleanup_commands
from svcops.operations import txn
from svcops.operations.txn import DEFAULT_ROLLBACK_AFTER
from svcops.operations.util import error, fail
from svcops.render.conntrack import udp_ports_from_ipvsadm
from svcops.render.ipvs import DUMMY_INTERFACE as DUMMY
from svcops.render.ipvs import ipvs_modules
from svcops.render.ipvs_record import canary_clear_command, canary_set_commands, fast_buckets, fast_plan, fingerprint_of, record_files
from svcops.render.ipvs_sync import iptables_details, iptables_step, ipvs_plan, ipvs_removal, prepare_step, removal_undo
from svcops.render.node_files import IPVS_RECORD_DIR

__all__ = ["rules", "absent"]


@operation()
@marks_changes
def rules(
    rules,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    verify_ssh: bool = True,
    conntrack_cleanup: bool = True,
    verify: bool = False,
):
    """
    Give the node svcops's IPVS mode for ``rules`` (``IpvsRules``): modules and
    sysctls, the dummy interface ``svcops-ipvs0`` and its virtual addresses, svcops's
    ipsets, its few iptables chains and jumps, and the virtual and real servers
    (`svcops.render.ipvs_sync`: kube-proxy's order, each step only when it differs).

    A node that cannot do IPVS (no module ip_vs or dummy, no ipvsadm or ipset) fails
    with what it lacks, and nothing is changed: run this operation first.

    The fast path (`svcops.render.ipvs_record`): the node keeps a record of what
    svcops applied last (``/etc/svcops/ipvs.d``: virtual servers, set entries and
    addresses in hashed buckets, an index) and a canary in the kernel naming it. When
    they agree (and ``verify`` is not set), only the buckets whose digest differs
    from the render's are read, and only their changes are sent, with an exact undo.
    Otherwise everything is read (`svcops.facts.ipvs.SvcopsIpvs`), what differs is
    sent, and the whole record is written. The canary is taken away first and set
    last, so a change that fails half-way leaves none.

    SSH safety as in iptables mode: the transaction's undo restores the
    previous iptables chains and virtual servers.

    + conntrack_cleanup: after the change, delete the conntrack entries of UDP flows
      still pointing at real servers that are gone, as in `svcops.operations.iptables.rules` (the
      previous state is the live ``ipvsadm-save -n`` read before, or the record's)
    + verify: read everything even when the canary agrees with the record
    """
    # iptables first: the first fact asked for makes the combined read include the whole
    # iptables state (IPVS mode's part is small), not just iptables mode's canary.
    live = node_fact(host, SvcopsIptables)
    canary = node_fact(host, SvcopsIpvsCanary, keep=True)
    if canary is None or live is None:
        yield fail("the node's IPVS and iptables state")
        return
    problems = list(canary.missing) + (["missing iptables (Debian package iptables)"] if live is NO_IPTABLES else [])
    if problems:
        msg = "svcops: IPVS mode cannot run on this node: " + "; ".join(problems) + "; nothing changed"
        yield error(msg)
        return
    modules = ipvs_modules(rules.ipvsadm)
    if canary.trusted and not verify:
        fast = plan_from_record(host, rules, canary, live, modules)
        if fast is not None:
            if fast.plan.empty and not fast.files:
                host.noop("svcops's IPVS rules are in sync (their record says so)")
                return
            implicit = yield from txn.ensure(rollback_after=rollback_after)
            yield from _apply(fast.plan, fast.fingerprint, fast.files, (fast.undo_ipset, fast.undo_addresses, canary.index.fingerprint))
            if conntrack_cleanup and fast.plan.ipvsadm:
                yield from _cleanup(rules, set(), fast.old_servers, fast.new_servers)
            if implicit:
                yield from txn.finish(verify_ssh)
            return
    state = node_fact(host, SvcopsIpvs)
    if state is None:
        yield fail("the node's IPVS state")
        return
    plan = ipvs_plan(rules, state.live, live, modules)
    fp = fingerprint_of(rules)
    in_record = canary.trusted and canary.index.fingerprint == fp
    if plan.empty and in_record:
        host.noop("svcops's IPVS rules are in sync")
        return
    implicit = yield from txn.ensure(rollback_after=rollback_after)
    yield from _apply(plan, fp, record_files(rules), None)
    if conntrack_cleanup and plan.ipvsadm:
        yield from _cleanup(rules, set(state.live.addresses), state.live.ipvsadm, rules.ipvsadm)
    if implicit:
        yield from txn.finish(verify_ssh)


def plan_from_record(h, rules, canary, iptables, modules, **fact_args):
    """The fast path's plan (`svcops.render.ipvs_record.fast_plan`) for a node whose
    canary agrees with its record, reading the buckets it needs; None: read everything.
    (`svcops apply --dry` shows the same.)"""
    names = fast_buckets(canary.index, rules)
    if names is None:
        return None
    old = h.get_fact(SvcopsIpvsBuckets, buckets=tuple(names), **fact_args) if names else {}
    payload, undo = iptables_step(rules, iptables)
    details = iptables_details(rules, iptables) if payload else []
    return fast_plan(rules, canary.index, old or {}, prepare_step(canary.live, modules), (payload, undo, details))


def _apply(plan, fp, files, exact_undo):
    """The plan's steps as one step of the node's transaction (the canary taken away
    first, set to `fp` last), then the record's `files`. `exact_undo`: (ipset restore
    input, ip -batch input, the old fingerprint) that give the old state back exactly
    (the fast path), or None (the undo gives back the chains and servers, no canary)."""
    d = txn.files_dir()
    run = ["set -e\n", canary_clear_command()]
    undo = [canary_clear_command(), "ok=1\n"]
    if plan.prepare:
        run.append(plan.prepare + "\n")
    if plan.addresses:
        yield txn.upload(d, "ipvs.addresses", plan.addresses)
        run.append(f"ip -batch {d}/ipvs.addresses\n")
    if plan.ipset:
        yield txn.upload(d, "ipvs.ipset", plan.ipset)
        run.append(f"ipset restore < {d}/ipvs.ipset\n")
    if plan.iptables:
        yield txn.upload(d, "ipvs.iptables", plan.iptables)
        yield txn.upload(d, "ipvs.iptables-rollback", plan.undo_iptables)
        run.append(f"iptables-restore -w 5 --noflush {d}/ipvs.iptables\n")
        undo.append(f"iptables-restore -w 5 --noflush {d}/ipvs.iptables-rollback || ok=\n")
    if plan.ipvsadm:
        yield txn.upload(d, "ipvs.ipvsadm", plan.ipvsadm)
        yield txn.upload(d, "ipvs.ipvsadm-undo", plan.undo_ipvsadm)
        if plan.iptables:
            # The virtual servers failed after the chains changed: put the chains back.
            run.append(f"ipvsadm -R < {d}/ipvs.ipvsadm || {{ iptables-restore -w 5 --noflush {d}/ipvs.iptables-rollback; exit 1; }}\n")
        else:
            run.append(f"ipvsadm -R < {d}/ipvs.ipvsadm\n")
        undo.insert(2, f"ipvsadm -R < {d}/ipvs.ipvsadm-undo || ok=\n")
    if plan.finish:
        yield txn.upload(d, "ipvs.stale-addresses", plan.finish)
        run.append(f"ip -batch {d}/ipvs.stale-addresses\n")
    run.append(canary_set_commands(fp))
    if exact_undo is not None:
        undo_ipset, undo_addresses, old_fp = exact_undo
        if undo_ipset:
            yield txn.upload(d, "ipvs.ipset-undo", undo_ipset)
            undo.append(f"ipset restore < {d}/ipvs.ipset-undo || ok=\n")
        if undo_addresses:
            yield txn.upload(d, "ipvs.addresses-undo", undo_addresses)
            undo.append(f"ip -force -batch {d}/ipvs.addresses-undo || ok=\n")
        # Everything back as the record said: its canary too (only if all of it went back).
        undo.append('if [ -n "$ok" ]; then\n' + canary_set_commands(old_fp) + "fi\n")
    yield txn.upload(d, "ipvs.run", "".join(run))
    yield from txn.step("ipvs", f"sh {d}/ipvs.run", "".join(undo))
    # The record after the kernel state: undone first, so the undo finds the old one.
    yield from txn.replace_files({f"{IPVS_RECORD_DIR}/{b}": t for b, t in files.items()}, what="ipvs-record")


def _cleanup(rules, live_addresses, before_servers, after_servers):
    owned = set(rules.addresses) | set(live_addresses)
    before = udp_ports_from_ipvsadm(before_servers, owned, rules.node_addresses)
    after = udp_ports_from_ipvsadm(after_servers, owned, rules.node_addresses)
    yield from cleanup_commands(None, after, previous=before)


@operation()
@marks_changes
def absent(node_addresses: Sequence[str] = ()):
    """
    Remove svcops's IPVS footprint, if any (the site is in another proxy mode): its
    ipsets, its virtual servers and the dummy interface ``svcops-ipvs0``. Run it after
    `svcops.operations.iptables.rules` has replaced svcops's IPVS-mode chains (they use the sets).

    + node_addresses: the node's own addresses (its node-port virtual servers are svcops's)
    """
    cheap = node_fact(host, SvcopsIpvsCanary)
    if cheap is None:
        yield fail("the node's IPVS state")
        return
    if not cheap.present:
        host.noop("no svcops IPVS state")
        return
    state = node_fact(host, SvcopsIpvs)
    if state is None:
        yield fail("the node's IPVS state")
        return
    removal = ipvs_removal(state.live, node_addresses)
    if removal.empty and cheap.index is None:
        host.noop("no svcops IPVS state")
        return
    if removal.empty:
        yield from _remove_record()
        return
    # One step, so that the undo (everything back, should this apply be undone) is whole.
    d = txn.files_dir()
    run = []
    if removal.ipset:
        yield txn.upload(d, "ipvs-off.ipset", removal.ipset)
        run.append(f"ipset restore < {d}/ipvs-off.ipset")
    if removal.ipvsadm:
        yield txn.upload(d, "ipvs-off.ipvsadm", removal.ipvsadm)
        run.append(f"ipvsadm -R < {d}/ipvs-off.ipvsadm")
    if removal.link:
        run.append(f"ip link del {shlex.quote(DUMMY)}")
    if removal.sysctls:
        run.append(removal.sysctls)
    yield from txn.step("ipvs-off", " && ".join(run), removal_undo(state.live, node_addresses))
    yield from _remove_record()


def _remove_record():
    """The record's files and folder (another proxy mode), undone with the rest."""
    yield from txn.replace_files({f"{IPVS_RECORD_DIR}/{b}": None for b in (*(f"{i:02x}" for i in range(256)), "sk", "index")}, what="ipvs-record")
    yield from txn.step("ipvs-record-dir", f"rmdir {IPVS_RECORD_DIR} 2>/dev/null || true", f"mkdir -p {IPVS_RECORD_DIR}\n")
