"""Which node announces each load-balancer address (`svcops.compile.announce`): rendezvous
hashing over the nodes that can serve it, as MetalLB's layer-2 mode does.
"""

from __future__ import annotations

import render_fixtures as F

from svcops.compile.announce import announcements, choose
from svcops.site.model import Endpoint, ResolvedPort, Service, ServicePort, address_label


def test_choice_is_deterministic_and_ignores_candidate_order():
    names = [f"node{i}" for i in range(1, 11)]
    for i in range(40):
        ip = f"192.0.2.{i}"
        assert choose(ip, names) == choose(ip, list(reversed(names))) in names


def test_choice_spreads_addresses_over_nodes():
    names = [f"node{i}" for i in range(1, 4)]
    winners = {choose(f"192.0.2.{i}", names) for i in range(1, 60)}
    assert winners == set(names)


def test_a_node_leaving_moves_only_the_addresses_it_held():
    names = [f"node{i}" for i in range(1, 6)]
    ips = [f"198.51.100.{i}" for i in range(1, 100)]
    before = {ip: choose(ip, names) for ip in ips}
    after = {ip: choose(ip, names[:-1]) for ip in ips}
    moved = {ip for ip in ips if before[ip] != after[ip]}
    assert moved == {ip for ip in ips if before[ip] == "node5"}
    assert moved  # node5 did hold some


def _lb_port(policy: str, endpoints: tuple[Endpoint, ...], ip: str = "192.0.2.5") -> ResolvedPort:
    svc = Service("default", f"lb-{policy.lower()}", "LoadBalancer", external_traffic_policy=policy)
    return ResolvedPort(svc, ServicePort("http", "TCP", 80, 80), "10.96.0.9", 30080, ip, endpoints)


def test_each_load_balancer_address_is_announced_by_exactly_one_node():
    nodes = F.nodes()
    eps = (Endpoint("10.0.0.11", 80, "node1"), Endpoint("10.244.2.7", 80, "node2"))
    ports = [_lb_port("Cluster", eps, f"192.0.2.{i}") for i in range(1, 9)]
    ann = announcements(ports, nodes)
    holders = [a.address for n in ann for a in ann[n]]
    assert sorted(holders) == sorted(f"192.0.2.{i}" for i in range(1, 9))
    for n, items in ann.items():
        for a in items:
            assert a.interface == "eth0" and a.label == "eth0:svc" and a.services == ("default/lb-cluster",)


def test_local_policy_announces_from_a_node_with_a_local_endpoint_only():
    nodes = F.nodes()
    eps = (Endpoint("10.244.2.7", 80, "node2"),)
    for i in range(1, 20):
        ann = announcements([_lb_port("Local", eps, f"192.0.2.{i}")], nodes)
        assert [a.address for a in ann["node2"]] == [f"192.0.2.{i}"]
        assert not ann["node1"] and not ann["node3"]


def test_no_endpoints_no_announcement():
    ann = announcements([_lb_port("Cluster", ())], F.nodes())
    assert not any(ann.values())


def test_label_fits_the_kernels_limit():
    assert address_label("eth0") == "eth0:svc"
    assert address_label("enp0s31f6") == "enp0s31f6:svc"
    assert address_label("a-very-long-if") is None  # 14 + 4 > 15
