"""Allocation: cluster IPs, node ports, load-balancer addresses and node addresses.

`allocate` is a pure function from a site (cluster, services, nodes) and the previous
allocations (svcops.lock) to the new allocations. It follows Kubernetes' rules:

- An explicit value in a manifest (``spec.clusterIP``, ``nodePort``,
  ``spec.loadBalancerIP``, a node's ``svcops_address``) is honoured, provided that no
  other service (or node) holds it already: the lock wins, as the API server's
  allocation map does.
- An allocation recorded in the lock never moves while its service (or port, or node)
  exists. A deleted service's allocations are released: they are simply absent from
  the result.
- A new allocation is chosen from a stable hash (sha256) of its key ("ns/name",
  "ns/name:8000/TCP", the node name), probing onward (wrapping) past taken values.
  Two git branches that each add a service therefore rarely pick the same value, and
  the result does not depend on the order in which services are listed.
- Band split, as KEP-3070 (service IPs) and KEP-3668 (node ports): the lower part of a
  range is the *static* band, the rest the *dynamic* band. Automatic allocations go
  to the dynamic band, and to the static band only once the dynamic band is full, so
  hand-picked values (conventionally low: 10.96.0.10 for DNS, 30080...) rarely
  collide with automatic ones. Band sizes:

      service CIDR:  min(max(16, cidr_size / 16), 256)   (0 when cidr_size <= 16)
      node ports:    min(max(16, range_size / 32), 128)  (0 when range_size <= 16)

  For 10.96.0.0/24 the static band is 10.96.0.1-10.96.0.16; for 30000-32767 it is
  30000-30085.

Addresses are handled as ints internally (netaddr parses and formats at the edges),
which keeps a 10,000-service site well under a tenth of a second.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import netaddr

from svcops.site.diagnostics import Diagnostic, error, sort_key
from svcops.site.model import POOL_ANNOTATION, Allocations, Cluster, Node, Service, node_port_key

__all__ = ["allocate", "service_band_offset", "node_port_band_offset"]

PROTOCOLS = ("TCP", "UDP", "SCTP")


# --- band sizes (KEP-3070, KEP-3668) ----------------------------------------------


def service_band_offset(cidr_size: int) -> int:
    """Size of the static band of a service CIDR of `cidr_size` addresses (KEP-3070)."""
    if cidr_size <= 16:
        return 0
    return min(max(16, cidr_size // 16), 256)


def node_port_band_offset(range_size: int) -> int:
    """Size of the static band of a node-port range of `range_size` ports (KEP-3668)."""
    if range_size <= 16:
        return 0
    return min(max(16, range_size // 32), 128)


# --- addresses as (version, int) ----------------------------------------------------


def _parse_ip(text: object) -> tuple[int, int] | None:
    """(version, value) of an address string, or None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        ip = netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    return ip.version, int(ip)


def _format_ip(version: int, value: int) -> str:
    if version == 4:  # the hot path: no object per address
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    return str(netaddr.IPAddress(value, version))


def _stable_hash(key: str) -> int:
    """A hash that is the same on every machine and every run (unlike hash())."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest(), "big")


# --- bands and families -------------------------------------------------------------


class _Band:
    """An ordered set of values (sorted, disjoint, inclusive int intervals).

    `taken` counts the values of the band that are in use, so a full band is
    skipped at once instead of being probed end to end.
    """

    __slots__ = ("intervals", "_los", "_starts", "size", "taken")

    def __init__(self, intervals: Iterable[tuple[int, int]]):
        self.intervals = [(lo, hi) for lo, hi in intervals if lo <= hi]
        self._los = [lo for lo, _ in self.intervals]
        self._starts = []
        n = 0
        for lo, hi in self.intervals:
            self._starts.append(n)
            n += hi - lo + 1
        self.size = n
        self.taken = 0

    def __contains__(self, value: int) -> bool:
        k = bisect_right(self._los, value) - 1
        return k >= 0 and value <= self.intervals[k][1]

    def probe(self, start: int, used: set[int]) -> int | None:
        """The first free value at or after index `start % size`, wrapping."""
        if self.taken >= self.size:
            return None
        if len(self.intervals) == 1:
            lo, hi = self.intervals[0]
            v = lo + start % self.size
            while v in used:
                v = v + 1 if v < hi else lo
            return v
        i = start % self.size
        for _ in range(self.size):
            k = bisect_right(self._starts, i) - 1
            v = self.intervals[k][0] + i - self._starts[k]
            if v not in used:
                return v
            i = i + 1 if i + 1 < self.size else 0
        return None  # unreachable while `taken` is exact


@dataclass
class _Family:
    """Values that must be unique among themselves: the cluster IPs, the node ports of
    one protocol, the load-balancer addresses, the node addresses."""

    version: int  # 4, 6 (addresses) or 0 (ports)
    bands: list[_Band]
    used: set[int] = field(default_factory=set)

    def contains(self, value: int) -> bool:
        return any(value in b for b in self.bands)

    def take(self, value: int) -> None:
        self.used.add(value)
        for b in self.bands:
            if value in b:
                b.taken += 1

    def format(self, value: int) -> str | int:
        return value if self.version == 0 else _format_ip(self.version, value)

    def parse(self, written: object) -> int | None:
        """The int of a value as written (manifest or lock), None if of the wrong kind."""
        if self.version == 0:
            return written if isinstance(written, int) and not isinstance(written, bool) else None
        parsed = _parse_ip(written)
        if parsed is None or parsed[0] != self.version:
            return None
        return parsed[1]


@dataclass
class _Request:
    """One value to settle: a cluster IP, a node port, an LB address, a node address."""

    key: str  # its key in the lock
    explicit: object  # the value as written in the manifest, or None
    where: tuple[str, int | None, str]  # (file, line, field) of the explicit value
    home: list[_Band]  # where an automatic value goes, in order of preference
    source: str = ""  # "file:line", to name this request when another collides with it


@dataclass
class _Space:
    """How to describe a family in errors."""

    section: str  # the lock's section: clusterIPs, nodePorts...
    thing: str  # "cluster IP", "node port"...
    outside: Callable[[int], str]  # why a value is not allocatable ("is outside ...")


def _settle(
    family: _Family,
    space: _Space,
    requests: list[_Request],
    previous: Mapping[str, object],
    lock_file: str,
    full: Callable[[_Band, list[str]], Diagnostic],
) -> tuple[dict[str, int], list[Diagnostic]]:
    """Settle one family: the lock's values, then explicit ones, then new ones.

    The lock's values go first so that an explicit value another service already
    holds is the error (as the API server refuses it), not the holder's move.
    """
    diags: list[Diagnostic] = []
    result: dict[str, int] = {}
    holder: dict[int, tuple[str, bool, str]] = {}  # value -> (key, from the lock?, source)
    requests = sorted(requests, key=lambda r: r.key)

    explicit: dict[str, int] = {}
    for r in requests:
        if r.explicit is None:
            continue
        file, line, fld = r.where
        v = family.parse(r.explicit)
        if v is None:
            diags.append(error(file, line, fld, f"{r.explicit!r} is not a valid {space.thing}"))
        elif not family.contains(v):
            diags.append(error(file, line, fld, f"{r.explicit} {space.outside(v)}"))
        else:
            explicit[r.key] = v
    failed = {r.key for r in requests if r.explicit is not None and r.key not in explicit}

    # What the lock holds for a request that keeps it. An explicit value replaces the
    # lock's (the user asked for it); a value that left its range is an error, never
    # a silent move.
    kept: dict[str, int] = {}
    for r in requests:
        if r.key not in previous or r.explicit is not None:
            continue
        written = previous[r.key]
        v = family.parse(written)
        fld = f"{space.section}.{r.key}"
        if v is None:
            diags.append(error(lock_file, None, fld, f"{written!r} is not a valid {space.thing}"))
            failed.add(r.key)
        elif not family.contains(v):
            diags.append(
                error(
                    lock_file, None, fld,
                    f"{written} {space.outside(v)}; delete this entry to let svcops allocate a new one",
                )
            )
            failed.add(r.key)
        elif any(v in b for b in r.home):
            kept[r.key] = v
        # else: in the family but not in this request's home (an LB service whose
        # pool annotation changed): the user asked for a new pool, allocate anew.

    for key, v in kept.items():
        if v in holder:
            other = holder[v][0]
            diags.append(
                error(
                    lock_file, None, f"{space.section}.{key}",
                    f"{family.format(v)} is allocated to both {other} and {key} (two branches "
                    f"merged?); delete one of the entries to let svcops allocate it anew",
                )
            )
            failed.add(key)
            continue
        holder[v] = (key, True, lock_file)
        result[key] = v
        family.take(v)

    for r in requests:
        if r.key not in explicit:
            continue
        v = explicit[r.key]
        file, line, fld = r.where
        if v in holder:
            other, from_lock, where = holder[v]
            how = "already allocated to" if from_lock else "also requested by"
            diags.append(error(file, line, fld, f"{family.format(v)} is {how} {other} ({where})"))
            failed.add(r.key)
            continue
        holder[v] = (r.key, False, r.source)
        result[r.key] = v
        family.take(v)

    # New allocations, in key order: the outcome does not depend on input order.
    starved: dict[int, tuple[_Band, list[str]]] = {}
    for r in requests:
        if r.key in result or r.key in failed:
            continue
        h = _stable_hash(r.key)
        for band in r.home:
            v = band.probe(h, family.used)
            if v is not None:
                result[r.key] = v
                family.take(v)
                break
        else:
            if r.home:
                last = r.home[-1]
                starved.setdefault(id(last), (last, []))[1].append(r.key)
    for band, keys in starved.values():
        diags.append(full(band, keys))
    return dict(sorted(result.items())), diags


def _few(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown if len(keys) <= n else f"{shown} and {len(keys) - n} more"


def _where(service: Service) -> str:
    s = service.source
    return f"{s.file}:{s.line}" if s.line is not None else s.file


# --- the four kinds -----------------------------------------------------------------


def _cluster_ips(
    cluster: Cluster, services: Sequence[Service], previous: Allocations, lock_file: str
) -> tuple[dict[str, str], list[Diagnostic]]:
    cfile, cline = cluster.source.file, cluster.source.line
    try:
        net = netaddr.IPNetwork(cluster.service_cidr)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return {}, [error(cfile, cline, "serviceCIDR", f"{cluster.service_cidr!r} is not a CIDR")]
    first, last = int(net.network), int(net.broadcast) if net.version == 4 and net.prefixlen < 31 else int(net[-1])
    size = net.size
    # IPv4: never the network or broadcast address; IPv6: never the subnet-router anycast.
    lo = first + 1 if size > 2 else first
    hi = last - 1 if net.version == 4 and size > 2 else last
    offset = service_band_offset(size)
    static, dynamic = _Band([(lo, lo + offset - 1)]), _Band([(lo + offset, hi)])
    family = _Family(net.version, [static, dynamic])
    cidr = str(net.cidr)

    def outside(v: int) -> str:
        if v == first:
            return f"is the network address of serviceCIDR {cidr}"
        if v == last and net.version == 4:
            return f"is the broadcast address of serviceCIDR {cidr}"
        return f"is outside serviceCIDR {cidr}"

    space = _Space("clusterIPs", "cluster IP", outside)
    requests = [
        _Request(
            s.key,
            s.cluster_ip,
            (s.source.file, s.source.line, "spec.clusterIP"),
            [dynamic, static],
            _where(s),
        )
        for s in services
        if s.proxied
    ]

    def full(band: _Band, keys: list[str]) -> Diagnostic:
        total = static.size + dynamic.size
        return error(
            cfile, cline, "serviceCIDR",
            f"pool {cidr} is full ({total} addresses): no cluster IP left for {_few(keys)}",
        )

    values, diags = _settle(family, space, requests, previous.cluster_ips, lock_file, full)
    return {k: family.format(v) for k, v in values.items()}, diags  # type: ignore[misc]


def _node_ports(
    cluster: Cluster, services: Sequence[Service], previous: Allocations, lock_file: str
) -> tuple[dict[str, int], list[Diagnostic]]:
    cfile, cline = cluster.source.file, cluster.source.line
    lo, hi = cluster.node_port_range
    if not (0 < lo <= hi <= 65535):
        return {}, [error(cfile, cline, "nodePortRange", f"{lo}-{hi} is not a port range")]
    offset = node_port_band_offset(hi - lo + 1)
    result: dict[str, int] = {}
    diags: list[Diagnostic] = []
    for proto in PROTOCOLS:  # node ports are unique per protocol, as in Kubernetes
        static, dynamic = _Band([(lo, lo + offset - 1)]), _Band([(lo + offset, hi)])
        family = _Family(0, [static, dynamic])
        space = _Space(
            "nodePorts", "node port",
            lambda v: f"is outside nodePortRange {lo}-{hi}",
        )
        requests = [
            _Request(
                node_port_key(s, p),
                p.node_port,
                (s.source.file, p.line if p.line is not None else s.source.line, f"spec.ports[{i}].nodePort"),
                [dynamic, static],
                f"{s.source.file}:{p.line}" if p.line is not None else _where(s),
            )
            for s in services
            if s.proxied and s.has_node_ports
            for i, p in enumerate(s.ports)
            if p.protocol == proto
        ]
        if not requests:
            continue

        def full(band: _Band, keys: list[str], proto: str = proto) -> Diagnostic:
            return error(
                cfile, cline, "nodePortRange",
                f"range {lo}-{hi} is full for {proto} ({hi - lo + 1} ports): "
                f"no node port left for {_few(keys)}",
            )

        values, more = _settle(family, space, requests, previous.node_ports, lock_file, full)
        result.update(values)
        diags += more
    return dict(sorted(result.items())), diags


def _pool_band(addresses: Sequence[str]) -> tuple[int, _Band]:
    """A pool's addresses ("192.0.2.0/28", "192.0.2.10-192.0.2.20") as one band."""
    ips = netaddr.IPSet()
    for a in addresses:
        if "-" in a:
            start, end = (x.strip() for x in a.split("-", 1))
            ips.add(netaddr.IPRange(start, end))
        else:
            ips.add(netaddr.IPNetwork(a))
    versions = {r.version for r in ips.iter_ipranges()}
    if len(versions) > 1:
        raise ValueError("mixes IPv4 and IPv6")
    return (versions.pop() if versions else 4), _Band(
        (int(r.first), int(r.last)) for r in ips.iter_ipranges()
    )


def _load_balancer_ips(
    cluster: Cluster, services: Sequence[Service], previous: Allocations, lock_file: str
) -> tuple[dict[str, str], list[Diagnostic]]:
    cfile, cline = cluster.source.file, cluster.source.line
    lbs = [s for s in services if s.proxied and s.type == "LoadBalancer"]
    if not lbs:
        return {}, []
    diags: list[Diagnostic] = []
    pools = cluster.load_balancer_pools
    bands: dict[str, _Band] = {}
    names: dict[int, str] = {}  # id(band) -> pool name, for errors
    versions = set()
    for i, pool in enumerate(pools):
        try:
            version, band = _pool_band(pool.addresses)
        except (netaddr.AddrFormatError, ValueError, TypeError) as e:
            diags.append(error(cfile, cline, f"loadBalancerPools[{i}].addresses", f"not a list of addresses: {e}"))
            continue
        bands[pool.name] = band
        names[id(band)] = pool.name
        versions.add(version)
    if diags:
        return {}, diags
    # One family for every pool: pools may overlap, an address is still given once.
    family = _Family(versions.pop() if len(versions) == 1 else 4, list(bands.values()))
    listed = ", ".join(p.name for p in pools) or "none"
    space = _Space(
        "loadBalancerIPs", "load-balancer address",
        lambda v: f"is not in any of the loadBalancerPools (pools: {listed})",
    )
    requests = []
    for s in lbs:
        name = s.pool if s.pool is not None else (pools[0].name if pools else None)
        if name is None or name not in bands:
            if s.pool is not None:
                diags.append(
                    error(
                        s.source.file, s.source.line, f"metadata.annotations.{POOL_ANNOTATION}",
                        f"no load-balancer pool named {s.pool!r} in svcops.yaml (pools: {listed})",
                    )
                )
            elif s.load_balancer_ip is None:
                diags.append(
                    error(
                        s.source.file, s.source.line, "spec.type",
                        "LoadBalancer needs an address pool: add loadBalancerPools to svcops.yaml",
                    )
                )
                continue
            home: list[_Band] = []
        else:
            home = [bands[name]]
        requests.append(
            _Request(
                s.key, s.load_balancer_ip, (s.source.file, s.source.line, "spec.loadBalancerIP"), home, _where(s)
            )
        )

    def full(band: _Band, keys: list[str]) -> Diagnostic:
        name = names[id(band)]
        i = next(i for i, p in enumerate(pools) if p.name == name)
        return error(
            cfile, cline, f"loadBalancerPools[{i}]",
            f"pool {name} ({', '.join(pools[i].addresses)}) is full ({band.size} addresses): "
            f"no load-balancer address left for {_few(keys)}",
        )

    values, more = _settle(family, space, requests, previous.load_balancer_ips, lock_file, full)
    return {k: family.format(v) for k, v in values.items()}, diags + more  # type: ignore[misc]


def _node_addresses(
    cluster: Cluster, nodes: Sequence[Node], previous: Allocations, lock_file: str
) -> tuple[dict[str, str], list[Diagnostic]]:
    nn = cluster.node_network
    if nn is None:
        return {}, []
    cfile, cline = cluster.source.file, cluster.source.line
    try:
        net = netaddr.IPNetwork(nn.cidr)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return {}, [error(cfile, cline, "nodeNetwork.cidr", f"{nn.cidr!r} is not a CIDR")]
    cidr = str(net.cidr)
    ips = netaddr.IPSet([net])
    reserved: dict[int, str] = {}
    if net.version == 4 and net.prefixlen < 31:
        reserved[int(net.network)] = f"is the network address of nodeNetwork {cidr}"
        reserved[int(net.broadcast)] = f"is the broadcast address of nodeNetwork {cidr}"
    elif net.version == 6 and net.prefixlen < 127:
        reserved[int(net.network)] = f"is the subnet-router anycast address of nodeNetwork {cidr}"
    for what, addrs in (("the gateway", [nn.gateway] if nn.gateway else []), ("a DNS server", nn.dns_servers)):
        for a in addrs:
            parsed = _parse_ip(a)
            if parsed is not None and parsed[0] == net.version:
                reserved.setdefault(parsed[1], f"is {what} of nodeNetwork {cidr}")
    for v in reserved:
        ips.remove(netaddr.IPAddress(v, net.version))
    band = _Band((int(r.first), int(r.last)) for r in ips.iter_ipranges())
    family = _Family(net.version, [band])
    space = _Space(
        "nodeAddresses", "node address",
        lambda v: reserved.get(v, f"is outside nodeNetwork {cidr}"),
    )
    # Nodes carry no source position; name the host and its host-data key.
    requests = [
        _Request(n.name, n.address, ("inventory", None, f"{n.name}.svcops_address"), [band], "inventory")
        for n in nodes
    ]

    def full(b: _Band, keys: list[str]) -> Diagnostic:
        return error(
            cfile, cline, "nodeNetwork.cidr",
            f"pool {cidr} is full ({b.size} addresses): no address left for {_few(keys)}",
        )

    values, diags = _settle(family, space, requests, previous.node_addresses, lock_file, full)
    return {k: family.format(v) for k, v in values.items()}, diags  # type: ignore[misc]


def allocate(
    cluster: Cluster,
    services: Sequence[Service],
    nodes: Sequence[Node],
    previous: Allocations,
    lock_file: str = "svcops.lock",
) -> tuple[Allocations, list[Diagnostic]]:
    """The allocations of a site, given the previous ones (svcops.lock).

    Returns every allocation the site needs: a cluster IP for every proxied service
    (not ExternalName, not headless), a node port for every port of NodePort and
    LoadBalancer services, an address for every LoadBalancer service, and an address
    for every node when ``cluster.node_network`` is set. Each mapping is sorted by key.
    Errors (conflicts, full pools, lock entries that left their range) are returned,
    all of them, sorted by file and line; the allocations they concern are left out.

    >>> from svcops.site.model import ServicePort
    >>> web = Service("default", "web", ports=(ServicePort("", "TCP", 80, 8080),))
    >>> allocs, errors = allocate(Cluster(service_cidr="10.96.0.0/24"), [web], [], Allocations())
    >>> errors, list(allocs.cluster_ips)
    ([], ['default/web'])
    """
    ips, d1 = _cluster_ips(cluster, services, previous, lock_file)
    ports, d2 = _node_ports(cluster, services, previous, lock_file)
    lbs, d3 = _load_balancer_ips(cluster, services, previous, lock_file)
    addrs, d4 = _node_addresses(cluster, nodes, previous, lock_file)
    return Allocations(ips, ports, lbs, addrs), sorted(d1 + d2 + d3 + d4, key=sort_key)
