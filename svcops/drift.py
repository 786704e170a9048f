"""What differs between a node and the render, said per service port: `svcops check`'s core.

`svcops.nodediff` says what an apply would *do* to a node, in chain names ("nat: ~
SVCOPS-SVC-..."). Here the same comparison is said as *drift*: one `DriftItem` per
thing that differs, each filed under the service port it belongs to (or under the
node, for what belongs to no service), and classed as

    missing   the render has it, the node does not
    extra     the node has it, the render does not
    differs   both have it, not the same

    default/web port 80/TCP: differs: nat chain SVCOPS-SVC-... (service chain) rules differ: 3 rules missing (flushed)
    default/web port 80/TCP: missing: not on the node: none of its iptables chains and rules (5)
    (node): extra: nat chain SVCOPS-SVC-4HLM... (service chain) (no service)
    (node): differs: sysctl net.ipv4.ip_forward is 0 (svcops: 1)

How an object is known to be a service port's (`ServiceIndex`, built once per site):

    iptables   chains are named by a hash of the service port (`svcops.render.chains`):
               SVC/SVL/EXT/FW of "ns/name:port" + protocol, SEP of that + "ip:port";
               a rule of a top-level chain by the chain it jumps to, else by the
               service port its comment starts with; a chain no hash matches by the
               comments of its rules
    nftables   a unit's id ("ns/name/proto/port") is in its chains' and sets' names
               and its map elements' comments; an element by its key in the render
    IPVS       a virtual server by its address and port (cluster, external and
               load-balancer IPs; node ports on any address of the node)

A service port of which nothing at all is on the node is one item ("missing"), not
one per chain. Everything else that node_diff knows (addresses, files, ip_forward,
DNS, another proxy mode's leftovers) comes as items of the node, or of the service
whose load-balancer address it is.

Pure and deterministic: the items of a node are sorted (services by name and port,
then the node's own).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Iterable, NamedTuple, Sequence

from svcops.compile.pipeline import no_iptables_rules
from svcops.nodediff import node_diff
from svcops.render import chains as C
from svcops.render.iptables import IptablesRules, LiveTables
from svcops.render.iptables_record import applied_rules
from svcops.render.iptables_sync import TABLES, expected_tables
from svcops.render.ipvs import DUMMY_INTERFACE, SYSCTLS, ipvs_modules, ipvsadm_update, parse_ipvsadm_save
from svcops.render.ipvs_sync import describe_ipvsadm_edit, ipvs_plan, ipvs_removal
from svcops.render.nftables import BASE_CHAINS, HAIRPIN_UNIT, SKELETON_COMMENT, TABLE, NftRules, unit_id
from svcops.render.nftables_diff import drift_lines, rules_drift
from svcops.render.nftables_live import unit_of_name
from svcops.site.model import ResolvedPort, is_ipv4

__all__ = ["WHATS", "DriftItem", "NodeCheck", "Owner", "ServiceIndex", "iptables_drift", "nftables_drift", "ipvs_drift", "node_check"]

WHATS = ("missing", "extra", "differs")


class Owner(NamedTuple):
    """A service port: its service ("ns/name") and its port ("80/TCP")."""

    service: str
    port: str


@dataclass(frozen=True, slots=True)
class DriftItem:
    """One thing that differs: whose (service "ns/name" and port "80/TCP", or None for
    the node's own), `what` (one of WHATS), and what exactly (`detail`)."""

    service: str | None
    port: str | None
    what: str
    detail: str

    @property
    def subject(self) -> str:
        if self.service is None:
            return "(node)"
        return f"{self.service} port {self.port}" if self.port else self.service

    def line(self) -> str:
        return f"{self.subject}: {self.what}: {self.detail}"

    def as_json(self) -> dict:
        return {"service": self.service, "port": self.port, "what": self.what, "detail": self.detail}

    def sort_key(self) -> tuple:
        number, _, proto = (self.port or "").partition("/")
        return (
            self.service is None,
            self.service or "",
            int(number) if number.isdigit() else -1,
            proto,
            WHATS.index(self.what),
            self.detail,
        )


@dataclass(frozen=True, slots=True)
class NodeCheck:
    """One node's verdict: status "in-sync", "drift" (with its items) or "error" (with
    why: the node could not be read, so nothing is known of its drift)."""

    node: str
    status: str
    items: tuple[DriftItem, ...] = ()
    error: str | None = None

    @staticmethod
    def of(node: str, items: Iterable[DriftItem]) -> "NodeCheck":
        found = tuple(sorted(set(items), key=DriftItem.sort_key))
        return NodeCheck(node, "drift" if found else "in-sync", found)

    @staticmethod
    def failed(node: str, why: str) -> "NodeCheck":
        return NodeCheck(node, "error", (), why)

    def summary(self) -> str:
        """"in sync", "drift: 2 services, 1 node item" or "error: why"."""
        if self.status == "error":
            return f"error: {self.error}"
        if self.status == "in-sync":
            return "in sync"
        services = {i.service for i in self.items if i.service is not None}
        own = sum(1 for i in self.items if i.service is None)
        parts = [_plural(len(services), "service")] if services else []
        parts += [_plural(own, "node item")] if own else []
        return "drift: " + ", ".join(parts)

    def lines(self) -> list[str]:
        """The summary, then one line an item; each starts with the node's name."""
        return [f"{self.node}: {self.summary()}", *(f"{self.node}: {i.line()}" for i in self.items)]

    def as_json(self) -> dict:
        return {"node": self.node, "status": self.status, "error": self.error, "items": [i.as_json() for i in self.items]}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# --- which service port an object is ------------------------------------------------

_KINDS = ((C.SVC, "service chain"), (C.SVL, "local service chain"), (C.EXT, "external chain"), (C.FW, "firewall chain"), (C.SEP, "endpoint chain"))
_PORT_CHAIN = tuple(prefix for prefix, _ in _KINDS)  # a service port's own chains start so
_IPVS_PROTO = {"-t": "TCP", "-u": "UDP", "--sctp-service": "SCTP"}
_COMMENT = re.compile(r'--comment "((?:[^"\\]|\\.)*)"')
_TARGET = re.compile(r" -[jg] (SVCOPS-\S+)")


def chain_kind(name: str) -> str:
    """What a svcops iptables chain is for, from its prefix ("top-level chain" for
    SVCOPS-SERVICES and the like, which hold rules of many service ports)."""
    return next((k for prefix, k in _KINDS if name.startswith(prefix)), "top-level chain")


class ServiceIndex:
    """Which service port each svcops object belongs to, for a site's resolved ports
    (`Compiled.ports`). Built once and shared by every node; each table is made the
    first time it is asked for (the iptables chains' hashes cost ~1 s per 100,000
    endpoints)."""

    def __init__(self, ports: Sequence[ResolvedPort]) -> None:
        self.ports = tuple(ports)

    @staticmethod
    def owner(rp: ResolvedPort) -> Owner:
        return Owner(rp.service.key, rp.port.key)

    @cached_property
    def by_name(self) -> dict[str, Owner]:
        """kube-proxy's service port name ("ns/name:port", "ns/name") -> its owner."""
        return {rp.name: self.owner(rp) for rp in self.ports}

    @cached_property
    def chains(self) -> dict[str, Owner]:
        """iptables chain -> the service port it belongs to (SVC, SVL, EXT, FW, SEP)."""
        out: dict[str, Owner] = {}
        for rp in self.ports:
            o = self.owner(rp)
            h = C.port_hash(rp.name, rp.port.protocol)
            for prefix in (C.SVC, C.SVL, C.EXT, C.FW):
                out[prefix + h] = o
            for e in rp.endpoints:
                if is_ipv4(e.ip):
                    out[C.endpoint_chain(rp.name, rp.port.protocol, f"{e.ip}:{e.port}")] = o
        return out

    @cached_property
    def units(self) -> dict[str, Owner]:
        """nftables unit id ("ns/name/proto/port") -> its owner."""
        return {unit_id(rp): self.owner(rp) for rp in self.ports}

    @cached_property
    def addresses(self) -> dict[str, tuple[str, ...]]:
        """Service address (cluster, external, load-balancer IP) -> the services on it."""
        out: dict[str, dict[str, None]] = {}
        for rp in self.ports:
            for ip in (rp.cluster_ip, *rp.service.external_ips, rp.load_balancer_ip):
                if ip and is_ipv4(ip):
                    out.setdefault(ip, {})[rp.service.key] = None
        return {ip: tuple(s) for ip, s in out.items()}

    @cached_property
    def virtual_servers(self) -> dict[tuple, Owner]:
        """(protocol, ip, port) of a service address, and (protocol, node port) -> owner."""
        out: dict[tuple, Owner] = {}
        for rp in self.ports:
            o, proto = self.owner(rp), rp.port.protocol
            for ip in (rp.cluster_ip, *rp.service.external_ips, rp.load_balancer_ip):
                if ip and is_ipv4(ip):
                    out.setdefault((proto, ip, rp.port.port), o)
            if rp.node_port:
                out.setdefault((proto, rp.node_port), o)
        return out

    def rule_owner(self, rule: str) -> Owner | None:
        """The service port an iptables rule is for: the chain it jumps to, else the
        service port its comment starts with (kube-proxy's comments do)."""
        m = _TARGET.search(rule)
        if m and m.group(1).startswith(_PORT_CHAIN) and m.group(1) in self.chains:
            return self.chains[m.group(1)]
        m = _COMMENT.search(rule)
        return self.by_name.get(m.group(1).split(" ", 1)[0]) if m else None

    def chain_owner(self, name: str, rules: Sequence[str] = ()) -> Owner | None:
        """The service port a service port's chain (SVC, SVL, EXT, FW, SEP) is for: by
        its name's hash, else by its rules (a stale endpoint's chain). None for the
        others."""
        if not name.startswith(_PORT_CHAIN):
            return None
        o = self.chains.get(name)
        if o is None:
            o = next((r for r in map(self.rule_owner, rules) if r is not None), None)
        return o

    def vs_owner(self, vs: str) -> Owner | None:
        """The service port of an IPVS virtual server ("-t 10.96.0.10:80")."""
        flag, _, where = vs.partition(" ")
        ip, _, port = where.rpartition(":")
        proto = _IPVS_PROTO.get(flag)
        if proto is None or not port.isdigit():
            return None
        return self.virtual_servers.get((proto, ip, int(port))) or self.virtual_servers.get((proto, int(port)))


def _item(owner: Owner | None, what: str, detail: str) -> DriftItem:
    return DriftItem(owner.service if owner else None, owner.port if owner else None, what, detail)


class _Parts:
    """Items gathered for one node, with what each service port has on the node in
    all (`rendered`), so that a service port of which everything is missing reads as
    one item."""

    def __init__(self) -> None:
        self.items: list[DriftItem] = []
        self.missing: Counter[Owner] = Counter()
        self.rendered: Counter[Owner] = Counter()

    def add(self, owner: Owner | None, what: str, detail: str) -> None:
        self.items.append(_item(owner, what, detail))
        if owner is not None and what == "missing":
            self.missing[owner] += 1

    def collapsed(self, whole: str, bare: str | None = None) -> list[DriftItem]:
        """The items, each service port wholly missing as one item whose detail is
        `whole` formatted with the count of what it has ({n}). `bare`: the node has
        nothing at all of this kind: the node's own missing items are that one item."""
        gone = {o for o, n in self.missing.items() if n >= self.rendered[o] > 0}
        touched = {(i.service, i.port) for i in self.items if i.what != "missing"}
        gone = {o for o in gone if tuple(o) not in touched}
        out = [i for i in self.items if (i.service, i.port) not in gone]
        if bare is not None:
            out = [i for i in out if not (i.service is None and i.what == "missing")] + [_item(None, "missing", bare)]
        out += [_item(o, "missing", whole.format(n=self.rendered[o])) for o in gone]
        return out


# --- iptables ----------------------------------------------------------------------


def iptables_drift(rules: IptablesRules, live: LiveTables, index: ServiceIndex) -> list[DriftItem]:
    """How a node's svcops iptables footprint (`live`, SvcopsIptables) differs from
    `rules`, per service port."""
    want = expected_tables(rules)
    parts = _Parts()
    for t in TABLES:
        w, l = want.table(t), live.table(t)
        for c, wanted in w.chains.items():
            top = not c.startswith(_PORT_CHAIN)  # SVCOPS-SERVICES, ...: rules of many service ports
            owner = None if top else index.chains.get(c)
            if owner is not None:
                parts.rendered[owner] += 1
            have = l.chains.get(c)
            if top:
                owners = [index.rule_owner(r) for r in wanted]
                parts.rendered.update(o for o in owners if o is not None)
                if have is None:
                    parts.add(None, "missing", f"{t} chain {c}")
                    for r, o in zip(wanted, owners):
                        if o is not None:
                            parts.add(o, "missing", f"{t} rule in {c}: {r}")
                elif have != wanted:
                    _top_rules(parts, index, t, c, have, wanted)
            elif have is None:
                parts.add(owner, "missing", f"{t} chain {c} ({chain_kind(c)})")
            elif have != wanted:
                parts.add(owner, "differs", f"{t} {rules_drift(f'{c} ({chain_kind(c)})', have, wanted)}")
        for c, have in l.chains.items():
            if c in w.chains or (not have and c in l.foreign_refs):
                continue
            owner = index.chain_owner(c, have)
            alone = " (no service)" if owner is None and c.startswith(_PORT_CHAIN) else ""
            parts.add(owner, "extra", f"{t} chain {c} ({chain_kind(c)}){alone}")
        need, got = Counter(w.jumps), Counter(l.jumps)
        for j in sorted((need - got).elements()):
            parts.add(None, "missing", f"{t} jump: {j}")
        for j in sorted((got - need).elements()):
            parts.add(None, "extra", f"{t} jump: {j}")
    bare = not any(live.table(t).chains or live.table(t).jumps for t in TABLES) and parts.items
    return parts.collapsed(
        "not on the node: none of its iptables chains and rules ({n})",
        "every svcops iptables chain and jump (the node has none)" if bare else None,
    )


def _top_rules(parts: _Parts, index: ServiceIndex, table: str, chain: str, have: Sequence[str], want: Sequence[str]) -> None:
    """A top-level chain (SVCOPS-SERVICES, ...) that differs: rule by rule, each filed
    under the service port it dispatches to."""
    missing, extra = Counter(want) - Counter(have), Counter(have) - Counter(want)
    for r in sorted(missing.elements()):
        parts.add(index.rule_owner(r), "missing", f"{table} rule in {chain}: {r}")
    for r in sorted(extra.elements()):
        parts.add(index.rule_owner(r), "extra", f"{table} rule in {chain}: {r}")
    if not missing and not extra:
        parts.add(None, "differs", f"{table} chain {chain}: rules out of order")


# --- nftables ----------------------------------------------------------------------

_NFT_OBJECT = re.compile(r"^(?:foreign )?(?:chain|set) (\S+)")
_NFT_ELEMENT = re.compile(r"^map (\S+) element (.+?) (?:missing|differs: .*)$")


def nftables_drift(rules: NftRules, nft, index: ServiceIndex) -> list[DriftItem]:
    """How a node's table ip svcops (`nft`: SvcopsNftables' NftState) differs from
    `rules`, per service port."""
    if not nft.available:
        return [_item(None, "missing", "nft is not installed on the node")]
    live = nft.live
    if not live.exists:
        out = [_item(None, "missing", f"table {TABLE}")]
        return out + [
            _item(index.units.get(u.id), "missing", f"service port {u.id}: not in table {TABLE}")
            for u in rules.units
            if not u.id.startswith(HAIRPIN_UNIT)
        ]
    out: list[DriftItem] = []
    have = live.units()
    named = {unit_of_name(n) for n in (*live.chains, *live.sets)} - {None}
    desired = {u.id for u in rules.units}
    elements: dict[tuple[str, str], str] = {}
    for u in rules.units:
        owner = index.units.get(u.id)
        elements.update({(m, key): u.id for m, key, _ in u.elements})
        digest = have.get(u.id)
        if u.id.startswith(HAIRPIN_UNIT):
            # Elements only, no chains: endpoint addresses of the node, not a service port
            # (an element missing from a group of the right version is one of drift_lines).
            if digest is None:
                out.extend(_item(None, "missing", f"map hairpin element {key} missing") for _m, key, _v in u.elements)
            elif digest != u.digest:
                out.append(_item(None, "differs", f"hairpin group {u.id}: another version is on the node ({digest or 'mixed'}; svcops renders {u.digest})"))
            continue
        if digest is None and u.id not in named:
            out.append(_item(owner, "missing", f"service port {u.id}: none of its chains, sets or map elements is in table {TABLE}"))
        elif digest == "":
            out.append(_item(owner, "differs", f"service port {u.id}: its map elements carry different versions"))
        elif digest is not None and digest != u.digest:
            out.append(_item(owner, "differs", f"service port {u.id}: another version is on the node ({digest}; svcops renders {u.digest})"))
    for uid in sorted((set(have) | named) - desired):
        if uid.startswith(HAIRPIN_UNIT):
            out.append(_item(None, "extra", f"hairpin group {uid} (no endpoint address in it): its elements are in map hairpin"))
        else:
            out.append(_item(None, "extra", f"service port {uid} (not in the site): its objects are in table {TABLE}"))
    versions = {live.chains.get(n) or "" for n in BASE_CHAINS} - {"", SKELETON_COMMENT}
    for v in sorted(versions):
        out.append(_item(None, "differs", f"table {TABLE}: a base chain carries another skeleton version ({v}; svcops renders {SKELETON_COMMENT})"))
    for line in drift_lines(rules, live):
        out.append(_nft_line(line, index, elements, desired))
    return out


def _nft_line(line: str, index: ServiceIndex, elements: dict[tuple[str, str], str], desired: set[str]) -> DriftItem:
    """One of `drift_lines`, filed under the unit its object names."""
    uid = None
    m = _NFT_OBJECT.match(line)
    if m:
        uid = unit_of_name(m.group(1))
    else:
        m = _NFT_ELEMENT.match(line)
        if m:
            uid = elements.get((m.group(1), m.group(2)))
    owner = index.units.get(uid) if uid in desired else None
    if line.startswith("foreign ") or " foreign element " in line:
        what = "extra"
    elif line.endswith(" missing") and " rules differ: " not in line:
        what = "missing"
    else:
        what = "differs"
    return _item(owner, what, line)


# --- IPVS --------------------------------------------------------------------------

_SIGN = re.compile(r"^[+~-] ")  # describe_ipvsadm_edit's sign: what says it
_EDIT_WHAT = {"-A": "missing", "-a": "missing", "-D": "extra", "-d": "extra", "-E": "differs", "-e": "differs"}


def ipvs_drift(rules, ipvs, iptables: LiveTables, index: ServiceIndex) -> list[DriftItem]:
    """How a node's IPVS mode footprint (`ipvs`: SvcopsIpvs' IpvsState; `iptables`:
    SvcopsIptables) differs from `rules` (IpvsRules), per service port."""
    if ipvs.missing:
        return [_item(None, "missing", f"the node cannot do IPVS: {m}") for m in ipvs.missing]
    live = ipvs.live
    out: list[DriftItem] = []
    for m in ipvs_modules(rules.ipvsadm):
        if m not in live.modules:
            out.append(_item(None, "missing", f"kernel module {m} (not loaded)"))
    for k, v in SYSCTLS.items():
        if live.sysctls.get(k) != v:
            out.append(_item(None, "differs", f"sysctl {k} is {live.sysctls.get(k) or 'unreadable'} (svcops: {v})"))
    if not live.link:
        out.append(_item(None, "missing", f"dummy interface {DUMMY_INTERFACE}"))
    have, want = set(live.addresses), set(rules.addresses)
    for what, addrs in (("missing", want - have), ("extra", have - want)):
        for a in sorted(addrs):
            services = index.addresses.get(a, ())
            detail = f"address {a} on {DUMMY_INTERFACE}"
            if len(services) == 1:
                out.append(DriftItem(services[0], None, what, detail))
            else:
                out.append(_item(None, what, detail + (f" ({', '.join(services)})" if services else "")))
    plan = ipvs_plan(rules, live, iptables, ())
    out += [_item(None, "differs", d.removeprefix("ipvs: ")) for d in plan.details if d.startswith("ipvs: ipset ")]
    out += iptables_drift(rules.iptables_rules, iptables, index)
    out += _ipvsadm_items(ipvsadm_update(rules, live.ipvsadm, live.addresses), live.ipvsadm, index)
    return out


def _ipvsadm_items(edit: str, have: str, index: ServiceIndex) -> list[DriftItem]:
    """An ``ipvsadm -R`` edit as drift, one item a change; a virtual server missing
    whole is one item, with the count of its real servers."""
    out: list[DriftItem] = []
    lines = edit.splitlines()
    new = {ln.split()[1] + " " + ln.split()[2] for ln in lines if ln.startswith("-A ")}
    reals = Counter(ln.split()[1] + " " + ln.split()[2] for ln in lines if ln.startswith("-a "))
    for line in lines:
        p = line.split()
        vs = f"{p[1]} {p[2]}"
        if p[0] == "-a" and vs in new:
            continue
        text = describe_ipvsadm_edit(line, have)
        detail = _SIGN.sub("", text[0].removeprefix("ipvs: ")) if text else line
        if p[0] == "-A":
            detail += f" (with {_plural(reals[vs], 'real server')})"
        out.append(_item(index.vs_owner(vs), _EDIT_WHAT.get(p[0], "differs"), detail))
    return out


# --- one node ----------------------------------------------------------------------


def node_check(plan, index: ServiceIndex, live: LiveTables, state, nft, ipvs, dns, session_address: str | None = None) -> NodeCheck:
    """Everything that differs on one node (its NodePlan `plan`, its facts: `live`
    SvcopsIptables, `state` SvcopsNodeState, `nft` SvcopsNftables, `ipvs` SvcopsIpvs,
    `dns` SvcopsDns), per service port and for the node itself."""
    out = plan.output
    mode = out.mode
    other = f" (the site's proxy mode is {mode})"
    items: list[DriftItem] = []
    if mode == "iptables":
        # What iptables mode leaves: its rules and the canary naming their record.
        items += iptables_drift(applied_rules(out.iptables), live, index)
    elif mode == "nftables":
        # svcops has no iptables rules in nftables mode: what is there is another mode's, whole.
        chains = sum(len(live.table(t).chains) for t in TABLES)
        jumps = sum(len(live.table(t).jumps) for t in TABLES)
        if chains or jumps:
            items.append(_item(None, "extra", f"svcops iptables chains ({chains}) and jumps ({jumps}){other}"))
    if mode == "nftables":
        items += nftables_drift(out.nftables, nft, index)
    elif nft.available and nft.live.exists:
        items.append(_item(None, "extra", f"table {TABLE}{other}"))
    if mode == "ipvs":
        items += ipvs_drift(out.ipvs, ipvs, live, index)
    else:
        gone = ipvs_removal(ipvs.live, out.node_addresses)
        what = [w for w, there in (("ipsets", gone.ipset), ("virtual servers", gone.ipvsadm), (f"dummy interface {DUMMY_INTERFACE}", gone.link), ("ARP sysctls", gone.sysctls)) if there]
        if what:
            items.append(_item(None, "extra", f"IPVS mode's {', '.join(what)}{other}"))
    items += _node_items(plan, live, state, dns, session_address)
    return NodeCheck.of(out.node.name, items)


def _node_items(plan, live: LiveTables, state, dns, session_address: str | None) -> list[DriftItem]:
    """What node_diff says of the node apart from its rules: addresses, files,
    ip_forward, DNS. (Its rules are compared above, per service: node_diff gets none
    to compare, so it does not parse them a second time.)"""
    bare = replace(plan, output=replace(plan.output, iptables=no_iptables_rules(plan.output.node.name)))
    d = node_diff(bare, LiveTables(), state, session_address, None, None, dns)
    by_address = {a.address: a.services for a in plan.announced}
    out: list[DriftItem] = []
    for what, addresses in (("missing", d.addresses_added), ("extra", d.addresses_removed)):
        for text in addresses:
            services = by_address.get(text.split("/", 1)[0], ())
            if what == "missing" and len(services) == 1:
                out.append(DriftItem(services[0], None, what, f"load-balancer address {text} (this node announces it)"))
            else:
                out.append(_item(None, what, f"address {text}"))
    for f in d.files_written:
        if " -> " in f:
            out.append(_item(None, "differs", f"boot unit link {f}"))
        elif state.files.get(f) is None:
            out.append(_item(None, "missing", f"file {f}"))
        else:
            out.append(_item(None, "differs", f"file {f}: not as svcops renders it"))
    out += [_item(None, "extra", f"file {f} (another proxy mode's)") for f in d.files_removed]
    if d.ip_forward:
        out.append(_item(None, "differs", f"sysctl net.ipv4.ip_forward is {state.ip_forward or 'unreadable'} (svcops: 1)"))
    out += _dns_items(d.dns)
    return out


def _dns_items(lines: Sequence[str]) -> list[DriftItem]:
    """The DNS server's steps (`DnsPlan.summary`) as drift: what differs, not what apply
    would do about it (a reload or restart that only follows a changed file is no item)."""
    files = any(ln.startswith(("dns: file ", "dns: - ")) for ln in lines)
    out: list[DriftItem] = []
    for line in lines:
        if line in ("dns: reload the zone", "dns: (re)start the server"):
            if not files:
                out.append(_item(None, "differs", "dns: the server is not running as svcops runs it (apply starts it)"))
            continue
        what = "missing" if line.startswith("dns: install ") else "extra" if line.startswith("dns: - ") else "differs"
        out.append(_item(None, what, line))
    return out
