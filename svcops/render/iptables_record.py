"""iptables mode's record on the node, its canary, and the partial plan of the fast path.

The record (`svcops.render.record`) of iptables mode is svcops's chains cut into
*units*, one service port's chains each (its SVC, SVL, EXT and FW chains share the
port's hash, `svcops.render.chains.port_hash`; its SEP chains are the ones its SVC or
SVL chain jumps to), hashed into up to 256 bucket files, plus two buckets for the
chains no service port owns:

    s0   loaded first: nat SVCOPS-MARK-MASQ and SVCOPS-POSTROUTING, every filter chain
         (the chains units jump to, or that jump nowhere svcops owns)
    n0..nf  after the hex buckets: the chains of a unit that depend on the node (a
         Local traffic policy's EXT, SVL and FW chains; its SVC and SEP chains, the
         same on every node, stay in its hex bucket), by the unit's hash: so the 256
         hex buckets are made and hashed once per render for every node
    s1   loaded last: nat SVCOPS-SERVICES and SVCOPS-NODEPORTS (they jump into units)

Each bucket file is ``iptables-restore --noflush`` text, one transaction per table,
each unit preceded by a ``# unit KEY`` comment line::

    *nat
    # unit 5FZ3K2ZQ7LSY3NQH
    :SVCOPS-SVC-5FZ3K2ZQ7LSY3NQH - [0:0]
    :SVCOPS-SEP-... - [0:0]
    -A SVCOPS-SVC-5FZ3K2ZQ7LSY3NQH ...
    COMMIT

so the boot script loads ``s0``, the hex buckets, ``n0``..``nf``, then ``s1`` in one
``iptables-restore`` (a transaction per bucket: ~400 chains each at 10,000 services),
and the controller parses a bucket back into the chains it holds
(`svcops.render.iptables.parse_iptables_save` skips the comments).

The canary: a chain ``SVCOPS-STATE`` in both tables, one rule whose comment carries
the record's fingerprint in nat, the digest of bucket s0 (every filter chain) in
filter (`state_rule`, `canary_values`). A flush, a table wiped by another tool's
restore, a deleted chain or a reboot without svcops's boot script all remove it; the
boot script writes it back from the index once every bucket file matches its digest
(else it writes ``unverified``, which no index matches).

The fast path (`partial_plan`): the canary of both tables and the index agree, and the
jumps from the built-in chains are the rendered ones: the old texts of the buckets
whose digests differ are the live state of their chains, so the restore names only
those chains and the canary, and its rollback gives back exactly those.

Pure.
"""

from __future__ import annotations

import re
from collections import Counter
from hashlib import sha256
from dataclasses import dataclass, field
from typing import Mapping

from svcops.render import chains as C
from svcops.render.iptables import IptablesRules, LiveTable, Units, LiveTables, TableRules, parse_iptables_save
from svcops.render.record import RecordIndex, bucket_of, changed_buckets, digest_text, index_text, make_index, verify_bucket

__all__ = [
    "MODE",
    "RECORD_DIR",
    "INDEX_FILE",
    "FIRST",
    "LAST",
    "OWN",
    "STATE",
    "UNVERIFIED",
    "IptablesRecord",
    "record_of",
    "bucket_units",
    "state_rule",
    "with_state",
    "canary_values",
    "without_empty_tables",
    "applied_rules",
    "is_empty",
    "Canary",
    "parse_canary",
    "canary_agrees",
    "PartialPlan",
    "partial_plan",
    "record_files",
]

MODE = "iptables"
RECORD_DIR = "/etc/svcops/iptables.d"
INDEX_FILE = f"{RECORD_DIR}/index"
FIRST, LAST = "s0", "s1"  # the shared buckets (not hex: no unit hashes into them)
OWN = "n"  # n0..nf: a node's own parts of its units (Local traffic policies)
STATE = C.STATE
UNVERIFIED = "unverified"  # the boot script's fingerprint when a bucket file does not match
TABLES = ("filter", "nat")
_STATE_DECL = f":{STATE} - [0:0]\n"
_FP = re.compile(r'--comment "svcops-state ([^" ]+)"')


def state_rule(fingerprint: str) -> str:
    """The canary's one rule (as iptables-save prints it, without the newline)."""
    return f'-A {STATE} -m comment --comment "svcops-state {fingerprint}" -j RETURN'


# --- the record of a render ---------------------------------------------------------


def _text(name: str, units: Mapping[str, tuple[list[str], list[str]]]) -> str:
    """One table's transaction of a bucket: each unit's declarations, then its rules,
    after a ``# unit KEY`` line."""
    out = [f"*{name}\n"]
    for unit in sorted(units):
        decl, rules = units[unit]
        out.append(f"# unit {unit}\n")
        out.extend(decl)
        out.extend(rules)
    out.append("COMMIT\n")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class IptablesRecord:
    """The record of a render: bucket name -> its text (``iptables-restore`` text, see
    the module's docstring), `extra` (the digest of svcops's jumps, which live outside
    the buckets) and every bucket's digest, `known` (the buckets every node shares are
    hashed once per render, not once per node). A bucket's content digest is its
    text's digest, and so is its file's."""

    buckets: Mapping[str, str] = field(default_factory=dict)
    extra: str = ""
    known: Mapping[str, str] = field(default_factory=dict)

    def digests(self) -> dict[str, str]:
        return dict(self.known)

    def index(self) -> RecordIndex:
        d = self.digests()
        return make_index(MODE, self.extra, d, d)


def _grouped(part: Mapping[str, tuple[str, str]], bucket) -> dict[str, dict[str, tuple[list[str], list[str]]]]:
    """bucket -> unit -> (declarations, rules) of `part`'s units."""
    out: dict[str, dict[str, tuple[list[str], list[str]]]] = {}
    for unit, (decl, body) in part.items():
        out.setdefault(bucket(unit), {})[unit] = ([decl], [body])
    return out


def _own_bucket(unit: str) -> str:
    return OWN + bucket_of(unit)[0]


def _shared(part: Units) -> tuple[dict[str, str], dict[str, str], dict]:
    """The buckets of the part every node shares: (texts, digests), made once; and
    the memo of `_last_digest`."""
    if part.memo is None:
        texts = {b: _text("nat", u) for b, u in _grouped(part, bucket_of).items()}
        part.memo = (texts, {b: digest_text(t) for b, t in texts.items()}, {})
    return part.memo


_LAST_HEAD = f"*nat\n# unit {LAST}\n"


def _last_digest(memo: dict, last: tuple[str, ...]) -> str:
    """The digest of bucket s1's text (`_LAST_HEAD`, `last`'s fragments, COMMIT). Its
    first two fragments (the dispatch chains' declarations and every non-Local
    port's dispatch rules, 1.6 MB at 10,000 services) are the same strings on every
    node: they are hashed once per render, in `memo` (the shared part's)."""
    if len(last) < 2:
        return digest_text(_LAST_HEAD + "".join(last) + "COMMIT\n")
    got = memo.get("last")
    if got is None or got[0] is not last[0] or got[1] is not last[1]:
        got = memo["last"] = (last[0], last[1], sha256((_LAST_HEAD + last[0] + last[1]).encode()))
    h = got[2].copy()
    h.update(("".join(last[2:]) + "COMMIT\n").encode())
    return h.hexdigest()[:32]


def record_of(rules: IptablesRules) -> IptablesRecord:
    """The record of a render: its buckets' texts (see the module's docstring); the
    jumps count in the fingerprint. Built from the renderer's `RecordParts`: the
    buckets of the units every node shares are made and hashed once per render (about
    0.2 s at 10,000 services), then per node only its own buckets (n0..nf: the chains
    of Local traffic policies that depend on the node) and the two shared-chain buckets."""
    extra = _extra(rules.jumps)
    if is_empty(rules):
        return IptablesRecord({}, extra)
    parts = rules.parts
    if parts is None:
        raise ValueError("iptables rules without their record parts (not made by render_nodes)")
    shared, *own = parts.units
    shared_texts, shared_digests, memo = _shared(shared)
    texts, digests = dict(shared_texts), dict(shared_digests)
    mine: dict[str, dict[str, tuple[list[str], list[str]]]] = {}
    for p in own:
        for b, units in _grouped(p, _own_bucket).items():
            for u, (d, r) in units.items():
                have = mine.setdefault(b, {}).setdefault(u, ([], []))
                have[0].extend(d)
                have[1].extend(r)
    for b, units in mine.items():
        texts[b] = _text("nat", units)
    texts[FIRST] = "".join(
        f"*{t}\n# unit {FIRST}\n" + "".join(parts.first[t]) + "COMMIT\n" for t in TABLES if parts.first.get(t)
    )
    texts[LAST] = _LAST_HEAD + "".join(parts.last) + "COMMIT\n"
    for b in (*mine, FIRST):
        digests[b] = digest_text(texts[b])
    digests[LAST] = _last_digest(memo, parts.last)
    return IptablesRecord(texts, extra, digests)


def bucket_units(text: str) -> dict[str, LiveTables]:
    """A bucket file parsed back: unit -> the chains it holds (for ``svcops check``'s
    per-service report and tests)."""
    out: dict[str, list[str]] = {}
    table, unit = "", ""
    for line in text.splitlines(keepends=True):
        if line.startswith("*"):
            table = line
        elif line.startswith("# unit "):
            unit = line[7:].strip()
            out.setdefault(unit, []).append(table)
        elif line.startswith("COMMIT"):
            for lines in out.values():
                if lines and lines[-1] != "COMMIT\n":
                    lines.append("COMMIT\n")
        elif unit:
            out[unit].append(line)
    return {u: parse_iptables_save("".join(lines)) for u, lines in out.items()}


def _extra(jumps) -> str:
    """The record's digest of what lives outside the buckets: svcops's jumps."""
    return digest_text("".join(f"{j.table} {j.line}\n" for j in jumps))


def is_empty(rules: IptablesRules) -> bool:
    """No svcops rules at all (another proxy mode): no record and no canary either."""
    return not (rules.jumps or rules.filter.chains or rules.nat.chains)


def canary_values(index: RecordIndex) -> dict[str, str]:
    """table -> what its canary carries: nat, the record's fingerprint; filter, the
    digest of bucket s0, which holds every filter chain (so that a change of service
    ports, all in nat, restores nat alone: iptables-nft-restore reads the cache of
    each table it names)."""
    return {"filter": index.digests.get(FIRST, ""), "nat": index.fingerprint}


def with_state(rules: IptablesRules, index: RecordIndex, tables: tuple[str, ...] = TABLES) -> IptablesRules:
    """`rules` plus the canary chain of `tables`, carrying `index`'s values."""
    values = canary_values(index)

    def add(name: str, t: TableRules) -> TableRules:
        if name not in tables:
            return t
        return TableRules([*t.chains, _STATE_DECL], [*t.rules, state_rule(values[name]) + "\n"])

    return IptablesRules(rules.node, add("filter", rules.filter), add("nat", rules.nat), rules.jumps)


def applied_rules(rules: IptablesRules, record: IptablesRecord | None = None) -> IptablesRules:
    """What iptables mode leaves on a node: `rules` with the canary carrying their
    record's fingerprint (no canary for empty rules: another proxy mode)."""
    if is_empty(rules):
        return rules
    record = record or record_of(rules)
    return with_state(rules, record.index())


def record_files(record: IptablesRecord, have: Mapping[str, str] | None) -> dict[str, str | None]:
    """Record file name -> its new text (None: remove), for the files whose digest
    differs from `have` (name -> digest of the files in the record folder; None:
    nothing known, write everything). An empty record removes every file."""
    want: dict[str, str] = {b: t for b, t in record.buckets.items() if t}
    if want:
        want["index"] = index_text(record.index())
    have = have or {}
    out: dict[str, str | None] = {n: t for n, t in want.items() if have.get(n) != digest_text(t)}
    out.update({n: None for n in have if n not in want})
    return dict(sorted(out.items()))


# --- the canary -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Canary:
    """What the cheap fact read: each table's SVCOPS-STATE rules (a table without the
    chain is absent), the svcops jumps of the built-in chains (per table, as
    `LiveTable.jumps`), the record's index (None: missing or not valid), and, when
    the read was given the render's digests, the bucket files whose index line differs
    from them, as `partial_plan` takes them (None: not asked)."""

    states: Mapping[str, tuple[str, ...]]
    jumps: Mapping[str, tuple[str, ...]]
    index: RecordIndex | None
    buckets: Mapping[str, tuple[str, str]] | None = None

    def fingerprints(self) -> dict[str, str | None]:
        """table -> the fingerprint its canary carries (None: no valid canary)."""
        out: dict[str, str | None] = {}
        for name in TABLES:
            rules = self.states.get(name)
            m = _FP.search(rules[0]) if rules and len(rules) == 1 else None
            out[name] = m.group(1) if m and rules[0] == state_rule(m.group(1)) else None
        return out

    def anything(self) -> bool:
        """Whether svcops left anything here that the canary can see."""
        return bool(self.states or any(self.jumps.values()) or self.index is not None)


def parse_canary(text: str, index: RecordIndex | None, buckets: Mapping[str, tuple[str, str]] | None = None) -> Canary:
    """The canary from ``*TABLE`` sections of ``iptables -S`` output (SVCOPS-STATE,
    then the built-in chains); `index` and `buckets` parsed by the caller."""
    # `iptables -S` prints "-N CHAIN" for a chain it lists: as iptables-save's ":CHAIN".
    lines = [(":" + ln[3:].split(" ", 1)[0] + " - [0:0]") if ln.startswith("-N ") else ln for ln in text.splitlines()]
    live = parse_iptables_save("\n".join(lines))
    states = {n: live.table(n).chains[STATE] for n in TABLES if STATE in live.table(n).chains}
    return Canary(states, {n: live.table(n).jumps for n in TABLES}, index, buckets)


def canary_agrees(canary: Canary, rules: IptablesRules) -> bool:
    """Whether the node holds the record: both tables' canary carry the index's
    fingerprint, and svcops's jumps are exactly the rendered ones."""
    if canary.index is None:
        return False
    fps, want = canary.fingerprints(), canary_values(canary.index)
    if any(fps[n] != want[n] for n in TABLES):
        return False
    for name in TABLES:
        want = Counter(j.line for j in rules.jumps if j.table == name)
        if Counter(canary.jumps.get(name, ())) != want:
            return False
    return True


# --- the partial plan -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartialPlan:
    """The fast path's restore, on the changed buckets only: `rules` (their chains as
    rendered, and the canary with the new fingerprint) against `live` (their chains
    as the old bucket files hold them, the old canary and the live jumps); `files`: the
    record files to write (None: remove); `previous`: what those files hold now, as
    read and checked (None: no such file), for the undo to write back; a file whose
    text did not come back exactly is not in it (the step keeps a copy instead)."""

    rules: IptablesRules
    live: LiveTables
    files: dict[str, str | None]
    fingerprint: str
    previous: dict[str, str | None] = field(default_factory=dict)


def _units(bucket: str, text: str) -> dict[tuple[str, str, str], str]:
    """(table, bucket, unit) -> that unit's lines in a bucket's text (see the module's
    docstring; a unit with a Local traffic policy has a part in a hex bucket and one
    in an n* bucket)."""
    out: dict[tuple[str, str, str], str] = {}
    for block in text.split("\nCOMMIT\n"):
        head, _, body = block.partition("\n")
        if not head.startswith("*"):
            continue
        for part in body.split("# unit ")[1:]:
            unit, _, lines = part.partition("\n")
            out[(head[1:], bucket, unit)] = lines if lines.endswith("\n") or not lines else lines + "\n"
    return out


def _changed_units(old: Mapping[str, str], new: Mapping[str, str]) -> tuple[str, str]:
    """The units of the buckets `old` and `new` (bucket -> text) whose lines differ,
    as two ``iptables-restore`` texts (old, new)."""
    a = {k: v for b, t in old.items() for k, v in _units(b, t).items()}
    z = {k: v for b, t in new.items() for k, v in _units(b, t).items()}
    keys = sorted(k for k in a.keys() | z.keys() if a.get(k) != z.get(k))

    def text(units: Mapping[tuple[str, str, str], str]) -> str:
        return "".join(f"*{t}\n" + "".join(units.get(k, "") for k in keys if k[0] == t) + "COMMIT\n" for t in TABLES)

    return text(a), text(z)


def partial_plan(
    rules: IptablesRules, record: IptablesRecord, canary: Canary, old: Mapping[str, tuple[str, str]]
) -> PartialPlan | None:
    """The fast path's plan for `rules` (whose record is `record`), on a node whose
    canary agrees (`canary_agrees`). `old`: the changed buckets as read from the node,
    bucket -> (the digest the node computed of its file, "" when there is none; its
    text) (`svcops.facts.iptables.SvcopsIptablesBuckets`). None when a bucket file is
    not the one the index names (edited, truncated, removed, or one the index does
    not name): read the whole live state instead."""
    assert canary.index is not None
    want = record.index()
    changed = changed_buckets(canary.index, want)
    if not all(verify_bucket(canary.index, b, old.get(b, ("", ""))[0]) for b in changed):
        return None
    # Only the units whose text differs are parsed and named (a bucket holds ~40 at
    # 10,000 services): the others are live as the record holds them.
    was_text, now_text = _changed_units(
        {b: old[b][1] for b in changed if old[b][0]}, {b: record.buckets[b] for b in changed if record.buckets.get(b)}
    )
    now, was = parse_iptables_save(now_text), parse_iptables_save(was_text)

    def table(n: str) -> TableRules:
        chains = now.table(n).chains
        return TableRules([f":{c} - [0:0]\n" for c in chains], [r + "\n" for rs in chains.values() for r in rs])

    # The rendered jumps equal the live ones (the canary agrees): none is inserted. A
    # table whose canary value stays (filter, unless s0 changed) is not named at all.
    new, old_values = canary_values(want), canary_values(canary.index)
    tables = tuple(n for n in TABLES if new[n] != old_values[n])
    partial = with_state(IptablesRules(rules.node, table("filter"), table("nat"), rules.jumps), want, tables)
    live = LiveTables(
        {
            n: LiveTable(
                {**was.table(n).chains, **({STATE: canary.states[n]} if n in tables and n in canary.states else {})},
                canary.jumps.get(n, ()),
            )
            for n in TABLES
        }
    )
    files: dict[str, str | None] = {b: (record.buckets.get(b) or None) for b in changed}
    files["index"] = index_text(want)
    # The index as svcops wrote it (the canary vouches for its content); a bucket's
    # text when it is the file to the byte (its digest is the node's).
    previous: dict[str, str | None] = {"index": index_text(canary.index)}
    for b in changed:
        digest, text = old[b]
        if not digest or digest_text(text) == digest:
            previous[b] = text if digest else None
    return PartialPlan(partial, live, files, want.fingerprint, previous)


def without_empty_tables(payload: str) -> str:
    """`payload` without its empty table sections ("*filter\\nCOMMIT\\n"):
    iptables-nft-restore reads the cache of every table it is given, and a one-service
    change has nothing to do in filter."""
    return payload.replace("*filter\nCOMMIT\n", "").replace("*nat\nCOMMIT\n", "")
