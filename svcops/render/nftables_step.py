"""nftables mode's change to a node as one step: the table's transactions, then the
record's files.

    change, undo = apply_script(scratch, chunked(txs), LOADER + BOOT_LOADER, rollback, files)

`svcops.operations.nftables.rules` sends the two as one step of the node's transaction
(`svcops.operations.txn.script_step`): one round trip carries the loaders, the
transactions, their rollback and the record's new texts, all written by the shell
itself (`svcops.render.txn.literal_write`), as iptables mode's step does
(`svcops.render.iptables_step`).

The change, in order: the loaders and the rollback written (or the live table listed
into one, whole or not at all), the previous record files kept, the transactions
written and loaded, then the record's files written. The undo (in place before the
change starts) gives every previous record file back first (a rollback that loads the
record, ``svcops_nft_boot``, must find the old one), then the table, once the
transactions may have run (their file was written); whatever fails, the node ends as
it was.

Pure.
"""

from __future__ import annotations

import shlex
from typing import Mapping

from svcops.render.nftables_sync import ROLLBACK_FROM_LISTING, removal
from svcops.render.txn import files_script, literal_write, record_step_end

__all__ = ["apply_script", "INDEX_LAST"]

INDEX_LAST = "index"  # the record file put last: it vouches for the bucket files


def _order(path: str) -> tuple[bool, str]:
    return (path.rsplit("/", 1)[-1] == INDEX_LAST, path)


def apply_script(
    scratch: str,
    transactions: str,
    loaders: str,
    rollback: str | None,
    files: Mapping[str, str | None],
    remove_dir: str | None = None,
) -> tuple[str, str]:
    """(change, undo) of the step. `transactions`: the chunked transactions (empty: the
    table stands as it is); `loaders`: the shell functions (`svcops_nft_load`,
    `svcops_nft_boot`); `rollback`: a chunked text, `ROLLBACK_FROM_LISTING` (the live
    table listed in the step, just before the change), a loader command
    (``svcops_nft_...``), or None (delete the table: it was not there); `files`: path
    -> new text (None: remove it), the index last; `remove_dir`: a folder removed once
    its files are (another proxy mode). `scratch`: the transaction's folder."""
    lib, apply, back = f"{scratch}/nft.lib", f"{scratch}/nft.apply", f"{scratch}/nft.rollback"
    change = [literal_write(lib, loaders) + " || exit 1"]
    undo = ["rc=0"]
    if remove_dir:
        undo.append(f"mkdir -p {shlex.quote(remove_dir)}")
    script = None
    if files:
        order = sorted(files, key=_order)
        script = files_script(f"{scratch}/files/nftables", [(p, files[p]) for p in order])
        change.append(script.prepare.rstrip("\n"))
        # The record first: a rollback that loads it finds the previous one.
        undo.append(script.undo.rstrip("\n"))
    if transactions.strip():
        if rollback is None:
            change.append(literal_write(back, removal()) + " || exit 1")
            table_undo = f"svcops_nft_load {back}"
        elif rollback == ROLLBACK_FROM_LISTING:
            # Only a whole listing becomes the rollback: a failed one leaves none, and
            # the step failed before it changed anything.
            change.append(f"{{ {ROLLBACK_FROM_LISTING}; }} > {back}.new && mv {back}.new {back} || exit 1")
            table_undo = f"if [ -f {back} ]; then svcops_nft_load {back}; fi"
        elif rollback.startswith("svcops_nft_"):
            table_undo = rollback
        else:
            change.append(literal_write(back, rollback) + " || exit 1")
            table_undo = f"svcops_nft_load {back}"
        # The transactions written last before they load: the undo gives the table back
        # only once they are there (before, none can have run).
        change.append(literal_write(apply, transactions) + " || exit 1")
        # Transaction 1 failing changed nothing; a later one leaves earlier ones applied:
        # given back at once (also outside a transaction, where no undo runs).
        change.append(
            f". {lib} || exit 1\n"
            f"svcops_nft_load {apply}; _rc=$?\n"
            'if [ "$_rc" != 0 ]; then\n'
            '    echo "svcops: nft transaction $_rc failed" >&2\n'
            f'    if [ "$_rc" -gt 1 ]; then {table_undo} || echo "svcops: the rollback failed too" >&2; fi\n'
            "    exit 1\n"
            "fi"
        )
        undo.append(f"if [ -e {apply} ]; then . {lib} && {table_undo} || rc=1; fi")
    return record_step_end(change, undo, script, remove_dir)
