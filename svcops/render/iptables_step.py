"""iptables mode's change to a node as one step: the restore, then the record's files.

    restore = restore_plan(rules, live, chunk)      # what to restore, and how to undo it
    change, undo = apply_script(scratch, restore, files, RECORD_DIR)

`svcops.operations.iptables.rules` sends the two as one step of the node's
transaction (`svcops.operations.txn.script_step`): one round trip carries the
restore's payload, its rollback and the record's new texts, all written by the shell
itself (`svcops.render.txn.literal_write`), so that a one-service change at 10,000
services starts a handful of processes besides the one ``iptables-restore``.

The change, in order: the rollback payload (`svcops.render.iptables_sync.rollback_payload`)
written, the previous record files kept (a copy, unless their text was read already:
the fast path's), the payload written, the restore, then the record's files written
(`svcops.render.txn.files_script`). The undo (in place before the change starts)
gives back the chains when the restore may have run (its payload was written), then
every previous file: whatever fails, the node ends as it was.

Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from svcops.render.iptables import IptablesRules, LiveTables, restore_transactions
from svcops.render.iptables_record import without_empty_tables
from svcops.render.iptables_sync import rollback_payload, simulate
from svcops.render.txn import files_script, literal_write, record_step_end

__all__ = ["RestorePlan", "restore_plan", "apply_script", "INDEX_LAST"]

INDEX_LAST = "index"  # the record file put last: it vouches for the bucket files


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """One ``iptables-restore --noflush`` of `payload`; `rollback` undoes it once it is
    done; `partial` (several transactions only) undoes the ones committed before one
    that failed, leaving the jumps alone (the last transaction changes them)."""

    payload: str
    rollback: str
    partial: str | None = None


def restore_plan(rules: IptablesRules, live: LiveTables, chunk: int) -> RestorePlan:
    """The restore of `rules` over `live`, cut into transactions of at most `chunk`
    chains (`svcops.render.iptables.restore_transactions`). A table with nothing to do
    is left out: iptables-nft-restore reads the cache of every table it is given (a
    one-service change names nat alone)."""
    txs = [t for t in (without_empty_tables(t) for t in restore_transactions(rules, live, chunk)) if t]
    payload = "".join(txs)
    after = simulate(live, payload)  # the state after the apply, for both rollbacks
    partial = None
    if len(txs) > 1:
        partial = without_empty_tables(rollback_payload(live, rules, jumps=False, after=after))
    rollback = without_empty_tables(rollback_payload(live, rules, after=after)) or "\n"
    return RestorePlan(payload, rollback, partial)


def _put_order(name: str) -> tuple[bool, str]:
    return (name == INDEX_LAST, name)


def apply_script(
    scratch: str,
    restore: RestorePlan | None,
    files: Mapping[str, str | None],
    record_dir: str,
    remove_dir: bool = False,
    previous: Mapping[str, str | None] | None = None,
) -> tuple[str, str]:
    """(change, undo) of the step: `restore` (None: the rules stand as they are), then
    `files` (record file name -> new text, None: remove it) in `record_dir`, the index
    last; `remove_dir`: the folder goes too once its files are removed (another proxy
    mode). `previous`: name -> what that file holds now (None: nothing), for the files
    already read (the fast path's): their undo writes that back, no copy is kept.
    `scratch`: the transaction's folder, where the payloads and the copies of the
    previous files are kept until the transaction ends."""
    change: list[str] = []
    undo = ["rc=0"]
    apply = f"{scratch}/iptables.apply"
    if remove_dir:
        undo.append(f"mkdir -p {record_dir}")
    if restore is not None:
        change.append(literal_write(f"{scratch}/iptables.rollback", restore.rollback) + " || exit 1")
        if restore.partial is not None:
            change.append(literal_write(f"{scratch}/iptables.rollback-partial", restore.partial) + " || exit 1")
        # The payload is written last before the restore: the undo gives the chains back
        # only once it is there (before, the restore cannot have run).
        undo.append(f"if [ -e {apply} ]; then iptables-restore -w 5 --noflush {scratch}/iptables.rollback || rc=1; fi")
    script = None
    if files:
        order = sorted(files, key=_put_order)
        known = {f"{record_dir}/{n}": t for n, t in (previous or {}).items()}
        script = files_script(f"{scratch}/files/iptables", [(f"{record_dir}/{n}", files[n]) for n in order], known)
    if script is not None:
        change.append(script.prepare.rstrip("\n"))
        undo.append(script.undo.rstrip("\n"))
    if restore is not None:
        change.append(literal_write(apply, restore.payload) + " || exit 1")
        run = f"iptables-restore -w 5 --noflush {apply}"
        if restore.partial is not None:
            # One transaction that fails leaves the earlier ones committed: give their
            # chains back at once, so that a failed restore changed nothing.
            run = f"{{ {run} || {{ iptables-restore -w 5 --noflush {scratch}/iptables.rollback-partial; false; }}; }}"
        change.append(f"{run} || exit 1")
    return record_step_end(change, undo, script, record_dir if remove_dir else None)
