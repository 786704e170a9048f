"""IPVS mode's record and canary: the fast path of an apply (`fast_plan`).

The record (`svcops.render.record`) of a node in IPVS mode is its boot data cut into
hashed buckets (``/etc/svcops/ipvs.d``). A *unit* is one line-group of that data,
hashed by its key into a bucket, whatever its kind:

    -A -t 10.96.0.10:80 -s rr                       a virtual server (key "-t 10.96.0.10:80")
    -a -t 10.96.0.10:80 -r 10.244.2.7:8080 -m -w 1  ...with its real servers, as ipvsadm-save -n
    add SVCOPS-CLUSTER-IP 10.96.0.10,tcp:80         an ipset entry (key: the line)
    address 10.96.0.10                              an address of the dummy interface

Entries and addresses are bucketed like the virtual servers rather than kept whole:
at 10,000 services there are about as many of each (a cluster IP is one address, one
IPVS-IPS entry, one CLUSTER-IP entry), so a whole-file set would be the 10,000-line
read this path exists to avoid. The bucket ``sk`` holds the skeleton: the ``ipset
restore`` lines that create every set and swap the refilled ones in (the boot script
puts the buckets' entries between them), which depend on the nodePort range only.

The canary is two things svcops owns in the kernel, each read in milliseconds:

* the ipset ``SVCOPS-STATE`` (hash:ip with comments), one entry ``127.0.0.1`` whose
  comment is ``svcops-state FINGERPRINT``: it names the record. An ipset (not a fwmark
  whose mark would encode the fingerprint) because a comment holds the whole
  fingerprint, and the sets are what a ``ipset destroy``/``flush`` of svcops's hits;
* a fwmark virtual server ``-A -f CANARY_MARK -s rr`` without real servers: it is what
  ``ipvsadm -C`` (or a reboot) removes. Its mark is fixed (so that the fact need not
  read the index first to find it) and is matched by IPVS only for packets whose mark
  is exactly that value: nothing marks packets 0x5c0b5 (kube-proxy's bits are 0x4000
  and 0x8000, other tools use masks far from it);

and, read beside them, the dummy interface's address count and every svcops set's
entry count (``ipset list -t``), compared with the counts the index carries in its
extra field (`counts_of`): a flushed dummy interface or a flushed set is seen though
the canary set is intact. The apply flushes the canary set first and sets it last, so
a change that fails half-way leaves no canary: the next apply reads everything. What
the canary cannot see is a hand edit of one virtual server, entry or address that
keeps the counts: ``svcops check`` and ``svcops apply --verify`` read everything.

Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from svcops.render.ipvs import DUMMY_INTERFACE, SETS, IpvsRules, _create_line, parse_ipvsadm_save
from svcops.render.ipvs_sync import CANARY_MARK, IpvsPlan, describe_ipvsadm_edit, ipvsadm_edit
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
    "STATE_SET",
    "CANARY_MARK",
    "CANARY_PREFIX",
    "ENTRIES_MARK",
    "IpvsUnits",
    "units_of",
    "skeleton_text",
    "counts_of",
    "parse_counts",
    "content_digests",
    "bucket_texts",
    "record_of",
    "record_files",
    "fingerprint_of",
    "parse_bucket",
    "canary_set_commands",
    "canary_clear_command",
    "parse_canary",
    "IpvsFastPlan",
    "fast_buckets",
    "fast_plan",
    "BOOT_LOADER",
]

MODE = "ipvs"
SKELETON_BUCKET = "sk"
STATE_SET = "SVCOPS-STATE"
CANARY_PREFIX = "svcops-state "
ENTRIES_MARK = "# svcops-entries"  # in the skeleton: where the buckets' set entries go
_ADDRESS = "address "


@dataclass(frozen=True, slots=True)
class IpvsUnits:
    """A node's IPVS data as units: virtual server -> its text (-A line and -a lines),
    ipset entries as their "add SET ENTRY" lines, dummy addresses."""

    servers: Mapping[str, str]
    entries: frozenset[str]
    addresses: frozenset[str]

    def keyed(self) -> Iterable[tuple[str, str, str]]:
        """(key, digest, text) of every unit."""
        for vs, text in self.servers.items():
            yield vs, digest_text(text), text
        for line in self.entries:
            yield line, "-", line + "\n"
        for a in self.addresses:
            yield _ADDRESS + a, "-", _ADDRESS + a + "\n"


def _server_text(vs: str, opts: str, reals: Mapping[str, str]) -> str:
    return f"-A {vs} {opts}\n" + "".join(f"-a {vs} -r {r} {o}\n" for r, o in reals.items())


# The last few renders' units and digests, by identity: an apply asks for them several
# times per node (which buckets, then the plan), and at 10,000 services each costs a
# parse of the whole ipvsadm and ipset text.
_MEMO: dict[int, tuple[IpvsRules, IpvsUnits, dict[str, str]]] = {}


def _memo(rules: IpvsRules) -> tuple[IpvsUnits, dict[str, str]]:
    got = _MEMO.get(id(rules))
    if got is not None and got[0] is rules:
        return got[1], got[2]
    servers = {vs: _server_text(vs, opts, reals) for vs, (opts, reals) in parse_ipvsadm_save(rules.ipvsadm).items()}
    entries = frozenset(f"add {name} {e}" for name, es in rules.set_entries().items() for e in es)
    units = IpvsUnits(servers, entries, frozenset(rules.addresses))
    digests = bucket_digests((k, dg) for k, dg, _ in units.keyed())
    digests[SKELETON_BUCKET] = digest_text(skeleton_text(rules))
    if len(_MEMO) >= 8:
        _MEMO.clear()
    _MEMO[id(rules)] = (rules, units, digests)
    return units, digests


def units_of(rules: IpvsRules) -> IpvsUnits:
    return _memo(rules)[0]


def skeleton_text(rules: IpvsRules) -> str:
    """The ``sk`` bucket: ``ipset restore`` input that creates every set (and the canary
    set) and a temporary one each, then, after `ENTRIES_MARK` (where the boot script
    puts the entries, renamed to the temporary sets), swaps them in."""
    npr = rules._node_port_range
    head = [f"create {STATE_SET} hash:ip comment -exist\n"]
    tail = []
    for s in SETS:
        head.append(_create_line(s, s.name, npr) + " -exist\n")
        head.append(_create_line(s, s.name + "-T", npr) + " -exist\n")
        head.append(f"flush {s.name}-T\n")
        tail.append(f"swap {s.name}-T {s.name}\ndestroy {s.name}-T\n")
    return "".join(head) + ENTRIES_MARK + "\n" + "".join(tail)


def counts_of(units: IpvsUnits) -> str:
    """The index's extra field: the dummy interface's address count and every set's
    entry count, as one token ("a=3,SVCOPS-LOOP-BACK=0,...")."""
    per: dict[str, int] = {s.name: 0 for s in SETS}
    for line in units.entries:
        name = line.split(" ", 2)[1]
        per[name] = per.get(name, 0) + 1
    return ",".join([f"a={len(units.addresses)}", *(f"{n}={c}" for n, c in sorted(per.items()))])


def parse_counts(extra: str) -> dict[str, int] | None:
    out: dict[str, int] = {}
    for part in extra.split(","):
        k, _, v = part.partition("=")
        if not k or not v.isdigit():
            return None
        out[k] = int(v)
    return out


def _buckets(units: IpvsUnits, wanted: set[str] | None = None) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for key, _, text in units.keyed():
        b = bucket_of(key)
        if wanted is None or b in wanted:
            out.setdefault(b, []).append((key, text))
    return out


def content_digests(rules: IpvsRules, units: IpvsUnits | None = None) -> dict[str, str]:
    """bucket -> content digest for a node holding `rules` (the skeleton under "sk")."""
    if units is None or units is units_of(rules):
        return dict(_memo(rules)[1])
    d = bucket_digests((k, dg) for k, dg, _ in units.keyed())
    d[SKELETON_BUCKET] = digest_text(skeleton_text(rules))
    return d


def bucket_texts(rules: IpvsRules, names: Iterable[str], units: IpvsUnits | None = None) -> dict[str, str]:
    """The file text of the buckets `names` ("" for one with no unit)."""
    wanted = set(names)
    units = units or units_of(rules)
    out = {b: "".join(t for _, t in sorted(v)) for b, v in _buckets(units, wanted).items()}
    for b in wanted - set(out):
        out[b] = ""
    if SKELETON_BUCKET in wanted:
        out[SKELETON_BUCKET] = skeleton_text(rules)
    return out


def _index(rules: IpvsRules, units: IpvsUnits, digests: Mapping[str, str], files: Mapping[str, str]) -> RecordIndex:
    return make_index(MODE, counts_of(units), digests, files)


def record_files(rules: IpvsRules) -> dict[str, str | None]:
    """Every file of the record of `rules` (bucket or "index" -> text; None: a bucket
    file that must not be there): what the full path writes."""
    units = units_of(rules)
    digests = content_digests(rules, units)
    texts = bucket_texts(rules, digests, units)
    index = _index(rules, units, digests, {b: digest_text(t) for b, t in texts.items()})
    files: dict[str, str | None] = {f"{i:02x}": None for i in range(BUCKETS)}
    files.update(texts)
    files["index"] = index_text(index)
    return files


def record_of(rules: IpvsRules) -> RecordIndex:
    """The index of the record of `rules`."""
    units = units_of(rules)
    digests = content_digests(rules, units)
    texts = bucket_texts(rules, digests, units)
    return _index(rules, units, digests, {b: digest_text(t) for b, t in texts.items()})


def fingerprint_of(rules: IpvsRules) -> str:
    """The fingerprint a node's canary carries once `rules` are applied (no text built)."""
    units = units_of(rules)
    return fingerprint(MODE, counts_of(units), content_digests(rules, units))


def parse_bucket(text: str) -> IpvsUnits | None:
    """The units of a bucket file (None: a line that is not one svcops writes)."""
    lines: dict[str, list[str]] = {}
    entries: set[str] = set()
    addresses: set[str] = set()
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith(("-A ", "-a ")):
            parts = line.split()
            if len(parts) < 3:
                return None
            lines.setdefault(f"{parts[1]} {parts[2]}", []).append(line)
        elif line.startswith("add SVCOPS-"):
            entries.add(line)
        elif line.startswith(_ADDRESS):
            addresses.add(line[len(_ADDRESS) :].strip())
        else:
            return None
    servers = {}
    for vs, group in lines.items():
        parsed = parse_ipvsadm_save("\n".join(group))
        if vs not in parsed or not group[0].startswith("-A "):
            return None
        servers[vs] = _server_text(vs, *parsed[vs])
    return IpvsUnits(servers, frozenset(entries), frozenset(addresses))


def canary_set_commands(fp: str) -> str:
    """Shell (one command a line, for a ``set -e`` script) that sets the canary to `fp`:
    last, after every change."""
    return (
        f"ipset create {STATE_SET} hash:ip comment -exist\n"
        f"ipset flush {STATE_SET}\n"
        f'ipset add {STATE_SET} 127.0.0.1 comment "{CANARY_PREFIX}{fp}"\n'
        f"ipvsadm -L -n -f {CANARY_MARK} >/dev/null 2>&1 || ipvsadm -A -f {CANARY_MARK} -s rr\n"
    )


def canary_clear_command() -> str:
    """Shell that takes the canary's fingerprint away (first, before any change)."""
    return f"ipset flush {STATE_SET} 2>/dev/null || true\n"


def parse_canary(lines: Iterable[str]) -> str | None:
    """The fingerprint in ``ipset list SVCOPS-STATE``'s output (None: no set or entry,
    or more than one)."""
    return canary_fingerprint(lines, CANARY_PREFIX)


@dataclass(frozen=True, slots=True)
class IpvsFastPlan:
    """A fast-path apply: `plan`'s steps take the node from the old record to the new
    one for the changed buckets only; the undo parts give it back exactly."""

    plan: IpvsPlan
    undo_ipset: str  # ipset restore input
    undo_addresses: str  # ip -batch input
    buckets: tuple[str, ...]
    files: dict[str, str | None]  # bucket -> new text (None: removed), the index under "index"
    fingerprint: str  # the new record's
    old_servers: str  # the changed buckets' virtual servers before and after (conntrack cleanup)
    new_servers: str

    def summary(self) -> list[str]:
        lines = self.plan.summary()
        return [*lines, f"ipvs: from the record: {len(self.buckets)} of its buckets read"] if lines else []


def fast_buckets(have: RecordIndex, rules: IpvsRules) -> list[str] | None:
    """The buckets a fast path reads and rewrites for `rules`, or None when the record
    cannot be trusted for this render (another skeleton: the full path re-sends it)."""
    want = content_digests(rules)
    if have.digests.get(SKELETON_BUCKET) != want[SKELETON_BUCKET]:
        return None
    names = set(have.digests) | set(want)
    return sorted(b for b in names if have.digests.get(b) != want.get(b))


def fast_plan(
    rules: IpvsRules, have: RecordIndex, old: Mapping[str, tuple[str, str]], prepare: str = "", iptables=("", "", ())
) -> IpvsFastPlan | None:
    """What to send a node whose record index is `have` (trusted: its canary agrees)
    and whose changed buckets are `old` (bucket -> (the digest the node computed of its
    file, "" when there is none; its text)), for `rules`. `prepare`: the modules,
    sysctls and interface step (`svcops.render.ipvs_sync.prepare_step`); `iptables`:
    (payload, undo, detail lines) of svcops's few iptables chains. None: a bucket is not the one the
    index names or does not parse, or the skeleton differs: read everything instead."""
    names = fast_buckets(have, rules)
    if names is None:
        return None
    if not names:
        plan = IpvsPlan(prepare, "", "", iptables[0], "", "", iptables[1], "", tuple(iptables[2]))
        return IpvsFastPlan(plan, "", "", (), {}, have.fingerprint, "", "")
    units = units_of(rules)
    wanted = set(names)
    old_servers: dict[str, str] = {}
    old_entries: set[str] = set()
    old_addresses: set[str] = set()
    for b in names:
        digest, text = old.get(b, ("", ""))
        if not verify_bucket(have, b, digest):
            return None
        if b == SKELETON_BUCKET:
            continue
        parsed = parse_bucket(text) if digest else IpvsUnits({}, frozenset(), frozenset())
        if parsed is None:
            return None
        old_servers.update(parsed.servers)
        old_entries |= parsed.entries
        old_addresses |= parsed.addresses
    new_servers = {vs: t for vs, t in units.servers.items() if bucket_of(vs) in wanted}
    new_entries = {e for e in units.entries if bucket_of(e) in wanted}
    new_addresses = {a for a in units.addresses if bucket_of(_ADDRESS + a) in wanted}
    was, now = "".join(old_servers.values()), "".join(new_servers.values())
    mine = lambda a, p: True  # noqa: E731 (every server of a record bucket is svcops's)
    forward, back = ipvsadm_edit(now, was, mine), ipvsadm_edit(was, now, mine)
    D = DUMMY_INTERFACE

    def entries(add: set[str], gone: set[str]) -> str:
        return "".join(f"del {e[4:]} -exist\n" for e in sorted(gone)) + "".join(f"{e} -exist\n" for e in sorted(add))

    ipset, undo_ipset = entries(new_entries - old_entries, old_entries - new_entries), entries(old_entries - new_entries, new_entries - old_entries)
    added, gone = sorted(new_addresses - old_addresses), sorted(old_addresses - new_addresses)
    addresses = "".join(f"address replace {a}/32 dev {D}\n" for a in added)
    finish = "".join(f"address del {a}/32 dev {D}\n" for a in gone)
    undo_addresses = "".join(f"address replace {a}/32 dev {D}\n" for a in gone) + "".join(f"address del {a}/32 dev {D}\n" for a in added)
    texts = bucket_texts(rules, names, units)
    digests = content_digests(rules, units)
    file_digests = {b: d for b, d in have.files.items() if b not in wanted}
    file_digests.update({b: digest_text(t) for b, t in texts.items()})
    index = _index(rules, units, digests, {b: file_digests[b] for b in digests})
    details = [f"ipvs: + address {a} on {D}" for a in added] + [f"ipvs: - address {a} on {D}" for a in gone]
    details += [f"ipvs: ipset {e.split()[1]} + {e.split()[2]}" for e in sorted(new_entries - old_entries)]
    details += [f"ipvs: ipset {e.split()[1]} - {e.split()[2]}" for e in sorted(old_entries - new_entries)]
    details += describe_ipvsadm_edit(forward, was)
    plan = IpvsPlan(prepare, addresses, ipset, iptables[0], forward, finish, iptables[1], back, (*details[:20], *iptables[2]))
    files: dict[str, str | None] = {b: (texts.get(b) or None) for b in names}
    files["index"] = index_text(index)
    return IpvsFastPlan(plan, undo_ipset, undo_addresses, tuple(names), files, index.fingerprint, was, now)


# The shell function that loads a record folder into the kernel at boot: the dummy
# interface's addresses (one `ip -batch`), every set refilled from the skeleton and
# the buckets' entries (one `ipset restore`), the virtual servers when IPVS holds none
# yet, the canary last. A file that is not the one the index names (edited,
# truncated, lost) is loaded as it is and the canary is left out: the next apply reads
# everything and puts it right. So is a node whose IPVS already held servers (they
# are kept: what they are, only a full read can say), unless its canary already named
# this record (the script run again on a node in sync).
BOOT_LOADER = (
    r"""svcops_ipvs_boot() {
    [ -f "$1/index" ] && [ -f "$1/sk" ] || { echo "svcops: no IPVS record in $1" >&2; return 1; }
    _fp=$(head -n 1 "$1/index" | cut -d' ' -f4)
    _all=$(mktemp /run/svcops-ipvs-boot.XXXXXX) || return 1
    _good=1
    _bad=$(tail -n +2 "$1/index" | while read -r _n _c _f; do
        if [ "$(sha256sum < "$1/$_n" 2>/dev/null | cut -c1-32)" != "$_f" ]; then echo "$_n"; fi
        [ "$_n" = sk ] || cat "$1/$_n" >> "$_all" 2>/dev/null || true
    done)
    if [ -n "$_bad" ]; then
        echo "svcops: $1: $(echo $_bad) not the files the record's index names: the next apply reads everything" >&2
        _good=
    fi
    sed -n 's|^address \(.*\)$|address replace \1/32 dev """
    + DUMMY_INTERFACE
    + r"""|p' "$_all" | ip -batch -
    { sed '/^"""
    + ENTRIES_MARK
    + r"""$/,$d' "$1/sk"; sed -n 's/^add \([^ ]*\) \(.*\)$/add \1-T \2 -exist/p' "$_all"; sed '1,/^"""
    + ENTRIES_MARK
    + r"""$/d' "$1/sk"; } | ipset restore
    if [ -z "$(ipvsadm-save -n)" ]; then
        grep '^-[Aa] ' "$_all" | ipvsadm -R
    elif ! { ipset list STATE_SET 2>/dev/null | grep -q "svcops-state $_fp\"" && ipvsadm -L -n -f CANARY_MARK >/dev/null 2>&1; }; then
        _good=  # servers this record may not describe: kept, and the canary left out
    fi
    rm -f "$_all"
    if [ -n "$_good" ]; then
"""
    + "".join(
        "        " + line + "\n"
        for line in canary_set_commands("FP").replace('"svcops-state FP"', '"svcops-state $_fp"').splitlines()
    )
    + r"""    else
        """
    + canary_clear_command().strip()
    + r"""
    fi
}
"""
).replace("STATE_SET", STATE_SET).replace("CANARY_MARK", str(CANARY_MARK))
