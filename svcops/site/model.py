"""The model: what a site, its nodes and its allocations mean, once loaded and checked.

Every type here is a frozen value: the core (allocate -> resolve -> render) is a set
of pure functions from these values to other values. Addresses are kept as plain
strings in canonical form ("10.96.0.10", "192.0.2.0/28"); netaddr parses them where
arithmetic is needed (allocation, validation), which keeps the hot paths of a
10,000-service site free of object churn.

The values of every stage live here: what was loaded (`Site`, `Service`, `Node`...),
what compiling makes of it (`Allocations`, `ResolvedPort` and its `Endpoint`s,
`HeadlessEndpoints`, `Announcement`), so that each stage's module (`svcops.compile`,
`svcops.render`) needs only this module, never another stage's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Mapping, NamedTuple

Protocol = Literal["TCP", "UDP", "SCTP"]
ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]
ProxyMode = Literal["iptables", "ipvs", "nftables"]
TrafficPolicy = Literal["Cluster", "Local"]

EMPTY: Mapping[str, str] = MappingProxyType({})

# Annotation that picks the load-balancer pool of a LoadBalancer service.
POOL_ANNOTATION = "svcops.io/address-pool"
# Annotation that picks the IPVS scheduler of a service (ipvs mode).
SCHEDULER_ANNOTATION = "svcops.io/ipvs-scheduler"

DEFAULT_AFFINITY_TIMEOUT = 10800  # Kubernetes' default: three hours

# DNS labels are at most 63 octets (RFC 1035). A service port's SRV record is named
# "_<port name>._<protocol>.<service>...": a port name of 63 characters, which
# Kubernetes allows, would make a label of 64, so that port has no SRV record (no
# resolver could ask for one, in Kubernetes either).
MAX_DNS_LABEL = 63


def has_srv_record(port_name: str) -> bool:
    """Whether a service port named `port_name` has SRV records (an unnamed one has none)."""
    return 0 < len(port_name) < MAX_DNS_LABEL


@dataclass(frozen=True, slots=True)
class Source:
    """Where a value was declared: a file and a 1-based line (None when unknown)."""

    file: str
    line: int | None = None


# --- the cluster: svcops.yaml ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pool:
    """A load-balancer address pool: CIDRs or ranges ("192.0.2.10-192.0.2.20")."""

    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeNetwork:
    """The segment static node addresses come from (Debian ifupdown)."""

    cidr: str
    gateway: str | None = None
    dns_servers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Cluster:
    service_cidr: str = "10.96.0.0/12"
    node_port_range: tuple[int, int] = (30000, 32767)
    proxy_mode: ProxyMode = "iptables"
    cluster_domain: str = "cluster.local"
    load_balancer_pools: tuple[Pool, ...] = ()
    node_network: NodeNetwork | None = None
    ipvs_scheduler: str = "rr"
    source: Source = Source("svcops.yaml")
    service_dns: bool = True  # serviceDNS: False = no DNS server on the nodes


# --- services: services/*.yaml ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str  # "" when the service has a single unnamed port
    protocol: Protocol
    port: int
    target_port: int | str  # a number, or the name of a workload's port
    node_port: int | None = None  # as written in the manifest; None = allocate if needed
    line: int | None = None

    @property
    def key(self) -> str:
        """The port's identity inside its service: "8000/TCP"."""
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: ServiceType = "ClusterIP"
    ports: tuple[ServicePort, ...] = ()
    # None: no selector (endpoints come from an Endpoints/EndpointSlice object).
    selector: Mapping[str, str] | None = None
    # As written: an address, "None" (headless), or None (allocate).
    cluster_ip: str | None = None
    external_ips: tuple[str, ...] = ()
    load_balancer_ip: str | None = None
    load_balancer_source_ranges: tuple[str, ...] = ()
    external_name: str | None = None
    session_affinity: Literal["None", "ClientIP"] = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    external_traffic_policy: TrafficPolicy = "Cluster"
    internal_traffic_policy: TrafficPolicy = "Cluster"
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    annotations: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    source: Source = Source("")
    # spec.publishNotReadyAddresses: not-ready endpoints stay (rules and headless DNS).
    publish_not_ready: bool = False

    @property
    def key(self) -> str:
        """"namespace/name": the service's identity across the site and in the lock."""
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return self.cluster_ip == "None"

    @property
    def proxied(self) -> bool:
        """Whether the node proxies this service (ExternalName and headless are DNS only)."""
        return self.type != "ExternalName" and not self.headless

    @property
    def has_node_ports(self) -> bool:
        return self.type in ("NodePort", "LoadBalancer")

    @property
    def pool(self) -> str | None:
        return self.annotations.get(POOL_ANNOTATION)


# --- hand-written endpoints: kind Endpoints / EndpointSlice -----------------------


@dataclass(frozen=True, slots=True)
class EndpointAddress:
    ip: str
    node: str | None = None  # nodeName; inferred from the inventory when absent


@dataclass(frozen=True, slots=True)
class EndpointPortSpec:
    name: str
    port: int
    protocol: Protocol = "TCP"


@dataclass(frozen=True, slots=True)
class EndpointSubset:
    addresses: tuple[EndpointAddress, ...]
    ports: tuple[EndpointPortSpec, ...]


@dataclass(frozen=True, slots=True)
class ManualEndpoints:
    """An Endpoints object (or EndpointSlices, merged) for a service without selector."""

    namespace: str
    name: str  # the service's name
    subsets: tuple[EndpointSubset, ...]
    source: Source = Source("")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Site:
    """A site folder, loaded and checked: svcops.yaml plus every manifest."""

    root: str
    cluster: Cluster
    services: tuple[Service, ...]
    endpoints: tuple[ManualEndpoints, ...] = ()


# --- nodes and their workloads: the inventory's host data -------------------------


@dataclass(frozen=True, slots=True)
class WorkloadPort:
    name: str
    port: int
    protocol: Protocol = "TCP"


ProbeKind = Literal["httpGet", "tcpSocket", "exec"]


@dataclass(frozen=True, slots=True)
class Probe:
    """A workload's readinessProbe, Kubernetes' fields with its defaults applied (a 0
    or absent period, timeout or threshold is the default, as SetDefaults_Probe does).

    port: the number (a named port is resolved against the workload's ports when host
    data is loaded); host: None = the workload's address; headers: (name, value) in
    order; command: exec's argv.
    """

    kind: ProbeKind
    port: int | None = None
    host: str | None = None
    path: str = "/"
    scheme: Literal["HTTP", "HTTPS"] = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: int = 0
    period: int = 10
    timeout: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True, slots=True)
class Workload:
    """A backend process on a node: what a selector matches."""

    name: str
    node: str
    # Its own address on that node; None = the node's address (static or allocated).
    address: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    ports: tuple[WorkloadPort, ...] = ()
    # None: ready while its node is reachable (Kubernetes: no probe, Success).
    readiness_probe: Probe | None = None

    @property
    def key(self) -> str:
        """"node/name": the workload's identity across the inventory."""
        return f"{self.node}/{self.name}"


@dataclass(frozen=True, slots=True)
class Readiness:
    """Which workloads are not ready now, as the watch knows it (`svcops.watch`).

    not_ready: workload keys ("node/name") whose probe fails (or has not passed yet);
    lost: nodes that stopped answering for the grace period: all their workloads are
    out. Everything else is ready. `why` says, per not-ready workload, what the probe
    said last ("HTTP 503", "connection refused"), for `svcops status`.
    """

    not_ready: frozenset[str] = frozenset()
    lost: frozenset[str] = frozenset()
    why: Mapping[str, str] = field(default_factory=lambda: EMPTY)

    def ready(self, node: str, name: str) -> bool:
        return node not in self.lost and f"{node}/{name}" not in self.not_ready

    def __bool__(self) -> bool:
        return bool(self.not_ready or self.lost)


# The names of a node that end up in its files and commands, whole (fullmatch), as
# the host-data checks accept them (svcops.site.hostdata; the schema's svcops_interface
# pattern says the same); renderers check again before writing one.
#
# An interface: what Linux allows (dev_valid_name: 1-15 bytes, no '/', ':' or
# whitespace, not "." or "..") narrowed to ASCII letters, digits, '-', '_' and '.',
# not starting with '-' or '.' (a command would read an option, ifupdown a dotfile).
# ':' is also what an address label appends ("eth0:svc").
INTERFACE_NAME = re.compile(r"[_A-Za-z0-9][-_.A-Za-z0-9]{0,14}")
# An inventory host name: a DNS name, an IPv4 address or a pyinfra connector ("@local",
# "@docker/debian:12"); nothing a shell, a config parser or a terminal reads specially.
HOST_NAME = re.compile(r"[A-Za-z0-9@][-A-Za-z0-9_.:/@]{0,252}")


def is_ipv4(ip: str | None) -> bool:
    """Whether the renderers write `ip` as an IPv4 address: True for digits and dots
    (validation made sure they are one), False for None or an IPv6 address (another
    family's rules). Anything else raises ValueError: no check let it through, and in
    a rule or a file it would be a word or a line of its own."""
    if not ip:
        return False
    if not ip.strip("0123456789."):
        return True
    if not ip.strip("0123456789abcdefABCDEF:."):
        return False
    raise ValueError(f"{ip!r} is not an IP address: it cannot go into a node's rules (validation refuses it)")


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    # The address svcops reaches the node on (pyinfra's ssh_hostname, else the name).
    ssh_host: str
    interface: str = "eth0"
    # The static address as written in host data; None = allocate from nodeNetwork.
    address: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    workloads: tuple[Workload, ...] = ()
    source: Source = Source("")  # the inventory file (host data has no lines)


# --- allocations: svcops.lock -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allocations:
    """Everything allocated, keyed as in svcops.lock.

    cluster_ips:        "ns/name" -> address
    node_ports:         "ns/name:port/PROTO" -> port ("default/web:8000/TCP")
    load_balancer_ips:  "ns/name" -> address
    node_addresses:     node name -> address
    """

    cluster_ips: Mapping[str, str] = field(default_factory=dict)
    node_ports: Mapping[str, int] = field(default_factory=dict)
    load_balancer_ips: Mapping[str, str] = field(default_factory=dict)
    node_addresses: Mapping[str, str] = field(default_factory=dict)


def node_port_key(service: Service, port: ServicePort) -> str:
    """Key of a node-port allocation in svcops.lock."""
    return f"{service.key}:{port.key}"


# --- resolved: one service port with everything a proxy needs ---------------------


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int
    node: str | None  # the node it runs on; None when it is outside every node


@dataclass(frozen=True, slots=True)
class ResolvedPort:
    """One port of a proxied service, with its allocations and endpoints.

    Endpoints are sorted (ip, port), so rendering is deterministic.
    """

    service: Service
    port: ServicePort
    cluster_ip: str
    node_port: int | None
    load_balancer_ip: str | None
    endpoints: tuple[Endpoint, ...]

    @property
    def name(self) -> str:
        """kube-proxy's "servicePortName": "ns/name:portname" (or "ns/name" if unnamed)."""
        s = self.service.key
        return f"{s}:{self.port.name}" if self.port.name else s


# --- headless services: their endpoints, for DNS ---------------------------------


class HeadlessEndpoints(NamedTuple):
    """The endpoints of one headless service, for its DNS records (`svcops.render.dns`).

    addresses: every endpoint address once, in numeric order (the A records); for a
               service without ports, the addresses of what it selects (or of its
               Endpoints object), as Kubernetes lists them
    ports:     one ResolvedPort per service port (cluster_ip "None", no node port):
               the SRV records, with each endpoint's own port
    """

    addresses: tuple[str, ...]
    ports: tuple[ResolvedPort, ...]


# --- what a node announces ---------------------------------------------------------

# Linux keeps an address label in IFNAMSIZ bytes (15 characters), and iproute2 wants
# it to start with the interface's name: "eth0:svc".
LABEL_SUFFIX = ":svc"
MAX_LABEL = 15


@dataclass(frozen=True, slots=True)
class Announcement:
    """A load-balancer address one node puts on its interface and announces."""

    address: str
    interface: str
    services: tuple[str, ...]  # "ns/name" of the services using the address

    @property
    def label(self) -> str | None:
        return address_label(self.interface)


def address_label(interface: str) -> str | None:
    """The label marking svcops's addresses on `interface` ("eth0:svc"); None when the
    interface's name is too long for one (svcops then knows them by its record file)."""
    label = interface + LABEL_SUFFIX
    return label if len(label) <= MAX_LABEL else None
