"""Small sites for the endpoint and renderer tests, built in code (no loader needed).

Three nodes on 10.0.0.0/24:

    node1  10.0.0.11  web-1 (the node's own address; http 80, metrics 9100),
                      dns-1 10.244.1.5 (dns 53/UDP, dns-tcp 53/TCP),
                      sig-1 10.244.1.6 (sig 3868/SCTP)
    node2  10.0.0.12  web-2 10.244.2.7 (http 8080: another number for the same name)
    node3  10.0.0.13  nothing (a node without local endpoints)

`SCENARIOS` maps a golden-file name to (services, manual endpoints, node rendered).
"""

from __future__ import annotations

from svcops.compile.endpoints import resolve
from svcops.render.iptables import render_nodes as render_iptables
from svcops.render.nftables import BASE_CHAINS, MAPS, SKELETON_DIGEST, NftLive, NftRules
from svcops.site.model import (
    Allocations,
    Cluster,
    EndpointAddress,
    EndpointPortSpec,
    EndpointSubset,
    ManualEndpoints,
    Node,
    NodeNetwork,
    Pool,
    Service,
    ServicePort,
    Site,
    Source,
    Workload,
    WorkloadPort,
    node_port_key,
)

CLUSTER = Cluster(
    load_balancer_pools=(Pool("default", ("192.0.2.0/28",)),),
    node_network=NodeNetwork("10.0.0.0/24", "10.0.0.1", ("10.0.0.1",)),
)

WEB = {"app": "web"}


def nodes() -> tuple[Node, ...]:
    return (
        Node(
            "node1",
            "10.0.0.11",
            workloads=(
                Workload("web-1", "node1", None, WEB, (WorkloadPort("http", 80), WorkloadPort("metrics", 9100))),
                Workload(
                    "dns-1",
                    "node1",
                    "10.244.1.5",
                    {"app": "dns"},
                    (WorkloadPort("dns", 53, "UDP"), WorkloadPort("dns-tcp", 53, "TCP")),
                ),
                Workload("sig-1", "node1", "10.244.1.6", {"app": "sig"}, (WorkloadPort("sig", 3868, "SCTP"),)),
            ),
        ),
        Node(
            "node2",
            "10.0.0.12",
            workloads=(Workload("web-2", "node2", "10.244.2.7", WEB, (WorkloadPort("http", 8080),)),),
        ),
        Node("node3", "10.0.0.13"),
    )


def service(name: str, *ports: ServicePort, **spec) -> Service:
    spec.setdefault("selector", WEB)
    return Service("default", name, ports=ports, source=Source(f"services/{name}.yaml", 1), **spec)


HTTP = ServicePort("http", "TCP", 80, "http", line=8)


def allocations(services: tuple[Service, ...]) -> Allocations:
    """Deterministic allocations: 10.96.0.<10+i>, node ports 30080+, LB 192.0.2.<1+i>."""
    cluster_ips, node_ports, lbs = {}, {}, {}
    np = 30080
    for i, s in enumerate(services):
        if s.proxied:
            cluster_ips[s.key] = s.cluster_ip or f"10.96.0.{10 + i}"
        if s.has_node_ports:
            for p in s.ports:
                node_ports[node_port_key(s, p)] = p.node_port or np
                np += 1
        if s.type == "LoadBalancer":
            lbs[s.key] = s.load_balancer_ip or f"192.0.2.{1 + i}"
    return Allocations(
        cluster_ips,
        node_ports,
        lbs,
        {"node1": "10.0.0.11", "node2": "10.0.0.12", "node3": "10.0.0.13"},
    )


def site(services: tuple[Service, ...], endpoints: tuple[ManualEndpoints, ...] = ()) -> Site:
    return Site("/site", CLUSTER, services, endpoints)


_MANUAL = ManualEndpoints(
    "default",
    "legacy",
    (
        EndpointSubset(
            (EndpointAddress("10.0.0.12"), EndpointAddress("203.0.113.50")),
            (EndpointPortSpec("db", 5432),),
        ),
    ),
    Source("services/legacy.yaml", 12),
)

# name -> (services, manual endpoints, node whose payload is the golden file)
SCENARIOS: dict[str, tuple[tuple[Service, ...], tuple[ManualEndpoints, ...], str]] = {
    "cluster-ip": ((service("web", HTTP),), (), "node1"),
    "node-port": ((service("web", HTTP, type="NodePort"),), (), "node1"),
    "load-balancer": ((service("web", HTTP, type="LoadBalancer"),), (), "node1"),
    "external-ips": ((service("web", HTTP, external_ips=("198.51.100.7",)),), (), "node1"),
    "external-name": ((service("web", type="ExternalName", external_name="example.com", selector=None),), (), "node1"),
    "headless": ((service("web", HTTP, cluster_ip="None"),), (), "node1"),
    "client-ip-affinity": ((service("web", HTTP, session_affinity="ClientIP", affinity_timeout=600),), (), "node1"),
    "external-local-with-endpoints": (
        (service("web", HTTP, type="NodePort", external_traffic_policy="Local"),),
        (),
        "node1",
    ),
    "external-local-without-endpoints": (
        (service("web", HTTP, type="NodePort", external_traffic_policy="Local"),),
        (),
        "node3",
    ),
    "internal-local-with-endpoints": ((service("web", HTTP, internal_traffic_policy="Local"),), (), "node2"),
    "internal-local-without-endpoints": ((service("web", HTTP, internal_traffic_policy="Local"),), (), "node3"),
    "source-ranges": (
        (
            service(
                "web",
                HTTP,
                type="LoadBalancer",
                load_balancer_source_ranges=("203.0.113.0/24", "198.51.100.1"),
            ),
        ),
        (),
        "node1",
    ),
    "no-endpoints": ((service("web", HTTP, type="LoadBalancer", selector={"app": "missing"}),), (), "node1"),
    "multi-port": (
        (service("web", HTTP, ServicePort("metrics", "TCP", 9100, "metrics", line=12), type="NodePort"),),
        (),
        "node1",
    ),
    "udp": (
        (
            service(
                "dns",
                ServicePort("dns", "UDP", 53, "dns"),
                ServicePort("dns-tcp", "TCP", 53, "dns-tcp"),
                selector={"app": "dns"},
            ),
        ),
        (),
        "node1",
    ),
    "sctp": ((service("sig", ServicePort("", "SCTP", 3868, 3868), selector={"app": "sig"}, type="NodePort"),), (), "node1"),
    "manual-endpoints": (
        (service("legacy", ServicePort("db", "TCP", 5432, 5432), selector=None),),
        (_MANUAL,),
        "node2",
    ),
}


def simulated_live(rules: NftRules) -> NftLive:
    """What `nft list` would show after loading `rules` on a clean node."""
    chains: dict[str, str | None] = {n: f"svcops skeleton {SKELETON_DIGEST}" for n in BASE_CHAINS}
    chains.update({n: None for n in ("services", "service-endpoints-check", "external-endpoints-check",
                                     "firewall-check", "mark-for-masquerade", "masquerading", "reject-chain")})  # fmt: skip
    maps: dict[str, dict[str, tuple[str, str | None]]] = {m: {} for m in MAPS}
    sets: dict[str, int | None] = {"state": None}  # the canary set of the skeleton
    for u in rules.units:
        chains.update({c: None for c in u.chains})
        sets.update(dict(u.sets))
        for m, key, value in u.elements:
            maps[m][key] = (value, u.comment)
    return NftLive(True, chains, sets, maps)


def simulated_full_live(rules: NftRules) -> NftLive:
    """`simulated_live` with the content the whole listing shows (every chain's rules)."""
    from dataclasses import replace

    from svcops.render.nftables_live import parse_nft_list
    from svcops.render.nftables_normal import printed_listing

    return replace(simulated_live(rules), content=parse_nft_list(printed_listing(rules), full=True).content)


NODES = ["node1", "node2", "node3"]


def rendered(name: str, node: str = "node1"):
    """The iptables rules scenario `name` gives `node`."""
    services, manual, _ = SCENARIOS[name]
    ports, _ = resolve(site(services, manual), nodes(), allocations(services))
    return render_iptables(CLUSTER, ports, NODES)[node]


# Other tools' rules on a node (docker, ufw): svcops must never touch them.
FOREIGN_SAVE = """\
# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:ufw-before-input - [0:0]
-A INPUT -j ufw-before-input
-A FORWARD -o docker0 -j DOCKER
-A ufw-before-input -i lo -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
"""
