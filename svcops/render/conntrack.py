"""Stale UDP conntrack entries: which to delete when a UDP service's endpoints change.

UDP has no connection to close: once a client's flow to a cluster IP has been
DNATed to an endpoint, the kernel's conntrack entry keeps sending that client's
datagrams to the same endpoint until the entry times out (180 s while traffic keeps
flowing: forever for a client that sends every few seconds), even after the
endpoint is gone and the rules no longer name it. kube-proxy deletes those entries
after each sync (pkg/proxy/conntrack), and so does svcops, with the ``conntrack``
tool (Debian package ``conntrack``), after the new rules are in place:

* an endpoint removed from a UDP service port: the flows to each address the port
  was reached on (cluster IP, external IPs, load-balancer IP) that were DNATed to it,
  and the flows to its node port DNATed to it:

      conntrack -D -p udp --orig-dst <service address> --dst-nat <endpoint ip>
      conntrack -D -p udp --orig-port-dst <node port> --dst-nat <endpoint ip>

* a UDP service port going from no endpoints to some (or new, with endpoints): every
  flow to its addresses and node port (they were made while nothing answered and
  would keep a client away from the new endpoints):

      conntrack -D -p udp --orig-dst <service address>
      conntrack -D -p udp --orig-port-dst <node port>

* a UDP service port removed: every flow to its previous addresses and node port
  (kube-proxy's "stale cluster IPs").

``-p udp`` must come before ``--orig-port-dst`` (the tool reads protocol options only
after the protocol). ``conntrack -D`` exits 1 with "0 flow entries have been deleted"
when nothing matched: `conntrack_script` treats that as success.

The previous state comes from the node itself (`udp_ports_from_iptables`: the live
``iptables-save``; `udp_ports_from_ipvsadm`: ``ipvsadm-save -n`` in IPVS mode, whose
UDP virtual servers, keyed by address and port, stand for service ports;
`udp_ports_from_nft`: svcops's live nftables table), not from a cache on the
controller, so a node that missed an apply, or that someone changed by hand, is still
cleaned. The next state is the
rendered one (`udp_ports` of the resolved ports, seen from that node).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Iterable, Mapping

from svcops.render import chains as C
from svcops.render.iptables import LiveTables
from svcops.render.ipvs import parse_ipvsadm_save
from svcops.render.nftables_live import unit_of_name
from svcops.site.model import ResolvedPort

__all__ = ["UdpPort", "udp_ports", "udp_ports_from_iptables", "udp_ports_from_nft", "udp_ports_from_ipvsadm", "stale_conntrack", "conntrack_script"]


@dataclass(frozen=True, slots=True)
class UdpPort:
    """One UDP service port, as far as conntrack cleanup cares.

    name:      kube-proxy's service port name, "ns/svc:port" ("ns/svc" when unnamed)
    addresses: where clients reach it: cluster IP, external IPs, load-balancer IP
    node_port: its node port, if any
    endpoints: the endpoint addresses it DNATs to
    """

    name: str
    addresses: tuple[str, ...] = ()
    node_port: int | None = None
    endpoints: frozenset[str] = frozenset()


def udp_ports(ports: Iterable[ResolvedPort], node: str | None = None) -> dict[str, UdpPort]:
    """name -> UdpPort, for the UDP ones among `ports` (as `endpoints.resolve` gives them).

    With `node`, the endpoints are those that node's rules DNAT to (what
    `udp_ports_from_iptables` reads back from it): all of them, except for a port
    with ``internalTrafficPolicy: Local`` and no external access, which reaches only
    the node's own endpoints.
    """
    out: dict[str, UdpPort] = {}
    for rp in ports:
        if rp.port.protocol != "UDP":
            continue
        svc = rp.service
        addresses = [rp.cluster_ip, *svc.external_ips]
        if rp.load_balancer_ip:
            addresses.append(rp.load_balancer_ip)
        eps = rp.endpoints
        external = bool(rp.node_port or rp.load_balancer_ip or svc.external_ips)
        if node is not None and svc.internal_traffic_policy == "Local" and not external:
            eps = tuple(e for e in eps if e.node == node)
        out[rp.name] = UdpPort(
            rp.name,
            tuple(dict.fromkeys(a for a in addresses if a and a != "None")),
            rp.node_port,
            frozenset(e.ip for e in eps),
        )
    return out


# What svcops's renderer writes (svcops.render.iptables), as iptables-save prints it.
_COMMENT = r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))'
_DEST = re.compile(r"-d (\S+?)(?:/32)? -p udp -m comment " + _COMMENT)
_NODE_PORT = re.compile(r"-p udp -m comment " + _COMMENT + r".* --dport (\d+) ")
_DNAT = re.compile(r"-p udp -m comment " + _COMMENT + r".* -j DNAT --to-destination (\S+)")
_ROLES = (" cluster IP", " external IP", " loadbalancer IP", " has no endpoints", " has no local endpoints")


def _comment(m: re.Match, group: int = 1) -> str:
    quoted, bare = m.group(group), m.group(group + 1)
    if quoted is None:
        return bare
    return re.sub(r"\\(.)", r"\1", quoted)


def _name_of(comment: str) -> str | None:
    for role in _ROLES:
        if comment.endswith(role):
            return comment[: -len(role)]
    return None


def _endpoint_ip(destination: str) -> str:
    """"10.244.1.5:53" -> "10.244.1.5"; "[fd00::5]:53" -> "fd00::5"."""
    if destination.startswith("["):
        return destination[1 : destination.index("]")]
    return destination.rsplit(":", 1)[0] if destination.count(":") == 1 else destination


def udp_ports_from_iptables(live: LiveTables) -> dict[str, UdpPort]:
    """name -> UdpPort, read back from a node's live svcops chains (iptables mode).

    Addresses from the dispatch rules (nat SVCOPS-SERVICES, and filter's REJECT/DROP
    rules of ports without (local) endpoints), node ports from SVCOPS-NODEPORTS and
    filter's node-port REJECTs, endpoints from the SEP chains' DNAT targets; the
    rules' comments carry the service port name.
    """
    addresses: dict[str, dict[str, None]] = {}
    node_ports: dict[str, int] = {}
    endpoints: dict[str, set[str]] = {}

    def dispatch(rules: Iterable[str]) -> None:
        for rule in rules:
            if " -p udp " not in rule:
                continue
            m = _DEST.search(rule)
            if m:
                name = _name_of(_comment(m, 2))
                if name is not None:
                    addresses.setdefault(name, {})[m.group(1)] = None
                continue
            m = _NODE_PORT.search(rule)
            if m:
                comment = _comment(m)
                name = _name_of(comment)
                node_ports[comment if name is None else name] = int(m.group(3))

    nat, flt = live.table("nat"), live.table("filter")
    dispatch(nat.chains.get(C.SERVICES, ()))
    dispatch(nat.chains.get(C.NODEPORTS, ()))
    dispatch(flt.chains.get(C.SERVICES, ()))
    dispatch(flt.chains.get(C.EXTERNAL_SERVICES, ()))
    for chain, rules in nat.chains.items():
        if not chain.startswith(C.SEP):
            continue
        for rule in rules:
            m = _DNAT.search(rule)
            if m:
                endpoints.setdefault(_comment(m), set()).add(_endpoint_ip(m.group(3)))
    names = sorted(set(addresses) | set(node_ports) | set(endpoints))
    return {
        n: UdpPort(n, tuple(addresses.get(n, ())), node_ports.get(n), frozenset(endpoints.get(n, ())))
        for n in names
    }


_NFT_DNAT = re.compile(r"dnat to ([0-9.]+):[0-9]+")


def _port_name(uid: str) -> str:
    """nftables' unit id "ns/name/udp/port" -> kube-proxy's port name "ns/name:port"."""
    ns, name, _proto, port = (uid.split("/", 3) + ["", "", ""])[:4]
    return f"{ns}/{name}:{port}" if port else f"{ns}/{name}"


def udp_ports_from_nft(live) -> dict[str, UdpPort]:
    """name -> UdpPort, read back from a node's live ``table ip svcops``
    (`svcops.render.nftables_live.NftLive`, as `svcops.facts.nftables.SvcopsNftables` reads it).

    Addresses from the elements keyed "<ip> . udp . <port>" (service-ips and the
    no-endpoint maps), node ports from those keyed "udp . <port>", each element's
    comment naming its service port; endpoints from the DNAT rules of the unit's
    chains (``dnat to <ip>:<port>``) when the listing has its content, else from the
    endpoint chains' names ("endpoint-<hash>-<ns>/<name>/udp/<port>__<ip>/<port>",
    ClientIP affinity only)."""
    addresses: dict[str, dict[str, None]] = {}
    node_ports: dict[str, int] = {}
    endpoints: dict[str, set[str]] = {}
    for elements in live.maps.values():
        for key, (_verdict, comment) in elements.items():
            if not comment:
                continue
            uid = comment.rpartition(" ")[0]
            if "/udp/" not in uid:
                continue
            parts = [p.strip() for p in key.split(" . ")]
            if len(parts) == 3 and parts[1] == "udp":
                addresses.setdefault(uid, {})[parts[0]] = None
            elif len(parts) == 2 and parts[0] == "udp" and parts[1].isdigit():
                node_ports[uid] = int(parts[1])
    content = getattr(live, "content", None)
    if content is not None:
        # Endpoints are the DNAT targets in the unit's chains (no chain per endpoint
        # except with ClientIP affinity).
        for chain, rules in content.rules.items():
            uid = unit_of_name(chain)
            if uid is None or "/udp/" not in uid:
                continue
            for rule in rules:
                m = _NFT_DNAT.search(rule)
                if m:
                    endpoints.setdefault(uid, set()).add(m.group(1))
    else:
        for chain in live.chains:
            if not chain.startswith("endpoint-") or "__" not in chain:
                continue
            uid = unit_of_name(chain)
            if uid is None or "/udp/" not in uid:
                continue
            ip = chain.rsplit("__", 1)[1].rpartition("/")[0]
            if ip:
                endpoints.setdefault(uid, set()).add(ip)
    uids = sorted(set(addresses) | set(node_ports) | set(endpoints))
    return {
        _port_name(u): UdpPort(_port_name(u), tuple(addresses.get(u, ())), node_ports.get(u), frozenset(endpoints.get(u, ())))
        for u in uids
    }


def _split_host_port(hostport: str) -> tuple[str, str]:
    """"10.96.0.10:53" -> ("10.96.0.10", "53"); "[fd00::a]:53" -> ("fd00::a", "53")."""
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), port


def udp_ports_from_ipvsadm(save: str, owned: Iterable[str], node_addresses: Iterable[str]) -> dict[str, UdpPort]:
    """IPVS mode: "<address>:<port>" -> UdpPort for each UDP virtual server on an
    `owned` address (svcops's: the dummy interface's and the node's own), read from
    ``ipvsadm-save -n`` (the live one before a change, or `IpvsRules.ipvsadm` after).

    IPVS keeps no service names, so each virtual server stands for itself: one on a
    node address is a node port (its flows are matched by port, as in iptables mode),
    any other a cluster, external or load-balancer IP."""
    mine, nodes = set(owned) | set(node_addresses), set(node_addresses)
    out: dict[str, UdpPort] = {}
    for vs, (_, reals) in parse_ipvsadm_save(save).items():
        flag, _, hostport = vs.partition(" ")
        addr, port = _split_host_port(hostport)
        if flag != "-u" or addr not in mine or not port.isdigit():
            continue
        eps = frozenset(_split_host_port(r)[0] for r in reals)
        if addr in nodes:
            out[f"{addr}:{port}"] = UdpPort(f"{addr}:{port}", (), int(port), eps)
        else:
            out[f"{addr}:{port}"] = UdpPort(f"{addr}:{port}", (addr,), None, eps)
    return out


def _as_map(ports: Mapping[str, UdpPort] | Iterable[ResolvedPort | UdpPort]) -> Mapping[str, UdpPort]:
    if isinstance(ports, Mapping):
        return ports
    out: dict[str, UdpPort] = {}
    resolved = []
    for p in ports:
        if isinstance(p, UdpPort):
            out[p.name] = p
        else:
            resolved.append(p)
    out.update(udp_ports(resolved))
    return out


def _family(ip: str) -> list[str]:
    return ["-f", "ipv6"] if ":" in ip else []


def stale_conntrack(
    previous: Mapping[str, UdpPort] | Iterable[ResolvedPort | UdpPort],
    new: Mapping[str, UdpPort] | Iterable[ResolvedPort | UdpPort],
) -> list[list[str]]:
    """The ``conntrack`` argument lists that delete the flows left pointing nowhere.

    `previous`: what the node had (`udp_ports_from_iptables` of its live rules, or
    resolved ports); `new`: what it has now. Run them after the new rules are in
    place (as kube-proxy does): a flow deleted before would be re-created at once by
    the old rules. Deterministic order: by service port name, then address.
    """
    prev, cur = _as_map(previous), _as_map(new)
    out: list[list[str]] = []
    for name in sorted(set(prev) | set(cur)):
        p, n = prev.get(name), cur.get(name)
        if n is None:
            # The service port is gone: every flow to where it was.
            for addr in p.addresses:
                out.append(["-D", *_family(addr), "-p", "udp", "--orig-dst", addr])
            if p.node_port:
                out.append(["-D", "-p", "udp", "--orig-port-dst", str(p.node_port)])
            continue
        if n.endpoints and (p is None or not p.endpoints):
            # From no endpoints to some: flows made while nothing answered.
            for addr in n.addresses:
                out.append(["-D", *_family(addr), "-p", "udp", "--orig-dst", addr])
            if n.node_port:
                out.append(["-D", "-p", "udp", "--orig-port-dst", str(n.node_port)])
            continue
        if p is None:
            continue
        for ep in sorted(p.endpoints - n.endpoints):
            for addr in p.addresses:
                out.append(["-D", *_family(addr), "-p", "udp", "--orig-dst", addr, "--dst-nat", ep])
            if p.node_port:
                out.append(["-D", *_family(ep), "-p", "udp", "--orig-port-dst", str(p.node_port), "--dst-nat", ep])
    # A node port reached on several node addresses (IPVS) gives the same command twice.
    return [list(c) for c in dict.fromkeys(tuple(c) for c in out)]


def conntrack_script(commands: Iterable[list[str]]) -> str:
    """A POSIX shell script running each ``conntrack`` command; empty when there is none.

    "0 flow entries have been deleted" (exit 1) counts as success; any other failure
    is printed and makes the script exit 1 after trying the rest.
    """
    lines = [shlex.join(["svcops_ct", *c]) for c in commands]
    if not lines:
        return ""
    return (
        "rc=0\n"
        "svcops_ct() {\n"
        '    out=$(conntrack "$@" 2>&1) && return 0\n'
        '    case "$out" in *" 0 flow entries have been deleted"*) return 0 ;; esac\n'
        '    echo "conntrack $*: $out" >&2\n'
        "    rc=1\n"
        "}\n" + "\n".join(lines) + '\nexit "$rc"\n'
    )
