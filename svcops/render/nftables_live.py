"""Reading a node's live svcops table: `nft list table ip svcops`, parsed.

The nftables renderer (`svcops.render.nftables`) updates a live table by difference:
it needs to know which chains, affinity sets and map elements are there, and which
version of each service port they hold. The listing answers all of it, because the
renderer writes a content digest into the comment of every map element it adds:

    map service-ips {
        type ipv4_addr . inet_proto . inet_service : verdict
        elements = { 10.96.0.10 . tcp . 80 comment "default/web/tcp/http 7TQ2M3XKJ5AB4C6D" : goto service-...,
                     ...
    }

A service port (a "unit": its chains, sets and elements) always owns an element keyed
by its cluster IP (in `service-ips`, or in `no-endpoint-services` when it has no usable
endpoints), so every unit present on the node can be read back with its digest.
Chain and set names carry the unit too (kube-proxy style, "endpoint-<hash>-ns/name/
proto/port__ip/port"), which tells which unit a leftover chain belonged to.

Pure: text in, values out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["TABLE", "LIVE_COMMANDS", "NftLive", "parse_nft_list", "unit_of_name", "parse_timeout"]

TABLE = "ip svcops"
# Map names, in the order the skeleton declares them.
MAP_NAMES = (
    "service-ips",
    "service-nodeports",
    "no-endpoint-services",
    "no-endpoint-external",
    "no-endpoint-nodeports",
    "firewall-ips",
)
# What to run on a node to read its live state cheaply (one process each; nft 1.0.6
# cannot mix list commands in one -f file). Concatenate their outputs, ignoring the
# failures of `list map` when the table or a map does not exist, and parse the result
# with `parse_nft_list`. Chains come with their comments but without rules; sets
# tersely (-t: timeouts, not the addresses they hold); maps with their elements.
LIVE_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("nft", "list", "chains", "ip"),
    ("nft", "-t", "list", "sets", "ip"),
    *(("nft", "list", "map", "ip", "svcops", m) for m in MAP_NAMES),
)

# "<kind>-<8 base32 chars>-<ns>/<name>/<proto>/<port>[__<ip>/<port>]"
_UNIT_NAME = re.compile(r"^(?:service|local|external|firewall|endpoint|affinity)-[A-Z2-7]{8}-(.+)$")
_TIMEOUT_PART = re.compile(r"(\d+)(ms|d|h|m|s)")
_TIMEOUT_UNIT = {"d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0}


def unit_of_name(name: str) -> str | None:
    """The unit ("ns/name/proto/port") a per-service chain or set belongs to, else None."""
    m = _UNIT_NAME.match(name)
    if m is None:
        return None
    return m.group(1).split("__", 1)[0]


def parse_timeout(text: str) -> int | None:
    """nft's printed duration ("10m", "3h", "11m40s", "1d2h") in whole seconds."""
    parts = _TIMEOUT_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(int(n) * _TIMEOUT_UNIT[u] for n, u in parts)


@dataclass(frozen=True, slots=True)
class NftLive:
    """svcops's table on a node, as `nft list table ip svcops` shows it.

    exists: whether the table is there at all (an empty listing means a clean node)
    chains: chain name -> its comment (None without one); base chains carry the
            skeleton's digest there
    sets:   set name -> its timeout in seconds (None without one)
    maps:   map name -> element key ("10.96.0.10 . tcp . 80") -> (verdict, comment)
    """

    exists: bool = False
    chains: Mapping[str, str | None] = field(default_factory=dict)
    sets: Mapping[str, int | None] = field(default_factory=dict)
    maps: Mapping[str, Mapping[str, tuple[str, str | None]]] = field(default_factory=dict)

    def units(self) -> dict[str, str]:
        """unit id -> the digest its elements carry ("" when they carry none)."""
        out: dict[str, str] = {}
        for elements in self.maps.values():
            for _value, comment in elements.values():
                if comment:
                    uid, _, digest = comment.rpartition(" ")
                    if uid and "/" in uid:
                        # Elements of one unit all carry the same digest; a mismatch
                        # (a half-applied change) reads as "unknown": rewrite it.
                        if out.setdefault(uid, digest) != digest:
                            out[uid] = ""
        return out


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside double quotes and braces."""
    out, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def _brace_delta(line: str) -> int:
    d, quoted = 0, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            if ch == "{":
                d += 1
            elif ch == "}":
                d -= 1
    return d


def _parse_element(item: str) -> tuple[str, str, str | None] | None:
    """'10.96.0.10 . tcp . 80 comment "x" : goto c' -> (key, verdict, comment)."""
    item = " ".join(item.split())
    if not item:
        return None
    comment = None
    i = item.find(' comment "')
    if i >= 0:
        j = item.find('"', i + 10)
        if j < 0:
            return None
        key, comment, rest = item[:i], item[i + 10 : j], item[j + 1 :]
        value = rest.partition(" : ")[2] if " : " in rest else rest.lstrip(" :")
    else:
        key, _, value = item.partition(" : ")
    return key.strip(), value.strip(), comment


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1]
    return text


def parse_nft_list(text: str) -> NftLive:
    """The chains, sets, map elements and digests of `nft list table ip svcops` output.

    Also reads the (concatenated) output of the cheaper `LIVE_COMMANDS`, which give
    everything needed without the rules: on a 10,000-service table, `nft list table`
    takes tens of seconds, those together about one. Objects of other tables are
    skipped. An empty text (no table) gives NftLive(exists=False). Rules are not
    read: what a unit's chains hold is told by its digest.
    """
    exists = in_table = False
    chains: dict[str, str | None] = {}
    sets: dict[str, int | None] = {}
    maps: dict[str, dict[str, tuple[str, str | None]]] = {}
    kind = name = None  # the object being read
    first_line = False
    collecting: list[str] | None = None
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if collecting is not None:
            collecting.append(line)
            depth += _brace_delta(line)
            if depth <= 0:
                if kind == "map" and name is not None:
                    _add_elements(maps[name], " ".join(collecting))
                collecting = None
            continue
        if not line:
            continue
        if line.startswith("table "):
            # Listings of a family ("nft list chains ip") show other tables too.
            in_table = line.rstrip(" {") == f"table {TABLE}"
            exists = exists or in_table
            continue
        if not in_table:
            continue
        if kind is None:
            word, _, rest = line.partition(" ")
            if word in ("chain", "set", "map") and rest.endswith("{"):
                kind, name = word, _unquote(rest[:-1])
                first_line = True
                if kind == "chain":
                    chains[name] = None
                elif kind == "set":
                    sets[name] = None
                else:
                    maps[name] = {}
            continue
        if line == "}":
            kind = name = None
            continue
        if kind == "chain":
            if first_line and line.startswith("comment "):
                chains[name] = _unquote(line[8:])  # type: ignore[index]
            first_line = False
            continue
        first_line = False
        if line.startswith("elements = {"):
            depth = _brace_delta(line)
            if depth <= 0:
                if kind == "map":
                    _add_elements(maps[name], line)  # type: ignore[index]
            else:
                collecting = [line]
            continue
        if kind == "set" and line.startswith("timeout "):
            sets[name] = parse_timeout(line[8:].strip())  # type: ignore[index]
    return NftLive(exists, chains, sets, maps)


def _add_elements(into: dict[str, tuple[str, str | None]], block: str) -> None:
    body = block[block.index("{") + 1 : block.rindex("}")]
    for item in _split_top(body, ","):
        parsed = _parse_element(item)
        if parsed is not None:
            key, value, comment = parsed
            into[key] = (value, comment)
