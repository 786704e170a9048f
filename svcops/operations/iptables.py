"""svcops's iptables rules on a node: ``iptables.rules``.

    from svcops.deploy import compiled_site
    from svcops.operations import iptables

    iptables.rules(name="svcops rules", rules=compiled_site("sites/prod").node(host.name).output.iptables)

Why one payload and not pyinfra's ``iptables.rule``: pyinfra's own operation runs one
``iptables-save`` and one ``iptables`` per rule (1,000 rules took 94 s) and is not
atomic; svcops uploads one payload and runs one ``iptables-restore --noflush`` (0.6 s
for the same).

The fast path: the node keeps the record of what svcops applied last
(`svcops.render.iptables_record`), and its canary chain in both tables. When the
canary carries the record's fingerprint, only the changed buckets are read and
restored; anything else (the canary disagrees, the record is missing or edited,
``verify=True``) reads the whole live state (``iptables-save``) and rewrites the record.
"""

from __future__ import annotations

from dataclasses import replace

from pyinfra import host, logger
from pyinfra.api import operation

from svcops.facts.cache import marks_changes, node_fact
from svcops.facts.iptables import NO_IPTABLES, SvcopsIptables, SvcopsIptablesBuckets, SvcopsIptablesCanary, SvcopsIptablesRecord
from svcops.operations.conntrack import cleanup_commands
from svcops.operations import txn
from svcops.operations.txn import DEFAULT_ROLLBACK_AFTER
from svcops.operations.util import error, fail
from svcops.render import chains as C
from svcops.render.conntrack import udp_ports_from_iptables
from svcops.render.iptables import CHUNK_CHAINS, IptablesRules, LiveTables
from svcops.render.iptables_record import (
    FIRST,
    LAST,
    OWN,
    RECORD_DIR,
    applied_rules,
    canary_agrees,
    is_empty,
    partial_plan,
    record_files,
    record_of,
)
from svcops.render.iptables_step import RestorePlan, apply_script, restore_plan
from svcops.render.iptables_sync import in_sync
from svcops.render.record import bucket_of, changed_buckets

__all__ = ["rules"]


@operation()
@marks_changes
def rules(
    rules: IptablesRules,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    verify_ssh: bool = True,
    udp_ports=None,
    chunk: int = CHUNK_CHAINS,
    verify: bool = False,
):
    """
    Give the node exactly svcops's ``rules``: one ``iptables-restore --noflush`` of the
    svcops chains whose rules differ from the node's (kube-proxy's partial sync), one
    atomic transaction; a change of more than ``chunk`` chains is cut into several
    (`svcops.render.iptables.restore_transactions`), undone at once if one fails.

    + udp_ports: the node's UDP service ports (`svcops.compile.nodeplan.node_udp_ports`):
      after a restore, the conntrack entries of UDP flows still pointing at endpoints
      that are gone are deleted (`svcops.operations.conntrack`); None: no cleanup

    + rules: the node's ``IptablesRules`` (``compile_site(...).outputs[node].iptables``)
    + rollback_after: seconds after which the node undoes the apply by itself unless
      the controller has confirmed it can still log in
    + verify_ssh: after the restore, open a fresh SSH connection (same key, strict
      host-key checking) and disarm the rollback through it
    + chunk: most chains in one transaction
    + verify: read the whole live state (``iptables-save``), whatever the canary says

    How the live state is known: from the record svcops keeps on the node
    (``/etc/svcops/iptables.d``, `svcops.render.iptables_record`) when the canary
    chain ``SVCOPS-STATE`` of both tables carries the record's fingerprint and the
    jumps are svcops's: then only the buckets whose digest changed are read (with the
    canary, in the same round trip: the node compares its index with the render's
    digests), and only the chains of their changed units restored (a one-service
    change at 10,000 services restores a few kilobytes). Otherwise (flushed, wiped, rebooted without svcops's boot script,
    record missing or edited, ``verify``) from ``iptables-save``, and the whole record
    is written again. The record's files change in the same step as the rules: one
    round trip carries the restore, its rollback and the files
    (`svcops.render.iptables_step`).

    The payload carries only ``SVCOPS-`` chains and svcops's jumps in the built-in
    chains: missing jumps are inserted, stale svcops chains flushed and deleted;
    nothing else in the tables is named, so docker's, ufw's or fail2ban's rules stay
    as they are. When the live svcops chains, rules and jumps already equal the
    rendered ones, no command runs at all.

    All or nothing, never cutting SSH: the restore is one step of the node's
    transaction (`svcops.operations.txn`), whose undo is a rollback payload computed on
    the controller from the live state (and the previous record files); `txn.commit`
    logs in afresh before it commits.
    Used on its own (no ``txn.begin`` before it), the operation is its own transaction.

    **Example:**

    .. code:: python

        from svcops.deploy import compiled_site
        iptables.rules(
            name="svcops rules",
            rules=compiled_site("sites/prod").node(host.name).output.iptables,
        )
    """
    record = record_of(rules)
    want = record.index()
    fast = not verify and not is_empty(rules)
    # The render's digests go with the canary: the changed buckets come back with it.
    canary = node_fact(host, SvcopsIptablesCanary, **({"want": tuple(want.digests.items())} if fast else {}))
    if canary is None:
        yield fail("the node's iptables (svcops's canary chain)")
        return
    if canary is NO_IPTABLES:
        if is_empty(rules):
            host.noop("iptables is not installed: svcops has no iptables rules here")
            return
        yield error("svcops: iptables not found (install iptables); nothing changed")
        return
    if is_empty(rules) and not canary.anything():
        # Another proxy mode, and nothing of svcops's iptables mode here (no canary, no
        # jump, no record): nothing to remove.
        host.noop("svcops has no iptables rules here")
        return
    if fast and canary_agrees(canary, rules):
        changed = changed_buckets(canary.index, want)
        if not changed:
            host.noop("svcops rules are in sync (the canary matches the record)")
            return
        old = canary.buckets
        if old is None or not set(changed) <= set(old):
            # The canary came from a read made without the render's digests.
            old = host.get_fact(SvcopsIptablesBuckets, buckets=tuple(changed))
        plan = partial_plan(rules, record, canary, old) if old is not None else None
        if plan is not None:
            implicit = yield from txn.ensure(rollback_after=rollback_after)
            yield from _apply(restore_plan(plan.rules, plan.live, chunk), plan.files, previous=plan.previous)
            if udp_ports is not None:
                yield from cleanup_commands(None, *_udp_scope(plan.live, udp_ports, set(changed)))
            if implicit:
                yield from txn.finish(verify_ssh)
            return
        host.log_styled(
            "svcops: the iptables record does not match its index: reading the whole live state",
            fg="yellow",
            log_func=logger.warning,
        )
    live = node_fact(host, SvcopsIptables)
    if live is None:
        yield fail("the node's iptables (iptables-save)")
        return
    full = applied_rules(rules, record)
    files = record_files(record, host.get_fact(SvcopsIptablesRecord))
    sync = in_sync(full, live)
    if sync and not files:
        host.noop("svcops rules are in sync")
        return
    implicit = yield from txn.ensure(rollback_after=rollback_after)
    # Another proxy mode (no rules): the record's folder goes with its files.
    yield from _apply(None if sync else restore_plan(full, live, chunk), files, remove_dir=is_empty(rules))
    if not sync:
        # After the new rules stand: flows deleted earlier would be re-made by the old rules.
        yield from cleanup_commands(live, udp_ports)
    if implicit:
        yield from txn.finish(verify_ssh)


def _apply(restore: RestorePlan | None, files: dict[str, str | None], remove_dir: bool = False, previous=None):
    """The restore and the record's files as one step (`svcops.render.iptables_step`),
    in one round trip; its undo gives back the chains and every file."""
    d = txn.files_dir()
    change, undo = apply_script(d, restore, files, RECORD_DIR, remove_dir=remove_dir and bool(files), previous=previous)
    yield from txn.script_step("iptables", change, undo, scratch=d)


def _udp_scope(partial: LiveTables, udp_ports, changed: set[str]):
    """(new, previous) UDP ports of the services whose chains the fast path rewrote:
    `partial` holds the old state of the changed buckets only, so a service's
    addresses and node port come from its old dispatch rules only when those were
    rewritten too (bucket s1, or s0 for filter's); else they did not change."""
    prev = udp_ports_from_iptables(partial)
    def rewritten(name: str) -> bool:
        b = bucket_of(C.port_hash(name, "udp"))
        return b in changed or OWN + b[0] in changed

    scope = {n for n in udp_ports if rewritten(n)} | set(prev)
    shared = FIRST in changed and LAST in changed
    out = {}
    for n, p in prev.items():
        q = udp_ports.get(n)
        if not shared and q is not None:
            p = replace(p, addresses=p.addresses or q.addresses, node_port=p.node_port or q.node_port)
        out[n] = p
    return {n: udp_ports[n] for n in scope if n in udp_ports}, out
