"""Reading a node's live svcops table: `nft list table ip svcops`, parsed.

The nftables renderer (`svcops.render.nftables`) updates a live table by difference:
it needs to know which chains, affinity sets and map elements are there, which
version of each service port they hold, and what every chain really holds. The
listing answers all of it. The renderer writes a content digest into the comment of
every map element it adds:

    map service-ips {
        type ipv4_addr . inet_proto . inet_service : verdict
        elements = { 10.96.0.10 . tcp . 80 comment "default/web/tcp/http 7TQ2M3XKJ5AB4C6D" : goto service-...,
                     ...
    }

A service port (a "unit": its chains, sets and elements) always owns an element keyed
by its cluster IP (in `service-ips`, or in `no-endpoint-services` when it has no usable
endpoints), so every unit present on the node can be read back with its digest.
Chain and set names carry the unit too (kube-proxy style, "service-<hash>-ns/name/
proto/port", "endpoint-<hash>-ns/name/proto/port__ip/port"), which tells which unit a
leftover chain belonged to. (The `hairpin` map's elements are units of their own, one
per endpoint address: "hairpin/10.1.2.3".)

The digests say which version svcops *wrote*; what the table holds *now* is in its
content (`NftContent`): every chain's rules as nft prints them, the base chains'
hooks, the sets' and maps' declarations, the table's flags and any other object
inside it. `parse_nft_list(text, full=True)` reads those from the whole listing
(`LIST_COMMAND`); the cheap `LIVE_COMMANDS` (chains without rules, sets tersely, map
elements) give the digests only, ``content=None``: on a 10,000-service table they
take about 2 s where the whole listing takes about a minute, almost all of it in
the kernel (its rule dump restarts from the table's first chain for every 32 kB
batch, so its cost grows with the square of the table).

Pure: text in, values out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

__all__ = [
    "TABLE",
    "LIST_COMMAND",
    "LIVE_COMMANDS",
    "NftHook",
    "NftContent",
    "NftLive",
    "parse_nft_list",
    "parse_priority",
    "unit_of_name",
    "parse_timeout",
]

TABLE = "ip svcops"
# Map names, in the order the skeleton declares them.
MAP_NAMES = (
    "service-ips",
    "service-nodeports",
    "no-endpoint-services",
    "no-endpoint-external",
    "no-endpoint-nodeports",
    "firewall-ips",
    "hairpin",
)
# What to run on a node to read its whole live state: chains with their rules, sets,
# maps with their elements, and whatever else is in the table (fails when there is no
# table). Parse it with `parse_nft_list(text, full=True)`.
LIST_COMMAND: tuple[str, ...] = ("nft", "list", "table", "ip", "svcops")
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
# nft's standard priority names in family ip (nft prints "dstnat - 10" for -110 on
# prerouting, "-110" on input: a name is used only on the hooks it belongs to, and only
# within 10 of its value), `parse_priority` reads them back.
STD_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
_HOOK_LINE = re.compile(r"^type (\S+) hook (\S+)(?: device \S+)? priority ([^;]+);(?: policy (\S+);)?")


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
class NftHook:
    """A base chain's hook, as `nft list` prints it: ``type nat hook output priority -100;
    policy accept;``. priority is the number (None when nft printed something
    `parse_priority` cannot read)."""

    type: str
    hook: str
    priority: int | None
    policy: str = "accept"

    def __str__(self) -> str:
        return f"type {self.type} hook {self.hook} priority {self.priority}; policy {self.policy};"


@dataclass(frozen=True, slots=True)
class NftContent:
    """What only the whole listing tells about svcops's table (`LIST_COMMAND`).

    flags:   the table's flags as printed ("" without; "dormant" switches it all off)
    rules:   chain -> its rules, one line each, as nft prints them (every chain)
    hooks:   base chain -> its `NftHook`
    decls:   set or map -> its declaration: (key, value) pairs, sorted, from the lines
             before its elements ("type", "flags" (sorted), "timeout" (seconds),
             "comment", ...; not "size", which nft fills in by itself)
    objects: every other object in the table, (kind, name): ("counter", "x"),
             ("ct helper", "ftp"), ("flowtable", "f"), ...
    """

    flags: str = ""
    rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    hooks: Mapping[str, NftHook] = field(default_factory=dict)
    decls: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    objects: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class NftLive:
    """svcops's table on a node, as `nft list table ip svcops` shows it.

    exists:  whether the table is there at all (an empty listing means a clean node)
    chains:  chain name -> its comment (None without one); base chains carry the
             skeleton's digest there
    sets:    set name -> its timeout in seconds (None without one)
    maps:    map name -> element key ("10.96.0.10 . tcp . 80") -> (verdict, comment)
    content: what the chains, sets and maps really hold (`NftContent`), when the whole
             listing was read; None from the cheap `LIVE_COMMANDS` (digests only)
    """

    exists: bool = False
    chains: Mapping[str, str | None] = field(default_factory=dict)
    sets: Mapping[str, int | None] = field(default_factory=dict)
    maps: Mapping[str, Mapping[str, tuple[str, str | None]]] = field(default_factory=dict)
    content: NftContent | None = None

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


def parse_priority(text: str) -> int | None:
    """nft's printed chain priority ("-110", "dstnat", "dstnat - 10", "filter + 5") as
    a number, None if it is none of those."""
    parts = text.split()
    try:
        if len(parts) == 1:
            return STD_PRIORITIES[parts[0]] if parts[0] in STD_PRIORITIES else int(parts[0])
        if len(parts) == 3 and parts[0] in STD_PRIORITIES and parts[1] in "+-":
            off = int(parts[2])
            return STD_PRIORITIES[parts[0]] + (off if parts[1] == "+" else -off)
    except ValueError:
        return None
    return None


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
    if "{" not in line and "}" not in line:
        return 0
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


def _header(head: str) -> tuple[str, str]:
    """'chain x' -> ("chain", "x"); 'ct helper "my helper"' -> ("ct helper", "my helper")."""
    if head.endswith('"') and head.count('"') >= 2:
        j = head.rindex('"', 0, len(head) - 1)
        return head[:j].strip(), head[j + 1 : -1]
    kind, _, name = head.rpartition(" ")
    return kind, name


def _decl_item(line: str) -> tuple[str, str] | None:
    """One declaration line of a set or map as a (key, value) pair (None: "size")."""
    key, _, value = line.partition(" ")
    value = value.strip()
    if key == "size":
        return None
    if key == "flags":
        value = ",".join(sorted(f.strip() for f in value.split(",")))
    elif key in ("timeout", "gc-interval"):
        seconds = parse_timeout(value)
        value = str(seconds) if seconds is not None else value
    elif key == "comment":
        value = _unquote(value)
    return key, value


class _Reader:
    """The state of `parse_nft_list` while it reads one listing."""

    __slots__ = ("full", "exists", "chains", "sets", "maps", "flags", "rules", "hooks", "decls", "objects")

    def __init__(self, full: bool) -> None:
        self.full = full
        self.exists = False
        self.chains: dict[str, str | None] = {}
        self.sets: dict[str, int | None] = {}
        self.maps: dict[str, dict[str, tuple[str, str | None]]] = {}
        self.flags = ""
        self.rules: dict[str, list[str]] = {}
        self.hooks: dict[str, NftHook] = {}
        self.decls: dict[str, list[tuple[str, str]]] = {}
        self.objects: list[tuple[str, str]] = []

    def result(self) -> NftLive:
        content = None
        if self.full:
            content = NftContent(
                self.flags,
                {c: tuple(r) for c, r in self.rules.items()},
                self.hooks,
                {n: tuple(sorted(d)) for n, d in self.decls.items()},
                tuple(self.objects),
            )
        return NftLive(self.exists, self.chains, self.sets, self.maps, content)


def parse_nft_list(text: str | Iterable[str], full: bool = False) -> NftLive:
    """The chains, sets, map elements and digests of `nft list table ip svcops` output
    (a text, or its lines); with `full`, its content too (`NftLive.content`).

    Also reads the (concatenated) output of the cheaper `LIVE_COMMANDS`, which give
    the digests without the rules (then leave `full` off: they do not show what the
    chains hold). Objects of other tables are skipped. An empty text (no table) gives
    NftLive(exists=False) (with an empty `NftContent` when `full`).
    """
    r = _Reader(full)
    lines = text.splitlines() if isinstance(text, str) else text
    in_table = False
    kind = name = None  # the object being read
    first = 0  # lines read of the object so far
    collecting: list[str] | None = None
    depth = 0
    rules = decl = None
    for raw in lines:
        line = raw.strip()
        if collecting is not None:
            collecting.append(line)
            depth += _brace_delta(line)
            if depth <= 0:
                if kind == "map":
                    _add_elements(r.maps[name], " ".join(collecting))  # type: ignore[index]
                collecting = None
            continue
        if not line:
            continue
        if kind is None:
            if line.startswith("table "):
                # Listings of a family ("nft list chains ip") show other tables too.
                in_table = line.rstrip(" {") == f"table {TABLE}"
                r.exists = r.exists or in_table
                continue
            if not in_table:
                continue
            if line == "}":
                in_table = False
                continue
            if line.endswith("{"):
                kind, name = _header(line[:-1].rstrip())
                if not name:
                    continue
                first = 0
                if kind == "chain":
                    r.chains[name] = None
                    if r.full:
                        rules = r.rules[name] = []
                elif kind == "set":
                    r.sets[name] = None
                    if r.full:
                        decl = r.decls[name] = []
                elif kind == "map":
                    r.maps[name] = {}
                    if r.full:
                        decl = r.decls[name] = []
                elif r.full:
                    r.objects.append((kind, name))
                    depth = 1
            elif line.startswith("flags "):
                r.flags = ",".join(sorted(f.strip() for f in line[6:].split(",")))
            continue
        if kind not in ("chain", "set", "map"):
            # Another kind of object (counter, quota, flowtable...): only its name counts.
            depth += _brace_delta(line)
            if depth <= 0:
                kind = name = None
            continue
        if line == "}":
            kind = name = None
            continue
        first += 1
        if kind == "chain":
            if first <= 2 and line.startswith("comment ") and r.chains[name] is None:  # type: ignore[index]
                r.chains[name] = _unquote(line[8:])  # type: ignore[index]
                continue
            if first <= 2 and line.startswith("type ") and " hook " in line:
                m = _HOOK_LINE.match(line)
                if m is not None:
                    if r.full:
                        r.hooks[name] = NftHook(m[1], m[2], parse_priority(m[3].strip()), m[4] or "accept")  # type: ignore[index]
                    continue
            if r.full:
                rules.append(line)  # type: ignore[union-attr]
            continue
        if line.startswith("elements = {"):
            depth = _brace_delta(line)
            if depth <= 0:
                if kind == "map":
                    _add_elements(r.maps[name], line)  # type: ignore[index]
            else:
                collecting = [line]
            continue
        if kind == "set" and line.startswith("timeout "):
            r.sets[name] = parse_timeout(line[8:].strip())  # type: ignore[index]
        if r.full:
            item = _decl_item(line)
            if item is not None:
                decl.append(item)  # type: ignore[union-attr]
    return r.result()


def _add_elements(into: dict[str, tuple[str, str | None]], block: str) -> None:
    body = block[block.index("{") + 1 : block.rindex("}")]
    for item in _split_top(body, ","):
        parsed = _parse_element(item)
        if parsed is not None:
            key, value, comment = parsed
            into[key] = (value, comment)
