"""nft's printed form of what svcops renders: what a live listing is compared with.

`nft list table ip svcops` does not print everything as it was written. The drift
check (`svcops.render.nftables_diff`) compares each chain's rules, each base chain's
hook and each set's and map's declaration with the listing, so the renderer's text is
first put in nft's printed form here. The differences, found by loading rendered
tables into a network namespace and listing them back (nft 1.0.6, Debian 12;
tests/render/test_nftables_normal.py does it again for every scenario, and
tests/golden/nftables-printed/ holds the printed form of each):

    written                               printed
    mark set mark or 0x4000               meta mark set meta mark | 0x00004000
    mark and 0x4000 == 0 return           meta mark & 0x00004000 == 0x00000000 return
    mark set mark xor 0x4000              meta mark set meta mark ^ 0x00004000
    ip saddr != { 203.0.113.0/24 } drop   ip saddr != 203.0.113.0/24 drop (one element)
    priority -110 on prerouting           priority dstnat - 10 (`parse_priority` reads both)
    timeout 600s                          timeout 10m (`parse_timeout`)
    a set with flags dynamic              size 65535 added (nft's own default: not compared)

Everything else svcops writes prints as written (map elements too: the listing's
elements parse to the rendered key, verdict and comment).

Pure.
"""

from __future__ import annotations

import re
from functools import lru_cache

from svcops.render.nftables import (
    BASE_CHAINS,
    BASE_RULES,
    MAPS,
    STATE_SET,
    SKELETON_COMMENT,
    TABLE,
    TOP_RULES,
    NftRules,
    NftUnit,
)
from svcops.render.nftables_live import NftHook

__all__ = [
    "printed_rule",
    "printed_chains",
    "unit_chains",
    "printed_set_decl",
    "SKELETON_CHAINS",
    "SKELETON_HOOKS",
    "MAP_DECLS",
    "printed_listing",
]

# The rules svcops writes that nft prints otherwise (all of them in the skeleton).
_PRINTED = {
    "mark set mark or 0x4000": "meta mark set meta mark | 0x00004000",
    "mark and 0x4000 == 0 return": "meta mark & 0x00004000 == 0x00000000 return",
    "mark set mark xor 0x4000": "meta mark set meta mark ^ 0x00004000",
}
# An anonymous set of one address or prefix prints as that element alone.
_ONE_ELEMENT = re.compile(r"\{ ([0-9.]+(?:/[0-9]+)?) \}")
_RULE_PREFIX = f"add rule {TABLE} "


def printed_rule(rule: str) -> str:
    """A rule as svcops writes it (after ``add rule ip svcops CHAIN``), as nft prints it."""
    rule = " ".join(rule.split())
    printed = _PRINTED.get(rule)
    if printed is not None:
        return printed
    if "{ " in rule:
        rule = _ONE_ELEMENT.sub(r"\1", rule)
    return rule


def printed_chains(text: str) -> dict[str, tuple[str, ...]]:
    """chain -> its rules, printed, from ``add rule ip svcops CHAIN RULE`` lines."""
    out: dict[str, list[str]] = {}
    n = len(_RULE_PREFIX)
    for line in text.splitlines():
        if line.startswith(_RULE_PREFIX):
            chain, _, rule = line[n:].partition(" ")
            out.setdefault(chain, []).append(printed_rule(rule))
    return {c: tuple(r) for c, r in out.items()}


@lru_cache(maxsize=1 << 16)
def _unit_chains(chains: tuple[str, ...], rules: str) -> dict[str, tuple[str, ...]]:
    by_chain = printed_chains(rules)
    return {c: by_chain.get(c, ()) for c in chains}


def unit_chains(unit: NftUnit) -> dict[str, tuple[str, ...]]:
    """Each chain of a unit -> the rules a listing shows in it (units are shared by
    nodes and asked for at every apply: computed once each)."""
    return _unit_chains(unit.chains, unit.rules)


def printed_set_decl(timeout: int) -> tuple[tuple[str, str], ...]:
    """An affinity set's declaration as `NftContent.decls` holds it."""
    return (("flags", "dynamic,timeout"), ("timeout", str(timeout)), ("type", "ipv4_addr"))


SKELETON_CHAINS: dict[str, tuple[str, ...]] = {
    c: tuple(printed_rule(r) for r in rules) for c, rules in (*TOP_RULES.items(), *BASE_RULES.items())
}
SKELETON_HOOKS: dict[str, NftHook] = {
    c: NftHook(kind, hook, int(prio), "accept") for c, (kind, hook, prio) in BASE_CHAINS.items()
}
STATE_DECL = (("comment", "what svcops applied last"), ("type", "ipv4_addr"))
MAP_DECLS: dict[str, tuple[tuple[str, str], ...]] = {
    m: (("comment", comment), ("type", kind)) for m, (kind, comment) in MAPS.items()
}


def _decl_lines(decl: tuple[tuple[str, str], ...]) -> str:
    """A declaration in nft's layout: its type first (timeouts in seconds)."""
    items = sorted(decl, key=lambda kv: kv[0] != "type")
    return "".join(f'\t\t{k} {v}s\n' if k == "timeout" else f'\t\tcomment "{v}"\n' if k == "comment" else f"\t\t{k} {v}\n" for k, v in items)


def printed_listing(rules: NftRules) -> str:
    """What the drift check expects `nft list table ip svcops` to show of `rules`, in
    nft's layout: the maps' and sets' declarations (not their elements), every chain
    with its hook and rules (for golden files and for reading)."""
    out = [f"table {TABLE} {{\n"]
    for m, decl in MAP_DECLS.items():
        out.append(f"\tmap {m} {{\n{_decl_lines(decl)}\t}}\n")
    out.append(f"\tset {STATE_SET} {{\n{_decl_lines(STATE_DECL)}\t}}\n")
    for u in rules.units:
        for name, timeout in u.sets:
            out.append(f"\tset {name} {{\n{_decl_lines(printed_set_decl(timeout))}\t}}\n")
    for c, body in SKELETON_CHAINS.items():
        hook = SKELETON_HOOKS.get(c)
        head = f'\t\tcomment "{SKELETON_COMMENT}"\n\t\t{hook}\n' if hook else ""
        out.append(f"\tchain {c} {{\n{head}" + "".join(f"\t\t{r}\n" for r in body) + "\t}\n")
    for u in rules.units:
        for c, body in unit_chains(u).items():
            out.append(f"\tchain {c} {{\n" + "".join(f"\t\t{r}\n" for r in body) + "\t}\n")
    out.append("}\n")
    return "".join(out)
