"""nftables mode's record and canary: the fast path of an apply (`fast_plan`).

The record (`svcops.render.record`) of a node's table is its boot data, bucketed: the
bucket ``sk`` holds the skeleton (a cold load: it deletes any svcops table first), and
each hashed bucket the units whose id falls into it, as cold-load text, each unit after
a comment line carrying what the controller needs to diff it without reading the
kernel (its id, digest, chains, sets and map elements)::

    # svcops-unit {"id": "shop/web/tcp/http", "digest": "...", "chains": [...], ...}
    add set ip svcops affinity-...
    add chain ip svcops service-...
    add rule ip svcops service-... numgen random mod 2 0 meta l4proto tcp dnat to 10.1.2.3:80
    add element ip svcops service-ips { 10.96.0.10 . tcp . 80 comment "..." : goto ... }

The canary is the one element of the skeleton's set ``state``: ``127.0.0.1`` with the
comment ``svcops-state FINGERPRINT``. Listing that set costs ~10 ms at 10,000
services (listing a chain fetches every chain and set first).
Every apply that changes anything rewrites it last, in the same transaction as its
last change; the boot script sets it last too, from the record's index, so it is
there only when everything before it loaded. A table deleted or re-made, a ruleset
flushed, a reboot without the boot script: no canary, or another one, and the apply
reads the whole table as before. What it cannot see is a hand edit inside svcops's
chains that leaves the set alone (``nft flush chain``, ``nft add rule``): that is what
``svcops check`` and ``svcops apply --verify`` read the whole table for.

Pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from svcops.render.nftables import (
    BASE_CHAINS,
    MAPS,
    SKELETON_COMMENT,
    SKELETON_DIGEST,
    STATE_SET,
    TABLE,
    TOP_RULES,
    NftLive,
    NftRules,
    NftUnit,
    cold_units,
    skeleton_payload,
)
from svcops.render.nftables_diff import plan_update
from svcops.render.nftables_live import NftContent
from svcops.render.nftables_normal import unit_chains
from svcops.render.record import (
    BUCKETS,
    RecordIndex,
    bucket_digests,
    bucket_of,
    canary_fingerprint,
    digest_text,
    fingerprint,
    index_text,
    make_index,
    verify_bucket,
)

__all__ = [
    "MODE",
    "SKELETON_BUCKET",
    "UNIT_MARK",
    "canary_command",
    "parse_canary",
    "record_of",
    "parse_bucket",
    "FastPlan",
    "fast_buckets",
    "fast_plan",
    "record_files",
    "fingerprint_of",
    "content_digests",
    "bucket_texts",
    "unit_text",
]

MODE = "nftables"
SKELETON_BUCKET = "sk"
UNIT_MARK = "# svcops-unit "
CANARY_PREFIX = "svcops-state "
_RULE = f"add rule {TABLE} "
_CHAIN = f"add chain {TABLE} "


def canary_command(fingerprint: str) -> str:
    """The commands that set the canary to `fingerprint` (last in a transaction)."""
    return f'flush set {TABLE} {STATE_SET}\nadd element {TABLE} {STATE_SET} {{ 127.0.0.1 comment "{CANARY_PREFIX}{fingerprint}" }}\n'


def parse_canary(lines: Iterable[str]) -> str | None:
    """The fingerprint in ``nft list set ip svcops state``'s output (None: no set, no
    element, or more than one)."""
    return canary_fingerprint(lines, CANARY_PREFIX)


_TEXTS: dict[tuple[str, str], str] = {}  # (unit id, digest) -> its text: nodes share most units


def unit_text(u: NftUnit) -> str:
    """A unit's part of its bucket file: its comment line, then its cold-load text."""
    key = (u.id, u.digest)
    text = _TEXTS.get(key)
    if text is None:
        # The chains are read back from their "add chain" lines: only what the text does
        # not say plainly goes into the comment.
        meta = {"id": u.id, "digest": u.digest, "sets": [list(s) for s in u.sets], "elements": [list(e) for e in u.elements]}
        text = UNIT_MARK + json.dumps(meta, separators=(",", ":")) + "\n" + cold_units([u])
        if len(_TEXTS) > 400_000:
            _TEXTS.clear()
        _TEXTS[key] = text
    return text


_BUCKETS: dict[int, tuple[NftRules, dict[str, str], dict[str, list[NftUnit]]]] = {}  # id(rules) -> ...


def _bucketed(rules: NftRules) -> tuple[dict[str, str], dict[str, list[NftUnit]]]:
    """(bucket -> content digest, bucket -> its units) of `rules`, in one pass.

    Remembered for the last few renders (by identity; the render is kept alive, so its
    id stays its own): an apply asks for them several times per node (the operation's
    `fast_buckets`, `fast_plan`, the new index), and a one-service change then costs
    its own buckets, not a walk over every unit (0.05-0.1 s at 10,000 services)."""
    hit = _BUCKETS.get(id(rules))
    if hit is not None and hit[0] is rules:
        return hit[1], hit[2]
    by_bucket: dict[str, list[NftUnit]] = {}
    for u in rules.units:
        by_bucket.setdefault(bucket_of(u.id), []).append(u)
    d = bucket_digests((u.id, u.digest) for u in rules.units)
    d[SKELETON_BUCKET] = SKELETON_DIGEST
    if len(_BUCKETS) >= 256:
        _BUCKETS.pop(next(iter(_BUCKETS)))
    _BUCKETS[id(rules)] = (rules, d, by_bucket)
    return d, by_bucket


def content_digests(rules: NftRules) -> dict[str, str]:
    """bucket -> content digest for a table holding `rules` (the skeleton under "sk")."""
    return dict(_bucketed(rules)[0])


def bucket_texts(rules: NftRules, names: Iterable[str]) -> dict[str, str]:
    """The file text of the buckets `names` for `rules` (built only for those)."""
    by_bucket = _bucketed(rules)[1]
    out = {b: "".join(unit_text(u) for u in by_bucket.get(b, ())) for b in set(names)}
    if SKELETON_BUCKET in out:
        out[SKELETON_BUCKET] = skeleton_payload(clean=True)
    return out


def record_of(rules: NftRules) -> RecordIndex:
    """The index of the record of a table holding `rules` (file digests included:
    every bucket's text is built)."""
    digests = content_digests(rules)
    texts = bucket_texts(rules, digests)
    return make_index(MODE, SKELETON_DIGEST, digests, {b: digest_text(t) for b, t in texts.items()})


def parse_bucket(text: str) -> list[NftUnit] | None:
    """The units of a bucket file (None: it is not one svcops wrote)."""
    units: list[NftUnit] = []
    meta: dict | None = None
    rules: list[str] = []
    chains: list[str] = []

    def close() -> bool:
        if meta is None:
            return True
        try:
            units.append(NftUnit(
                meta["id"], meta["digest"], tuple(chains), tuple((n, int(t)) for n, t in meta["sets"]),
                "".join(rules), tuple((m, k, v) for m, k, v in meta["elements"]),
            ))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            return False
        return True

    for line in text.splitlines(keepends=True):
        if line.startswith(UNIT_MARK):
            if not close():
                return None
            try:
                meta = json.loads(line[len(UNIT_MARK) :])
            except ValueError:
                return None
            rules, chains = [], []
        elif line.startswith(_RULE):
            if meta is None:
                return None
            rules.append(line)
        elif line.startswith(_CHAIN):
            if meta is None:
                return None
            chains.append(line[len(_CHAIN) :].strip())
    if not close():
        return None
    return units


def _live_of(units: Sequence[NftUnit], with_rules: bool = False) -> NftLive:
    """The digest-level view (no content) of a table holding the skeleton and `units`;
    `with_rules`: with the units' chains' rules as content (what the UDP conntrack
    cleanup reads its endpoints from)."""
    chains: dict[str, str | None] = {n: SKELETON_COMMENT for n in BASE_CHAINS}
    chains.update({n: None for n in TOP_RULES})
    sets: dict[str, int | None] = {STATE_SET: None}
    maps: dict[str, dict[str, tuple[str, str | None]]] = {m: {} for m in MAPS}
    for u in units:
        chains.update({c: None for c in u.chains})
        sets.update({n: t for n, t in u.sets})
        for m, key, verdict in u.elements:
            maps[m][key] = (verdict, u.comment)
    content = None
    if with_rules:
        content = NftContent(rules={c: r for u in units for c, r in unit_chains(u).items()})
    return NftLive(True, chains, sets, maps, content)


@dataclass(frozen=True, slots=True)
class FastPlan:
    """A fast-path apply: `transactions` take the node from the old record to the new
    one (the canary last), `rollback` back (both empty: in sync); `buckets` were read."""

    transactions: tuple[str, ...]
    rollback: tuple[str, ...]
    buckets: tuple[str, ...]
    files: dict[str, str | None]  # bucket -> new text (None: removed), the index under "index"
    previous: NftLive | None = None  # the old units, digest-level (for the UDP conntrack cleanup)
    added: int = 0  # service ports new, changed and gone
    changed: int = 0
    removed: int = 0

    def summary(self) -> list[str]:
        """`svcops apply --dry`'s lines for it."""
        if not self.transactions:
            return []
        n = len(self.transactions)
        return [
            f"nftables: service ports +{self.added} ~{self.changed} -{self.removed}, {n} transaction{'s' if n != 1 else ''}"
            f" (from the record: {len(self.buckets)} of its buckets read)"
        ]


def fast_buckets(have: RecordIndex, rules: NftRules) -> list[str] | None:
    """The buckets a fast path reads and rewrites for `rules`, or None when the record
    cannot be trusted for this render (another skeleton: the full path re-sends it)."""
    want = content_digests(rules)
    if have.extra != SKELETON_DIGEST or have.digests.get(SKELETON_BUCKET) != SKELETON_DIGEST:
        return None
    names = set(have.digests) | set(want)
    return sorted(b for b in names if have.digests.get(b) != want.get(b))


def fast_plan(
    rules: NftRules, have: RecordIndex, old: Mapping[str, tuple[str, str]], chunk: int = 1000
) -> FastPlan | None:
    """What to send a node whose record index is `have` (trusted: its canary agrees)
    and whose changed buckets are `old` (bucket -> (the digest the node computed of its
    file, "" when there is none; its text), `svcops.facts.nftables.SvcopsNftBuckets`),
    for `rules`. None: a bucket is not the one the index names or does not parse, or
    the skeleton differs: read the whole table instead."""
    names = fast_buckets(have, rules)
    if names is None:
        return None
    if not names:
        return FastPlan((), (), (), {}, None)
    old_units: list[NftUnit] = []
    for b in names:
        digest, text = old.get(b, ("", ""))
        if not verify_bucket(have, b, digest):
            return None
        parsed = parse_bucket(text) if digest else []
        if parsed is None:
            return None
        old_units.extend(parsed)
    wanted = set(names)
    by_bucket = _bucketed(rules)[1]
    new_units = [u for b in names for u in by_bucket.get(b, ())]
    texts = bucket_texts(rules, names)
    digests = content_digests(rules)
    file_digests = {b: d for b, d in have.files.items() if b not in wanted}
    file_digests.update({b: digest_text(t) for b, t in texts.items() if t})
    new_index = make_index(MODE, SKELETON_DIGEST, digests, {b: file_digests[b] for b in digests})
    ahead = plan_update(NftRules(rules.node, tuple(new_units)), _live_of(old_units), chunk)
    forward = ahead.transactions
    back = plan_update(NftRules(rules.node, tuple(old_units)), _live_of(new_units), chunk).transactions
    files: dict[str, str | None] = {b: (texts.get(b) or None) for b in names}
    files["index"] = index_text(new_index)
    return FastPlan(
        _with_canary(forward, new_index.fingerprint), _with_canary(back, have.fingerprint), tuple(names), files,
        _live_of(old_units, with_rules=True), ahead.added, ahead.changed, ahead.removed,
    )  # fmt: skip


def record_files(rules: NftRules) -> dict[str, str | None]:
    """Every file of the record of `rules` (bucket or "index" -> text; None: a bucket
    file that must not be there): what the full path writes."""
    digests = content_digests(rules)
    texts = bucket_texts(rules, digests)
    index = make_index(MODE, SKELETON_DIGEST, digests, {b: digest_text(t) for b, t in texts.items()})
    files: dict[str, str | None] = {f"{i:02x}": None for i in range(BUCKETS)}
    files.update(texts)
    files["index"] = index_text(index)
    return files


def fingerprint_of(rules: NftRules) -> str:
    """The fingerprint a node's canary carries once `rules` are applied (no text built)."""
    return fingerprint(MODE, SKELETON_DIGEST, content_digests(rules))


def _with_canary(txs: Sequence[str], fingerprint: str) -> tuple[str, ...]:
    if not txs:
        return (canary_command(fingerprint),)
    return (*txs[:-1], txs[-1] + canary_command(fingerprint))


# The shell function that loads a record folder into the kernel (the boot script, and
# the rollback of an apply that read the whole table): the skeleton (which deletes any
# svcops table first), the buckets the index names 25 at a time (~1,000 units a
# transaction at 10,000 services), the canary last. A file that is not the one the
# index names (edited, truncated, lost) is loaded as it is, and the canary is left
# out: the next apply reads the whole table and puts it right. Needs
# `svcops.render.nftables_sync.LOADER` defined first.
BOOT_LOADER = r"""svcops_nft_boot() {
    [ -f "$1/index" ] && [ -f "$1/sk" ] || { echo "svcops: no nftables record in $1" >&2; return 1; }
    _fp=$(head -n 1 "$1/index" | cut -d' ' -f4)
    _b=$(mktemp /run/svcops-nft-boot.XXXXXX) || return 1
    rm -f "$_b.bad"
    {
        echo '# svcops: transaction 1'
        cat "$1/sk"
        tail -n +2 "$1/index" | {
            _i=0
            while read -r _n _c _f; do
                if [ "$(sha256sum < "$1/$_n" 2>/dev/null | cut -c1-32)" != "$_f" ]; then
                    echo "svcops: $1/$_n is not the file the record's index names: the next apply reads the whole table" >&2
                    : > "$_b.bad"
                fi
                [ "$_n" = sk ] && continue
                if [ $((_i % 25)) = 0 ]; then echo "# svcops: transaction $((_i / 25 + 2))"; fi
                cat "$1/$_n" 2>/dev/null
                _i=$((_i + 1))
            done
        }
    } > "$_b"
    if [ ! -e "$_b.bad" ]; then
        {
            echo '# svcops: transaction last'
""" + "".join(f"            echo '{line}'\n" for line in canary_command("FP").replace("FP", "'\"$_fp\"'").splitlines()) + r"""        } >> "$_b"
    fi
    svcops_nft_load "$_b"; _rc=$?
    rm -f "$_b" "$_b.bad"
    return $_rc
}
"""
__all__ += ["BOOT_LOADER"]
