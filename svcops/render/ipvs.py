"""The IPVS renderer: kube-proxy's IPVS mode, for every node at once.

In IPVS mode the kernel's IP Virtual Server does the load balancing and iptables
only marks, filters and masquerades. What a node gets (`IpvsRules`) is four things,
applied in this order:

1. ``ipset restore`` input (`IpvsRules.ipset`): the sets the iptables rules match
   (kube-proxy's, named ``SVCOPS-...``, see `SETS`). Each set is refilled atomically:
   a temporary set ``<name>-T`` is filled and swapped in (``ipset swap``), so a rule
   never sees a half-filled set, and the payload can be applied again and again.
2. ``iptables-restore --noflush`` input (`IpvsRules.iptables`): a small, fixed set of
   rules in svcops's own ``SVCOPS-`` chains that match those sets. It is the same on
   every node and for every site: adding a service only changes sets and IPVS.
3. The addresses of the dummy interface `DUMMY_INTERFACE` (`IpvsRules.addresses`):
   every cluster IP, external IP and load-balancer IP (as /32), so the node accepts
   packets for them and IPVS (in the INPUT path) takes them over. A node's own
   addresses are never put there.
4. ``ipvsadm -R`` input (`IpvsRules.ipvsadm`): the virtual servers and their real
   servers, in the form ``ipvsadm-save -n`` prints them back::

       -A -t 10.96.0.10:80 -s rr
       -a -t 10.96.0.10:80 -r 10.244.2.7:8080 -m -w 1

   Note that Debian's ``ipvsadm-restore`` clears every virtual server first
   (``ipvsadm -C``); `ipvsadm_update` computes the edit (``-D``/``-A``/``-E``/``-a``/
   ``-d``) that takes a node from its ``ipvsadm-save -n`` output to the rendered state
   without touching anything svcops does not own.

The semantics are the iptables renderer's, as far as IPVS gives them:

* A virtual server per cluster IP:port, external IP:port, load-balancer IP:port and,
  for node ports, per node address:nodePort (`render_nodes` takes each node's
  addresses). Real servers are the endpoints, masqueraded (``-m``), weight 1.
* The scheduler is ``cluster.ipvs_scheduler`` (default rr), or the service's
  ``svcops.io/ipvs-scheduler`` annotation: rr, wrr, lc, wlc, sh, dh, sed, nq.
  ``sessionAffinity: ClientIP`` is IPVS persistence (``-p <timeoutSeconds>``).
* ``externalTrafficPolicy: Local``: the external virtual servers (node ports,
  external IPs, load-balancer IP) hold this node's endpoints only and their traffic
  is not masqueraded (the client address is kept). ``internalTrafficPolicy: Local``:
  the cluster IP's virtual server holds this node's endpoints only. Unlike iptables
  mode, node-local clients of an external address get the Local view too (IPVS
  cannot tell them apart; kube-proxy's IPVS mode behaves the same).
* A service (or a Local view) without endpoints gets no virtual server: its addresses
  are in ``SVCOPS-NO-ENDPOINTS`` (rejected, icmp-port-unreachable) or
  ``SVCOPS-NO-LOCAL-ENDPOINTS`` (dropped), as in iptables mode.
* Masquerade: traffic to node ports, external IPs and load-balancer IPs (Cluster
  policy), node-originated traffic to a cluster IP (its source is the cluster IP
  itself, held by the dummy interface), and hairpin traffic (an endpoint reaching
  itself through a service: ``SVCOPS-LOOP-BACK``).
* ``loadBalancerSourceRanges``: packets to the load-balancer IP from elsewhere are
  marked in nat and dropped in filter (``SVCOPS-FIREWALL``).
* Other ports of a virtual address are rejected (``SVCOPS-IPVS-IPS``), and service
  traffic is accepted in INPUT before other rules (IPVS takes it after filter INPUT,
  where iptables mode had already DNATed it elsewhere).

The kernel needs `SYSCTLS` (``net.ipv4.vs.conntrack=1`` above all: without it the
masquerade rules never see IPVS traffic).

Speed: 10,000 services x 10 endpoints on 100 nodes. As in the iptables renderer,
each service port is rendered once into strings every node shares; a Local-policy port
once per distinct set of local endpoints; node-port virtual servers once, as a
template joined with each node's addresses only when a payload is asked for.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import netaddr

from svcops.gcpause import gc_paused
from svcops.render import chains as C
from svcops.render.iptables import IptablesRules, Jump, TableRules, jump, restore_payload
from svcops.site.model import SCHEDULER_ANNOTATION, Cluster, Endpoint, ResolvedPort, is_ipv4

__all__ = [
    "ipvs_modules",
    "DUMMY_INTERFACE",
    "SCHEDULERS",
    "SYSCTLS",
    "NODE_WIDE_SYSCTLS",
    "SYSCTLS_BEFORE",
    "SETS",
    "IpsetDef",
    "IpvsRules",
    "IPVS_JUMPS",
    "render_nodes",
    "ipset_destroy_payload",
    "parse_ipvsadm_save",
    "ipvsadm_update",
]

# Linux interface names have at most 15 characters (IFNAMSIZ 16, with the NUL).
DUMMY_INTERFACE = "svcops-ipvs0"

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq")

MASQ_MARK = "0x4000"  # kube-proxy's default --iptables-masquerade-bit 14
DROP_MARK = "0x8000"  # kube-proxy's KUBE-MARK-DROP bit 15

# What the kernel must be set to (kube-proxy sets the same in IPVS mode):
SYSCTLS: Mapping[str, str] = {
    "net.ipv4.ip_forward": "1",
    # Let IPVS connections be seen by conntrack, so that nat POSTROUTING masquerades them.
    "net.ipv4.vs.conntrack": "1",
    # Drop connections to removed real servers instead of black-holing them.
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
    # kube-proxy's strictARP: the dummy interface's addresses are on every node, so only
    # the interface that really holds an address may answer ARP for it (load-balancer
    # addresses are announced by one node, see svcops.compile.announce).
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
}

# The SYSCTLS that change how the whole node behaves outside IPVS: their values from
# before svcops set them are kept in SYSCTLS_BEFORE and put back when IPVS mode is left
# (the net.ipv4.vs.* ones only exist with the ip_vs module; ip_forward every mode needs).
NODE_WIDE_SYSCTLS = ("net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce")
SYSCTLS_BEFORE = "/etc/svcops/ipvs-sysctls.before"

# The IPVS flag of a protocol, as ipvsadm-save prints it.
_IPVS_FLAG = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}

# --- the sets -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpsetDef:
    """One ipset svcops owns: its name (<= 31 characters; "<name>-T" too) and type."""

    name: str
    type: str
    comment: str


_HASH_OPTS = "family inet hashsize 1024 maxelem 262144"

LOOP_BACK = IpsetDef("SVCOPS-LOOP-BACK", "hash:ip,port,ip", "endpoint ip:port and itself as source: hairpin")
CLUSTER_IP = IpsetDef("SVCOPS-CLUSTER-IP", "hash:ip,port", "cluster IP:port with a virtual server")
EXTERNAL_IP = IpsetDef("SVCOPS-EXTERNAL-IP", "hash:ip,port", "external IP:port, Cluster policy")
EXTERNAL_IP_LOCAL = IpsetDef("SVCOPS-EXTERNAL-IP-LOCAL", "hash:ip,port", "external IP:port, Local policy")
LOAD_BALANCER = IpsetDef("SVCOPS-LOAD-BALANCER", "hash:ip,port", "load-balancer IP:port")
LOAD_BALANCER_LOCAL = IpsetDef("SVCOPS-LOAD-BALANCER-LOCAL", "hash:ip,port", "load-balancer IP:port, Local policy")
LOAD_BALANCER_FW = IpsetDef("SVCOPS-LOAD-BALANCER-FW", "hash:ip,port", "load-balancer IP:port with source ranges")
LB_SOURCE_CIDR = IpsetDef("SVCOPS-LB-SOURCE-CIDR", "hash:ip,port,net", "load-balancer IP:port and an allowed source")
NODE_PORT_TCP = IpsetDef("SVCOPS-NODE-PORT-TCP", "bitmap:port", "TCP node ports")
NODE_PORT_LOCAL_TCP = IpsetDef("SVCOPS-NODE-PORT-LOCAL-TCP", "bitmap:port", "TCP node ports, Local policy")
NODE_PORT_UDP = IpsetDef("SVCOPS-NODE-PORT-UDP", "bitmap:port", "UDP node ports")
NODE_PORT_LOCAL_UDP = IpsetDef("SVCOPS-NODE-PORT-LOCAL-UDP", "bitmap:port", "UDP node ports, Local policy")
# SCTP node ports as node address,sctp:port (kube-proxy's KUBE-NODE-PORT-SCTP-HASH).
NODE_PORT_SCTP = IpsetDef("SVCOPS-NODE-PORT-SCTP", "hash:ip,port", "SCTP node ports")
NODE_PORT_LOCAL_SCTP = IpsetDef("SVCOPS-NODE-PORT-LOCAL-SCTP", "hash:ip,port", "SCTP node ports, Local policy")
NO_ENDPOINTS = IpsetDef("SVCOPS-NO-ENDPOINTS", "hash:ip,port", "service addresses without endpoints: reject")
NO_LOCAL_ENDPOINTS = IpsetDef("SVCOPS-NO-LOCAL-ENDPOINTS", "hash:ip,port", "Local addresses without local endpoints: drop")
IPVS_IPS = IpsetDef("SVCOPS-IPVS-IPS", "hash:ip", "every address of the dummy interface")

SETS: tuple[IpsetDef, ...] = (
    LOOP_BACK, CLUSTER_IP, EXTERNAL_IP, EXTERNAL_IP_LOCAL, LOAD_BALANCER, LOAD_BALANCER_LOCAL,
    LOAD_BALANCER_FW, LB_SOURCE_CIDR, NODE_PORT_TCP, NODE_PORT_LOCAL_TCP, NODE_PORT_UDP,
    NODE_PORT_LOCAL_UDP, NODE_PORT_SCTP, NODE_PORT_LOCAL_SCTP, NO_ENDPOINTS, NO_LOCAL_ENDPOINTS, IPVS_IPS,
)  # fmt: skip
(_LOOP, _CIP, _EIP, _EIPL, _LB, _LBL, _LBFW, _LBSRC, _NPT, _NPLT, _NPU, _NPLU, _NPS, _NPLS, _NOEP, _NOLEP, _VIPS) = range(
    len(SETS)
)
_NODE_PORT_SETS = {"TCP": (_NPT, _NPLT), "UDP": (_NPU, _NPLU), "SCTP": (_NPS, _NPLS)}

MAX_SET_NAME = 31  # IPSET_MAXNAMELEN - 1


def _create_line(s: IpsetDef, name: str, node_port_range: tuple[int, int]) -> str:
    opts = f"range {node_port_range[0]}-{node_port_range[1]}" if s.type == "bitmap:port" else _HASH_OPTS
    return f"create {name} {s.type} {opts}"


def ipset_destroy_payload(names: Iterable[str] | None = None) -> str:
    """``ipset restore`` input that destroys svcops's sets (leaving IPVS mode).

    Apply it after the iptables rules that match them are gone: the kernel refuses to
    destroy a set a rule still uses. `names`: the sets to destroy (e.g. the SVCOPS-
    sets `ipset list -n` shows); default: every set this renderer creates.
    """
    names = [s.name for s in SETS] if names is None else [n for n in names if n.startswith(C.PREFIX)]
    return "".join(f"destroy {n}\n" for n in names)


# --- the iptables rules that remain -------------------------------------------------

NODE_PORT = "SVCOPS-NODE-PORT"
LOAD_BALANCER_CHAIN = "SVCOPS-LOAD-BALANCER"
MARK_DROP = "SVCOPS-MARK-DROP"
IPVS_FILTER = "SVCOPS-IPVS-FILTER"

_NAT_CHAINS = (C.SERVICES, NODE_PORT, LOAD_BALANCER_CHAIN, C.FIREWALL, C.POSTROUTING, C.MARK_MASQ, MARK_DROP)
_FILTER_CHAINS = (C.SERVICES, IPVS_FILTER, C.FORWARD, C.FIREWALL)


# In each built-in chain, top-down.
IPVS_JUMPS: tuple[Jump, ...] = (
    jump("filter", "INPUT", C.FIREWALL, "svcops load balancer firewall", False),
    jump("filter", "INPUT", C.SERVICES, "svcops service portals", True),
    jump("filter", "INPUT", IPVS_FILTER, "svcops ipvs access filter", False),
    jump("filter", "FORWARD", C.FIREWALL, "svcops load balancer firewall", False),
    jump("filter", "FORWARD", C.FORWARD, "svcops forwarding rules", False),
    jump("filter", "OUTPUT", C.FIREWALL, "svcops load balancer firewall", False),
    jump("filter", "OUTPUT", C.SERVICES, "svcops service portals", True),
    jump("nat", "PREROUTING", C.SERVICES, "svcops service portals", False),
    jump("nat", "OUTPUT", C.SERVICES, "svcops service portals", False),
    jump("nat", "POSTROUTING", C.POSTROUTING, "svcops postrouting rules", False),
)


def _m(set_: IpsetDef, flags: str) -> str:
    return f"-m set --match-set {set_.name} {flags}"


def _c(text: str) -> str:
    return f'-m comment --comment "{text}"'


_REJECT = "REJECT --reject-with icmp-port-unreachable"


def _nat_rules() -> str:
    S, NP, LB, FW = C.SERVICES, NODE_PORT, LOAD_BALANCER_CHAIN, C.FIREWALL
    MASQ = C.MARK_MASQ
    rules = [
        # The dummy interface holds every cluster IP, so a node process reaching one gets
        # the cluster IP itself as source: masquerade it (kube-proxy does the same when it
        # has no cluster CIDR to tell pods from the rest).
        f'-A {S} {_c("svcops node traffic from a cluster IP")} {_m(CLUSTER_IP, "src,dst")} -j {MASQ}',
        f'-A {S} {_c("svcops load balancer IPs")} {_m(LOAD_BALANCER, "dst,dst")} -j {LB}',
        f'-A {S} {_c("svcops external IPs")} {_m(EXTERNAL_IP, "dst,dst")} -j {MASQ}',
        f"-A {S} -m addrtype --dst-type LOCAL -j {NP}",
        # Service traffic is IPVS's: no later nat rule (docker's...) may rewrite it.
        f"-A {S} {_m(CLUSTER_IP, 'dst,dst')} -j ACCEPT",
        f"-A {S} {_m(EXTERNAL_IP, 'dst,dst')} -j ACCEPT",
        f"-A {S} {_m(EXTERNAL_IP_LOCAL, 'dst,dst')} -j ACCEPT",
        f"-A {S} {_m(LOAD_BALANCER, 'dst,dst')} -j ACCEPT",
        f'-A {NP} -p tcp {_c("svcops node ports, Local policy")} {_m(NODE_PORT_LOCAL_TCP, "dst")} -j RETURN',
        f'-A {NP} -p tcp {_c("svcops node ports")} {_m(NODE_PORT_TCP, "dst")} -j {MASQ}',
        f'-A {NP} -p udp {_c("svcops node ports, Local policy")} {_m(NODE_PORT_LOCAL_UDP, "dst")} -j RETURN',
        f'-A {NP} -p udp {_c("svcops node ports")} {_m(NODE_PORT_UDP, "dst")} -j {MASQ}',
        f'-A {NP} -p sctp {_c("svcops node ports, Local policy")} {_m(NODE_PORT_LOCAL_SCTP, "dst,dst")} -j RETURN',
        f'-A {NP} -p sctp {_c("svcops node ports")} {_m(NODE_PORT_SCTP, "dst,dst")} -j {MASQ}',
        f'-A {LB} {_c("svcops load balancer source ranges")} {_m(LOAD_BALANCER_FW, "dst,dst")} -j {FW}',
        f'-A {LB} {_c("svcops load balancer IPs, Local policy")} {_m(LOAD_BALANCER_LOCAL, "dst,dst")} -j RETURN',
        f"-A {LB} -j {MASQ}",
        f'-A {FW} {_c("svcops allowed sources")} {_m(LB_SOURCE_CIDR, "dst,dst,src")} -j RETURN',
        f"-A {FW} -j {MARK_DROP}",
        f'-A {C.POSTROUTING} {_c("svcops hairpin")} {_m(LOOP_BACK, "dst,dst,src")} -j MASQUERADE',
        f"-A {C.POSTROUTING} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A {C.POSTROUTING} -j MARK --set-xmark {MASQ_MARK}/0x0",
        f'-A {C.POSTROUTING} {_c("svcops service traffic requiring SNAT")} -j MASQUERADE --random-fully',
        f"-A {MASQ} -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}",
        f"-A {MARK_DROP} -j MARK --set-xmark {DROP_MARK}/{DROP_MARK}",
    ]
    return "".join(r + "\n" for r in rules)


def _filter_rules() -> str:
    S, F = C.SERVICES, IPVS_FILTER
    rules = [
        f'-A {S} {_c("svcops services without endpoints")} {_m(NO_ENDPOINTS, "dst,dst")} -j {_REJECT}',
        f'-A {S} {_c("svcops services without local endpoints")} {_m(NO_LOCAL_ENDPOINTS, "dst,dst")} -j DROP',
        # IPVS takes its traffic after filter INPUT: let it through whatever follows.
        f"-A {F} {_m(CLUSTER_IP, 'dst,dst')} -j ACCEPT",
        f"-A {F} {_m(EXTERNAL_IP, 'dst,dst')} -j ACCEPT",
        f"-A {F} {_m(EXTERNAL_IP_LOCAL, 'dst,dst')} -j ACCEPT",
        f"-A {F} {_m(LOAD_BALANCER, 'dst,dst')} -j ACCEPT",
        f"-A {F} -p tcp {_m(NODE_PORT_TCP, 'dst')} -m addrtype --dst-type LOCAL -j ACCEPT",
        f"-A {F} -p udp {_m(NODE_PORT_UDP, 'dst')} -m addrtype --dst-type LOCAL -j ACCEPT",
        f"-A {F} -p sctp {_m(NODE_PORT_SCTP, 'dst,dst')} -j ACCEPT",
        f'-A {F} -m conntrack --ctstate NEW {_c("svcops other ports of virtual addresses")} {_m(IPVS_IPS, "dst")} -j {_REJECT}',
        f"-A {C.FORWARD} -m conntrack --ctstate INVALID -j DROP",
        f'-A {C.FORWARD} {_c("svcops forwarding rules")} -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT',
        f'-A {C.FORWARD} {_c("svcops forwarding conntrack rule")} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
        f'-A {C.FIREWALL} {_c("svcops load balancer source ranges")} -m mark --mark {DROP_MARK}/{DROP_MARK} -j DROP',
    ]
    return "".join(r + "\n" for r in rules)


_FILTER = TableRules(["".join(f":{c} - [0:0]\n" for c in _FILTER_CHAINS)], [_filter_rules()])
_NAT = TableRules(["".join(f":{c} - [0:0]\n" for c in _NAT_CHAINS)], [_nat_rules()])


# --- rules of one node --------------------------------------------------------------

# Placeholder for a node address in node-port templates (never in an address or name).
_NODE = "\0"


@dataclass(frozen=True, slots=True)
class IpvsRules:
    """What one node gets in IPVS mode. The payloads are joined on access from
    fragments shared with other nodes (`ipvsadm`, `ipset`, `iptables`)."""

    node: str
    addresses: tuple[str, ...]  # for DUMMY_INTERFACE, each a /32, in numeric order
    node_addresses: tuple[str, ...]  # the node's own addresses (node-port virtual servers)
    iptables_rules: IptablesRules  # for restore_payload(rules, live) against a live node
    _ipvs: tuple[str, ...]
    _ipvs_templates: tuple[str, ...]
    _sets: tuple[tuple[str, ...], ...]  # per SETS entry: "add" fragments
    _set_templates: tuple[tuple[str, ...], ...]  # per SETS entry: templated "add" fragments
    _node_port_range: tuple[int, int]

    @property
    def ipvsadm(self) -> str:
        """``ipvsadm -R`` input: every virtual server and its real servers."""
        parts = list(self._ipvs)
        for addr in self.node_addresses:
            parts.extend(t.replace(_NODE, addr) for t in self._ipvs_templates)
        return "".join(parts)

    @property
    def ipset(self) -> str:
        """``ipset restore`` input: creates every set, then refills each atomically."""
        out: list[str] = []
        for s in SETS:
            out.append(_create_line(s, s.name, self._node_port_range) + " -exist\n")
        for i, s in enumerate(SETS):
            tmp = s.name + "-T"
            out.append(_create_line(s, tmp, self._node_port_range) + " -exist\n")
            out.append(f"flush {tmp}\n")
            if i == _VIPS:
                out.extend(f"add {tmp} {a} -exist\n" for a in self.addresses)
            else:
                out.extend(f.replace(_SETNAME, tmp) for f in self._sets[i])
                for addr in self.node_addresses:
                    out.extend(f.replace(_SETNAME, tmp).replace(_NODE, addr) for f in self._set_templates[i])
            out.append(f"swap {tmp} {s.name}\ndestroy {tmp}\n")
        return "".join(out)

    @property
    def iptables(self) -> str:
        """``iptables-restore --noflush`` input for a node without svcops rules yet."""
        return restore_payload(self.iptables_rules)

    def set_entries(self) -> dict[str, list[str]]:
        """Each set's entries, as ``ipset save`` lists them after "add <set> "."""
        out: dict[str, list[str]] = {}
        for line in self.ipset.splitlines():
            if line.startswith("add "):
                _, name, entry, *_ = line.split(" ")
                out.setdefault(name[:-2], []).append(entry)
        return out


# Placeholder for the set name in "add" fragments (the payload fills in the temp name).
_SETNAME = "\1"


# --- rendering ----------------------------------------------------------------------


def _source_range(text: str) -> str | None:
    """A source range as ``ipset save`` prints it ("203.0.113.0/24", a host without /32);
    "" for everything; None if not IPv4."""
    try:
        net = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    if net.version != 4:
        return None
    if net.prefixlen == 0:
        return ""
    return str(net.ip) if net.prefixlen == 32 else str(net.cidr)


def _ip_key(ip: str) -> bytes:
    try:
        return socket.inet_aton(ip)
    except OSError:
        return b"\xff" + ip.encode()


class _Port:
    """One service port: everything about it that does not depend on the node."""

    __slots__ = (
        "q", "proto", "flag", "sp", "port", "cip", "ext_ips", "lb", "node_port", "opts", "eps", "rs",
        "ranges", "int_local", "ext_local", "ext_access", "uses_cluster", "uses_local",
    )  # fmt: skip

    def __init__(self, rp: ResolvedPort, default_scheduler: str) -> None:
        svc = rp.service
        self.q = rp.name
        self.proto = proto = rp.port.protocol
        self.flag = _IPVS_FLAG[proto]
        self.sp = proto.lower()
        self.port = rp.port.port
        self.cip = rp.cluster_ip if is_ipv4(rp.cluster_ip) else None
        self.ext_ips = [ip for ip in svc.external_ips if is_ipv4(ip)]
        self.lb = rp.load_balancer_ip if is_ipv4(rp.load_balancer_ip) else None
        self.node_port = rp.node_port
        scheduler = svc.annotations.get(SCHEDULER_ANNOTATION, default_scheduler) if svc.annotations else default_scheduler
        if scheduler not in SCHEDULERS:
            raise ValueError(
                f"{svc.key}: IPVS scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)} "
                "(svcops validate reports this)"
            )
        persist = f" -p {svc.affinity_timeout}" if svc.session_affinity == "ClientIP" else ""
        self.opts = f" -s {scheduler}{persist}\n"
        self.eps: list[Endpoint] = [e for e in rp.endpoints if is_ipv4(e.ip)]
        # Each real server line's tail, shared by every virtual server of this port.
        self.rs = [f" -r {e.ip}:{e.port} -m -w 1\n" for e in self.eps]
        self.ext_access = bool(self.node_port or self.lb or self.ext_ips)
        self.int_local = svc.internal_traffic_policy == "Local"
        self.ext_local = svc.external_traffic_policy == "Local" and self.ext_access
        # kube-proxy's UsesClusterEndpoints / UsesLocalEndpoints.
        self.uses_cluster = not self.int_local or self.ext_access
        self.uses_local = self.int_local or self.ext_local
        ranges: list[str] = []
        if self.lb and svc.load_balancer_source_ranges:
            for r in map(_source_range, svc.load_balancer_source_ranges):
                if r == "":  # 0.0.0.0/0: every source is allowed, no firewall at all
                    ranges = []
                    break
                if r is not None and r not in ranges:
                    ranges.append(r)
        self.ranges = ranges


class _Out:
    """Lines of one rendering: IPVS (plain and node-address templates) and set entries."""

    __slots__ = ("ipvs", "ipvs_t", "sets", "sets_t")

    def __init__(self) -> None:
        self.ipvs: list[str] = []
        self.ipvs_t: list[str] = []
        self.sets: list[list[str]] = [[] for _ in SETS]
        self.sets_t: list[list[str]] = [[] for _ in SETS]


def _vs(out: list[str], flag: str, vip: str, opts: str, rs: Sequence[str]) -> None:
    head = f"-a {flag} {vip}"
    out.append(f"-A {flag} {vip}{opts}")
    out.extend([head + tail for tail in rs])


def _add(out: list[str], entry: str) -> None:
    out.append(f"add {_SETNAME} {entry} -exist\n")


def _render(p: _Port, local: tuple[int, ...] | None, node_port_range: tuple[int, int], o: _Out) -> None:
    """Append a port's virtual servers and set entries, for a node whose local endpoints
    are `local` (indices into p.eps; None when the port has no Local policy)."""
    has_eps = bool(p.eps)
    local_eps: tuple[int, ...] = (local or ()) if p.uses_local else ()
    has_internal = has_eps and (not p.int_local or bool(local_eps))
    has_external = has_eps and (not p.ext_local or bool(local_eps))
    miss = o.sets[_NOEP if not has_eps else _NOLEP]
    miss_t = o.sets_t[_NOEP if not has_eps else _NOLEP]
    sp, port, flag, opts = p.sp, p.port, p.flag, p.opts
    sets = o.sets
    if p.int_local:
        internal_rs = [p.rs[i] for i in local_eps]
    else:
        internal_rs = p.rs
    external_rs = [p.rs[i] for i in local_eps] if p.ext_local else p.rs

    if p.cip:
        entry = f"{p.cip},{sp}:{port}"
        if has_internal:
            _vs(o.ipvs, flag, f"{p.cip}:{port}", opts, internal_rs)
            _add(sets[_CIP], entry)
        else:
            _add(miss, entry)
    for ip in p.ext_ips:
        entry = f"{ip},{sp}:{port}"
        if has_external:
            _vs(o.ipvs, flag, f"{ip}:{port}", opts, external_rs)
            _add(sets[_EIPL if p.ext_local else _EIP], entry)
        else:
            _add(miss, entry)
    if p.lb:
        entry = f"{p.lb},{sp}:{port}"
        if has_external:
            _vs(o.ipvs, flag, f"{p.lb}:{port}", opts, external_rs)
            _add(sets[_LB], entry)
            if p.ext_local:
                _add(sets[_LBL], entry)
            if p.ranges:
                _add(sets[_LBFW], entry)
                for r in p.ranges:
                    _add(sets[_LBSRC], f"{entry},{r}")
        else:
            _add(miss, entry)
    np = p.node_port
    if np:
        if has_external:
            _vs(o.ipvs_t, flag, f"{_NODE}:{np}", opts, external_rs)
            all_set, local_set = _NODE_PORT_SETS[p.proto]
            if p.proto == "SCTP":
                _add(o.sets_t[all_set], f"{_NODE},sctp:{np}")
                if p.ext_local:
                    _add(o.sets_t[local_set], f"{_NODE},sctp:{np}")
            elif node_port_range[0] <= np <= node_port_range[1]:  # a bitmap holds its range only
                _add(sets[all_set], str(np))
                if p.ext_local:
                    _add(sets[local_set], str(np))
        else:
            _add(miss_t, f"{_NODE},{sp}:{np}")



def _joined(o: _Out) -> tuple[str, str, list[str], list[str]]:
    return "".join(o.ipvs), "".join(o.ipvs_t), ["".join(x) for x in o.sets], ["".join(x) for x in o.sets_t]


def _node_addresses(addrs: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for a in addrs:
        a = a.split("/", 1)[0]
        if netaddr.valid_ipv4(a, netaddr.INET_PTON) and a not in out:
            out.append(a)
    return tuple(out)


@gc_paused()
def render_nodes(
    cluster: Cluster, ports: Sequence[ResolvedPort], nodes: Sequence[tuple[str, Sequence[str]]]
) -> dict[str, IpvsRules]:
    """svcops's IPVS-mode rules for every node, sharing everything that can be shared.

    `ports` as `svcops.compile.endpoints.resolve` returns them. `nodes`: (node name, the node's
    own addresses): each address gets a virtual server per node port, and is never put
    on the dummy interface. Raises ValueError for a scheduler that is not IPVS's
    (`svcops validate` reports it first).
    """
    npr = cluster.node_port_range
    shared = _Out()
    local_ports: list[tuple[_Port, dict[str, tuple[int, ...]]]] = []
    vips: set[str] = set()
    # Hairpin entries, per node: only an endpoint on this node can reach itself through it.
    loop: dict[str, list[str]] = {}
    for rp in ports:
        p = _Port(rp, cluster.ipvs_scheduler)
        if p.cip:
            vips.add(p.cip)
        vips.update(p.ext_ips)
        if p.lb:
            vips.add(p.lb)
        sp = p.sp
        for e in p.eps:
            if e.node is not None:
                lst = loop.get(e.node)
                if lst is None:
                    lst = loop[e.node] = []
                lst.append(f"add {_SETNAME} {e.ip},{sp}:{e.port},{e.ip} -exist\n")
        if not p.uses_local:
            _render(p, None, npr, shared)
            continue
        by_node: dict[str, list[int]] = {}
        for i, e in enumerate(p.eps):
            if e.node is not None:
                by_node.setdefault(e.node, []).append(i)
        local_ports.append((p, {n: tuple(v) for n, v in by_node.items()}))
    ipvs, ipvs_t, sets, sets_t = _joined(shared)
    del shared
    all_vips = tuple(sorted(vips, key=_ip_key))
    filt = TableRules(list(_FILTER.chains), list(_FILTER.rules))
    nat = TableRules(list(_NAT.chains), list(_NAT.rules))

    cache: dict[tuple[int, tuple[int, ...]], tuple[str, str, list[str], list[str]]] = {}
    out: dict[str, IpvsRules] = {}
    for node, addrs in nodes:
        own = _node_addresses(addrs)
        v_frags, t_frags = [ipvs], [ipvs_t]
        s_frags = [[s] for s in sets]
        st_frags = [[s] for s in sets_t]
        for k, (p, by_node) in enumerate(local_ports):
            view = by_node.get(node, ())
            frags = cache.get((k, view))
            if frags is None:
                o = _Out()
                _render(p, view, npr, o)
                frags = cache[(k, view)] = _joined(o)
            v, t, s, st = frags
            v_frags.append(v)
            t_frags.append(t)
            for j in range(len(SETS)):
                if s[j]:
                    s_frags[j].append(s[j])
                if st[j]:
                    st_frags[j].append(st[j])
        if node in loop:
            s_frags[_LOOP].append("".join(loop[node]))
        mine = set(own) & vips
        addresses = tuple(a for a in all_vips if a not in mine) if mine else all_vips
        out[node] = IpvsRules(
            node=node,
            addresses=addresses,
            node_addresses=own,
            iptables_rules=IptablesRules(node, filt, nat, IPVS_JUMPS),
            _ipvs=tuple(f for f in v_frags if f),
            _ipvs_templates=tuple(f for f in t_frags if f),
            _sets=tuple(tuple(f for f in x if f) for x in s_frags),
            _set_templates=tuple(tuple(f for f in x if f) for x in st_frags),
            _node_port_range=npr,
        )
    return out


# --- updating a live node -------------------------------------------------------------


def parse_ipvsadm_save(text: str) -> dict[str, tuple[str, dict[str, str]]]:
    """``ipvsadm-save -n`` (or `IpvsRules.ipvsadm`) as {virtual server: (its options,
    {real server: its options})}, where a virtual server is "-t 10.96.0.10:80"
    (flag and address:port), its options "-s rr -p 600", a real server "10.244.2.7:8080"
    and its options "-m -w 1"."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) < 3 or parts[0] not in ("-A", "-a"):
            continue
        vs = f"{parts[1]} {parts[2]}"
        if parts[0] == "-A":
            out[vs] = (" ".join(parts[3:]), out.get(vs, ("", {}))[1])
        elif len(parts) >= 5 and parts[3] == "-r":
            out.setdefault(vs, ("", {}))[1][parts[4]] = " ".join(parts[5:])
    return out


def ipvsadm_update(
    rules: IpvsRules,
    live: str,
    live_addresses: Iterable[str] = (),
    owned: Callable[[str, int], bool] | None = None,
) -> str:
    """``ipvsadm -R`` input that takes a node from `live` (its ``ipvsadm-save -n``) to `rules`.

    A virtual server svcops does not render is deleted only if it is svcops's: by
    default, when its address is on the dummy interface now (`live_addresses`: pass
    what ``ip -4 -o addr show svcops-ipvs0`` lists, so that a deleted service's server
    goes too), will be (`rules.addresses`), or is one of the node's addresses (node
    ports); `owned(address, port)` replaces that test. Existing virtual and real servers
    are edited in place (``-E``/``-e``), so established connections survive a change.
    """
    if owned is None:
        mine = set(rules.addresses) | set(rules.node_addresses) | {a.split("/", 1)[0] for a in live_addresses}

        def owned(addr: str, port: int) -> bool:
            return addr in mine

    want = parse_ipvsadm_save(rules.ipvsadm)
    have = parse_ipvsadm_save(live)
    out: list[str] = []
    for vs, (opts, _) in have.items():
        if vs not in want:
            addr, _, port = vs.split(" ", 1)[1].rpartition(":")
            if owned(addr, int(port)):
                out.append(f"-D {vs}\n")
    for vs, (opts, reals) in want.items():
        current = have.get(vs)
        if current is None:
            out.append(f"-A {vs} {opts}\n")
            out.extend(f"-a {vs} -r {r} {o}\n" for r, o in reals.items())
            continue
        if current[0] != opts:
            out.append(f"-E {vs} {opts}\n")
        for r in current[1]:
            if r not in reals:
                out.append(f"-d {vs} -r {r}\n")
        for r, o in reals.items():
            was = current[1].get(r)
            if was is None:
                out.append(f"-a {vs} -r {r} {o}\n")
            elif was != o:
                out.append(f"-e {vs} -r {r} {o}\n")
    return "".join(out)


def ipvs_modules(ipvsadm: str) -> tuple[str, ...]:
    """The kernel modules IPVS mode needs: ip_vs, the schedulers `ipvsadm` uses (rr
    always, the default), conntrack, dummy."""
    schedulers = {"rr"}
    for line in ipvsadm.splitlines():
        parts = line.split()
        if parts[:1] == ["-A"] and "-s" in parts:
            schedulers.add(parts[parts.index("-s") + 1])
    return ("ip_vs", *(f"ip_vs_{s}" for s in sorted(schedulers)), "nf_conntrack", "dummy")
