"""Comparing a node's live svcops rules with the rendered ones, and undoing an apply.

Pure functions over `LiveTables` (what ``iptables-save`` shows of svcops on a node,
see `svcops.render.iptables.parse_iptables_save`) and `IptablesRules` (what the node
should get):

    expected_tables(rules)        the svcops state a node holds once `rules` are applied
    in_sync(rules, live)          True when applying would change nothing: no restore runs
    simulate(live, payload)       the svcops state after `iptables-restore --noflush payload`
    rollback_payload(live, rules) the payload that, run after the apply, gives back `live`
    diff_tables(rules, live)      what an apply would change: chains added/removed/changed

The decision "restore or not" is taken from the node's live state every time, never
from a local cache: a node whose rules someone flushed by hand is repaired by the next
apply, and a node that is in sync gets no command at all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from svcops.render.iptables import (
    BUILTIN_CHAINS,
    IptablesRules,
    LiveTable,
    LiveTables,
    parse_iptables_save,
    restore_payload,
)

__all__ = [
    "TABLES",
    "expected_tables",
    "in_sync",
    "live_text",
    "simulate",
    "rollback_payload",
    "TableDiff",
    "TablesDiff",
    "diff_tables",
]

TABLES = ("filter", "nat")
_BUILTIN_ORDER = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def expected_tables(rules: IptablesRules) -> LiveTables:
    """The svcops footprint a clean node holds after applying `rules`.

    A node with svcops's rules already in place ends up with the same footprint (chains,
    their rules, one of each jump), which is what `in_sync` compares against.
    """
    return parse_iptables_save(restore_payload(rules))


def _jump_chain(line: str) -> str:
    # "-A INPUT ..." -> "INPUT"
    return line[3:].split(" ", 1)[0]


def _table_in_sync(want: LiveTable, live: LiveTable) -> bool:
    if Counter(want.jumps) != Counter(live.jumps):
        return False
    if want.chains == live.chains:
        return True
    # A stale chain that a foreign chain still jumps to cannot be deleted (that would
    # mean touching someone else's chain): once it is empty, it is as good as gone.
    extra = live.chains.keys() - want.chains.keys()
    if any(live.chains[c] or c not in live.foreign_refs for c in extra):
        return False
    return all(live.chains.get(c) == r for c, r in want.chains.items())


def in_sync(rules: IptablesRules, live: LiveTables, expected: LiveTables | None = None) -> bool:
    """Whether `live` already holds exactly `rules`: same svcops chains with the same rules
    in the same order, and each svcops jump present once in its built-in chain.

    Pass `expected` (from `expected_tables(rules)`) when it is already at hand.
    """
    want = expected or expected_tables(rules)
    return all(_table_in_sync(want.table(t), live.table(t)) for t in TABLES)


def live_text(live: LiveTables) -> str:
    """`live` written back as iptables-save text (svcops chains, their rules, the jumps)."""
    out: list[str] = []
    for name in TABLES:
        t = live.table(name)
        out.append(f"*{name}\n")
        out.extend(f":{c} - [0:0]\n" for c in t.chains)
        for rules in t.chains.values():
            out.extend(r + "\n" for r in rules)
        out.extend(j + "\n" for j in t.jumps)
        out.append("COMMIT\n")
    return "".join(out)


def simulate(live: LiveTables, payload: str) -> LiveTables:
    """The svcops footprint after running `iptables-restore --noflush` with `payload`
    on a node whose footprint is `live` (declarations flush, -I/-D/-X as iptables does)."""
    after = parse_iptables_save(live_text(live) + payload)
    return LiveTables(
        {
            name: LiveTable(
                after.table(name).chains,
                after.table(name).jumps,
                live.table(name).foreign_refs | after.table(name).foreign_refs,
            )
            for name in TABLES
        }
    )


def rollback_payload(
    live: LiveTables, rules: IptablesRules, jumps: bool = True, after: LiveTables | None = None
) -> str:
    """The `iptables-restore --noflush` payload that undoes applying `rules` to `live`.

    Computed on the controller before the apply, uploaded with it, and run as the
    rules step's undo by the node's guard (`svcops.render.txn`) when the apply is not
    committed. Applying `restore_payload(rules, live)` and then this payload gives
    back exactly `live`'s svcops chains, their rules and the order of svcops's jumps
    (a jump re-inserted goes to the top of its built-in chain); foreign rules are never
    named.

    jumps=False: for an apply cut short before its last transaction
    (`restore_transactions`), which is the one that changes the jumps: the chains are
    given back, the jumps are left as they are (still the old ones).

    after: the state once the apply is done, when already at hand (default: simulated
    from ``restore_payload(rules, live)``).
    """
    if after is None:
        after = simulate(live, restore_payload(rules, live))
    out: list[str] = []
    for name in TABLES:
        old, new = live.table(name), after.table(name)
        out.append(f"*{name}\n")
        # Only the chains the apply changed are written back (the others it left alone).
        changed = [c for c, r in old.chains.items() if new.chains.get(c) != r]
        out.extend(f":{c} - [0:0]\n" for c in changed)
        added = [c for c in new.chains if c not in old.chains]
        out.extend(f":{c} - [0:0]\n" for c in added)
        for chain in _BUILTIN_ORDER if jumps else ():
            before = [j for j in old.jumps if _jump_chain(j) == chain]
            now = [j for j in new.jumps if _jump_chain(j) == chain]
            if before == now:
                continue
            out.extend("-D" + j[2:] + "\n" for j in now)
            for j in reversed(before):
                out.append(f"-I {chain} 1 {j[len(chain) + 4:]}\n")
        for c in changed:
            out.extend(r + "\n" for r in old.chains[c])
        out.extend(f"-X {c}\n" for c in added if c not in old.foreign_refs)
        out.append("COMMIT\n")
    return "".join(out)


# --- what an apply would change (svcops apply --dry) ------------------------------------


@dataclass(frozen=True, slots=True)
class TableDiff:
    added: tuple[str, ...] = ()  # chains the apply creates
    removed: tuple[str, ...] = ()  # svcops chains it deletes
    changed: tuple[str, ...] = ()  # chains whose rules differ
    rules_before: int = 0  # rules in svcops chains now
    rules_after: int = 0
    jumps_added: tuple[str, ...] = ()
    jumps_removed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.jumps_added or self.jumps_removed)


@dataclass(frozen=True, slots=True)
class TablesDiff:
    tables: dict[str, TableDiff] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return all(d.empty for d in self.tables.values())

    def summary(self) -> str:
        """One line: "+3 ~1 -2 chains, rules 40 -> 52, +11 jumps" or "in sync"."""
        if self.empty:
            return "in sync"
        a = sum(len(d.added) for d in self.tables.values())
        r = sum(len(d.removed) for d in self.tables.values())
        c = sum(len(d.changed) for d in self.tables.values())
        before = sum(d.rules_before for d in self.tables.values())
        after = sum(d.rules_after for d in self.tables.values())
        ja = sum(len(d.jumps_added) for d in self.tables.values())
        jr = sum(len(d.jumps_removed) for d in self.tables.values())
        parts = [f"chains +{a} -{r} ~{c}", f"rules {before} -> {after}"]
        if ja or jr:
            parts.append(f"jumps +{ja} -{jr}")
        return ", ".join(parts)


def diff_tables(rules: IptablesRules, live: LiveTables, expected: LiveTables | None = None) -> TablesDiff:
    """What applying `rules` would change in `live`, per table."""
    want = expected or expected_tables(rules)
    out = {}
    for name in TABLES:
        w, l = want.table(name), live.table(name)
        added = tuple(c for c in w.chains if c not in l.chains)
        removed = tuple(c for c in l.chains if c not in w.chains and (l.chains[c] or c not in l.foreign_refs))
        changed = tuple(c for c in w.chains if c in l.chains and l.chains[c] != w.chains[c])
        have, need = Counter(l.jumps), Counter(w.jumps)
        out[name] = TableDiff(
            added,
            removed,
            changed,
            sum(len(r) for r in l.chains.values()),
            sum(len(r) for r in w.chains.values()),
            tuple(sorted((need - have).elements())),
            tuple(sorted((have - need).elements())),
        )
    return TablesDiff(out)


assert set(_BUILTIN_ORDER) == BUILTIN_CHAINS
