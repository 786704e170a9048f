"""Pushing IPVS mode: the pure parts (what to run on a node, from its live state).

IPVS mode is applied in kube-proxy's order (`svcops.render.ipvs`):

    1. modules (ip_vs, the schedulers in use, nf_conntrack, dummy), then the sysctls
       (net.ipv4.vs.conntrack=1 above all; the node's own values of the node-wide ARP
       ones kept first, to be put back when IPVS mode is left), then the dummy interface
       svcops-ipvs0 (left down) and the virtual addresses it is missing, all in one
       ``ip -batch`` (one process for 10,000 addresses instead of 10,000)
    2. ``ipset restore``: every set refilled atomically (swap)
    3. ``iptables-restore --noflush``: svcops's few chains and jumps, against the live ones
    4. ``ipvsadm -R`` of the *edit* from ``ipvsadm-save -n`` to the rendered servers
       (`ipvsadm_update`; Debian's ipvsadm-restore would clear everything first)
    5. the virtual addresses no longer rendered are removed from the dummy interface
       (``ip -batch`` again)

`ipvs_plan` decides each step from the node's facts (`svcops.facts.ipvs.IpvsState`,
``SvcopsIptables``); a step already in sync is left out, so a node in sync gets no
command. Everything svcops owns is compared with the render, so a hand edit is put
right by the next apply (and named by ``apply --dry``: `IpvsPlan.details`): every
virtual server it renders with its scheduler, persistence and flags as
``ipvsadm-save -n`` prints them, each of its real servers with its forwarding method
and weight (a foreign one is deleted), any other virtual server on an address of the
dummy interface or of the node (deleted), each ipset's members (and the node-port
bitmaps' range), the dummy interface's addresses, svcops's iptables chains and jumps,
the sysctls and the modules. Leaving IPVS mode (`ipvs_removal`): after the new mode's iptables rules
replaced svcops's chains, svcops's sets are destroyed, its virtual servers deleted and
the dummy interface with them, and the ARP sysctls get their earlier values back.

A bitmap set made for another nodePortRange cannot be "created -exist" again; the
payload's temporary set is made with the new range and swapped in (``ipset swap``
checks the type, not the range), so for sets already there only the temporary one is
created.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from svcops.render.iptables import LiveTables, restore_payload
from svcops.render.iptables_sync import diff_tables, in_sync, rollback_payload
from svcops.render.ipvs import (
    DUMMY_INTERFACE,
    NODE_WIDE_SYSCTLS,
    SETS,
    SYSCTLS,
    SYSCTLS_BEFORE,
    IpvsRules,
    ipvsadm_update,
    parse_ipvsadm_save,
)

__all__ = [
    "applied_state",
    "IpvsLive",
    "IpvsPlan",
    "ipvs_plan",
    "prepare_step",
    "iptables_step",
    "iptables_details",
    "ipvs_removal",
    "IpvsRemoval",
    "removal_undo",
    "ipvsadm_edit",
    "describe_ipvsadm_edit",
    "ipset_payload",
    "parse_ipset_save",
]


@dataclass(frozen=True, slots=True)
class IpvsLive:
    """svcops's IPVS state on a node (what `svcops.facts.ipvs.SvcopsIpvs` reads).

    link:       the dummy interface exists
    addresses:  its addresses, without the prefix length
    sets:       svcops's ipsets: name -> the options of its "create" line (as `ipset save`)
    members:    name -> its entries
    ipvsadm:    ``ipvsadm-save -n``
    sysctls:    key -> value, for `SYSCTLS`
    modules:    the modules loaded (or built in)
    before:     key -> value kept in `SYSCTLS_BEFORE`: the node's own values of
                `NODE_WIDE_SYSCTLS` from before svcops changed them (empty: none kept)
    """

    link: bool = False
    addresses: tuple[str, ...] = ()
    sets: Mapping[str, str] = None  # type: ignore[assignment]
    members: Mapping[str, frozenset[str]] = None  # type: ignore[assignment]
    ipvsadm: str = ""
    sysctls: Mapping[str, str] = None  # type: ignore[assignment]
    modules: frozenset[str] = frozenset()
    before: Mapping[str, str] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        for name in ("sets", "members", "sysctls", "before"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, {})


def parse_ipset_save(text: str) -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    """``ipset save`` lines of SVCOPS- sets -> (name -> create options, name -> entries)."""
    sets: dict[str, str] = {}
    members: dict[str, set[str]] = {}
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) < 3 or not parts[1].startswith("SVCOPS-"):
            continue
        if parts[0] == "create":
            sets[parts[1]] = parts[2].strip()
            members.setdefault(parts[1], set())
        elif parts[0] == "add":
            members.setdefault(parts[1], set()).add(parts[2].split(" ", 1)[0])
    return sets, {k: frozenset(v) for k, v in members.items()}


def _range(options: str) -> str | None:
    parts = options.split()
    return parts[parts.index("range") + 1] if "range" in parts else None


def ipset_payload(rules: IpvsRules, live: IpvsLive) -> str:
    """The rendered ``ipset restore`` input, fitted to the node: the "create -exist" of
    a set that exists is left out (a bitmap of another range would make it fail; the
    swap brings the new range in), and a temporary set left behind is destroyed first."""
    out: list[str] = [f"destroy {name}\n" for name in live.sets if name.endswith("-T")]
    for line in rules.ipset.splitlines(keepends=True):
        if line.startswith("create "):
            name = line.split(" ", 2)[1]
            if name in live.sets and not name.endswith("-T"):
                continue
        out.append(line)
    return "".join(out)


def _sets_in_sync(rules: IpvsRules, live: IpvsLive) -> bool:
    want = rules.set_entries()
    for s in SETS:
        if s.name not in live.sets or s.name + "-T" in live.sets:
            return False
        if s.type == "bitmap:port":
            lo, hi = rules._node_port_range
            if _range(live.sets[s.name]) != f"{lo}-{hi}":
                return False
        if live.members.get(s.name, frozenset()) != frozenset(want.get(s.name, ())):
            return False
    return True


def ipvsadm_edit(want: str, have: str, owned: Callable[[str, int], bool]) -> str:
    """``ipvsadm -R`` input from `have` to `want` (both ``ipvsadm-save -n`` text),
    touching only virtual servers `owned` says are svcops's. Used for rollbacks."""
    w, h = parse_ipvsadm_save(want), parse_ipvsadm_save(have)
    out: list[str] = []
    for vs in h:
        if vs not in w:
            addr, _, port = vs.split(" ", 1)[1].rpartition(":")
            if owned(addr, int(port)):
                out.append(f"-D {vs}\n")
    for vs, (opts, reals) in w.items():
        cur = h.get(vs)
        if cur is None:
            out.append(f"-A {vs} {opts}\n")
            out.extend(f"-a {vs} -r {r} {o}\n" for r, o in reals.items())
            continue
        if cur[0] != opts:
            out.append(f"-E {vs} {opts}\n")
        out.extend(f"-d {vs} -r {r}\n" for r in cur[1] if r not in reals)
        for r, o in reals.items():
            if r not in cur[1]:
                out.append(f"-a {vs} -r {r} {o}\n")
            elif cur[1][r] != o:
                out.append(f"-e {vs} -r {r} {o}\n")
    return "".join(out)


@dataclass(frozen=True, slots=True)
class IpvsPlan:
    """The steps of one IPVS apply; "" for a step in sync."""

    prepare: str = ""  # shell: modules, sysctls, dummy interface
    addresses: str = ""  # ip -batch input: the virtual addresses the interface lacks
    ipset: str = ""  # ipset restore input
    iptables: str = ""  # iptables-restore --noflush input
    ipvsadm: str = ""  # ipvsadm -R input
    finish: str = ""  # ip -batch input: the addresses no longer rendered, removed
    undo_iptables: str = ""  # iptables-restore --noflush input that gives back the old chains
    undo_ipvsadm: str = ""  # ipvsadm -R input that gives back the old virtual servers
    details: tuple[str, ...] = ()  # what differs, one line each (`summary` shows them)

    @property
    def empty(self) -> bool:
        return not (self.prepare or self.addresses or self.ipset or self.iptables or self.ipvsadm or self.finish)

    def summary(self) -> list[str]:
        """One line a step, then what differs (`details`): for ``svcops apply --dry``."""
        out = []
        if self.prepare:
            out.append("ipvs: modules, sysctls or dummy interface")
        if self.addresses:
            n = self.addresses.count("\n")
            out.append(f"ipvs: {n} virtual address{'es' if n != 1 else ''} added")
        if self.ipset:
            out.append("ipvs: ipsets refilled")
        if self.iptables:
            out.append("ipvs: iptables chains")
        if self.ipvsadm:
            n = self.ipvsadm.count("\n")
            out.append(f"ipvs: {n} virtual/real server change{'s' if n != 1 else ''}")
        if self.finish:
            out.append("ipvs: stale virtual addresses removed")
        return out + list(self.details)


# At most this many detail lines per step (a node cleared by hand would list every server).
DETAIL_LINES = 20


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= DETAIL_LINES:
        return lines
    return [*lines[: DETAIL_LINES - 1], f"ipvs: ... and {len(lines) - DETAIL_LINES + 1} more"]


_EDIT_SIGN = {"-A": "+", "-E": "~", "-D": "-", "-a": "+", "-e": "~", "-d": "-"}


def describe_ipvsadm_edit(edit: str, have: str) -> list[str]:
    """An ``ipvsadm -R`` edit from `have` (``ipvsadm-save -n``), one line a change:
    "+ virtual server -t 10.96.0.10:80 -s rr", "~ real server 10.244.1.5:80 of -t
    10.96.0.10:80: -m -w 5 -> -m -w 1", "- real server ..."."""
    live = parse_ipvsadm_save(have)
    out: list[str] = []
    for line in edit.splitlines():
        p = line.split()
        sign = _EDIT_SIGN.get(p[0]) if len(p) >= 3 else None
        if sign is None:
            continue
        vs = f"{p[1]} {p[2]}"
        cur_opts, cur_reals = live.get(vs, ("", {}))
        if p[0] in ("-A", "-E", "-D"):
            what, now, then = f"virtual server {vs}", cur_opts, " ".join(p[3:])
        elif len(p) >= 5 and p[3] == "-r":
            what, now, then = f"real server {p[4]} of {vs}", cur_reals.get(p[4], ""), " ".join(p[5:])
        else:
            continue
        out.append(f"ipvs: ~ {what}: {now} -> {then}" if sign == "~" else f"ipvs: {sign} {what} {then if sign == '+' else now}".rstrip())
    return _capped(out)


def _sets_drift(rules: IpvsRules, live: IpvsLive) -> list[str]:
    """How svcops's ipsets differ from the node's, one line a set."""
    want = rules.set_entries()
    out: list[str] = []
    lo, hi = rules._node_port_range
    for s in SETS:
        if s.name not in live.sets:
            out.append(f"ipvs: ipset {s.name} missing")
            continue
        if s.type == "bitmap:port" and _range(live.sets[s.name]) != f"{lo}-{hi}":
            out.append(f"ipvs: ipset {s.name} range {_range(live.sets[s.name])} (svcops: {lo}-{hi})")
        have, need = live.members.get(s.name, frozenset()), frozenset(want.get(s.name, ()))
        if have != need:
            out.append(f"ipvs: ipset {s.name} entries +{len(need - have)} -{len(have - need)}")
    return out


def ipvs_plan(rules: IpvsRules, live: IpvsLive, iptables: LiveTables, modules: Iterable[str]) -> IpvsPlan:
    """What to run on a node (facts `live` and `iptables`) to give it `rules`."""
    d = shlex.quote(DUMMY_INTERFACE)
    have = set(live.addresses)
    addresses = "".join(f"address add {a}/32 dev {d}\n" for a in rules.addresses if a not in have)
    ipset = "" if _sets_in_sync(rules, live) else ipset_payload(rules, live)
    iptables_payload, undo_ipt = iptables_step(rules, iptables)
    ipvsadm = ipvsadm_update(rules, live.ipvsadm, live.addresses)
    undo_ipvsadm = ""
    if ipvsadm:
        mine = set(rules.addresses) | set(rules.node_addresses) | set(live.addresses)
        undo_ipvsadm = ipvsadm_edit(live.ipvsadm, rules.ipvsadm, lambda a, p: a in mine)
    wanted = set(rules.addresses)
    finish = "".join(f"address del {a}/32 dev {d}\n" for a in live.addresses if a not in wanted)
    details: list[str] = _capped([f"ipvs: + address {a} on {DUMMY_INTERFACE}" for a in rules.addresses if a not in have])
    details += _capped([f"ipvs: - address {a} on {DUMMY_INTERFACE}" for a in live.addresses if a not in wanted])
    if ipset:
        details += _sets_drift(rules, live)
    details += iptables_details(rules, iptables) if iptables_payload else []
    if ipvsadm:
        details += describe_ipvsadm_edit(ipvsadm, live.ipvsadm)
    return IpvsPlan(
        prepare_step(live, modules), addresses, ipset, iptables_payload, ipvsadm, finish, undo_ipt, undo_ipvsadm, tuple(details)
    )


def iptables_step(rules: IpvsRules, iptables: LiveTables) -> tuple[str, str]:
    """(``iptables-restore --noflush`` input, its undo) for svcops's few IPVS-mode
    chains against the live tables; ("", "") in sync."""
    ipt = rules.iptables_rules
    if in_sync(ipt, iptables):
        return "", ""
    return restore_payload(ipt, iptables), rollback_payload(iptables, ipt)


def iptables_details(rules: IpvsRules, iptables: LiveTables) -> list[str]:
    out: list[str] = []
    for name, t in diff_tables(rules.iptables_rules, iptables).tables.items():
        out += [f"ipvs: iptables {name}: {sign} {c}" for sign, cs in (("+", t.added), ("-", t.removed), ("~", t.changed)) for c in cs]
        out += [f"ipvs: iptables {name}: {sign} jump {j}" for sign, js in (("+", t.jumps_added), ("-", t.jumps_removed)) for j in js]
    return out


def prepare_step(live: IpvsLive, modules: Iterable[str]) -> str:
    """Shell: the modules missing, the sysctls not at IPVS mode's values (the node's
    own ARP ones kept first), the dummy interface when it is missing; "" in sync.
    Needs only `live`'s link, sysctls, modules and before."""
    d = shlex.quote(DUMMY_INTERFACE)
    prep: list[str] = []
    missing_modules = [m for m in modules if m not in live.modules]
    if missing_modules:
        prep.append(f"for m in {' '.join(missing_modules)}; do modprobe \"$m\" || [ -d \"/sys/module/$m\" ] || exit 1; done")
    wrong = {k: v for k, v in SYSCTLS.items() if live.sysctls.get(k) != v}
    if not live.before and any(k in wrong for k in NODE_WIDE_SYSCTLS):
        prep.append(_keep_before(live.sysctls))
    if wrong or missing_modules:
        prep.append("sysctl -q -w " + " ".join(f"{k}={v}" for k, v in (wrong or SYSCTLS).items()))
    if not live.link:
        prep.append(f"ip link add {d} type dummy")
    return " && ".join(prep)


def _keep_before(sysctls: Mapping[str, str]) -> str:
    """Shell that keeps the node's current values of `NODE_WIDE_SYSCTLS` in
    `SYSCTLS_BEFORE` (``sysctl -p`` format), written once, atomically."""
    body = "".join(f"{k} = {sysctls[k]}\n" for k in NODE_WIDE_SYSCTLS if k in sysctls)
    f = shlex.quote(SYSCTLS_BEFORE)
    return f"mkdir -p {shlex.quote(SYSCTLS_BEFORE.rsplit('/', 1)[0])} && printf %s {shlex.quote(body)} > {f}.tmp && mv {f}.tmp {f}"


@dataclass(frozen=True, slots=True)
class IpvsRemoval:
    """What removes svcops's IPVS footprint from a node (after svcops's iptables rules
    that use the sets are gone). Each part is empty when there is nothing of it."""

    ipset: str = ""  # ipset restore input: destroy svcops's sets
    ipvsadm: str = ""  # ipvsadm -R input: delete svcops's virtual servers
    link: bool = False  # delete the dummy interface
    sysctls: str = ""  # shell: the ARP sysctls back to the node's own values

    @property
    def empty(self) -> bool:
        return not (self.ipset or self.ipvsadm or self.link or self.sysctls)


# The fwmark of the record's canary virtual server (`svcops.render.ipvs_record`).
CANARY_MARK = 0x5C0B5


def _owned(live: IpvsLive, node_addresses: Iterable[str]) -> Callable[[str, int], bool]:
    """svcops's virtual servers when IPVS mode is left: those on the dummy interface's
    addresses and the node's own (node ports), and the canary (``-f CANARY_MARK``)."""
    mine = set(live.addresses) | set(node_addresses)
    return lambda a, p: a in mine or (a == "" and p == CANARY_MARK)


def ipvs_removal(live: IpvsLive, node_addresses: Iterable[str]) -> IpvsRemoval:
    """Removing svcops's IPVS footprint: its sets (temporary ones first), its virtual
    servers (those on the dummy interface's addresses and on the node's own, i.e. node
    ports: an `ipvsadm_update` to an empty render), the dummy interface, and the node's
    own values of the ARP sysctls, kept when IPVS mode came (`SYSCTLS_BEFORE`)."""
    destroy = "".join(f"destroy {n}\n" for n in sorted(live.sets, key=lambda n: (not n.endswith("-T"), n)))
    delete = ipvsadm_edit("", live.ipvsadm, _owned(live, node_addresses)) if live.ipvsadm else ""
    sysctls = ""
    if live.before:
        back = " ".join(f"{k}={v}" for k, v in sorted(live.before.items()))
        sysctls = f"sysctl -q -w {back} && rm -f {shlex.quote(SYSCTLS_BEFORE)}"
    return IpvsRemoval(destroy, delete, live.link, sysctls)


def applied_state(rules: IpvsRules, modules: Iterable[str] = ()) -> IpvsLive:
    """The IpvsLive a node holds once `rules` are applied (as `SvcopsIpvs` would read
    it): for tests, dry runs and the qemu proof of an update."""
    lo, hi = rules._node_port_range
    save = [
        f"create {s.name} {s.type} " + (f"range {lo}-{hi}" if s.type == "bitmap:port" else "family inet hashsize 1024 maxelem 262144")
        for s in SETS
    ]
    for name, entries in rules.set_entries().items():
        save.extend(f"add {name} {e}" for e in entries)
    sets, members = parse_ipset_save("\n".join(save))
    return IpvsLive(True, rules.addresses, sets, members, rules.ipvsadm, dict(SYSCTLS), frozenset(modules))


def removal_undo(live: IpvsLive, node_addresses: Iterable[str]) -> str:
    """A shell script that gives back what `ipvs_removal` takes off a node in state
    `live` (the undo of leaving IPVS mode, should the apply that leaves it be undone):
    the dummy interface and its addresses, svcops's sets with their members, its
    virtual servers, and IPVS mode's values of the ARP sysctls."""
    out: list[str] = []
    if live.link:
        out.append(f"ip link show {DUMMY_INTERFACE} >/dev/null 2>&1 || ip link add {DUMMY_INTERFACE} type dummy\n")
        if live.addresses:
            batch = "".join(f"address replace {a}/32 dev {DUMMY_INTERFACE}\n" for a in live.addresses)
            out.append(f"ip -batch - <<'SVCOPS_EOF'\n{batch}SVCOPS_EOF\n")
    if live.sets:
        lines = [f"create {n} {opts}\n" for n, opts in sorted(live.sets.items())]
        lines += [f"add {n} {e}\n" for n in sorted(live.members) for e in sorted(live.members[n])]
        out.append(f"ipset restore -exist <<'SVCOPS_EOF'\n{''.join(lines)}SVCOPS_EOF\n")
    back = ipvsadm_edit(live.ipvsadm, "", _owned(live, node_addresses)) if live.ipvsadm else ""
    if back:
        out.append(f"ipvsadm -R <<'SVCOPS_EOF'\n{back}SVCOPS_EOF\n")
    if live.before:
        ipvs_values = " ".join(f"{k}={v}" for k, v in sorted(live.sysctls.items()) if k in live.before)
        out.append(_keep_before(live.before) + "\n")
        if ipvs_values:
            out.append(f"sysctl -q -w {ipvs_values}\n")
    return "".join(out)
