"""What each node gets, assembled: the compiled site's per-node plans.

    plan = plan_site(compiled)            # the announcements, once per site
    node = plan.node("node1")             # NodePlan: output, announced, files, zone, udp ports

A `NodePlan` is everything the operations put on one node (`svcops.deploy` hands each
part to its operation, `svcops.nodediff` compares it with the node's facts):

    output      the rendered rules for the site's proxy mode (`svcops.compile.pipeline`)
    announced   the load-balancer addresses this node announces (`svcops.compile.announce`)
    files       the files persisted on the node (`svcops.render.node_files`)
    dns_zone    the cluster domain's zone (`site_zone`: the same on every node), or None
                with ``serviceDNS: false``
    udp_ports   the node's UDP service ports, for conntrack cleanup (iptables, nftables)

Pure: the parts shared by every node (the zone, the site's UDP ports) are computed once
per compiled site and remembered for the few sites a process holds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Mapping, TypeVar

from svcops.compile.announce import announcements
from svcops.compile.endpoints import headless_endpoints
from svcops.compile.pipeline import Compiled, NodeOutput
from svcops.render import dns
from svcops.render.conntrack import UdpPort, udp_ports
from svcops.render.dns import Zone
from svcops.render.node_files import NodeFiles, node_files
from svcops.site.diagnostics import Diagnostic
from svcops.site.model import Announcement

__all__ = ["NodePlan", "SitePlan", "plan_site", "site_zone", "node_udp_ports"]

T = TypeVar("T")
_PER_SITE: dict[tuple[int, str], tuple[object, object]] = {}
_PER_SITE_LOCK = threading.Lock()


def _per_site(compiled: Compiled, what: str, compute: Callable[[], T]) -> T:
    """`compute()` once per compiled site (by identity) and `what`; a few sites per
    process at most: the newest are kept."""
    key = (id(compiled), what)
    with _PER_SITE_LOCK:
        hit = _PER_SITE.get(key)
        if hit is not None and hit[0] is compiled:
            return hit[1]  # type: ignore[return-value]
    value = compute()
    with _PER_SITE_LOCK:
        if len(_PER_SITE) >= 16:
            _PER_SITE.pop(next(iter(_PER_SITE)))
        _PER_SITE[key] = (compiled, value)  # the site is kept alive, so its id stays its own
    return value


def site_zone(compiled: Compiled) -> Zone:
    """The cluster domain's zone for a compiled site, rendered once per site and shared
    by every node's operation."""

    def render() -> Zone:
        headless = headless_endpoints(compiled.site, compiled.nodes, compiled.allocations, compiled.readiness)
        return dns.render_zone(compiled.site.cluster, compiled.site.services, headless, compiled.allocations)

    return _per_site(compiled, "zone", render)


def node_udp_ports(compiled: Compiled, node: str) -> dict[str, UdpPort]:
    """The UDP service ports as `node`'s rules have them (`svcops.render.conntrack.udp_ports`);
    the site's UDP ports are picked out of the resolved ports once per site."""
    site_udp = _per_site(compiled, "udp", lambda: tuple(rp for rp in compiled.ports if rp.port.protocol == "UDP"))
    return udp_ports(site_udp, node)


@dataclass(frozen=True, slots=True)
class NodePlan:
    """Everything one node gets: rendered output, announced addresses, persisted files."""

    output: NodeOutput
    announced: tuple[Announcement, ...]
    files: NodeFiles
    dns_zone: Zone | None = None  # the cluster domain's records (None: serviceDNS false)
    udp_ports: Mapping | None = None  # the node's UDP service ports, for conntrack cleanup (iptables, nftables modes)

    @property
    def prefixlen(self) -> int | None:
        """The static address's prefix length (from the ifupdown file), if any."""
        for line in self.output.interfaces.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "address" and "/" in parts[1]:
                return int(parts[1].split("/", 1)[1])
        return None


@dataclass(frozen=True, slots=True)
class SitePlan:
    """A compiled site with every node's announcements: `node(name)` is that node's plan.
    (`diagnostics` and `lock_written`: what loading it said, for the caller to print.)"""

    compiled: Compiled
    announced: Mapping[str, tuple[Announcement, ...]]
    diagnostics: tuple[Diagnostic, ...] = ()
    lock_written: bool = False

    def node(self, name: str) -> NodePlan:
        out = self.compiled.outputs[name]
        ann = self.announced.get(name, ())
        udp = node_udp_ports(self.compiled, name) if out.mode in ("iptables", "nftables") else None
        files = node_files(out.iptables, out.interfaces, ann, out.mode, out.nftables, out.ipvs)
        zone = site_zone(self.compiled) if self.compiled.site.cluster.service_dns else None
        return NodePlan(out, ann, files, zone, udp)


def plan_site(compiled: Compiled) -> SitePlan:
    """Pure: the announcements of a compiled site, ready for per-node plans."""
    return SitePlan(compiled, announcements(compiled.ports, compiled.nodes))
