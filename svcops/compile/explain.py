"""Explain: where a packet to IP:PORT/PROTO goes on one node, and why.

The answer follows the rules svcops renders (kube-proxy's semantics), but is worked out
from the model, not by parsing rules, so it reads the same in every proxy mode:

1. Which service address the destination is: a cluster IP, an external IP, a
   load-balancer IP (checked against ``loadBalancerSourceRanges`` when the source is
   known), or a node port on one of the node's own addresses.
2. Which traffic policy applies: internal traffic (cluster IP) follows
   ``internalTrafficPolicy``; external traffic (external IPs, load-balancer IPs, node
   ports) follows ``externalTrafficPolicy``, except that traffic the node itself
   originates always uses the cluster policy, as kube-proxy does.
3. The verdict: the endpoints it may go to with each one's share (and ClientIP
   affinity), or REJECT (no endpoints: refused at once), or DROP (Local policy and no
   endpoint on this node; or a source outside the load-balancer's ranges).

`explain` is pure: the CLI compiles the site and prints what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import netaddr

from svcops.compile.endpoints import local_endpoints
from svcops.site.model import Endpoint, ResolvedPort

__all__ = ["Explanation", "explain", "parse_target"]


@dataclass(frozen=True, slots=True)
class Explanation:
    destination: str  # "10.1.11.83:8000/TCP"
    node: str
    service: str | None = None  # kube-proxy's service port name, "ns/name:port"
    matched: str | None = None  # "cluster IP", "external IP", "load-balancer IP", "node port"
    verdict: str = "not a service"  # "forward", "reject", "drop", "not a service"
    reasons: tuple[str, ...] = ()
    endpoints: tuple[tuple[Endpoint, Fraction], ...] = ()
    masquerade: bool = False
    affinity_seconds: int | None = None
    details: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "destination": self.destination,
            "node": self.node,
            "service": self.service,
            "matched": self.matched,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "endpoints": [
                {"ip": e.ip, "port": e.port, "node": e.node, "share": float(s)} for e, s in self.endpoints
            ],
            "masquerade": self.masquerade,
            "affinitySeconds": self.affinity_seconds,
        }

    def text(self) -> str:
        lines = [f"{self.destination} on {self.node}:"]
        if self.service:
            lines.append(f"  is the {self.matched} of {self.service}")
        lines += [f"  {r}" for r in self.reasons]
        if self.verdict == "forward":
            for e, share in self.endpoints:
                where = f" on {e.node}" if e.node else ""
                lines.append(f"  -> {e.ip}:{e.port}{where}  ({float(share):.1%} of new connections)")
            if self.affinity_seconds:
                lines.append(
                    f"  a client sticks to the endpoint it got first for {self.affinity_seconds} s (sessionAffinity: ClientIP)"
                )
            lines.append(
                "  source address: rewritten to the node's (masquerade)"
                if self.masquerade
                else "  source address: kept (the backend sees the client)"
            )
        return "\n".join(lines) + "\n"


def parse_target(text: str) -> tuple[str, int, str]:
    """"10.1.11.83:8000", "10.1.11.83:8000/udp" -> (ip, port, "TCP"|"UDP"|"SCTP").

    Raises ValueError with a message meant for the user.
    """
    rest, _, proto = text.partition("/")
    proto = (proto or "TCP").upper()
    if proto not in ("TCP", "UDP", "SCTP"):
        raise ValueError(f"{text!r}: protocol must be TCP, UDP or SCTP, not {proto!r}")
    ip, sep, port = rest.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r}: expected IP:PORT[/PROTO], such as 10.96.0.10:53/udp")
    try:
        netaddr.IPAddress(ip, version=4)
    except (netaddr.AddrFormatError, ValueError):
        raise ValueError(f"{text!r}: {ip!r} is not an IPv4 address") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be a number 1-65535")
    return ip, int(port), proto


def _shares(endpoints: Sequence[Endpoint]) -> tuple[tuple[Endpoint, Fraction], ...]:
    n = len(endpoints)
    return tuple((e, Fraction(1, n)) for e in endpoints)


def _in_ranges(source: str, ranges: Sequence[str]) -> bool:
    ip = netaddr.IPAddress(source)
    return any(ip in netaddr.IPNetwork(r) for r in ranges)


def explain(
    ports: Sequence[ResolvedPort],
    node: str,
    node_addresses: Sequence[str],
    ip: str,
    port: int,
    protocol: str = "TCP",
    source: str | None = None,
) -> Explanation:
    """Where a new connection to ip:port/protocol goes on `node`.

    node_addresses: the node's own addresses (node ports answer on them).
    source: the client's address; None means a client outside the node whose address
    is not known (source ranges then cannot be decided and are reported as such).
    """
    dest = f"{ip}:{port}/{protocol}"
    local_source = source is not None and source in node_addresses
    for rp in ports:
        if rp.port.protocol != protocol:
            continue
        svc = rp.service
        matched = None
        if ip == rp.cluster_ip and port == rp.port.port:
            matched = "cluster IP"
        elif ip in svc.external_ips and port == rp.port.port:
            matched = "external IP"
        elif rp.load_balancer_ip and ip == rp.load_balancer_ip and port == rp.port.port:
            matched = "load-balancer IP"
        elif rp.node_port == port and ip in node_addresses:
            matched = "node port"
        if matched is None:
            continue
        return _verdict(rp, node, dest, matched, source, local_source)
    reasons = ["no service has this address and port here: svcops's rules leave the packet alone"]
    if ip in node_addresses:
        reasons.append("it is one of the node's own addresses: whatever listens on that port answers")
    return Explanation(dest, node, reasons=tuple(reasons))


def _verdict(
    rp: ResolvedPort, node: str, dest: str, matched: str, source: str | None, local_source: bool
) -> Explanation:
    svc = rp.service
    reasons: list[str] = []
    external = matched != "cluster IP"
    base = dict(destination=dest, node=node, service=rp.name, matched=matched)

    if matched == "load-balancer IP" and svc.load_balancer_source_ranges:
        ranges = ", ".join(svc.load_balancer_source_ranges)
        if source is None:
            reasons.append(f"only sources in {ranges} are let through (loadBalancerSourceRanges); give --from to decide")
        elif not _in_ranges(source, svc.load_balancer_source_ranges):
            reasons.append(f"source {source} is outside {ranges} (loadBalancerSourceRanges)")
            return Explanation(**base, verdict="drop", reasons=tuple(reasons))
        else:
            reasons.append(f"source {source} is inside {ranges} (loadBalancerSourceRanges)")

    if not rp.endpoints:
        reasons.append("the service has no endpoints: the connection is refused at once (REJECT)")
        return Explanation(**base, verdict="reject", reasons=tuple(reasons))

    local = local_endpoints(rp, node)
    if external and not local_source:
        policy = svc.external_traffic_policy
        masquerade = policy == "Cluster"
        what = "externalTrafficPolicy"
    else:
        policy = svc.internal_traffic_policy
        # The node's own traffic to an external address is masqueraded, as kube-proxy does.
        masquerade = external
        what = "internalTrafficPolicy"
        if external:
            reasons.append("the node itself sends it: the cluster policy applies")
    if policy == "Local":
        if not local:
            reasons.append(f"{what}: Local and no endpoint on {node}: dropped")
            return Explanation(**base, verdict="drop", reasons=tuple(reasons))
        reasons.append(f"{what}: Local: only the endpoints on {node}")
        chosen = local
    else:
        chosen = rp.endpoints
    affinity = svc.affinity_timeout if svc.session_affinity == "ClientIP" else None
    return Explanation(
        **base,
        verdict="forward",
        reasons=tuple(reasons),
        endpoints=_shares(chosen),
        masquerade=masquerade,
        affinity_seconds=affinity,
    )
