"""What to send a node's live svcops table to make it the render: `plan_update`.

Every object in ``table ip svcops`` is svcops's, so the live table is compared with
the render object by object:

* the skeleton (the maps' declarations, the top-level chains' rules, the base chains'
  hooks, policies and rules, the table's flags): re-sent whole when its version (the
  digest in the base chains' comments) or anything in it differs;
* each service port (a "unit": its chains and their rules, its affinity sets, its map
  elements): re-sent whole, its chains flushed and refilled, when the digest its
  elements carry differs (a new version) or, with the same digest, when what it holds
  differs (drift: a chain flushed, a rule inserted or deleted, an element deleted or
  pointed elsewhere, a set re-made by hand);
* anything else in the table (a chain, set, map, counter, flowtable... svcops did not
  write, an element in svcops's maps that no unit owns) is removed.

Rules are compared as nft prints them (`svcops.render.nftables_normal` puts the render
in that form); what drifted is named in `NftPlan.drift`, one line each, for
``svcops apply --dry``. A live table read without its content (`NftLive.content` None:
the cheap `LIVE_COMMANDS`) is compared by digests alone.

Drift that cannot be put right in place (a map of another type, a hook on a chain
that must have none) makes the plan one transaction that re-makes the whole table
(`full_payload`).

The transactions, in order (each valid on its own; a clean node gets `cold_payloads`):

1. the skeleton, if it differs;
2. per chunk of changed, new or drifted units: their chains declared and flushed (and
   the unit's leftover chains flushed), affinity sets that differ re-made, their
   rules, their map elements replaced;
3. per chunk of removed units: their elements deleted, chains flushed, sets deleted;
4. elements that differ outside any unit of 2 and 3 put right, foreign ones deleted;
5. last, on its own: leftover and foreign chains, sets, maps and other objects
   deleted. On kernels before 6.2 a chain whose map element was just deleted may
   still read as busy for a moment (kube-proxy waits a second for this); the chain
   is empty by then, so retrying this last transaction later is safe.

Pure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from svcops.render.nftables import (
    BASE_CHAINS,
    MAPS,
    SKELETON_COMMENT,
    STATE_SET,
    TABLE,
    TOP_RULES,
    NftRules,
    NftUnit,
    chunks,
    cold_payloads,
    element_commands,
    full_payload,
    set_command,
    skeleton_payload,
)
from svcops.render.nftables_live import NftContent, NftLive, unit_of_name
from svcops.render.nftables_normal import MAP_DECLS, SKELETON_CHAINS, SKELETON_HOOKS, printed_set_decl, unit_chains

__all__ = ["NftPlan", "plan_update", "update_payloads", "DRIFT_LINES"]

_SKELETON_PREFIX = SKELETON_COMMENT.rsplit(" ", 1)[0] + " "  # "svcops skeleton "
# At most this many drift lines are kept (a table flushed by hand would name every
# chain); the rest are counted in the last one.
DRIFT_LINES = 20


@dataclass(frozen=True, slots=True)
class NftPlan:
    """What an apply sends a node's svcops table, and why.

    transactions: the `nft -f` transactions, in order (empty: in sync)
    cold:         the node has no table: the skeleton and every unit go in
    reload:       drift that cannot be put right in place: the table is re-made whole
    skeleton:     the skeleton is re-sent (a new version, or drift in it)
    added, changed, removed: service ports new to the node, of another version, gone
    drifted:      the skeleton (counted as one) and the units whose content drifted,
                  and foreign objects removed
    drift:        what drifted, one line each ("chain X rules differ: 1 foreign rule")
    """

    transactions: tuple[str, ...] = ()
    cold: bool = False
    reload: bool = False
    skeleton: bool = False
    added: int = 0
    changed: int = 0
    removed: int = 0
    drifted: int = 0
    drift: tuple[str, ...] = ()


def update_payloads(rules: NftRules, live: NftLive | None, chunk: int = 1000) -> list[str]:
    """The `nft -f` transactions, in order, that turn `live` (None or no table: a clean
    node) into `rules`; [] when nothing differs. See `plan_update`."""
    return list(plan_update(rules, live, chunk).transactions)


def plan_update(rules: NftRules, live: NftLive | None, chunk: int = 1000) -> NftPlan:
    """The plan that turns `live` into `rules` (see the module's docstring)."""
    if live is None or not live.exists:
        return NftPlan(tuple(cold_payloads(rules, chunk)), cold=True, skeleton=True, added=len(rules.units))
    return _Diff(rules, live).plan(chunk)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def rules_drift(chain: str, have: tuple[str, ...], want: tuple[str, ...]) -> str | None:
    """The line that says how a chain's live rules differ from svcops's (None: they do not)."""
    if have == want:
        return None
    missing = sum((Counter(want) - Counter(have)).values())
    foreign = sum((Counter(have) - Counter(want)).values())
    parts = []
    if missing:
        parts.append(_plural(missing, "rule") + " missing" + (" (flushed)" if not have else ""))
    if foreign:
        parts.append(_plural(foreign, "foreign rule"))
    return f"chain {chain} rules differ: {', '.join(parts) or 'out of order'}"


class _Diff:
    """One comparison of a live table (with or without its content) with a render."""

    def __init__(self, rules: NftRules, live: NftLive) -> None:
        self.rules, self.live, self.content = rules, live, live.content
        self.drift: list[str] = []
        self.drifted = 0  # the skeleton, units and foreign objects that drifted
        self.reload = False
        # Live chains and sets, by the unit their name tells.
        self.chains_of: dict[str, list[str]] = {}
        self.sets_of: dict[str, list[str]] = {}
        for name in live.chains:
            uid = unit_of_name(name)
            if uid is not None:
                self.chains_of.setdefault(uid, []).append(name)
        for name in live.sets:
            uid = unit_of_name(name)
            if uid is not None:
                self.sets_of.setdefault(uid, []).append(name)

    # --- what drifted ---------------------------------------------------------------

    def skeleton_drift(self, c: NftContent) -> list[str]:
        live, out = self.live, []
        if c.flags:
            out.append(f"table {TABLE} has flags {c.flags}")
        for m, decl in MAP_DECLS.items():
            if m not in live.maps:
                out.append(f"map {m} missing")
            elif c.decls.get(m) != decl:
                out.append(f"map {m} declaration differs: {_decl_text(c.decls.get(m, ()))}")
                self.reload = True
        for chain, want in SKELETON_CHAINS.items():
            if chain not in live.chains:
                out.append(f"chain {chain} missing")
                continue
            hook, wanted_hook = c.hooks.get(chain), SKELETON_HOOKS.get(chain)
            if wanted_hook is not None and live.chains[chain] != SKELETON_COMMENT:
                out.append(f"chain {chain} comment differs: {live.chains[chain] or 'none'}")
            if hook != wanted_hook:
                out.append(f"chain {chain} hook differs: {hook or 'none'} (svcops: {wanted_hook or 'none'})")
                if wanted_hook is None:
                    self.reload = True  # a top-level chain made a base chain: others jump to it
            line = rules_drift(chain, c.rules.get(chain, ()), want)
            if line:
                out.append(line)
        return out

    def unit_drift(self, u: NftUnit, c: NftContent) -> list[str]:
        live, out = self.live, []
        chains = unit_chains(u)
        for chain, want in chains.items():
            if chain not in live.chains:
                out.append(f"chain {chain} missing")
                continue
            if chain in c.hooks:
                out.append(f"chain {chain} has a hook: {c.hooks[chain]}")
                self.reload = True  # map elements and other chains point at it
            line = rules_drift(chain, c.rules.get(chain, ()), want)
            if line:
                out.append(line)
        out.extend(f"foreign chain {n}" for n in self.chains_of.get(u.id, ()) if n not in chains)
        wanted_sets = dict(u.sets)
        for name, timeout in u.sets:
            if name not in live.sets:
                out.append(f"set {name} missing")
            elif c.decls.get(name) != printed_set_decl(timeout):
                out.append(f"set {name} declaration differs: {_decl_text(c.decls.get(name, ()))}")
        out.extend(f"foreign set {n}" for n in self.sets_of.get(u.id, ()) if n not in wanted_sets)
        for m, key, value in u.elements:
            have = live.maps.get(m, {}).get(key)
            if have is None:
                out.append(f"map {m} element {key} missing")
            elif have != (value, u.comment):
                out.append(f"map {m} element {key} differs: {_element_text(have)} (svcops: {value})")
        return out

    def element_ops(self, changed_ids: set[str], removed_ids: set[str]) -> tuple[dict, dict]:
        """The map elements to add and delete, key by key, each filed under the unit whose
        transaction carries it (the desired owner for adds, the live owner for deletes;
        "" for the transaction of elements outside any unit sent whole). Foreign
        elements are named as drift."""
        live = self.live
        wanted: dict[tuple[str, str], tuple[str, str, str]] = {}  # (map, key) -> (verdict, comment, uid)
        for u in self.rules.units:
            for m, key, value in u.elements:
                wanted[(m, key)] = (value, u.comment, u.id)
        adds: dict[str, dict[str, list[str]]] = {}  # uid -> map -> items
        deletes: dict[str, dict[str, list[str]]] = {}  # uid or "" -> map -> keys
        for (m, key), (value, comment, uid) in wanted.items():
            have = live.maps.get(m, {}).get(key)
            if have == (value, comment):
                continue
            if have is not None:
                deletes.setdefault(uid, {}).setdefault(m, []).append(key)
            adds.setdefault(uid, {}).setdefault(m, []).append(f'{key} comment "{comment}" : {value}')
        for m, elements in live.maps.items():
            if m not in MAPS:
                continue  # deleted whole, last
            for key, (_value, comment) in elements.items():
                if (m, key) in wanted:
                    continue
                owner = comment.rpartition(" ")[0] if comment else ""
                if owner not in changed_ids and owner not in removed_ids:
                    owner = ""
                    if self.content is not None:
                        self.drift.append(f"map {m} foreign element {key}")
                        self.drifted += 1
                deletes.setdefault(owner, {}).setdefault(m, []).append(key)
        return adds, deletes

    # --- the plan -------------------------------------------------------------------

    def plan(self, chunk: int) -> NftPlan:
        rules, live, c = self.rules, self.live, self.content
        drift = self.drift
        # The skeleton's version, from the base chains still there (a base chain deleted
        # by hand is drift, not another version).
        versions = {live.chains.get(n) or "" for n in BASE_CHAINS}
        current = {v for v in versions if v.startswith(_SKELETON_PREFIX)} <= {SKELETON_COMMENT}
        skeleton = not (
            current
            and all(n in live.chains for n in BASE_CHAINS)
            and all(n in live.chains for n in TOP_RULES)
            and all(m in live.maps for m in MAPS)
            and STATE_SET in live.sets
        )
        if c is not None:
            lines = self.skeleton_drift(c)
            if lines and current:
                # The skeleton's version is current: any difference in it is drift (with
                # another version it is re-sent anyway).
                drift.extend(lines)
                self.drifted += 1
                skeleton = True

        live_units = live.units()
        desired = {u.id: u for u in rules.units}
        changed: list[NftUnit] = []
        added = n_changed = 0
        for u in rules.units:
            digest = live_units.get(u.id)
            if digest == u.digest:
                if c is not None:
                    lines = self.unit_drift(u, c)
                    if lines:
                        drift.extend(lines)
                        self.drifted += 1
                        changed.append(u)
                continue
            if digest is None and c is not None and u.id in self.chains_of:
                # Its chains are here but no element says which version: its elements
                # were deleted by hand.
                drift.extend(self.unit_drift(u, c))
                self.drifted += 1
            elif digest is None:
                added += 1
            else:
                n_changed += 1
            changed.append(u)
        changed_ids = {u.id for u in changed}
        removed = sorted((set(live_units) | set(self.chains_of) | set(self.sets_of)) - set(desired))
        removed_ids = set(removed)

        if self.reload:
            return NftPlan(
                (full_payload(rules),), reload=True, skeleton=True, added=added, changed=n_changed,
                removed=len(removed), drifted=max(self.drifted, 1), drift=_capped(drift),
            )  # fmt: skip

        txs: list[str] = []
        if c is not None and c.flags:
            # A dormant table is woken on its own: the kernel refuses base chains made in
            # the transaction that wakes it.
            txs.append(f"add table {TABLE}\n")
        if skeleton:
            txs.append(skeleton_payload(clean=False))

        adds, deletes = self.element_ops(changed_ids, removed_ids)

        wanted_chains = {ch for u in rules.units for ch in u.chains}
        stale_chains = [ch for ch in live.chains if ch not in BASE_CHAINS and ch not in TOP_RULES and ch not in wanted_chains]
        wanted_sets = {n: t for u in rules.units for n, t in u.sets}
        deleted_sets: set[str] = set()

        for group in chunks(changed, chunk):
            out: list[str] = []
            for u in group:
                out.extend(f"add chain {TABLE} {ch}\n" for ch in u.chains if ch not in live.chains)
            for u in group:
                out.extend(f"flush chain {TABLE} {ch}\n" for ch in self.chains_of.get(u.id, ()))
            for u in group:
                for name in self.sets_of.get(u.id, ()):
                    if not self._set_ok(name, wanted_sets.get(name)):
                        out.append(f"delete set {TABLE} {name}\n")
                        deleted_sets.add(name)
                out.extend(set_command(n, t) for n, t in u.sets if n not in live.sets or n in deleted_sets)
            out.extend(u.rules for u in group)
            out.extend(element_commands("delete", _merge(deletes.pop(u.id, {}) for u in group)))
            out.extend(element_commands("add", _merge(adds.pop(u.id, {}) for u in group)))
            txs.append("".join(out))

        for group in chunks(removed, chunk):
            out = element_commands("delete", _merge(deletes.pop(uid, {}) for uid in group))
            out.extend(f"flush chain {TABLE} {ch}" + "\n" for uid in group for ch in self.chains_of.get(uid, ()))
            for uid in group:
                for name in self.sets_of.get(uid, ()):
                    out.append(f"delete set {TABLE} {name}\n")
                    deleted_sets.add(name)
            if out:
                txs.append("".join(out))

        rest_del = _merge(deletes.values())
        rest_add = _merge(adds.values())
        if any(rest_del.values()) or any(rest_add.values()):
            txs.append("".join(element_commands("delete", rest_del) + element_commands("add", rest_add)))

        stale_sets = [n for n in live.sets if n not in wanted_sets and n not in deleted_sets and n != STATE_SET]
        stale_maps = [m for m in live.maps if m not in MAPS]
        objects = c.objects if c is not None else ()
        if c is not None:
            # Leftovers of a unit that went or changed version are no drift; the rest is
            # foreign (unit_drift named those of a unit of the current version already).
            def foreign(name: str) -> bool:
                uid = unit_of_name(name)
                if uid is None:
                    return True
                return uid not in removed_ids and live_units.get(uid) == desired[uid].digest

            lines = [f"foreign chain {ch}" for ch in stale_chains if foreign(ch)]
            lines += [f"foreign set {n}" for n in stale_sets if foreign(n)]
            lines += [f"foreign map {m}" for m in stale_maps]
            lines += [f"foreign {kind} {name}" for kind, name in objects]
            self.drifted += sum(1 for ln in lines if ln not in drift)
            drift.extend(lines)
        if stale_chains or stale_sets or stale_maps or objects:
            out = [f"flush chain {TABLE} {ch}\n" for ch in stale_chains]
            out.extend(f"delete set {TABLE} {n}\n" for n in stale_sets)
            out.extend(f"delete map {TABLE} {m}\n" for m in stale_maps)
            out.extend(f"delete {kind} {TABLE} {_quoted(name)}\n" for kind, name in objects)
            out.extend(f"delete chain {TABLE} {ch}\n" for ch in stale_chains)
            txs.append("".join(out))
        return NftPlan(
            tuple(txs), skeleton=skeleton, added=added, changed=n_changed, removed=len(removed),
            drifted=self.drifted, drift=_capped(drift),
        )  # fmt: skip

    def _set_ok(self, name: str, timeout: int | None) -> bool:
        """Whether the live set `name` is the affinity set svcops wants (timeout None: none)."""
        if timeout is None or self.live.sets.get(name) != timeout:
            return False
        return self.content is None or self.content.decls.get(name) == printed_set_decl(timeout)


def _merge(parts: Iterable[dict[str, list[str]]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in parts:
        for m, items in part.items():
            out.setdefault(m, []).extend(items)
    return out


def _decl_text(decl: tuple[tuple[str, str], ...]) -> str:
    return "; ".join(f"{k} {v}" for k, v in decl) or "none"


def _element_text(have: tuple[str, str | None] | None) -> str:
    if have is None:
        return "missing"
    verdict, comment = have
    return f'{verdict} comment "{comment}"' if comment else verdict


def _quoted(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").replace("/", "").replace(".", "").isalnum() else f'"{name}"'


def _capped(lines: list[str]) -> tuple[str, ...]:
    unique = list(dict.fromkeys(lines))
    if len(unique) <= DRIFT_LINES:
        return tuple(unique)
    return (*unique[: DRIFT_LINES - 1], f"... and {len(unique) - DRIFT_LINES + 1} more")


def drift_lines(rules: NftRules, live: NftLive) -> tuple[str, ...]:
    """Every line of drift `plan_update` finds in `live` (read with its content), in its
    order and uncapped (`NftPlan.drift` keeps `DRIFT_LINES`): for `svcops check`, which
    names each service port that drifted. () for a node without the table (nothing
    drifted: everything is missing) or a listing without content."""
    if not live.exists or live.content is None:
        return ()
    d = _Diff(rules, live)
    d.plan(1000)
    return tuple(dict.fromkeys(d.drift))


__all__ += ["drift_lines"]
