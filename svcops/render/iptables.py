"""The iptables renderer: kube-proxy's iptables mode, for every node at once.

What a node gets is one ``iptables-restore --noflush`` payload (tables filter and
nat) that replaces the contents of the chains svcops owns (all named ``SVCOPS-``,
see `svcops.render.chains`) in one atomic transaction, and leaves every other chain
alone: docker, ufw or fail2ban rules are never flushed, reordered or deleted. The
built-in chains only get svcops's jump rules, inserted at the top once. Built
against the node's live state (`restore_payload(rules, live)`), the payload holds only
what differs: the missing jumps, the chains whose rules changed, the stale chains'
deletion; `restore_transactions` cuts a change of many chains into several
transactions (Debian 12's iptables-nft-restore is superlinear in a transaction's size).

The rules are kube-proxy's (pkg/proxy/iptables/proxier.go), chain for chain:

    nat     PREROUTING, OUTPUT -> SVCOPS-SERVICES
              -d <cluster IP>/32 -p tcp ... --dport <port>   -> SVCOPS-SVC-* (or SVL-*)
              -d <external IP | LB IP>/32 ... --dport <port>  -> SVCOPS-EXT-* (or FW-*)
              ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL   -> SVCOPS-NODEPORTS (last)
            SVCOPS-NODEPORTS   --dport <nodePort>             -> SVCOPS-EXT-*
            SVCOPS-EXT-*   Cluster policy: mark for masquerade, -> SVC
                           Local policy: LOCAL sources masqueraded -> SVC, others -> SVL
            SVCOPS-FW-*    allowed source ranges -> EXT; the rest is left alone and
                           dropped by filter SVCOPS-FIREWALL (still addressed to the LB IP)
            SVCOPS-SVC-*, SVCOPS-SVL-*   affinity (-m recent --rcheck), then
                           -m statistic --mode random --probability 1/(n-i) -> SEP
            SVCOPS-SEP-*   -s <itself> -> MARK-MASQ (hairpin); [recent --set]; DNAT
            POSTROUTING -> SVCOPS-POSTROUTING: masquerade marked packets, clear the mark
    filter  SVCOPS-SERVICES           REJECT a service without endpoints (its cluster
                                      IP), DROP for internalTrafficPolicy Local
                                      without local endpoints
            SVCOPS-EXTERNAL-SERVICES  the same for node ports, external and LB IPs
            SVCOPS-FORWARD            INVALID drop; marked and established accept
            SVCOPS-FIREWALL           loadBalancerSourceRanges' drop

Every rule is written exactly as ``iptables-save`` prints it back (option order,
"/32", comment quoting, ``--set-xmark``, the probability as iptables rounds it), so
the live rules of a node can be compared with the rendered ones as text.

Speed: 10,000 services x 10 endpoints on 100 nodes. Almost all of a payload is
the same on every node; only the Local traffic policies depend on the node. So each
service port is rendered once into shared string fragments, a Local-policy port
once per distinct set of local endpoints (usually: none, or one node's), and an
`IptablesRules` is a few lists of references to those shared strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import netaddr

from svcops.gcpause import gc_paused
from svcops.render import chains as C
from svcops.render.plain import plain
from svcops.site.model import Cluster, Endpoint, ResolvedPort, is_ipv4

__all__ = [
    "MASQ_MARK",
    "JUMPS",
    "Jump",
    "TableRules",
    "IptablesRules",
    "RecordParts",
    "Units",
    "LiveTable",
    "LiveTables",
    "render_nodes",
    "restore_payload",
    "restore_transactions",
    "CHUNK_CHAINS",
    "parse_iptables_save",
    "probability",
]

MASQ_MARK = "0x4000"  # kube-proxy's default --iptables-masquerade-bit 14

BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})


@dataclass(frozen=True, slots=True)
class Jump:
    """A rule in a built-in chain that sends traffic into svcops's chains."""

    table: str
    chain: str  # the built-in chain
    spec: str  # the rule as iptables-save prints it after "-A <chain> "

    @property
    def line(self) -> str:
        return f"-A {self.chain} {self.spec}"


def jump(table: str, chain: str, target: str, comment: str, new_only: bool) -> Jump:
    """A jump from a built-in chain to one of svcops's, as iptables-save prints it."""
    state = "-m conntrack --ctstate NEW " if new_only else ""
    return Jump(table, chain, f'{state}-m comment --comment "{comment}" -j {target}')


# In each built-in chain, top-down (kube-proxy's iptablesJumpChains, in the order they
# end up after kube-proxy's prepends).
JUMPS: tuple[Jump, ...] = (
    jump("filter", "INPUT", C.FIREWALL, "svcops load balancer firewall", True),
    jump("filter", "INPUT", C.EXTERNAL_SERVICES, "svcops externally-visible service portals", True),
    jump("filter", "FORWARD", C.FIREWALL, "svcops load balancer firewall", True),
    jump("filter", "FORWARD", C.FORWARD, "svcops forwarding rules", False),
    jump("filter", "FORWARD", C.SERVICES, "svcops service portals", True),
    jump("filter", "FORWARD", C.EXTERNAL_SERVICES, "svcops externally-visible service portals", True),
    jump("filter", "OUTPUT", C.FIREWALL, "svcops load balancer firewall", True),
    jump("filter", "OUTPUT", C.SERVICES, "svcops service portals", True),
    jump("nat", "PREROUTING", C.SERVICES, "svcops service portals", False),
    jump("nat", "OUTPUT", C.SERVICES, "svcops service portals", False),
    jump("nat", "POSTROUTING", C.POSTROUTING, "svcops postrouting rules", False),
)


@dataclass(frozen=True, slots=True)
class TableRules:
    """svcops's part of one table on one node.

    chains: fragments of ":SVCOPS-... - [0:0]" lines, rules: fragments of "-A" lines
    in their final order. Fragments are (mostly) strings shared with other nodes;
    each holds whole lines, each line ending in "\\n".
    """

    chains: list[str]
    rules: list[str]

    def chain_names(self) -> list[str]:
        """The chains declared, in order."""
        return [ln[1 : ln.index(" ")] for frag in self.chains for ln in frag.splitlines() if ln]


class Units(dict):
    """Service port hash -> (its nat declarations, its nat rules): one part of
    `RecordParts.units`. `memo` is `svcops.render.iptables_record`'s: the part's
    buckets, made once for every node that shares the part."""

    __slots__ = ("memo",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.memo = None


@dataclass(frozen=True, slots=True)
class RecordParts:
    """The same rules as an `IptablesRules`' tables, by owner, for iptables mode's
    record on the node (`svcops.render.iptables_record`), kept by the renderer so that
    the record is built without cutting 50 MB of rules back into lines.

    units:  per part (the part every node shares, then this node's own), service port
            hash -> (its nat declarations, its nat rules): the port's SVC, SVL, EXT,
            FW and SEP chains
    first:  table -> fragments (declarations, then rules) of the chains the units
            jump to or that jump to no svcops chain: every filter chain, nat
            SVCOPS-POSTROUTING and SVCOPS-MARK-MASQ
    last:   nat fragments of the dispatch chains, SVCOPS-SERVICES and SVCOPS-NODEPORTS
    """

    units: tuple[Units, ...] = ()
    first: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    last: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IptablesRules:
    """What one node gets: svcops's chains and rules in filter and nat, and the jumps
    (`parts`: the same, by owner, when the renderer made them)."""

    node: str
    filter: TableRules
    nat: TableRules
    jumps: tuple[Jump, ...] = JUMPS
    parts: RecordParts | None = None

    def table(self, name: str) -> TableRules:
        return self.filter if name == "filter" else self.nat

    def counts(self, memo: dict[int, int] | None = None) -> tuple[int, int]:
        """(chains, rules) this node gets, without joining its payload.

        `memo` maps a shared fragment's id to its line count; pass the same dict for
        every node so a fragment shared by 100 nodes is counted once.
        """
        memo = {} if memo is None else memo

        def lines(frags: list[str]) -> int:
            n = 0
            for f in frags:
                k = id(f)
                c = memo.get(k)
                if c is None:
                    c = memo[k] = f.count("\n")
                n += c
            return n

        chains = lines(self.filter.chains) + lines(self.nat.chains)
        return chains, lines(self.filter.rules) + lines(self.nat.rules)


# --- live state -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveTable:
    """svcops's footprint in one table of a node, as iptables-save shows it.

    chains:       svcops chain -> its rules ("-A CHAIN ..." lines), in order
    jumps:        rules of built-in chains that jump to svcops chains ("-A INPUT ..."), in order
    foreign_refs: svcops chains that some other (non built-in) chain jumps to; svcops
                  never deletes those, since that would need touching a foreign chain
    """

    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    jumps: tuple[str, ...] = ()
    foreign_refs: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class LiveTables:
    tables: Mapping[str, LiveTable] = field(default_factory=dict)

    def table(self, name: str) -> LiveTable:
        return self.tables.get(name) or LiveTable()

    def to_json(self) -> dict:
        """Plain data, for ``pyinfra INVENTORY fact ...`` (see `svcops.render.plain`)."""
        return plain(self)


def _target(rule: str) -> str | None:
    """The chain a rule jumps (-j) or goes (-g) to; None when it has no target."""
    for flag in (" -j ", " -g "):
        i = rule.rfind(flag)
        if i >= 0:
            return rule[i + 4 :].split(" ", 1)[0]
    return None


def parse_iptables_save(text: str) -> LiveTables:
    """svcops's chains, their rules and the jumps into them, from `iptables-save` output.

    Pure. Also reads an iptables-restore payload (":CHAIN" declarations flush, "-I
    CHAIN [N]" inserts, "-D" deletes, "-X" removes), so parsing a payload tells what
    a clean node will hold after restoring it.
    """
    tables: dict[str, tuple[dict[str, list[str]], dict[str, list[str]], set[str]]] = {}
    chains: dict[str, list[str]] = {}
    jumps: dict[str, list[str]] = {}
    foreign: set[str] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] == "#" or line == "COMMIT":
            continue
        if line[0] == "[":  # `iptables-save -c`: "[packets:bytes] -A ..."
            line = line.partition("] ")[2]
        if line[0] == "*":
            chains, jumps, foreign = tables.setdefault(line[1:], ({}, {}, set()))
            continue
        if line[0] == ":":
            name = line[1:].split(" ", 1)[0]
            if C.is_svcops_chain(name):
                chains[name] = []
            continue
        parts = line.split(" ", 2)
        if len(parts) < 2:
            continue
        op, chain = parts[0], parts[1]
        rest = parts[2] if len(parts) > 2 else ""
        if op == "-X":
            chains.pop(chain, None)
            continue
        position = None
        if op == "-I":
            head, _, tail = rest.partition(" ")
            if head.isdigit():
                position, rest = int(head) - 1, tail
            else:
                position = 0
        elif op not in ("-A", "-D"):
            continue
        rule = f"-A {chain} {rest}" if rest else f"-A {chain}"
        if C.is_svcops_chain(chain):
            target_list = chains.setdefault(chain, [])
        else:
            target = _target(rule)
            if target is None or not C.is_svcops_chain(target):
                continue
            if chain not in BUILTIN_CHAINS:
                if op != "-D":
                    foreign.add(target)
                continue
            target_list = jumps.setdefault(chain, [])
        if op == "-D":
            if rule in target_list:
                target_list.remove(rule)
        elif position is None:
            target_list.append(rule)
        else:
            target_list.insert(position, rule)
    order = {c: i for i, c in enumerate(("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"))}
    return LiveTables(
        {
            name: LiveTable(
                {c: tuple(r) for c, r in ch.items()},
                tuple(r for c in sorted(ju, key=order.__getitem__) for r in ju[c]),
                frozenset(fo),
            )
            for name, (ch, ju, fo) in tables.items()
        }
    )


# --- the payload ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TableChange:
    """What an apply does to svcops's part of one table (see `restore_payload`)."""

    name: str
    chains: dict[str, list[str]]  # chains written (declared, so flushed, then filled): "-A" lines
    stale: list[str]  # svcops chains no longer rendered: flushed, then deleted
    deletes: list[str]  # "-D" lines: duplicate or outdated svcops jumps
    inserts: list[Jump]  # jumps missing from their built-in chain
    keep: frozenset[str]  # stale chains a foreign chain still jumps to: flushed, not deleted
    everything: TableRules | None  # a node without svcops chains: the table as rendered


def _table_change(rules: IptablesRules, live: LiveTables | None, name: str) -> _TableChange:
    table = rules.table(name)
    wanted = [j for j in rules.jumps if j.table == name]
    if live is None:
        return _TableChange(name, {}, [], [], wanted, frozenset(), table)
    lt = live.table(name)
    present: dict[str, int] = {}
    for line in lt.jumps:
        present[line] = present.get(line, 0) + 1
    wanted_lines = {j.line for j in wanted}
    deletes: list[str] = []
    for line, count in present.items():
        extra = count - 1 if line in wanted_lines else count
        deletes.extend(["-D" + line[2:] + "\n"] * extra)
    inserts = [j for j in wanted if j.line not in present]
    if not lt.chains:
        return _TableChange(name, {}, [], deletes, inserts, frozenset(), table)
    declared = set(table.chain_names())
    stale = sorted(c for c in lt.chains if c not in declared)
    return _TableChange(name, _changed_chains(table, lt), stale, deletes, inserts, lt.foreign_refs, None)


def _head(ch: _TableChange) -> list[str]:
    """Stale chains flushed (emptied first, so nothing of svcops still jumps anywhere
    through them), then the jumps repaired: each insert goes to the top, so the last
    one inserted ends up first."""
    return [*(f":{c} - [0:0]\n" for c in ch.stale), *ch.deletes, *(f"-I {j.chain} 1 {j.spec}\n" for j in reversed(ch.inserts))]


def _tail(ch: _TableChange) -> list[str]:
    return [f"-X {c}\n" for c in ch.stale if c not in ch.keep]


def restore_payload(rules: IptablesRules, live: LiveTables | None = None) -> str:
    """The exact `iptables-restore --noflush` input that gives a node `rules`.

    live=None: for a clean node (every jump inserted). With the node's live state,
    only missing jumps are inserted (and duplicates or outdated svcops jumps deleted),
    svcops chains that exist but are no longer rendered are flushed and deleted
    (":CHAIN - [0:0]" then "-X CHAIN", as kube-proxy does), and only the chains whose
    rules differ from the live ones are written (kube-proxy's partial sync: a chain not
    named in a --noflush restore stays as it is, so a one-service change writes that
    service's few chains, not all of them). Chains whose name does not start with
    SVCOPS- are never named, except for svcops's own jump rules in the built-in chains.
    """
    return _payload([_table_change(rules, live, name) for name in ("filter", "nat")])


def _payload(changes: Sequence[_TableChange]) -> str:
    """Every table's change in one transaction each (`restore_payload`'s text)."""
    out: list[str] = []
    for ch in changes:
        out.append(f"*{ch.name}\n")
        if ch.everything is not None:
            out.extend(ch.everything.chains)
        else:
            out.extend(f":{c} - [0:0]\n" for c in ch.chains)
        out.extend(_head(ch))
        if ch.everything is not None:
            out.extend(ch.everything.rules)
        else:
            out.extend(line for lines in ch.chains.values() for line in lines)
        out.extend(_tail(ch))
        out.append("COMMIT\n")
    return "".join(out)


# Chains per transaction when an apply writes many (`restore_transactions`).
CHUNK_CHAINS = 1000


def restore_transactions(rules: IptablesRules, live: LiveTables | None = None, chunk: int = CHUNK_CHAINS) -> list[str]:
    """`restore_payload`'s change cut into transactions of at most `chunk` chains each,
    for one ``iptables-restore --noflush`` (each "*table ... COMMIT" block is a
    transaction of its own); one transaction when it writes no more than `chunk` chains.

    Why: Debian 12's iptables-nft-restore takes time that grows much faster than the
    transaction (2,000 services x 10 endpoints, ~22,500 chains: 40-55 s in one, 7 s in
    500-service steps; 10,000 services did not finish in 8 minutes), while each chunk
    costs little more than the chains it holds.

    Every transaction leaves a working ruleset: chains are written targets first (a
    chain is filled only once every svcops chain it jumps to holds its new rules), and
    the last transaction repairs the jumps from the built-in chains and deletes the
    stale chains. On a node without svcops's rules nothing is reachable until that
    last transaction; on a live node each chunk switches its services over whole.
    Failing at any point, ``rollback_payload(live, rules, jumps=False)`` undoes what
    was committed (the jumps only change in the last transaction, atomically)."""
    changes = [_table_change(rules, live, name) for name in ("filter", "nat")]
    written = [(ch, ch.everything.chain_names() if ch.everything else list(ch.chains)) for ch in changes]
    if sum(len(names) for _, names in written) <= chunk:
        return [_payload(changes)]
    txs: list[str] = []
    for ch, _ in written:
        chains = ch.chains if ch.everything is None else _chain_rules(ch.everything)
        batch: list[str] = []
        for c in _targets_first(chains):
            batch.append(c)
            if len(batch) == chunk:
                txs.append(_fill(ch.name, batch, chains))
                batch = []
        if batch:
            txs.append(_fill(ch.name, batch, chains))
    last = []
    for ch in changes:
        last += [f"*{ch.name}\n", *_head(ch), *_tail(ch), "COMMIT\n"]
    txs.append("".join(last))
    return txs


def _fill(table: str, chains: list[str], rules: Mapping[str, list[str]]) -> str:
    return "".join([f"*{table}\n", *(f":{c} - [0:0]\n" for c in chains), *(ln for c in chains for ln in rules[c]), "COMMIT\n"])


def _chain_rules(table: TableRules) -> dict[str, list[str]]:
    """Each declared chain -> its "-A" lines (with their newline), in declaration order."""
    rules: dict[str, list[str]] = {c: [] for c in table.chain_names()}
    for frag in table.rules:
        for line in frag.splitlines(keepends=True):
            if line.startswith("-A "):
                rules[line[3 : line.index(" ", 3)]].append(line)
    return rules


def _targets_first(chains: Mapping[str, list[str]]) -> list[str]:
    """The chains in an order where each comes after the chains (among these) it jumps
    to: depth-first post-order, iterative (no recursion limit at 100,000 chains)."""
    order: list[str] = []
    seen: set[str] = set()
    for root in chains:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(chains[root]))]
        while stack:
            chain, it = stack[-1]
            for line in it:
                t = _target(line.rstrip("\n"))
                if t is not None and t in chains and t not in seen:
                    seen.add(t)
                    stack.append((t, iter(chains[t])))
                    break
            else:
                stack.pop()
                order.append(chain)
    return order


def _changed_chains(table: TableRules, live: LiveTable) -> dict[str, list[str]]:
    """The rendered chains whose rules differ from `live`'s (new ones included), each
    with its "-A" lines, in declaration order."""
    return {
        c: lines
        for c, lines in _chain_rules(table).items()
        if c not in live.chains or len(live.chains[c]) != len(lines) or any(a != b[:-1] for a, b in zip(live.chains[c], lines))
    }


# --- rendering --------------------------------------------------------------------

_FILTER_DECL = "".join(f":{c} - [0:0]\n" for c in C.FILTER_TOP)
_NAT_DECL = "".join(f":{c} - [0:0]\n" for c in C.NAT_TOP)
_REJECT = "REJECT --reject-with icmp-port-unreachable"

_FORWARD_RULES = (
    f"-A {C.FORWARD} -m conntrack --ctstate INVALID -j DROP\n"
    f'-A {C.FORWARD} -m comment --comment "svcops forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT\n'
    f'-A {C.FORWARD} -m comment --comment "svcops forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n'
)
_NODEPORTS_TAIL = (
    f"-A {C.SERVICES} ! -d 127.0.0.0/8 -m comment --comment "
    '"svcops service nodeports; NOTE: this must be the last rule in this chain" '
    f"-m addrtype --dst-type LOCAL -j {C.NODEPORTS}\n"
)
# MARK --or-mark and --xor-mark, as iptables-save prints them.
_POSTROUTING_RULES = (
    f"-A {C.POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n"
    f"-A {C.POSTROUTING} -j MARK --set-xmark {MASQ_MARK}/0x0\n"
    f'-A {C.POSTROUTING} -m comment --comment "svcops service traffic requiring SNAT" -j MASQUERADE --random-fully\n'
)
_MARK_MASQ_RULES = f"-A {C.MARK_MASQ} -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}\n"

_PROBABILITIES: dict[int, str] = {}


def probability(n: int) -> str:
    """1/n as iptables-save prints it back.

    xt_statistic keeps round(p * 2^31) and iptables prints that / 2^31 with "%.11f";
    rendering that value makes the rule read back byte for byte.
    """
    s = _PROBABILITIES.get(n)
    if s is None:
        stored = int(0x80000000 / n + 0.5)  # lround() of a positive value
        s = _PROBABILITIES[n] = f"{stored / 0x80000000:.11f}"
    return s


def _escape(text: str) -> str:
    """Escape for inside the double quotes iptables-save puts around a comment."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")


def _cidr(text: str) -> str | None:
    """A source range as iptables-save prints it ("" for 0.0.0.0/0; None for IPv6)."""
    try:
        net = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    if net.version != 4:
        return None
    return "" if net.prefixlen == 0 else f" -s {net.cidr}"


class _Port:
    """One service port, with everything about it that does not depend on the node."""

    __slots__ = (
        "spn", "q", "proto", "port", "cip", "ext_ips", "lb", "node_port", "ranges", "affinity",
        "svc", "svl", "ext", "fw", "eps", "_names", "_seps", "int_local", "ext_local", "ext_access",
        "uses_cluster", "uses_local", "uses_fw", "dport",
    )  # fmt: skip

    def __init__(self, rp: ResolvedPort) -> None:
        svc = rp.service
        self.spn = rp.name
        self.q = _escape(rp.name)
        self.proto = proto = rp.port.protocol.lower()
        self.port = rp.port.port
        self.dport = f" -m {proto} --dport {rp.port.port}"
        self.cip = rp.cluster_ip
        self.ext_ips = [ip for ip in svc.external_ips if is_ipv4(ip)]
        self.lb = rp.load_balancer_ip if is_ipv4(rp.load_balancer_ip) else None
        self.node_port = rp.node_port
        h = C.port_hash(rp.name, proto)
        self.svc, self.svl, self.ext, self.fw = C.SVC + h, C.SVL + h, C.EXT + h, C.FW + h
        self.eps: list[Endpoint] = [e for e in rp.endpoints if is_ipv4(e.ip)]
        self._names: list[tuple[str, str]] | None = None
        self._seps: list[str] | None = None
        self.affinity = svc.affinity_timeout if svc.session_affinity == "ClientIP" else None
        self.ext_access = bool(self.node_port or self.lb or self.ext_ips)
        self.int_local = svc.internal_traffic_policy == "Local"
        self.ext_local = svc.external_traffic_policy == "Local" and self.ext_access
        # kube-proxy's UsesClusterEndpoints / UsesLocalEndpoints.
        self.uses_cluster = not self.int_local or self.ext_access
        self.uses_local = self.int_local or self.ext_local
        self.ranges: list[str] = []
        if self.lb and svc.load_balancer_source_ranges:
            self.ranges = [r for r in map(_cidr, svc.load_balancer_source_ranges) if r is not None]
        self.uses_fw = bool(self.eps and self.lb and self.ranges)

    def names(self) -> list[tuple[str, str]]:
        """Per endpoint: ("ip:port", its SEP chain)."""
        if self._names is None:
            prefix = self.spn + self.proto
            h = C.hash16
            sep = C.SEP
            self._names = [(ep, sep + h(prefix + ep)) for ep in [f"{e.ip}:{e.port}" for e in self.eps]]
        return self._names

    def seps(self) -> list[str]:
        """Per endpoint: its SEP chain's rules (hairpin masquerade, [affinity], DNAT)."""
        if self._seps is None:
            self._seps = [self._sep(ep, sep, e.ip) for (ep, sep), e in zip(self.names(), self.eps)]
        return self._seps

    def _sep(self, ep: str, sep: str, ip: str) -> str:
        q, proto = self.q, self.proto
        setr = f" -m recent --set --name {sep} --mask 255.255.255.255 --rsource" if self.affinity is not None else ""
        return (
            f'-A {sep} -s {ip}/32 -m comment --comment "{q}" -j {C.MARK_MASQ}\n'
            f'-A {sep} -p {proto} -m comment --comment "{q}"{setr} -m {proto} -j DNAT --to-destination {ep}\n'
        )

    def write_chain(self, chain: str, which: Sequence[int], with_seps: bool, decl: list[str], rules: list[str]) -> None:
        """An SVC/SVL chain (affinity checks, then an equal random choice) and, if asked,
        the SEP chains of its endpoints."""
        names, q = self.names(), self.q
        decl.append(f":{chain} - [0:0]\n")
        if self.affinity is not None:
            t = self.affinity
            for i in which:
                ep, sep = names[i]
                rules.append(
                    f'-A {chain} -m comment --comment "{q} -> {ep}" -m recent --rcheck '
                    f"--seconds {t} --reap --name {sep} --mask 255.255.255.255 --rsource -j {sep}\n"
                )
        last = len(which) - 1
        for k, i in enumerate(which):
            ep, sep = names[i]
            if k < last:
                rules.append(
                    f'-A {chain} -m comment --comment "{q} -> {ep}" -m statistic --mode random '
                    f"--probability {probability(last + 1 - k)} -j {sep}\n"
                )
            else:
                rules.append(f'-A {chain} -m comment --comment "{q} -> {ep}" -j {sep}\n')
        if with_seps:
            if self._seps is None and self.affinity is None and len(which) == len(names):
                # Once per port (the common case): no need to keep the texts around.
                q, proto, mark = self.q, self.proto, C.MARK_MASQ
                for (ep, sep), e in zip(names, self.eps):
                    decl.append(f":{sep} - [0:0]\n")
                    rules.append(
                        f'-A {sep} -s {e.ip}/32 -m comment --comment "{q}" -j {mark}\n'
                        f'-A {sep} -p {proto} -m comment --comment "{q}" -m {proto} -j DNAT --to-destination {ep}\n'
                    )
                return
            seps = self.seps()
            for i in which:
                decl.append(f":{names[i][1]} - [0:0]\n")
                rules.append(seps[i])


# Indices of a port's fragments (lists of lines, per destination in the payload).
_F_SERVICES, _F_EXTERNAL, _F_FIREWALL, _N_SERVICES, _N_NODEPORTS, _N_DECL, _N_RULES = range(7)


def _render(p: _Port, local: tuple[int, ...] | None, cluster_chains: bool, out: list[list[str]]) -> None:
    """Append a port's lines, for a node whose local endpoints are `local`, to `out`.

    local: indices into p.eps; None when the port has no Local policy (any node).
    cluster_chains: write the SVC chain and the SEP chains of every endpoint (callers
    write those once per port and share them when the rest depends on the node).
    """
    proto, q, dport = p.proto, p.q, p.dport
    has_eps = bool(p.eps)
    local_eps: tuple[int, ...] = (local or ()) if p.uses_local else ()
    has_internal = has_eps and (not p.int_local or bool(local_eps))
    has_external = has_eps and (not p.ext_local or bool(local_eps))
    internal_chain = p.svl if p.int_local else p.svc
    if not has_eps:
        target = _REJECT
        comment = f"{q} has no endpoints"
    else:
        target = "DROP"
        comment = f"{q} has no local endpoints"
    f_services, f_external, f_firewall, n_services, n_nodeports, decl, rules = out

    # Dispatch: cluster IP, external IPs, load-balancer IP, node port.
    if has_internal:
        n_services.append(
            f'-A {C.SERVICES} -d {p.cip}/32 -p {proto} -m comment --comment "{q} cluster IP"{dport} -j {internal_chain}\n'
        )
    else:
        f_services.append(
            f'-A {C.SERVICES} -d {p.cip}/32 -p {proto} -m comment --comment "{comment}"{dport} -j {target}\n'
        )
    for ip in p.ext_ips:
        if has_eps:
            n_services.append(
                f'-A {C.SERVICES} -d {ip}/32 -p {proto} -m comment --comment "{q} external IP"{dport} -j {p.ext}\n'
            )
        if not has_external:
            f_external.append(
                f'-A {C.EXTERNAL_SERVICES} -d {ip}/32 -p {proto} -m comment --comment "{comment}"{dport} -j {target}\n'
            )
    if p.lb:
        if has_eps:
            lb_chain = p.fw if p.uses_fw else p.ext
            n_services.append(
                f'-A {C.SERVICES} -d {p.lb}/32 -p {proto} -m comment --comment "{q} loadbalancer IP"{dport} -j {lb_chain}\n'
            )
        if p.uses_fw:
            f_firewall.append(
                f'-A {C.FIREWALL} -d {p.lb}/32 -p {proto} -m comment --comment "{q} traffic not accepted by {p.fw}"'
                f"{dport} -j DROP\n"
            )
        if not has_external:
            f_external.append(
                f'-A {C.EXTERNAL_SERVICES} -d {p.lb}/32 -p {proto} -m comment --comment "{comment}"{dport} -j {target}\n'
            )
    if p.node_port:
        if has_eps:
            n_nodeports.append(
                f'-A {C.NODEPORTS} -p {proto} -m comment --comment "{q}" -m {proto} --dport {p.node_port} -j {p.ext}\n'
            )
        if not has_external:
            f_external.append(
                f'-A {C.EXTERNAL_SERVICES} -p {proto} -m comment --comment "{comment}" -m addrtype --dst-type LOCAL'
                f" -m {proto} --dport {p.node_port} -j {target}\n"
            )

    # The service port's own chains.
    if has_eps and p.ext_access:
        ext = p.ext
        decl.append(f":{ext} - [0:0]\n")
        if not p.ext_local:
            rules.append(
                f'-A {ext} -m comment --comment "masquerade traffic for {q} external destinations" -j {C.MARK_MASQ}\n'
            )
        else:
            rules.append(
                f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {q} external destinations" '
                f"-m addrtype --src-type LOCAL -j {C.MARK_MASQ}\n"
                f'-A {ext} -m comment --comment "route LOCAL traffic for {q} external destinations" '
                f"-m addrtype --src-type LOCAL -j {p.svc}\n"
            )
        if has_external:
            rules.append(f"-A {ext} -j {p.svl if p.ext_local else p.svc}\n")
    if p.uses_fw:
        decl.append(f":{p.fw} - [0:0]\n")
        for src in p.ranges:
            rules.append(f'-A {p.fw}{src} -m comment --comment "{q} loadbalancer IP" -j {p.ext}\n')
        rules.append(f'-A {p.fw} -m comment --comment "other traffic to {q} will be dropped by {C.FIREWALL}"\n')
    if cluster_chains and p.uses_cluster and has_eps:
        # Every endpoint's SEP chain goes with SVC: Cluster policy reaches them all.
        p.write_chain(p.svc, range(len(p.eps)), True, decl, rules)
    if local_eps:
        p.write_chain(p.svl, local_eps, not p.uses_cluster, decl, rules)



@gc_paused()
def render_nodes(cluster: Cluster, ports: Sequence[ResolvedPort], nodes: Sequence[str]) -> dict[str, IptablesRules]:
    """svcops's iptables rules for every node, sharing everything that can be shared.

    `ports` as `svcops.compile.endpoints.resolve` returns them; their order is the order of
    the rules. Ports without a Local traffic policy come first, in one block of
    strings every node shares; Local-policy ports follow, rendered once per distinct
    set of local endpoints. `cluster` carries no setting that changes iptables rules
    today (the masquerade mark is kube-proxy's default, 0x4000).
    """
    del cluster  # same rules whatever the cluster settings; kept for a stable signature
    shared: list[list[str]] = [[], [], [], [], [], [], []]
    local_ports: list[tuple[_Port, dict[str, tuple[int, ...]]]] = []
    shared_units = Units()  # port hash -> its chains (RecordParts)
    decl, body = shared[_N_DECL], shared[_N_RULES]
    for rp in ports:
        p = _Port(rp)
        d0, r0 = len(decl), len(body)
        if not p.uses_local:
            _render(p, None, True, shared)
        else:
            by_node: dict[str, list[int]] = {}
            for i, e in enumerate(p.eps):
                if e.node is not None:
                    by_node.setdefault(e.node, []).append(i)
            local_ports.append((p, {n: tuple(v) for n, v in by_node.items()}))
            if p.uses_cluster and p.eps:
                # Its SVC and SEP chains are the same on every node.
                p.write_chain(p.svc, range(len(p.eps)), True, decl, body)
        if len(decl) > d0:
            shared_units[p.svc[len(C.SVC) :]] = ("".join(decl[d0:]), "".join(body[r0:]))
    # The shared block, joined once: every node holds references to these strings.
    block = ["".join(lines) for lines in shared]
    del shared

    cache: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    out: dict[str, IptablesRules] = {}
    filter_first = (_FILTER_DECL,)
    nat_first = (f":{C.POSTROUTING} - [0:0]\n:{C.MARK_MASQ} - [0:0]\n", _POSTROUTING_RULES, _MARK_MASQ_RULES)
    last_decl = f":{C.SERVICES} - [0:0]\n:{C.NODEPORTS} - [0:0]\n"
    for node in nodes:
        per_node: list[list[str]] = [[b] if b else [] for b in block]
        node_units = Units()
        for k, (p, by_node) in enumerate(local_ports):
            view = by_node.get(node, ())
            frags = cache.get((k, view))
            if frags is None:
                lines: list[list[str]] = [[], [], [], [], [], [], []]
                _render(p, view, False, lines)
                frags = cache[(k, view)] = ["".join(x) for x in lines]
            for j in range(7):
                if frags[j]:
                    per_node[j].append(frags[j])
            if frags[_N_DECL]:
                node_units[p.svc[len(C.SVC) :]] = (frags[_N_DECL], frags[_N_RULES])
        f_rules = (*per_node[_F_SERVICES], *per_node[_F_EXTERNAL], _FORWARD_RULES, *per_node[_F_FIREWALL])
        parts = RecordParts(
            (shared_units, node_units),
            {"filter": (*filter_first, *f_rules), "nat": nat_first},
            (last_decl, *per_node[_N_SERVICES], _NODEPORTS_TAIL, *per_node[_N_NODEPORTS]),
        )
        out[node] = IptablesRules(
            node=node,
            filter=TableRules(
                [_FILTER_DECL],
                list(f_rules),
            ),
            nat=TableRules(
                [_NAT_DECL, *per_node[_N_DECL]],
                [
                    *per_node[_N_SERVICES],
                    _NODEPORTS_TAIL,
                    *per_node[_N_NODEPORTS],
                    _POSTROUTING_RULES,
                    _MARK_MASQ_RULES,
                    *per_node[_N_RULES],
                ],
            ),
            parts=parts,
        )
    return out
