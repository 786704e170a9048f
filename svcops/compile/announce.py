"""Which node announces each load-balancer address on the wire.

A LoadBalancer service's address (from a pool in svcops.yaml) is a virtual address:
every node's rules accept it, but a client on the segment only reaches it once some
node answers ARP for it. svcops picks exactly one node per address, the way MetalLB's
layer-2 mode does:

- the candidates are the nodes that can serve it: every node for
  ``externalTrafficPolicy: Cluster``; only the nodes running one of its endpoints for
  ``Local`` (the others would drop the traffic); none when the service has no endpoints;
- among them, rendezvous (highest random weight) hashing: each candidate scores
  sha256("<address> <node>"), the highest score wins. The choice depends on nothing
  but the address and the candidates' names, so every run (and every controller)
  picks the same node, and when a node comes or goes only the addresses it won or
  loses move.

The chosen node adds the address to its interface as a /32 labelled as svcops's
(`address_label`) and sends gratuitous ARP; the other nodes remove that address if
they hold it. Pure: no I/O.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Iterable, Mapping, Sequence

from svcops.site.model import Announcement, Node, ResolvedPort

__all__ = ["choose", "announcements"]

def _score(address: str, node: str) -> bytes:
    return sha256(f"{address} {node}".encode()).digest()


def choose(address: str, candidates: Iterable[str]) -> str | None:
    """The node (by name) that announces `address`; None without candidates."""
    best, best_score = None, b""
    for node in candidates:
        s = _score(address, node)
        if best is None or s > best_score or (s == best_score and node < best):
            best, best_score = node, s
    return best


def announcements(ports: Sequence[ResolvedPort], nodes: Sequence[Node]) -> Mapping[str, tuple[Announcement, ...]]:
    """Node name -> the load-balancer addresses it announces (sorted), for every node."""
    by_ip: dict[str, dict] = {}
    for rp in ports:
        ip = rp.load_balancer_ip
        if not ip or ":" in ip:
            continue
        entry = by_ip.setdefault(ip, {"services": set(), "cluster": False, "local": set(), "endpoints": False})
        entry["services"].add(rp.service.key)
        if rp.endpoints:
            entry["endpoints"] = True
        if rp.service.external_traffic_policy == "Local":
            entry["local"].update(e.node for e in rp.endpoints if e.node is not None)
        else:
            entry["cluster"] = True
    names = [n.name for n in nodes]
    interface = {n.name: n.interface for n in nodes}
    out: dict[str, list[Announcement]] = {n: [] for n in names}
    for ip in sorted(by_ip):
        entry = by_ip[ip]
        if not entry["endpoints"]:
            continue
        candidates = names if entry["cluster"] else [n for n in names if n in entry["local"]]
        winner = choose(ip, candidates)
        if winner is not None:
            out[winner].append(Announcement(ip, interface[winner], tuple(sorted(entry["services"]))))
    return {n: tuple(a) for n, a in out.items()}
