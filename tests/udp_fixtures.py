"""A UDP DNS service and the fixture nodes running its workloads: for the conntrack tests."""

from __future__ import annotations

import render_fixtures as F

from svcops.compile.endpoints import resolve
from svcops.render import nftables as nft_render
from svcops.site.model import Node, ServicePort, Workload, WorkloadPort

DNS = ServicePort("dns", "UDP", 53, "dns")
DNS_TCP = ServicePort("dns-tcp", "TCP", 53, "dns-tcp")
SEL = {"app": "dns"}


def nodes(*dns_on: str) -> tuple[Node, ...]:
    """The fixture nodes, with a DNS workload on each node named (node1: 10.244.1.5, ...)."""
    out = []
    for n in F.nodes():
        ws = tuple(w for w in n.workloads if w.labels.get("app") != "dns")
        if n.name in dns_on:
            k = n.name[-1]
            ws += (Workload(f"dns-{k}", n.name, f"10.244.{k}.5", SEL, (WorkloadPort("dns", 53, "UDP"), WorkloadPort("dns-tcp", 53))),)
        out.append(Node(n.name, n.ssh_host, n.interface, n.address, n.labels, ws))
    return tuple(out)


def resolved(services, on=("node1", "node2")):
    ports, _ = resolve(F.site(services), nodes(*on), F.allocations(services))
    return ports


SVC = F.service("dns", DNS, DNS_TCP, selector=SEL)
CIP = "10.96.0.10"


# Every kind of UDP address: cluster IP, external IP, load-balancer IP, node port.
UDP_LB = F.service("dns", DNS, selector=SEL, type="LoadBalancer", external_ips=("198.51.100.7",))


def same(ports):
    """UdpPorts compared as the cleanup uses them (the order of addresses aside)."""
    return {k: (set(p.addresses), p.node_port, p.endpoints) for k, p in ports.items()}


def nft_rules(ports, node="node3"):
    return nft_render.render_nodes(F.CLUSTER, ports, ["node1", "node2", "node3"])[node]
