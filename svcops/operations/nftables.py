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
from svcops.facts.nftables import SvcopsNftables, SvcopsNftBuckets, SvcopsNftCanary
from svcops.operations.conntrack import cleanup_commands
from svcops.operations import txn
from svcops.operations.txn import DEFAULT_ROLLBACK_AFTER
from svcops.operations.util import error, fail
from svcops.render.nftables_record import canary_command
from svcops.render.nftables_sync import (
    LOADER,
    ROLLBACK_FROM_LISTING,
    chunked,
    live_fingerprint,
    nft_plan,
)
from svcops.render.nftables_record import BOOT_LOADER, fast_buckets, fast_plan, fingerprint_of, record_files
from svcops.render.nftables_step import apply_script
from svcops.render.node_files import NFT_FILE, NFT_RECORD_DIR

__all__ = ["rules"]


@operation()
@marks_changes
def rules(
    rules=None,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    verify_ssh: bool = True,
    chunk: int = 1000,
    udp_ports=None,
    verify: bool = False,
):
    """
    Give the node exactly svcops's nftables table ``ip svcops`` for ``rules``, or no
    such table at all when ``rules`` is None (the site is in another proxy mode).

    + rules: the node's ``NftRules`` (``compile_site(...).outputs[node].nftables``), or None
    + rollback_after, verify_ssh: as for `svcops.operations.iptables.rules`
    + chunk: service ports per transaction on a cold start
    + udp_ports: the node's UDP service ports: after the change, conntrack entries of
      UDP flows still pointing at endpoints that are gone are deleted, as in
      `svcops.operations.iptables.rules`
    + verify: read the whole table even when the canary agrees with the record

    The fast path (`svcops.render.nftables_record`): the node keeps a record of what
    svcops applied last (``/etc/svcops/nft.d``: the boot data in hashed buckets, an
    index) and a canary in the table that names it. When the canary and the index
    agree, only the buckets whose digest differs from the render's are read, and only
    their service ports are sent (a one-service change at 10,000 services: one bucket
    read, one small transaction, an exact small rollback). Otherwise (a table flushed,
    deleted or re-made, no record, ``verify``) the whole table is read
    (`svcops.facts.nftables.SvcopsNftables`): a node in sync gets no command, a clean
    node the skeleton and the service ports in chunks, a live one what differs, drift
    included (`svcops.render.nftables_diff`); and the whole record is written. Only
    ``table ip svcops`` is ever named: no other table is touched.

    SSH safety as in iptables mode; all of it (table, record) is one step of the node's
    transaction each, undone together. A transaction that fails after earlier ones
    succeeded rolls back at once.
    """
    canary = node_fact(host, SvcopsNftCanary, keep=True)
    if canary is None:
        yield fail("the node's nftables canary (nft list set)")
        return
    if not canary.available:
        if rules is None:
            host.noop("nft is not installed: no svcops table to remove")
            return
        yield error("svcops: nftables mode needs nft (Debian package nftables) on the node; nothing changed")
        return
    if rules is not None and canary.trusted and not verify:
        names = fast_buckets(canary.index, rules)
        if names == []:
            host.noop("the svcops table is in sync (its record says so)")
            return
        if names:
            old = host.get_fact(SvcopsNftBuckets, buckets=tuple(names))
            fast = fast_plan(rules, canary.index, old or {}, chunk)
            if fast is not None:
                yield from _apply(fast.transactions, chunked(fast.rollback), fast.files, fast.previous, udp_ports, rollback_after, verify_ssh)
                return
    yield from _full(rules, canary, rollback_after, verify_ssh, chunk, udp_ports)


def _full(rules, canary, rollback_after, verify_ssh, chunk, udp_ports):
    """The whole table read and compared (no trusted record, or --verify)."""
    state = node_fact(host, SvcopsNftables)
    if state is None:
        yield fail("the node's nftables table (nft list)")
        return
    plan = nft_plan(rules, state.live, chunk)
    txs = list(plan.transactions)
    if rules is None:
        if not txs and canary.index is None:
            host.noop("no svcops table")
            return
        files = {b: None for b in record_files_names()}
    else:
        files = record_files(rules)
        fp = fingerprint_of(rules)
        if not txs and canary.trusted and canary.index.fingerprint == fp:
            host.noop("the svcops table is in sync")
            return
        # The canary last, in the last transaction (alone when the table is in sync but
        # its record or canary is not).
        txs = [*txs[:-1], (txs[-1] if txs else "") + canary_command(fp)]
    if not state.live.exists:
        rollback = None  # a table that was not there is deleted again
    elif canary.trusted and not plan.drift:
        rollback = f"svcops_nft_boot {NFT_RECORD_DIR}"  # the record (put back first) is the table
    elif state.boot_state and not plan.drift and state.boot_state == live_fingerprint(state.live):
        rollback = f"svcops_nft_load {NFT_FILE}"  # a boot file of svcops before the record
    else:
        rollback = ROLLBACK_FROM_LISTING
    yield from _apply(txs, rollback, files, state.live, udp_ports, rollback_after, verify_ssh)


def record_files_names() -> list[str]:
    return [*(f"{i:02x}" for i in range(256)), "sk", "index"]


def _apply(txs, rollback, files, previous, udp_ports, rollback_after, verify_ssh):
    """Load `txs` and write the record `files` as one step in one round trip
    (`svcops.render.nftables_step`; undone by `rollback`: a chunked text, a shell
    command of the loaders, or None: delete the table)."""
    implicit = yield from txn.ensure(rollback_after=rollback_after)
    d = txn.files_dir()
    paths = {f"{NFT_RECORD_DIR}/{b}": t for b, t in files.items()}
    change, undo = apply_script(
        d, chunked(txs), LOADER + BOOT_LOADER, rollback, paths,
        remove_dir=NFT_RECORD_DIR if files and all(t is None for t in files.values()) else None,
    )  # fmt: skip
    yield from txn.script_step("nftables", change, undo, scratch=d)
    yield from cleanup_commands(previous, udp_ports)
    if implicit:
        yield from txn.finish(verify_ssh)
