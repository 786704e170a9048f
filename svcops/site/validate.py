"""The meaning of a site, beyond its schemas: what Kubernetes' API server would refuse.

The schemas (``schemas/*.schema.json``) check each document's shape. This module checks
what a shape cannot say, turning well-formed documents into the model's values:

- svcops.yaml (`cluster_from`): serviceCIDR a real network of a usable size,
  nodePortRange well-formed, load-balancer pools with unique names that overlap
  neither each other nor serviceCIDR, nodeNetwork consistent.
- one Service (`service_from`): port names required and unique (one of 63 characters
  is a warning: its SRV label would be 64), annotations within 256 KiB, (port, protocol)
  unique, node ports inside nodePortRange, clusterIP inside serviceCIDR, headless only
  for ClusterIP, every field only where its type allows it (externalName, nodePort,
  loadBalancerIP, loadBalancerSourceRanges, externalTrafficPolicy,
  sessionAffinityConfig...), loadBalancerIP inside its pool.
- one Endpoints or EndpointSlice (`endpoints_from`, `endpointslice_from`).
- the whole site (`check_site`): a service defined twice, an explicit clusterIP,
  loadBalancerIP or nodePort asked for by two services, hand-written endpoints for a
  service that does not exist or has a selector.

A document the schema found problems in is still checked, so that one run reports
everything: a `Trust` says which of its values the schema passed, and a check runs
only when every value it reads is trusted. Such a document yields no model value and
takes no part in the site-wide checks.

Every function is pure and returns its problems as Diagnostics, each at the line and
field it is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterable, Protocol

from netaddr import IPAddress, IPNetwork, IPRange, IPSet

from svcops.site.diagnostics import Diagnostic, error, warning
from svcops.site.model import (
    DEFAULT_AFFINITY_TIMEOUT,
    EMPTY,
    MAX_DNS_LABEL,
    POOL_ANNOTATION,
    SCHEDULER_ANNOTATION,
    Cluster,
    EndpointAddress,
    EndpointPortSpec,
    EndpointSubset,
    ManualEndpoints,
    NodeNetwork,
    Pool,
    Service,
    ServicePort,
    Source,
    has_srv_record,
)
from svcops.site.yamlsrc import Document, format_path

IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# Kubernetes' limit on all the annotations of an object, keys and values (UTF-8 bytes).
MAX_ANNOTATIONS_SIZE = 256 * 1024


def annotations_size(annotations: dict) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())


# Kubernetes refuses service CIDRs larger than /12 (2^20 addresses) for IPv4; a /31 or
# /32 leaves nothing to allocate once the network and broadcast addresses are excluded.
MIN_SERVICE_PREFIX, MAX_SERVICE_PREFIX = 12, 30


class Trust:
    """Which values of a document the schema passed: all but those at `broken` paths."""

    __slots__ = ("broken",)

    def __init__(self, broken: Iterable[tuple] = ()) -> None:
        self.broken = tuple(broken)

    def __bool__(self) -> bool:
        """True when the whole document is well-formed."""
        return not self.broken

    def known(self, *path: Any) -> bool:
        """The value at `path` exists as the schema says (nothing above it is broken)...

        ...and is itself not broken; values below it may be (check them one by one).
        """
        broken = self.broken
        return not broken or not any(path[: len(p)] == p for p in broken)

    def whole(self, *path: Any) -> bool:
        """The value at `path` and everything inside it passed the schema."""
        broken = self.broken
        if not broken:  # the common case, asked ten times a Service: no scan at all
            return True
        n = len(path)
        return not any(path[: len(p)] == p or p[:n] == path for p in broken)


TRUSTED = Trust()


@dataclass(frozen=True, slots=True)
class Located:
    """A manifest object and where it is: its document and its path inside it.

    The path is ``()`` for a document that is the object itself and ``("items", 3)``
    for an item of a ``kind: List``.
    """

    doc: Document
    prefix: tuple
    value: dict

    @property
    def file(self) -> str:
        return self.doc.file

    def line(self, *path: Any) -> int:
        return self.doc.line(self.prefix + path)

    def field(self, *path: Any) -> str:
        return format_path(self.prefix + path)

    def error(self, path: tuple, message: str) -> Diagnostic:
        return error(self.file, self.line(*path), self.field(*path), message)

    def warning(self, path: tuple, message: str) -> Diagnostic:
        return warning(self.file, self.line(*path), self.field(*path), message)

    def where(self, *path: Any) -> str:
        """"services/a.yaml:12", to name this place in another object's message."""
        return f"{self.file}:{self.line(*path)}"


# --- addresses (netaddr) -----------------------------------------------------------


def _network_problem(text: str) -> str | None:
    """Why a CIDR that matched the schema's pattern is not a network address, if it is not."""
    net = IPNetwork(text)
    if net.ip != net.network:
        return f"{text} is not a network address: its host bits are set (did you mean {net.cidr}?)"
    return None


def _special_ip_problem(ip: str) -> str | None:
    """Addresses Kubernetes refuses as endpoints and external IPs."""
    a = IPAddress(ip)
    if a.value == 0:
        return f"{ip} is the unspecified address"
    if a.is_loopback():
        return f"{ip} is a loopback address"
    if a.is_link_local():
        return f"{ip} is a link-local address"
    if a.is_multicast():
        return f"{ip} is a multicast address"
    return None


def pool_set(pool: Pool) -> IPSet:
    """Every address of a pool, as one netaddr IPSet."""
    s = IPSet()
    for a in pool.addresses:
        if "-" in a:
            first, last = a.split("-", 1)
            s.add(IPRange(first, last))
        else:
            s.add(IPNetwork(a))
    return s


# --- svcops.yaml ---------------------------------------------------------------------


def cluster_from(value: dict, file: str, line_of, trust: Trust = TRUSTED) -> tuple[Cluster | None, list[Diagnostic]]:
    """svcops.yaml's mapping -> Cluster; None when anything (schema included) is wrong."""
    diags: list[Diagnostic] = []
    ok = trust.whole

    def bad(path: tuple, message: str) -> None:
        diags.append(error(file, line_of(path), format_path(path), message))

    defaults = Cluster()
    service_cidr = value.get("serviceCIDR", defaults.service_cidr)
    service_net = None
    if ok("serviceCIDR"):
        problem = _network_problem(service_cidr)
        if problem:
            bad(("serviceCIDR",), problem)
        else:
            service_net = IPNetwork(service_cidr)
            if service_net.prefixlen < MIN_SERVICE_PREFIX:
                bad(("serviceCIDR",), f"{service_cidr} is too large: the prefix must be /{MIN_SERVICE_PREFIX} or longer, as in Kubernetes")
                service_net = None
            elif service_net.prefixlen > MAX_SERVICE_PREFIX:
                bad(("serviceCIDR",), f"{service_cidr} is too small: the prefix must be /{MAX_SERVICE_PREFIX} or shorter")
                service_net = None

    node_port_range = defaults.node_port_range
    if "nodePortRange" in value and ok("nodePortRange"):
        text = value["nodePortRange"]
        first, last = (int(x) for x in text.split("-"))
        if not (1 <= first <= 65535 and 1 <= last <= 65535):
            bad(("nodePortRange",), f"{text}: ports must be within 1-65535")
        elif first > last:
            bad(("nodePortRange",), f"{text} is reversed: the first port must not be above the last ({last}-{first}?)")
        else:
            node_port_range = (first, last)

    pools: list[Pool] = []
    pool_sets: list[tuple[Pool, IPSet, tuple]] = []
    names: dict[str, int] = {}
    pool_specs = value.get("loadBalancerPools", ()) if trust.known("loadBalancerPools") else ()
    for i, p in enumerate(pool_specs):
        path = ("loadBalancerPools", i)
        if not trust.known(*path):
            continue
        if ok(*path, "name"):
            name = p["name"]
            if name in names:
                first_path = ("loadBalancerPools", names[name], "name")
                bad(path + ("name",), f'duplicate pool name "{name}" (also loadBalancerPools[{names[name]}], line {line_of(first_path)})')
            else:
                names[name] = i
        if not ok(*path):
            continue
        addresses = []
        good = True
        for j, a in enumerate(p["addresses"]):
            apath = path + ("addresses", j)
            if "-" in a:
                first_ip, last_ip = a.split("-", 1)
                if IPAddress(first_ip) > IPAddress(last_ip):
                    bad(apath, f"{a} is reversed: the first address must not be above the last ({last_ip}-{first_ip}?)")
                    good = False
                    continue
                addresses.append(a)
            else:
                problem = _network_problem(a)
                if problem:
                    bad(apath, problem)
                    good = False
                    continue
                addresses.append(str(IPNetwork(a).cidr))
        pool = Pool(p["name"], tuple(addresses))
        pools.append(pool)
        if good:
            pool_sets.append((pool, pool_set(pool), path))
    # Two pools sharing an address would hand it out twice; the service range too.
    for k, (pool, s, path) in enumerate(pool_sets):
        for other, os_, opath in pool_sets[:k]:
            common = s & os_
            if common:
                bad(path + ("addresses",), f'pool "{pool.name}" overlaps pool "{other.name}" (line {line_of(opath)}) at {_first(common)}')
        if service_net is not None and s & IPSet([service_net]):
            bad(path + ("addresses",), f'pool "{pool.name}" overlaps serviceCIDR {service_cidr}')

    node_network = None
    if "nodeNetwork" in value and trust.known("nodeNetwork"):
        nn = value["nodeNetwork"]
        path = ("nodeNetwork",)
        if ok(*path, "cidr"):
            problem = _network_problem(nn["cidr"])
            if problem:
                bad(path + ("cidr",), problem)
            else:
                net = IPNetwork(nn["cidr"])
                gateway = nn.get("gateway")
                if gateway is not None and ok(*path, "gateway"):
                    g = IPAddress(gateway)
                    if g not in net:
                        bad(path + ("gateway",), f"{gateway} is outside nodeNetwork.cidr {net}")
                    elif net.prefixlen < 31 and g in (net.network, net.broadcast):
                        bad(path + ("gateway",), f"{gateway} is the {'network' if g == net.network else 'broadcast'} address of {net}")
                if service_net is not None and (net.first <= service_net.last and service_net.first <= net.last):
                    bad(path + ("cidr",), f"{net} overlaps serviceCIDR {service_cidr}")
                if ok(*path):
                    node_network = NodeNetwork(str(net), gateway, tuple(nn.get("dnsServers", ())))

    if diags or not trust:
        return None, diags
    return (
        Cluster(
            service_cidr=str(service_net),
            node_port_range=node_port_range,
            proxy_mode=value.get("proxyMode", defaults.proxy_mode),
            cluster_domain=value.get("clusterDomain", defaults.cluster_domain),
            load_balancer_pools=tuple(pools),
            node_network=node_network,
            ipvs_scheduler=value.get("ipvsScheduler", defaults.ipvs_scheduler),
            source=Source(file, line_of(()) if value else None),
            service_dns=value.get("serviceDNS", defaults.service_dns),
        ),
        diags,
    )


def _first(s: IPSet) -> str:
    cidr = s.iter_cidrs()[0]
    return str(cidr.ip) if cidr.size == 1 else str(cidr)


# --- one Service ---------------------------------------------------------------------

# Fields that only some types allow: field -> (types, how to say it).
_ONLY_FOR = {
    "externalName": (("ExternalName",), "type ExternalName"),
    "loadBalancerIP": (("LoadBalancer",), "type LoadBalancer"),
    "loadBalancerSourceRanges": (("LoadBalancer",), "type LoadBalancer"),
    "allocateLoadBalancerNodePorts": (("LoadBalancer",), "type LoadBalancer"),
}
_NOT_FOR_EXTERNAL_NAME = ("externalIPs", "internalTrafficPolicy", "sessionAffinityConfig")


class ClusterView:
    """What service checks need from the cluster, parsed once (not per service)."""

    __slots__ = ("cluster", "service_net", "pools", "pool_sets")

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.service_net = IPNetwork(cluster.service_cidr)
        self.pools = {p.name: p for p in cluster.load_balancer_pools}
        self.pool_sets = {p.name: pool_set(p) for p in cluster.load_balancer_pools}


def service_from(obj: Located, view: ClusterView | None, trust: Trust = TRUSTED) -> tuple[Service | None, list[Diagnostic]]:
    """One Service manifest -> Service, with every problem of its own.

    `view` is None when svcops.yaml itself is wrong: the checks that need the cluster
    (ranges, pools) are then skipped rather than made against wrong values. The
    Service is None when the schema found problems (`trust`).
    """
    v = obj.value
    diags: list[Diagnostic] = []
    bad = lambda path, message: diags.append(obj.error(path, message))  # noqa: E731
    ok = trust.whole
    S = ("spec",)
    if "spec" in v and not trust.known(*S):
        return None, diags
    spec = v.get("spec") or {}
    has = spec.__contains__
    stype = spec.get("type", "ClusterIP") if ok(*S, "type") else None

    # clusterIP, as kubectl exports it: clusterIPs must agree with it.
    cluster_ip: str | None = None
    ip_known = ok(*S, "clusterIP") and ok(*S, "clusterIPs")
    if ip_known:
        cluster_ip = spec.get("clusterIP") or None  # "" asks for an allocation, as in Kubernetes
        ips = spec.get("clusterIPs")
        if ips:
            if cluster_ip is None:
                cluster_ip = ips[0]
            elif ips[0] != cluster_ip:
                bad(S + ("clusterIPs", 0), f"{ips[0]} must equal spec.clusterIP ({cluster_ip})")
    headless = cluster_ip == "None"

    if stype is not None:
        for f, (types, what) in _ONLY_FOR.items():
            if has(f) and stype not in types:
                bad(S + (f,), f"only allowed for {what}, not {stype}")
    if stype == "ExternalName":
        if not has("externalName"):
            bad(S + ("externalName",), "required for type ExternalName")
        if cluster_ip is not None:
            bad(S + ("clusterIP",), "must not be set for type ExternalName (it has no cluster IP, only a DNS name)")
        for f in _NOT_FOR_EXTERNAL_NAME:
            if has(f):
                bad(S + (f,), "not allowed for type ExternalName (it is DNS only)")
        if spec.get("sessionAffinity") == "ClientIP":
            bad(S + ("sessionAffinity",), "ClientIP is not allowed for type ExternalName (it is DNS only)")
        if spec.get("selector"):
            diags.append(obj.warning(S + ("selector",), "has no effect on an ExternalName service"))
    if headless and stype in ("NodePort", "LoadBalancer"):
        bad(S + ("clusterIP",), f"None (headless) is only allowed for type ClusterIP, not {stype}")
    if has("externalTrafficPolicy") and stype is not None and stype not in ("NodePort", "LoadBalancer") and not spec.get("externalIPs"):
        bad(S + ("externalTrafficPolicy",), f"only allowed for type NodePort or LoadBalancer, or with externalIPs (not {stype})")
    affinity = spec.get("sessionAffinity", "None")
    timeout = DEFAULT_AFFINITY_TIMEOUT
    if has("sessionAffinityConfig") and ok(*S, "sessionAffinity"):
        if affinity != "ClientIP":
            bad(S + ("sessionAffinityConfig",), "only allowed with sessionAffinity: ClientIP")
        elif ok(*S, "sessionAffinityConfig"):
            timeout = (spec["sessionAffinityConfig"].get("clientIP") or {}).get("timeoutSeconds", timeout)

    # Ports.
    ports: list[ServicePort] = []
    if trust.known(*S, "ports"):
        port_specs = spec.get("ports") or []
        if not port_specs and stype not in ("ExternalName", None) and ip_known and not headless:
            where = S + ("ports",) if has("ports") else S if "spec" in v else ()
            diags.append(error(obj.file, obj.line(*where), obj.field(*S, "ports"), "at least one port is required (only headless and ExternalName services may have none)"))
        names: dict[str, int] = {}
        keys: dict[tuple, int] = {}
        node_ports: dict[tuple, int] = {}
        lo, hi = view.cluster.node_port_range if view else (1, 65535)
        for i, p in enumerate(port_specs):
            P = S + ("ports", i)
            if not trust.known(*P):
                continue
            if ok(*P, "name"):
                name = p.get("name", "")
                if len(port_specs) > 1 and not name:
                    bad(P + ("name",), "required when the service has more than one port")
                elif name in names:
                    bad(P + ("name",), f'duplicate port name "{name}" (also spec.ports[{names[name]}], line {obj.line(*S, "ports", names[name])})')
                else:
                    names[name] = i
                if name and not has_srv_record(name):
                    diags.append(obj.warning(P + ("name",), f"{len(name)} characters: the SRV record's label _{name} would be {len(name) + 1}, over DNS's {MAX_DNS_LABEL}, so this port has no SRV record (the service's other records are served)"))
            protocol_ok = ok(*P, "protocol")
            protocol = p.get("protocol", "TCP")
            if protocol_ok and ok(*P, "port"):
                key = (p["port"], protocol)
                if key in keys:
                    bad(P + ("port",), f"duplicate port {key[0]}/{protocol} (also spec.ports[{keys[key]}], line {obj.line(*S, 'ports', keys[key])})")
                else:
                    keys[key] = i
            node_port = p.get("nodePort")
            if node_port is not None and ok(*P, "nodePort"):
                if stype is None:
                    pass
                elif stype not in ("NodePort", "LoadBalancer"):
                    bad(P + ("nodePort",), f"only allowed for type NodePort or LoadBalancer, not {stype}")
                elif view and not lo <= node_port <= hi:
                    bad(P + ("nodePort",), f"{node_port} is outside nodePortRange {lo}-{hi}")
                elif protocol_ok and (node_port, protocol) in node_ports:
                    j = node_ports[(node_port, protocol)]
                    bad(P + ("nodePort",), f"duplicate nodePort {node_port}/{protocol} (also spec.ports[{j}], line {obj.line(*S, 'ports', j)})")
                elif protocol_ok:
                    node_ports[(node_port, protocol)] = i
            if trust and ok(*P):
                number = int(p["port"])  # 80.0 is an integer to JSON Schema
                target = p.get("targetPort", number)
                ports.append(ServicePort(p.get("name", ""), protocol, number, int(target) if isinstance(target, (int, float)) else target, None if node_port is None else int(node_port), obj.line(*P)))

    # Addresses.
    if view and cluster_ip is not None and not headless:
        net = view.service_net
        a = IPAddress(cluster_ip)
        if a not in net:
            bad(S + ("clusterIP",), f"{cluster_ip} is outside serviceCIDR {net}")
        elif a in (net.network, net.broadcast):
            bad(S + ("clusterIP",), f"{cluster_ip} is the {'network' if a == net.network else 'broadcast'} address of serviceCIDR {net}, which cannot be allocated")
    if trust.known(*S, "externalIPs"):
        for i, ip in enumerate(spec.get("externalIPs", ())):
            problem = ok(*S, "externalIPs", i) and _special_ip_problem(ip)
            if problem:
                bad(S + ("externalIPs", i), f"{problem}, which cannot be an external IP")

    M = ("metadata",)
    meta = v["metadata"] if trust.known(*M) and "metadata" in v else {}
    annotations = (meta.get("annotations") or {}) if trust.known(*M, "annotations") else {}
    if ok(*M, "annotations"):
        size = annotations_size(annotations)
        if size > MAX_ANNOTATIONS_SIZE:
            bad(M + ("annotations",), f"{size} bytes in all: Kubernetes allows at most {MAX_ANNOTATIONS_SIZE} (256 KiB)")
    A = M + ("annotations", POOL_ANNOTATION)
    pool = annotations.get(POOL_ANNOTATION) if ok(*A) else None
    if pool is not None and stype is not None:
        if stype != "LoadBalancer":
            diags.append(obj.warning(A, f"has no effect: the service is of type {stype}, not LoadBalancer"))
        elif view and pool not in view.pools:
            known = ", ".join(view.pools) or "none in svcops.yaml"
            bad(A, f'no loadBalancerPool named "{pool}" (pools: {known})')
    if view and stype == "LoadBalancer":
        if not view.pools:
            bad(S + ("type",), "LoadBalancer needs an address pool, and svcops.yaml has no loadBalancerPools")
        elif has("loadBalancerIP") and ok(*S, "loadBalancerIP") and ok(*A):
            ip = spec["loadBalancerIP"]
            if pool in view.pools:
                if IPAddress(ip) not in view.pool_sets[pool]:
                    bad(S + ("loadBalancerIP",), f'{ip} is outside pool "{pool}" ({", ".join(view.pools[pool].addresses)})')
            elif pool is None and not any(IPAddress(ip) in s for s in view.pool_sets.values()):
                bad(S + ("loadBalancerIP",), f"{ip} is outside every loadBalancerPool ({', '.join(view.pools)})")
    SA = M + ("annotations", SCHEDULER_ANNOTATION)
    scheduler = annotations.get(SCHEDULER_ANNOTATION) if ok(*SA) else None
    if scheduler is not None and scheduler not in IPVS_SCHEDULERS:
        bad(SA, f'"{scheduler}" is not an IPVS scheduler: {", ".join(IPVS_SCHEDULERS)}')

    if not trust:
        return None, diags
    selector = spec.get("selector") or None  # `selector: {}` selects nothing, as no selector
    service = Service(
        namespace=meta.get("namespace", "default"),
        name=meta["name"],
        type=stype,  # type: ignore[arg-type]
        ports=tuple(ports),
        selector=MappingProxyType(selector) if selector else None,
        cluster_ip=cluster_ip,
        external_ips=tuple(spec.get("externalIPs", ())),
        load_balancer_ip=spec.get("loadBalancerIP"),
        load_balancer_source_ranges=tuple(str(IPNetwork(r).cidr) for r in spec.get("loadBalancerSourceRanges", ())),
        external_name=spec.get("externalName"),
        session_affinity=affinity,
        affinity_timeout=timeout,
        external_traffic_policy=spec.get("externalTrafficPolicy", "Cluster"),
        internal_traffic_policy=spec.get("internalTrafficPolicy", "Cluster"),
        labels=_frozen(meta.get("labels")),
        annotations=_frozen(annotations),
        source=Source(obj.file, obj.line()),
        publish_not_ready=spec.get("publishNotReadyAddresses") is True,
    )
    return service, diags


def _frozen(m: dict | None):
    return MappingProxyType(m) if m else EMPTY


# --- hand-written endpoints ----------------------------------------------------------


def _endpoint_ports(obj: Located, path: tuple, specs: list, trust: Trust, diags: list[Diagnostic]) -> tuple[EndpointPortSpec, ...]:
    out = []
    names: dict[str, int] = {}
    for i, p in enumerate(specs):
        if not trust.known(*path, i):
            continue
        if trust.whole(*path, i, "name"):
            name = p.get("name", "")
            if len(specs) > 1 and not name:
                diags.append(obj.error(path + (i, "name"), "required when there is more than one port"))
            elif name in names:
                diags.append(obj.error(path + (i, "name"), f'duplicate port name "{name}" (also {format_path(obj.prefix + path + (names[name],))}, line {obj.line(*path, names[name])})'))
            else:
                names[name] = i
        if trust.whole(*path, i):
            out.append(EndpointPortSpec(p.get("name", ""), int(p["port"]), p.get("protocol", "TCP")))
    return tuple(out)


def _endpoint_ip(obj: Located, path: tuple, ip: str, trust: Trust, diags: list[Diagnostic]) -> None:
    problem = trust.whole(*path) and _special_ip_problem(ip)
    if problem:
        diags.append(obj.error(path, f"{problem}, which cannot be an endpoint"))


def endpoints_from(obj: Located, trust: Trust = TRUSTED) -> tuple[ManualEndpoints | None, list[Diagnostic]]:
    """One kind Endpoints -> ManualEndpoints for the Service of its name (None: schema problems)."""
    v = obj.value
    diags: list[Diagnostic] = []
    subsets = []
    for i, ss in enumerate((v.get("subsets") or ()) if trust.known("subsets") else ()):
        path = ("subsets", i)
        if not trust.known(*path):
            continue
        if not ss.get("addresses") and not ss.get("notReadyAddresses"):
            diags.append(obj.error(path, "a subset needs addresses"))
        addresses = []
        for key in ("addresses", "notReadyAddresses"):
            if not trust.known(*path, key):
                continue
            for j, a in enumerate(ss.get(key) or ()):
                if trust.known(*path, key, j):
                    _endpoint_ip(obj, path + (key, j, "ip"), a.get("ip"), trust, diags)
                    # notReadyAddresses are not endpoints (as in Kubernetes): only checked.
                    if key == "addresses" and trust.whole(*path, key, j):
                        addresses.append(EndpointAddress(a["ip"], a.get("nodeName")))
        ports = _endpoint_ports(obj, path + ("ports",), (ss.get("ports") or []) if trust.known(*path, "ports") else [], trust, diags)
        if addresses:
            subsets.append(EndpointSubset(tuple(addresses), ports))
    if not trust:
        return None, diags
    meta = v["metadata"]
    return ManualEndpoints(meta.get("namespace", "default"), meta["name"], tuple(subsets), Source(obj.file, obj.line())), diags


def endpointslice_from(obj: Located, trust: Trust = TRUSTED) -> tuple[ManualEndpoints | None, list[Diagnostic]]:
    """One EndpointSlice -> ManualEndpoints for the Service its label names (None: schema problems).

    Endpoints whose condition ``ready`` is false are left out, as kube-proxy does.
    """
    v = obj.value
    diags: list[Diagnostic] = []
    addresses = []
    for j, e in enumerate((v.get("endpoints") or ()) if trust.known("endpoints") else ()):
        path = ("endpoints", j)
        if not trust.known(*path, "addresses", 0):
            continue
        ip = e["addresses"][0]  # kube-proxy uses the first address only
        _endpoint_ip(obj, path + ("addresses", 0), ip, trust, diags)
        if trust.whole(*path) and (e.get("conditions") or {}).get("ready", True) is not False:
            addresses.append(EndpointAddress(ip, e.get("nodeName")))
    ports = _endpoint_ports(obj, ("ports",), (v.get("ports") or []) if trust.known("ports") else [], trust, diags)
    if not trust:
        return None, diags
    meta = v["metadata"]
    subsets = (EndpointSubset(tuple(addresses), ports),) if addresses else ()
    return (
        ManualEndpoints(meta.get("namespace", "default"), meta["labels"][SERVICE_NAME_LABEL], subsets, Source(obj.file, obj.line())),
        diags,
    )


# --- the whole site ------------------------------------------------------------------------


class Place(Protocol):
    """Where an object is, as the site-wide checks name it: a `Located`, or anything
    that words its messages the same way (`svcops.site.load` has one for objects it
    remembered from an earlier run)."""

    file: str

    def error(self, path: tuple, message: str) -> Diagnostic: ...

    def warning(self, path: tuple, message: str) -> Diagnostic: ...

    def where(self, *path: Any) -> str: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """A loaded object and where it came from, for the site-wide checks."""

    kind: str  # Service | Endpoints | EndpointSlice
    obj: Place
    value: Service | ManualEndpoints
    name: str = ""  # its metadata.name (an EndpointSlice's own, not its service's)


def check_site(entries: Iterable[Entry], view: ClusterView | None) -> tuple[tuple[Service, ...], tuple[ManualEndpoints, ...], list[Diagnostic]]:
    """Checks across objects, in file order; the later of two conflicting objects gets the error.

    Returns the services and the hand-written endpoints (slices of one service merged).
    """
    diags: list[Diagnostic] = []
    services: dict[str, Entry] = {}
    cluster_ips: dict[str, Entry] = {}
    lb_ips: dict[str, Entry] = {}
    node_ports: dict[tuple, tuple[Entry, int]] = {}
    # (address, port, protocol) -> (entry, path of the address): an external IP or a
    # load-balancer IP serves one service per port (IPVS has one virtual server there,
    # nftables one map element; iptables would silently pick the first rule).
    front_ports: dict[tuple, tuple[Entry, tuple]] = {}
    entries = list(entries)

    for e in entries:
        if e.kind != "Service":
            continue
        s: Service = e.value  # type: ignore[assignment]
        o = e.obj
        if s.key in services:
            first = services[s.key].obj
            diags.append(o.error(("metadata", "name"), f"service {s.key} is already defined at {first.where('metadata', 'name')}"))
            continue
        services[s.key] = e
        if s.cluster_ip is not None and not s.headless:
            other = cluster_ips.get(s.cluster_ip)
            if other is not None:
                diags.append(o.error(("spec", "clusterIP"), f"{s.cluster_ip} is already taken by service {other.value.key} ({other.obj.where('spec', 'clusterIP')})"))
            else:
                cluster_ips[s.cluster_ip] = e
        if s.load_balancer_ip is not None and s.type == "LoadBalancer":
            other = lb_ips.get(s.load_balancer_ip)
            if other is not None:
                diags.append(o.error(("spec", "loadBalancerIP"), f"{s.load_balancer_ip} is already taken by service {other.value.key} ({other.obj.where('spec', 'loadBalancerIP')})"))
            else:
                lb_ips[s.load_balancer_ip] = e
        fronts = [(ip, ("spec", "externalIPs", i)) for i, ip in enumerate(s.external_ips)]
        if s.load_balancer_ip is not None and s.type == "LoadBalancer":
            fronts.append((s.load_balancer_ip, ("spec", "loadBalancerIP")))
        for ip, path in fronts:
            for p in s.ports:
                k = (ip, p.port, p.protocol)
                other = front_ports.get(k)
                if other is None:
                    front_ports[k] = (e, path)
                elif other[0] is not e:
                    oe, opath = other
                    diags.append(o.error(path, f"{ip} port {p.port}/{p.protocol} is already served by service {oe.value.key} ({oe.obj.where(*opath)}): one service per address and port"))
                    break
        if s.has_node_ports:
            seen_here = set()
            for i, p in enumerate(s.ports):
                if p.node_port is None:
                    continue
                k = (p.node_port, p.protocol)
                other = node_ports.get(k)
                if other is not None and other[0] is not e:
                    oe, oi = other
                    diags.append(o.error(("spec", "ports", i, "nodePort"), f"nodePort {p.node_port}/{p.protocol} is already used by service {oe.value.key} ({oe.obj.where('spec', 'ports', oi, 'nodePort')})"))
                elif k not in seen_here:
                    node_ports[k] = (e, i)
                seen_here.add(k)

    # Hand-written endpoints: one Endpoints, or any number of slices, per selector-less service.
    manual: dict[str, list[Entry]] = {}
    slice_names: dict[tuple, Entry] = {}
    for e in entries:
        if e.kind == "Service":
            continue
        m: ManualEndpoints = e.value  # type: ignore[assignment]
        o = e.obj
        if e.kind == "Endpoints":
            name_path: tuple = ("metadata", "name")
        else:
            name_path = ("metadata", "labels", SERVICE_NAME_LABEL)
            ident = (m.namespace, e.name)
            if ident in slice_names:
                first = slice_names[ident].obj
                diags.append(o.error(("metadata", "name"), f"EndpointSlice {ident[0]}/{ident[1]} is already defined at {first.where('metadata', 'name')}"))
                continue
            slice_names[ident] = e
        target = services.get(m.key)
        if target is None:
            diags.append(o.error(name_path, f"no Service {m.key} for this {e.kind}: hand-written endpoints belong to a Service of the same namespace and name"))
            continue
        svc: Service = target.value  # type: ignore[assignment]
        if svc.selector is not None:
            diags.append(o.error(name_path, f"Service {m.key} has a selector ({target.obj.where('spec', 'selector')}): its endpoints are the workloads it selects; remove the selector to write them by hand"))
            continue
        if svc.type == "ExternalName":
            diags.append(o.error(name_path, f"Service {m.key} is of type ExternalName ({target.obj.where('spec', 'type')}): it has no endpoints"))
            continue
        previous = manual.setdefault(m.key, [])
        if previous and (e.kind == "Endpoints" or previous[0].kind == "Endpoints"):
            first = previous[0]
            what = "another Endpoints" if e.kind == first.kind else f"an {first.kind}" if first.kind == "Endpoints" else f"an {first.kind}"
            diags.append(o.error(name_path, f"Service {m.key} already has {what} ({first.obj.where(*(('metadata', 'name') if first.kind == 'Endpoints' else ('metadata', 'labels', SERVICE_NAME_LABEL)))}): use one Endpoints, or EndpointSlices only"))
            continue
        previous.append(e)
        # A port that names no port of the service is never used: say so.
        svc_names = {p.name for p in svc.ports}
        if svc.ports:
            for i, ss in enumerate(m.subsets):
                for p in ss.ports:
                    if p.name not in svc_names:
                        where = ("subsets",) if e.kind == "Endpoints" else ("ports",)
                        known = ", ".join(f'"{n}"' for n in sorted(svc_names))
                        diags.append(o.warning(where, f'port "{p.name}" matches no port of Service {m.key} (ports: {known}): it is not used'))

    merged = []
    for key, es in manual.items():
        first = es[0].value
        subsets = tuple(ss for e in es for ss in e.value.subsets)  # type: ignore[union-attr]
        merged.append(ManualEndpoints(first.namespace, first.name, subsets, first.source))  # type: ignore[union-attr]
    services_out = tuple(e.value for e in services.values())  # type: ignore[misc]
    return services_out, tuple(merged), diags  # type: ignore[return-value]
