"""The nftables renderer: kube-proxy's nftables mode (KEP-3866), for every node at once.

A node gets one table, ``table ip svcops``, that svcops owns alone; nothing outside
it is ever named, so iptables' own chains, docker's, ufw's or another nftables table
keep working next to it. Inside, the layout is kube-proxy's
(pkg/proxy/nftables/proxier.go), with the same service semantics as svcops's
iptables mode (`svcops.render.iptables`):

    base chains             hook          priority   jumps to
    filter-prerouting       prerouting    -110       firewall-check
    filter-input            input         -110       external-endpoints-check
    filter-forward          forward       -110       service- and external-endpoints-check
    filter-output           output        -110       service-endpoints-check, firewall-check
    nat-prerouting          prerouting    -100       services
    nat-output              output        -100       services
    nat-postrouting         postrouting   100        masquerading

    (filter chains run before iptables' nat at -100, so they see the service address
    before DNAT; they only drop or reject, never accept, so iptables' own filter
    chains still have their say.)

    services                  ip daddr . meta l4proto . th dport vmap @service-ips
                              fib daddr type local (not 127/8): ... vmap @service-nodeports
    service-endpoints-check   @no-endpoint-services: a cluster IP without (local) endpoints
    external-endpoints-check  @no-endpoint-external (external and LB IPs),
                              @no-endpoint-nodeports (node ports): reject, or drop for a
                              Local policy without local endpoints
    firewall-check            @firewall-ips -> firewall-<port>: loadBalancerSourceRanges
    mark-for-masquerade, masquerading (hairpin first: ``ct status dnat ip saddr . ip
                              daddr vmap @hairpin``), reject-chain

Per service port (a "unit"), chains named as kube-proxy names them (nftables allows
[A-Za-z0-9_./-] and 255 characters; "<kind>-<hash8>-ns/name/proto/port"):

    service-...   Cluster policy: an equal random choice, each endpoint's DNAT in the
                  chain itself (``numgen random mod N 0 meta l4proto tcp dnat to
                  ip:port``); with ClientIP affinity, affinity checks (``ip saddr
                  @affinity-... goto``) and the choice among endpoint chains
    local-...     the same over this node's endpoints (Local traffic policies)
    external-...  node ports, external and LB IPs: mark for masquerade (Cluster), or
                  keep the client address and go to local-... (Local)
    firewall-...  ``ip saddr != { source ranges } drop``
    endpoint-...__ip/port   ClientIP affinity only: affinity update, DNAT
    affinity-...__ip/port   a timed set of client addresses (ClientIP affinity)

Unlike kube-proxy, endpoints without affinity get no chain of their own: nft 1.0.6
fetches every chain of the ruleset before each transaction, so a one-service change
costs what the number of chains costs (10,000 services x 10 endpoints: 110,000 chains,
0.69 s; 10,000 chains, 0.06 s). Hairpin traffic, which kube-proxy marks in the
endpoint chain (``ip saddr EP``), is recognised after the DNAT instead: source and
destination are the same endpoint address, an element of the `hairpin` map
(`hairpin_units`).

and its map elements, each with ``comment "<unit> <digest>"``: the digest of
everything the unit holds on that node, so the live listing tells which version of
each unit a node has (`svcops.render.nftables_live`).

Applying: a kernel spends most of a big transaction validating it (measured: a
10,000-service table in one transaction ~56 s, in 1,000-service chunks 12.5 s, a
one-service change 0.3 s), so a clean node gets `cold_payloads`: the skeleton and
then chunks of units. A live one gets only what differs from its listing
(`svcops.render.nftables_diff`: units whose digest or content differs, anything
foreign in the table). `full_payload` is the whole table in one transaction (what
`svcops render` prints, and a boot file).

Speed: as the iptables renderer, each unit is rendered once and shared by every node;
only Local-policy units are rendered per distinct set of local endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from hashlib import sha256
from socket import inet_aton
from typing import Iterable, Sequence

import netaddr

from svcops.gcpause import gc_paused
from svcops.render import chains as C
from svcops.render.nftables_live import LIVE_COMMANDS, MAP_NAMES, TABLE, NftLive, parse_nft_list
from svcops.site.model import Cluster, Endpoint, ResolvedPort, is_ipv4

__all__ = [
    "TABLE",
    "LIVE_COMMANDS",
    "MASQ_MARK",
    "SKELETON_DIGEST",
    "NftUnit",
    "NftRules",
    "SKELETON_COMMENT",
    "BASE_CHAINS",
    "TOP_RULES",
    "BASE_RULES",
    "MAPS",
    "STATE_SET",
    "NftLive",
    "render_nodes",
    "full_payload",
    "cold_payloads",
    "skeleton_payload",
    "cold_units",
    "set_command",
    "element_commands",
    "chunks",
    "parse_nft_list",
    "unit_id",
    "chain_names",
    "hairpin_units",
    "HAIRPIN_MAP",
    "HAIRPIN_UNIT",
    "hairpin_group",
]

MASQ_MARK = "0x4000"  # kube-proxy's default masquerade bit 14, as in iptables mode

# Maps: name -> type. ip-keyed maps go from address . protocol . port.
_IP_KEY = "ipv4_addr . inet_proto . inet_service : verdict"
_PORT_KEY = "inet_proto . inet_service : verdict"
MAPS: dict[str, tuple[str, str]] = {
    "service-ips": (_IP_KEY, "cluster, external and load-balancer IPs"),
    "service-nodeports": (_PORT_KEY, "node ports"),
    "no-endpoint-services": (_IP_KEY, "cluster IPs without usable endpoints"),
    "no-endpoint-external": (_IP_KEY, "external and load-balancer IPs without usable endpoints"),
    "no-endpoint-nodeports": (_PORT_KEY, "node ports without usable endpoints"),
    "firewall-ips": (_IP_KEY, "load-balancer IPs with loadBalancerSourceRanges"),
    "hairpin": ("ipv4_addr . ipv4_addr : verdict", "endpoint addresses: an endpoint reaching itself is masqueraded"),
}
HAIRPIN_MAP = "hairpin"
HAIRPIN_VERDICT = "jump mark-for-masquerade"
assert tuple(MAPS) == MAP_NAMES
# The canary: one element whose comment is the fingerprint of the record svcops last
# applied (`svcops.render.nftables_record`).
STATE_SET = "state"

# Base chains: name -> (type, hook, priority). Numbers, not nft's names ("dstnat" is
# -100, "srcnat" 100): nft 1.0.6 accepts the names only on some hooks. Filter chains
# at -110 run before DNAT.
BASE_CHAINS: dict[str, tuple[str, str, str]] = {
    "filter-prerouting": ("filter", "prerouting", "-110"),
    "filter-input": ("filter", "input", "-110"),
    "filter-forward": ("filter", "forward", "-110"),
    "filter-output": ("filter", "output", "-110"),
    "nat-prerouting": ("nat", "prerouting", "-100"),
    "nat-output": ("nat", "output", "-100"),
    "nat-postrouting": ("nat", "postrouting", "100"),
}

_NEW = "ct state new "
# Regular chains of the skeleton, with their rules.
TOP_RULES: dict[str, tuple[str, ...]] = {
    "services": (
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
    ),
    "service-endpoints-check": ("ip daddr . meta l4proto . th dport vmap @no-endpoint-services",),
    "external-endpoints-check": (
        "ip daddr . meta l4proto . th dport vmap @no-endpoint-external",
        "fib daddr type local meta l4proto . th dport vmap @no-endpoint-nodeports",
    ),
    "firewall-check": ("ip daddr . meta l4proto . th dport vmap @firewall-ips",),
    "mark-for-masquerade": (f"mark set mark or {MASQ_MARK}",),
    "masquerading": (
        # Hairpin: DNATed to the client's own address (kube-proxy marks it in the
        # endpoint chain, `-s EP -j KUBE-MARK-MASQ`; after the DNAT, saddr == daddr).
        f"ct status dnat ip saddr . ip daddr vmap @{HAIRPIN_MAP}",
        f"mark and {MASQ_MARK} == 0 return",
        f"mark set mark xor {MASQ_MARK}",
        "masquerade fully-random",
    ),
    "reject-chain": ("reject",),
}
BASE_RULES: dict[str, tuple[str, ...]] = {
    "filter-prerouting": (_NEW + "jump firewall-check",),
    "filter-input": (_NEW + "jump external-endpoints-check",),
    "filter-forward": (_NEW + "jump service-endpoints-check", _NEW + "jump external-endpoints-check"),
    "filter-output": (_NEW + "jump service-endpoints-check", _NEW + "jump firewall-check"),
    "nat-prerouting": ("jump services",),
    "nat-output": ("jump services",),
    "nat-postrouting": ("jump masquerading",),
}


def _skeleton_body() -> str:
    out = [f'add table {TABLE} {{ comment "service rules of svcops" ; }}\n']
    for name, (kind, comment) in MAPS.items():
        out.append(f'add map {TABLE} {name} {{ type {kind} ; comment "{comment}" ; }}\n')
    out.append(f'add set {TABLE} {STATE_SET} {{ type ipv4_addr ; comment "what svcops applied last" ; }}\n')
    for name in TOP_RULES:
        out.append(f"add chain {TABLE} {name}\n")
    for name, rules in TOP_RULES.items():
        out.extend(f"add rule {TABLE} {name} {r}\n" for r in rules)
    return "".join(out)


_SKELETON_BODY = _skeleton_body()
SKELETON_DIGEST = C.hash16(_SKELETON_BODY + repr(BASE_CHAINS) + repr(BASE_RULES))
SKELETON_COMMENT = f"svcops skeleton {SKELETON_DIGEST}"


def _base_chains(recreate: bool) -> str:
    out = []
    for name, (kind, hook, prio) in BASE_CHAINS.items():
        if recreate:
            # add + delete: a base chain whose hook or priority changed is re-made,
            # and its comment (the skeleton digest) is refreshed.
            out.append(f"add chain {TABLE} {name}\ndelete chain {TABLE} {name}\n")
        out.append(
            f"add chain {TABLE} {name} {{ type {kind} hook {hook} priority {prio} ; policy accept ; "
            f'comment "{SKELETON_COMMENT}" ; }}\n'
        )
    for name, rules in BASE_RULES.items():
        out.extend(f"add rule {TABLE} {name} {r}\n" for r in rules)
    return "".join(out)


def skeleton_payload(clean: bool) -> str:
    """The table without any service: maps, top-level chains, base chains.

    clean=True (a cold start): the table is deleted first, so whatever was there is
    gone. clean=False (repair of a live table): top-level chains are flushed and
    refilled, base chains re-made, maps kept with their elements.
    """
    head = f"add table {TABLE}\ndelete table {TABLE}\n" if clean else ""
    flush = "" if clean else "".join(f"flush chain {TABLE} {n}\n" for n in TOP_RULES)
    # Top-level chains are declared, then (when live) flushed, before any rule.
    body = _SKELETON_BODY
    i = body.index(f"add rule {TABLE} ")
    return head + body[:i] + flush + body[i:] + _base_chains(recreate=not clean)


# --- names ---------------------------------------------------------------------------

_NAME_BASE_MAX = 240  # nft names are at most 255 bytes; prefixes are at most 9


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_PAIRS = [a + b for a in _B32 for b in _B32]  # base32 10 bits at a time


def _hash8(name: str) -> str:
    """base32(sha256(name))[:8]: the first 40 bits (kube-proxy's chain-name hash)."""
    n = int.from_bytes(sha256(name.encode()).digest()[:5], "big")
    p = _PAIRS
    return p[n >> 30] + p[(n >> 20) & 1023] + p[(n >> 10) & 1023] + p[n & 1023]


def _base(name: str) -> str:
    """kube-proxy's hashAndTruncate: "<hash8>-<name>", truncated if ever too long."""
    base = _hash8(name) + "-" + name
    if len(base) > _NAME_BASE_MAX:
        base = base[: _NAME_BASE_MAX - 3] + "..."
    return base


def unit_id(rp: ResolvedPort) -> str:
    """"ns/name/proto/port": a service port's identity in chain names and comments."""
    svc = rp.service
    return f"{svc.namespace}/{svc.name}/{rp.port.protocol.lower()}/{rp.port.name}"


def chain_names(rp: ResolvedPort) -> dict[str, str]:
    """The names of a service port's own chains: kind -> name."""
    base = _base(unit_id(rp))
    return {k: f"{k}-{base}" for k in ("service", "local", "external", "firewall")}


# --- what a node gets ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NftUnit:
    """One service port on one node: its chains, affinity sets, rules and map elements.

    id:       "ns/name/proto/port"
    digest:   of everything below: what the comments of its elements carry
    chains:   its chains, in the order they are declared
    sets:     its affinity sets, (name, timeout in seconds)
    rules:    its "add rule" lines
    elements: (map, key, verdict)
    """

    id: str
    digest: str
    chains: tuple[str, ...]
    sets: tuple[tuple[str, int], ...]
    rules: str
    elements: tuple[tuple[str, str, str], ...]

    @property
    def comment(self) -> str:
        return f"{self.id} {self.digest}"


@dataclass(frozen=True, slots=True)
class NftRules:
    """What one node gets: the units, in order (most of them shared with other nodes)."""

    node: str
    units: tuple[NftUnit, ...]

    def unit(self, uid: str) -> NftUnit | None:
        for u in self.units:
            if u.id == uid:
                return u
        return None


# --- rendering -----------------------------------------------------------------------


def _source_ranges(ranges: Iterable[str]) -> list[str] | None:
    """The IPv4 source ranges as an nft set's elements (merged: nft refuses overlapping
    intervals); None when one of them is 0.0.0.0/0, i.e. every source is allowed."""
    nets = []
    for text in ranges:
        try:
            net = netaddr.IPNetwork(text)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            continue
        if net.version != 4:
            continue
        if net.prefixlen == 0:
            return None
        nets.append(net.cidr)
    return [str(n.ip) if n.prefixlen == 32 else str(n) for n in netaddr.cidr_merge(nets)]


class _Port:
    """One service port, with everything about it that does not depend on the node."""

    __slots__ = (
        "uid", "proto", "svc", "loc", "ext", "fw", "eps", "affinity", "cip_key", "ext_keys", "lb_key",
        "np_key", "ranges", "ext_access", "int_local", "ext_local", "uses_cluster", "uses_local", "uses_fw",
        "_eps_names", "_cluster",
    )  # fmt: skip

    def __init__(self, rp: ResolvedPort, claimed: set[str]) -> None:
        svc = rp.service
        self.uid = uid = unit_id(rp)
        self.proto = proto = rp.port.protocol.lower()
        base = _base(uid)
        self.svc, self.loc, self.ext, self.fw = (f"{k}-{base}" for k in ("service", "local", "external", "firewall"))
        self.eps: list[Endpoint] = [e for e in rp.endpoints if is_ipv4(e.ip)]
        self.affinity = svc.affinity_timeout if svc.session_affinity == "ClientIP" else None
        tail = f" . {proto} . {rp.port.port}"
        # A key another port already has (two services on one external IP and port)
        # would make the transaction fail: the first port keeps it, as the first
        # matching iptables rule would.
        self.cip_key = rp.cluster_ip + tail
        claimed.add(self.cip_key)
        self.ext_keys = []
        for ip in dict.fromkeys(svc.external_ips):
            if is_ipv4(ip) and ip + tail not in claimed:
                claimed.add(ip + tail)
                self.ext_keys.append(ip + tail)
        self.lb_key = None
        if is_ipv4(rp.load_balancer_ip) and rp.load_balancer_ip + tail not in claimed:  # type: ignore[operator]
            self.lb_key = rp.load_balancer_ip + tail  # type: ignore[operator]
            claimed.add(self.lb_key)
        self.np_key = None
        if rp.node_port and f"{proto} . {rp.node_port}" not in claimed:
            self.np_key = f"{proto} . {rp.node_port}"
            claimed.add(self.np_key)
        self.ext_access = bool(self.np_key or self.lb_key or self.ext_keys)
        self.int_local = svc.internal_traffic_policy == "Local"
        self.ext_local = svc.external_traffic_policy == "Local" and self.ext_access
        # kube-proxy's UsesClusterEndpoints / UsesLocalEndpoints.
        self.uses_cluster = not self.int_local or self.ext_access
        self.uses_local = self.int_local or self.ext_local
        self.ranges = None
        if self.lb_key and svc.load_balancer_source_ranges:
            self.ranges = _source_ranges(svc.load_balancer_source_ranges)
        self.uses_fw = bool(self.eps and self.lb_key and self.ranges)
        self._eps_names: list[tuple[str, str]] | None = None
        self._cluster: tuple[list[str], list[tuple[str, int]], list[str]] | None = None

    def ep_names(self) -> list[tuple[str, str]]:
        """Per endpoint: (its endpoint chain, its affinity set)."""
        if self._eps_names is None:
            uid = self.uid
            out = []
            for e in self.eps:
                base = _base(f"{uid}__{e.ip}/{e.port}")
                out.append(("endpoint-" + base, "affinity-" + base))
            self._eps_names = out
        return self._eps_names

    def policy_chain(self, chain: str, which: Sequence[int], with_endpoints: bool,
                     chains: list[str], sets: list[tuple[str, int]], rules: list[str]) -> None:  # fmt: skip
        """A service-/local- chain: an equal random choice among the endpoints `which`.

        Without affinity each choice is its own DNAT, in the chain itself: no chain per
        endpoint. nft 1.0.6 fetches every chain of the ruleset before any transaction
        that adds a rule or an element, so chains are what a small change costs
        (measured at 10,000 services x 10 endpoints: 110,000 chains, 0.69 s a
        one-service change; 10,000 chains, 0.06 s). Hairpin traffic (an endpoint
        reaching itself) is masqueraded in postrouting through the `hairpin` map.

        ClientIP affinity needs a chain per endpoint (kube-proxy's layout): affinity
        checks (``ip saddr @affinity-... goto endpoint-...``), then the random choice;
        the endpoint chains (made here when `with_endpoints`) remember the client and
        DNAT."""
        p = f"add rule {TABLE} {chain} "
        chains.append(chain)
        proto = self.proto
        # One rule per endpoint, `numgen random mod (n-i) 0` (probability 1/(n-i), as the
        # iptables renderer's statistic rules), not one `vmap {...}`: the anonymous maps made
        # a 10,000-service cold load 3.5x slower (32.7 s vs 9.3 s) and the listing 3x slower.
        n = len(which)
        if self.affinity is None:
            eps = self.eps
            for k, i in enumerate(which):
                e = eps[i]
                pick = "" if k == n - 1 else f"numgen random mod {n - k} 0 "
                rules.append(f"{p}{pick}meta l4proto {proto} dnat to {e.ip}:{e.port}\n")
            return
        names = self.ep_names()
        rules.extend(f"{p}ip saddr @{names[i][1]} goto {names[i][0]}\n" for i in which)
        for k, i in enumerate(which):
            pick = "" if k == n - 1 else f"numgen random mod {n - k} 0 "
            rules.append(f"{p}{pick}goto {names[i][0]}\n")
        if not with_endpoints:
            return
        for i in which:
            ep, aff = names[i]
            e = self.eps[i]
            q = f"add rule {TABLE} {ep} "
            chains.append(ep)
            sets.append((aff, self.affinity))
            rules.append(f"{q}update @{aff} {{ ip saddr }}\n")
            rules.append(f"{q}meta l4proto {proto} dnat to {e.ip}:{e.port}\n")

    def cluster_part(self) -> tuple[list[str], list[tuple[str, int]], list[str]]:
        """The service- chain and every endpoint's chain: the same on every node."""
        if self._cluster is None:
            chains: list[str] = []
            sets: list[tuple[str, int]] = []
            rules: list[str] = []
            self.policy_chain(self.svc, range(len(self.eps)), True, chains, sets, rules)
            self._cluster = (chains, sets, rules)
        return self._cluster


def _unit(p: _Port, local: tuple[int, ...] | None) -> NftUnit:
    """A port's unit, for a node whose local endpoints are `local` (indices into p.eps;
    None when the port has no Local policy: the same on any node)."""
    has_eps = bool(p.eps)
    local_eps: tuple[int, ...] = (local or ()) if p.uses_local else ()
    has_internal = has_eps and (not p.int_local or bool(local_eps))
    has_external = has_eps and (not p.ext_local or bool(local_eps))
    internal_chain = p.loc if p.int_local else p.svc
    verdict = "drop" if has_eps else "goto reject-chain"
    elements: list[tuple[str, str, str]] = []
    chains: list[str] = []
    sets: list[tuple[str, int]] = []
    rules: list[str] = []

    # Dispatch: cluster IP, external IPs, load-balancer IP, node port.
    if has_internal:
        elements.append(("service-ips", p.cip_key, "goto " + internal_chain))
    else:
        elements.append(("no-endpoint-services", p.cip_key, verdict))
    ext_keys = [*p.ext_keys, p.lb_key] if p.lb_key else p.ext_keys
    for key in ext_keys:
        if has_eps:
            elements.append(("service-ips", key, "goto " + p.ext))
        if not has_external:
            elements.append(("no-endpoint-external", key, verdict))
    if p.uses_fw:
        elements.append(("firewall-ips", p.lb_key, "goto " + p.fw))  # type: ignore[arg-type]
    if p.np_key:
        if has_eps:
            elements.append(("service-nodeports", p.np_key, "goto " + p.ext))
        if not has_external:
            elements.append(("no-endpoint-nodeports", p.np_key, verdict))

    # The port's own chains.
    if has_eps and p.ext_access:
        e = f"add rule {TABLE} {p.ext} "
        chains.append(p.ext)
        if not p.ext_local:
            rules.append(e + "jump mark-for-masquerade\n")
        else:
            # The node itself is a local client: masquerade it and let it use any
            # endpoint; everyone else keeps its address and reaches local ones only.
            rules.append(e + "fib saddr type local jump mark-for-masquerade\n")
            rules.append(f"{e}fib saddr type local goto {p.svc}\n")
        if has_external:
            rules.append(f"{e}goto {p.loc if p.ext_local else p.svc}\n")
    if p.uses_fw:
        chains.append(p.fw)
        rules.append(f"add rule {TABLE} {p.fw} ip saddr != {{ {', '.join(p.ranges)} }} drop\n")  # type: ignore[arg-type]
    if p.uses_cluster and has_eps:
        c_chains, c_sets, c_rules = p.cluster_part()
        chains.extend(c_chains)
        sets.extend(c_sets)
        rules.extend(c_rules)
    if local_eps:
        p.policy_chain(p.loc, local_eps, not p.uses_cluster, chains, sets, rules)

    return _make_unit(p.uid, chains, sets, "".join(rules), elements)


def _make_unit(uid: str, chains: list[str], sets: list[tuple[str, int]], text: str,
               elements: list[tuple[str, str, str]]) -> NftUnit:  # fmt: skip
    h = sha256(uid.encode())
    h.update(text.encode())
    h.update(repr((chains, sets, elements)).encode())
    n = int.from_bytes(h.digest()[:10], "big")  # 80 bits, 16 base32 characters
    digest = "".join([_PAIRS[(n >> k) & 1023] for k in (70, 60, 50, 40, 30, 20, 10, 0)])
    return NftUnit(uid, digest, tuple(chains), tuple(sets), text, tuple(elements))


HAIRPIN_UNIT = "hairpin/"  # + group: not a service port's id (those have four parts)
HAIRPIN_GROUPS = 4096


@lru_cache(maxsize=1 << 18)  # a sha256 per endpoint address, on every render: 0.3 s at 100,000
def hairpin_group(ip: str) -> str:
    """The hairpin unit an endpoint address belongs to: "hairpin/<3 hex digits>", by a
    hash of the address (stable: the same address always falls into the same unit)."""
    return f"{HAIRPIN_UNIT}{int.from_bytes(sha256(ip.encode()).digest()[:4], 'big') % HAIRPIN_GROUPS:03x}"


def hairpin_units(addresses: Iterable[str]) -> list[NftUnit]:
    """The `hairpin` map's elements ("A . A" for every endpoint address A, so that a
    connection DNATed to its own client is masqueraded), as units of their own.

    Endpoint addresses are shared by services, so no service port can own them; the
    addresses are hashed into at most `HAIRPIN_GROUPS` units instead: a change that
    brings or takes an address re-sends its group (a few dozen elements at 100,000
    addresses), and a site's unit count stays near its service ports' (one unit per
    address made a 10,000-service site of 100,000 pods 110,000 units, and every
    per-unit step of the controller 10x slower)."""
    groups: dict[str, list[str]] = {}
    for ip in set(addresses):
        groups.setdefault(hairpin_group(ip), []).append(ip)
    out = []
    for uid in sorted(groups):
        ips = sorted(groups[uid], key=inet_aton)  # numeric order (dotted quads, validated)
        out.append(_make_unit(uid, [], [], "", [(HAIRPIN_MAP, f"{ip} . {ip}", HAIRPIN_VERDICT) for ip in ips]))
    return out


def render_nodes(cluster: Cluster, ports: Sequence[ResolvedPort], nodes: Sequence[str]) -> dict[str, NftRules]:
    """svcops's nftables units for every node, sharing everything that can be shared.

    `ports` as `svcops.compile.endpoints.resolve` returns them. Ports without a Local traffic
    policy give one unit every node shares; Local-policy ports come after them, one
    unit per distinct set of local endpoints. `cluster` carries no setting that
    changes the rules today; kept for the same signature as the other renderers.
    """
    del cluster
    with gc_paused():
        return _render_nodes(ports, nodes)


def _render_nodes(ports: Sequence[ResolvedPort], nodes: Sequence[str]) -> dict[str, NftRules]:
    shared: list[NftUnit] = []
    local_ports: list[tuple[_Port, dict[str, tuple[int, ...]]]] = []
    claimed: set[str] = set()
    seen: set[str] = set()
    kept: list[_Port] = []
    for rp in ports:
        if not is_ipv4(rp.cluster_ip):
            continue
        p = _Port(rp, claimed)
        if p.uid in seen:  # the same service port twice: keep the first
            continue
        seen.add(p.uid)
        kept.append(p)
        if not p.uses_local:
            shared.append(_unit(p, None))
            continue
        by_node: dict[str, list[int]] = {}
        for i, e in enumerate(p.eps):
            if e.node is not None:
                by_node.setdefault(e.node, []).append(i)
        local_ports.append((p, {n: tuple(v) for n, v in by_node.items()}))
    shared.extend(hairpin_units(e.ip for p in kept for e in p.eps))
    base = tuple(shared)
    cache: dict[tuple[int, tuple[int, ...]], NftUnit] = {}
    out: dict[str, NftRules] = {}
    for node in nodes:
        if not local_ports:
            out[node] = NftRules(node, base)
            continue
        units = list(base)
        for k, (p, by_node) in enumerate(local_ports):
            view = by_node.get(node, ())
            u = cache.get((k, view))
            if u is None:
                u = cache[(k, view)] = _unit(p, view)
            units.append(u)
        out[node] = NftRules(node, tuple(units))
    return out


# --- payloads ------------------------------------------------------------------------


def set_command(name: str, timeout: int) -> str:
    """The ``add set`` of an affinity set."""
    return f"add set {TABLE} {name} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}\n"


def element_commands(op: str, items: dict[str, list[str]]) -> list[str]:
    """One `add element` / `delete element` command per map, its items one a line."""
    return [f"{op} element {TABLE} {m} {{ " + ",\n\t".join(v) + " }\n" for m, v in items.items() if v]


def cold_units(units: Sequence[NftUnit]) -> str:
    """Units for a table that does not hold them yet: sets, chains, rules, elements."""
    out: list[str] = []
    adds: dict[str, list[str]] = {m: [] for m in MAPS}
    for u in units:
        out.extend(set_command(n, t) for n, t in u.sets)
        out.extend(f"add chain {TABLE} {c}\n" for c in u.chains)
    for u in units:
        out.append(u.rules)
        comment = u.comment
        for m, key, value in u.elements:
            adds[m].append(f'{key} comment "{comment}" : {value}')
    out.extend(element_commands("add", adds))
    return "".join(out)


def full_payload(rules: NftRules) -> str:
    """The whole table for `rules`, as one `nft -f` transaction.

    It deletes any previous svcops table first (and nothing else), so loading it
    gives exactly `rules` whatever was there: what `svcops render` prints and what a
    boot file holds. For a big table prefer `cold_payloads`' chunks.
    """
    return skeleton_payload(clean=True) + cold_units(rules.units)


def chunks(seq: Sequence, size: int) -> list[Sequence]:
    """`seq` cut into pieces of at most `size`."""
    size = max(1, size)
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def cold_payloads(rules: NftRules, chunk: int = 1000) -> list[str]:
    """The `nft -f` transactions, in order, that give a node without svcops's table (or
    with any table: the first deletes it) exactly `rules`: the skeleton, then chunks of
    `chunk` units, each a valid transaction on its own. (For a live table, only what
    differs: `svcops.render.nftables_diff.update_payloads`.)"""
    return [skeleton_payload(clean=True)] + [cold_units(c) for c in chunks(rules.units, chunk)]
