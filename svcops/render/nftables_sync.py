"""Pushing nftables mode: the pure parts (texts and decisions; the operation runs them).

A node's svcops table is changed by a list of ``nft -f`` transactions
(`nft_plan`, from `svcops.render.nftables_diff.plan_update`): for a clean node the
skeleton and then chunks of 1,000 service ports (a 10,000-service table in one
transaction takes the kernel ~56 s to validate, in chunks ~12.5 s in all), for a live
node only what differs from its listing, content included (a one-service change is
one small transaction, ~0.3 s; a chain someone edited is re-sent), and nothing at all
when the node is in sync.

Those transactions travel, and are kept, as one *chunked file*: each transaction after
a line ``# svcops: transaction K/N`` (a comment to nft). `LOADER` is the shell
function that loads such a file one transaction at a time; the boot script, the
apply and the rollback all use it::

    # svcops: transaction 1/3
    add table ip svcops
    delete table ip svcops
    ...
    # svcops: transaction 2/3
    add chain ip svcops service-...

Before the record (`svcops.render.nftables_record`, issue 11) the boot data was one
file, ``/etc/svcops/rules.nft``: the cold load of the last applied state, its first line
``# svcops-state <fingerprint>`` (`boot_file`). A node upgraded from then still has it
until its first apply removes it, and an apply that reads the whole table may use it
as its rollback, as described here. The fingerprint sums up a table as
the skeleton's digest and every service port's digest, which the live table carries in
its comments too (`live_fingerprint`). So the controller knows, without reading
the node's files, whether the boot file holds exactly what the live table holds (the
same fingerprint, and no drift in the live table's content: `NftPlan.drift`); if so
it is the rollback of an apply (copied aside before the apply), otherwise the live
table is listed into one (`ROLLBACK_FROM_LISTING`), and a node without a table gets
a rollback that deletes the table again.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Sequence

from svcops.render.nftables import SKELETON_DIGEST, TABLE, NftLive, NftRules, cold_payloads
from svcops.render.nftables_diff import NftPlan, plan_update

__all__ = [
    "MARK",
    "STATE_PREFIX",
    "DELETE_TABLE",
    "LOADER",
    "fingerprint",
    "live_fingerprint",
    "chunked",
    "boot_file",
    "transactions",
    "nft_plan",
    "count_transactions",
    "removal",
]

MARK = "# svcops: transaction "
STATE_PREFIX = "# svcops-state "
# Deletes svcops's table if it is there, and nothing else (add first: delete alone fails
# on a node without the table).
DELETE_TABLE = f"add table {TABLE}\ndelete table {TABLE}\n"

# The shell function that loads a chunked file, one `nft -f` per transaction, in order.
# A failed transaction is tried once more a second later (on kernels before 6.2 a chain
# just unhooked from a map may read as busy for a moment); it returns the number of the
# transaction that failed (1: nothing was changed) or 0.
LOADER = r"""svcops_nft_load() {
    _d=$(mktemp -d /run/svcops-nft.XXXXXX) || return 1
    awk -v d="$_d" '/^# svcops: transaction /{ if (f) close(f); f = d "/" (++n) } f { print > f }' "$1" || { rm -rf "$_d"; return 1; }
    _i=1; _rc=0
    while [ -f "$_d/$_i" ]; do
        nft -f "$_d/$_i" || { sleep 1; nft -f "$_d/$_i"; } || { _rc=$_i; break; }
        _i=$((_i + 1))
    done
    rm -rf "$_d"
    return $_rc
}
"""


def fingerprint(rules: NftRules) -> str:
    """What a table holding `rules` is, in one digest: skeleton and service ports."""
    h = sha256(SKELETON_DIGEST.encode())
    for line in sorted(f"{u.id} {u.digest}" for u in rules.units):
        h.update(line.encode() + b"\n")
    return h.hexdigest()[:32]


def live_fingerprint(live: NftLive) -> str | None:
    """The same digest, read from a live table (None: no table, or one whose
    skeleton or service ports are not exactly some version svcops wrote)."""
    if not live.exists:
        return None
    skeletons = {c for n, c in live.chains.items() if c and c.startswith("svcops skeleton ")}
    if len(skeletons) != 1:
        return None
    h = sha256(skeletons.pop()[len("svcops skeleton ") :].encode())
    units = live.units()
    if any(not d for d in units.values()):
        return None
    for line in sorted(f"{uid} {d}" for uid, d in units.items()):
        h.update(line.encode() + b"\n")
    return h.hexdigest()[:32]


def chunked(txs: Sequence[str], state: str | None = None) -> str:
    """Transactions as one chunked file (with a state line first when given)."""
    out = [f"{STATE_PREFIX}{state}\n"] if state else []
    n = len(txs)
    for i, tx in enumerate(txs, 1):
        out.append(f"{MARK}{i}/{n}\n")
        out.append(tx if tx.endswith("\n") or not tx else tx + "\n")
    return "".join(out)


def count_transactions(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith(MARK))


def boot_file(rules: NftRules, chunk: int = 1000) -> str:
    """``/etc/svcops/rules.nft`` as svcops wrote it before the record: the cold load of
    `rules`, fingerprinted. Loading it replaces whatever svcops table is there (its
    first transaction deletes it)."""
    return chunked(cold_payloads(rules, chunk), fingerprint(rules))


def nft_plan(rules: NftRules | None, live: NftLive, chunk: int = 1000) -> NftPlan:
    """What to run on a node whose live table is `live`, and why (`NftPlan`; no
    transactions when nothing differs). rules=None: the node must hold no svcops table
    (another proxy mode)."""
    if rules is None:
        return NftPlan((DELETE_TABLE,) if live.exists else ())
    return plan_update(rules, live, chunk)


def transactions(rules: NftRules | None, live: NftLive, chunk: int = 1000) -> list[str]:
    """`nft_plan`'s transactions: [] when nothing differs."""
    return list(nft_plan(rules, live, chunk).transactions)


def removal() -> str:
    """A chunked file that deletes svcops's table: the rollback for a node that had none."""
    return chunked([DELETE_TABLE])


ROLLBACK_FROM_LISTING = (
    # Shell: the live table, listed now, as a one-transaction chunked file on stdout.
    f"echo '{MARK}1/1'; echo 'add table {TABLE}'; echo 'delete table {TABLE}'; nft list table {TABLE}"
)
__all__ += ["ROLLBACK_FROM_LISTING"]
