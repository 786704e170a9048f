"""svcops's iptables rules on a node: ``iptables.rules``.

    from svcops.deploy import compiled_site
    from svcops.operations import iptables

    iptables.rules(name="svcops rules", rules=compiled_site("sites/prod").node(host.name).output.iptables)

Why one payload and not pyinfra's ``iptables.rule``: pyinfra's own operation runs one
``iptables-save`` and one ``iptables`` per rule (1,000 rules took 94 s) and is not
atomic; svcops uploads one payload and runs one ``iptables-restore --noflush`` (0.6 s
for the same).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import StringCommand, operation

from svcops.facts.cache import marks_changes, node_fact
from svcops.facts.iptables import NO_IPTABLES, SvcopsIptables
from svcops.operations.conntrack import cleanup_commands
from svcops.operations import txn
from svcops.operations.txn import DEFAULT_ROLLBACK_AFTER
from svcops.operations.util import error, fail
from svcops.render.iptables import CHUNK_CHAINS, IptablesRules, restore_transactions
from svcops.render.iptables_sync import in_sync, rollback_payload, simulate

__all__ = ["rules"]


@operation()
@marks_changes
def rules(
    rules: IptablesRules,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    verify_ssh: bool = True,
    udp_ports=None,
    chunk: int = CHUNK_CHAINS,
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

    The payload carries only ``SVCOPS-`` chains and svcops's jumps in the built-in
    chains: missing jumps are inserted, stale svcops chains flushed and deleted;
    nothing else in the tables is named, so docker's, ufw's or fail2ban's rules stay
    as they are. When the live svcops chains, rules and jumps already equal the
    rendered ones, no command runs at all.

    All or nothing, never cutting SSH: the restore is one step of the node's
    transaction (`svcops.operations.txn`), whose undo is a rollback payload computed on
    the controller from the live state; `txn.commit` logs in afresh before it commits.
    Used on its own (no ``txn.begin`` before it), the operation is its own transaction.

    **Example:**

    .. code:: python

        from svcops.deploy import compiled_site
        iptables.rules(
            name="svcops rules",
            rules=compiled_site("sites/prod").node(host.name).output.iptables,
        )
    """
    live = node_fact(host, SvcopsIptables)
    if live is None:
        yield fail("the node's iptables (iptables-save)")
        return
    if live is NO_IPTABLES:
        if not (rules.jumps or rules.filter.chains or rules.nat.chains):
            host.noop("iptables is not installed: svcops has no iptables rules here")
            return
        yield error("svcops: iptables-save not found (install iptables); nothing changed")
        return
    if in_sync(rules, live):
        host.noop("svcops rules are in sync")
        return
    implicit = yield from txn.ensure(rollback_after=rollback_after)
    d = txn.files_dir()
    apply_path = f"{d}/iptables.apply"
    txs = restore_transactions(rules, live, chunk)
    payload = "".join(txs)
    yield StringCommand(f"{txn.dir_ready(d)} && cat > {apply_path}", _stdin=payload)
    restore = f"iptables-restore -w 5 --noflush {apply_path}"
    after = None  # the state after the apply, simulated once for both rollbacks
    if len(txs) > 1:
        # Many chains: several transactions in one restore (see restore_transactions). One
        # that fails leaves the earlier ones committed: give the chains back at once.
        after = simulate(live, payload)
        partial = rollback_payload(live, rules, jumps=False, after=after)
        yield StringCommand(f"cat > {d}/iptables.rollback-partial", _stdin=partial)
        restore = f"{{ {restore} || {{ iptables-restore -w 5 --noflush {d}/iptables.rollback-partial; false; }}; }}"
    # A restore that fails changed nothing (it is atomic, or was undone at once when cut
    # into transactions); the undo gives back the previous svcops chains and jumps.
    yield StringCommand(f"cat > {d}/iptables.rollback", _stdin=rollback_payload(live, rules, after=after))
    yield from txn.step("iptables", restore, f"iptables-restore -w 5 --noflush {d}/iptables.rollback\n")
    # After the new rules stand: flows deleted earlier would be re-made by the old rules.
    yield from cleanup_commands(live, udp_ports)
    if implicit:
        yield from txn.finish(verify_ssh)
