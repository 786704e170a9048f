"""svcops's nftables table ``ip svcops`` on a node: ``nftables.rules``.

    from svcops.operations import nftables

    nftables.rules(name="svcops table", rules=out.nftables)   # out.nftables: NftRules
    nftables.rules(name="no svcops table", rules=None)        # another proxy mode

What to send is the core's decision (`svcops.render.nftables_sync.transactions`, from
the live table `svcops.facts.nftables.SvcopsNftables` reads); the change runs under
the node's transaction (`svcops.operations.txn`).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import StringCommand, operation

from svcops.facts.cache import marks_changes, node_fact
from svcops.facts.nftables import SvcopsNftables
from svcops.operations.conntrack import cleanup_commands
from svcops.operations import txn
from svcops.operations.txn import DEFAULT_ROLLBACK_AFTER
from svcops.operations.util import error, fail
from svcops.render.nftables_sync import (
    LOADER,
    ROLLBACK_FROM_LISTING,
    chunked,
    live_fingerprint,
    nft_plan,
    removal,
)
from svcops.render.node_files import NFT_FILE

__all__ = ["rules"]


@operation()
@marks_changes
def rules(
    rules=None,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    verify_ssh: bool = True,
    chunk: int = 1000,
    udp_ports=None,
):
    """
    Give the node exactly svcops's nftables table ``ip svcops`` for ``rules``, or no
    such table at all when ``rules`` is None (the site is in another proxy mode).

    + udp_ports: the node's UDP service ports: after the change, conntrack entries of
      UDP flows still pointing at endpoints that are gone are deleted, as in
      `svcops.operations.iptables.rules` (the previous state is the live table read before)

    + rules: the node's ``NftRules`` (``compile_site(...).outputs[node].nftables``), or None
    + rollback_after, verify_ssh: as for `svcops.operations.iptables.rules`
    + chunk: service ports per transaction on a cold start

    The decision comes from the live table (`svcops.facts.nftables.SvcopsNftables`): a node in
    sync gets no command; a clean node gets the skeleton and then the service ports in
    chunks (a 10,000-service table in one transaction takes the kernel ~56 s, in chunks
    ~12.5 s); a live one only what differs (`svcops.render.nftables_diff`): the service
    ports whose digest or content differs (a one-service change is one small
    transaction; a chain edited by hand is flushed and refilled) and the removal of
    anything foreign inside the table. Only ``table ip svcops`` is ever named: no other
    table (iptables-nft's, docker's, a firewall's) is touched.

    SSH safety as in iptables mode. The rollback is the previous table: the boot file
    ``/etc/svcops/rules.nft`` when its fingerprint says it holds exactly the live table
    (and the live table shows no drift), else the live table's listing, or the table's deletion when there was none. A
    transaction that fails after earlier ones succeeded rolls back at once.
    """
    state = node_fact(host, SvcopsNftables)
    if state is None:
        yield fail("the node's nftables table (nft list)")
        return
    if not state.available:
        if rules is None:
            host.noop("nft is not installed: no svcops table to remove")
            return
        yield error("svcops: nftables mode needs nft (Debian package nftables) on the node; nothing changed")
        return
    plan = nft_plan(rules, state.live, chunk)
    txs = plan.transactions
    if not txs:
        host.noop("the svcops table is in sync" if rules is not None else "no svcops table")
        return
    implicit = yield from txn.ensure(rollback_after=rollback_after)
    d = txn.files_dir()
    lib = f"{d}/nft.lib"
    yield StringCommand(f"{txn.dir_ready(d)} && cat > {d}/nft.apply", _stdin=chunked(txs))
    yield StringCommand(f"cat > {lib}", _stdin=LOADER)
    if not state.live.exists:
        yield StringCommand(f"cat > {d}/nft.rollback", _stdin=removal())
    elif state.boot_state and not plan.drift and state.boot_state == live_fingerprint(state.live):
        yield StringCommand(f"cp {NFT_FILE} {d}/nft.rollback")
    else:
        yield StringCommand(f"{{ {ROLLBACK_FROM_LISTING}; }} > {d}/nft.rollback")
    run = (
        f". {lib}\n"
        f"svcops_nft_load {d}/nft.apply; rc=$?\n"
        '[ "$rc" = 0 ] && exit 0\n'
        'echo "svcops: nft transaction $rc failed" >&2\n'
        # Transaction 1 failing changed nothing; a later one leaves earlier ones applied.
        f'if [ "$rc" -gt 1 ]; then svcops_nft_load {d}/nft.rollback || echo "svcops: the rollback failed too" >&2; fi\n'
        "exit 1\n"
    )
    yield StringCommand(f"cat > {d}/nft.run", _stdin=run)
    yield from txn.step("nftables", f"sh {d}/nft.run", f". {lib}\nsvcops_nft_load {d}/nft.rollback\n")
    yield from cleanup_commands(state.live, udp_ports)
    if implicit:
        yield from txn.finish(verify_ssh)
