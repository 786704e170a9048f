"""`svcops explain`: where a packet goes on a node, as a user would ask it."""

from __future__ import annotations

from fractions import Fraction

import pytest
import render_fixtures as F

from svcops.compile.endpoints import resolve
from svcops.compile.explain import explain, parse_target

NODE_ADDR = {"node1": ("10.0.0.11",), "node2": ("10.0.0.12",), "node3": ("10.0.0.13",)}


def ports_of(scenario: str):
    services, manual, _ = F.SCENARIOS[scenario]
    ports, _ = resolve(F.site(services, manual), F.nodes(), F.allocations(services))
    return ports


def ask(scenario: str, node: str, target: str, source: str | None = None):
    ip, port, proto = parse_target(target)
    return explain(ports_of(scenario), node, NODE_ADDR[node], ip, port, proto, source)


def test_cluster_ip_goes_to_every_endpoint_with_equal_shares():
    e = ask("cluster-ip", "node3", "10.96.0.10:80")
    assert (e.verdict, e.matched, e.service) == ("forward", "cluster IP", "default/web:http")
    assert {(ep.ip, ep.port): s for ep, s in e.endpoints} == {
        ("10.0.0.11", 80): Fraction(1, 2),
        ("10.244.2.7", 8080): Fraction(1, 2),
    }
    assert not e.masquerade
    assert "-> 10.244.2.7:8080 on node2  (50.0% of new connections)" in e.text()


def test_wrong_port_or_protocol_is_not_a_service():
    assert ask("cluster-ip", "node1", "10.96.0.10:81").verdict == "not a service"
    assert ask("cluster-ip", "node1", "10.96.0.10:80/udp").verdict == "not a service"
    own = ask("cluster-ip", "node1", "10.0.0.11:22")
    assert "own addresses" in own.text()


def test_node_port_only_on_the_nodes_own_address_and_masqueraded():
    e = ask("node-port", "node2", "10.0.0.12:30080")
    assert (e.verdict, e.matched) == ("forward", "node port")
    assert e.masquerade and len(e.endpoints) == 2
    # Another node's address is not local to node2: not its node port.
    assert ask("node-port", "node2", "10.0.0.11:30080").verdict == "not a service"


def test_external_traffic_policy_local_keeps_the_client_and_drops_without_local_endpoints():
    with_local = ask("external-local-with-endpoints", "node1", "10.0.0.11:30080", source="192.168.1.9")
    assert with_local.verdict == "forward" and not with_local.masquerade
    assert [(ep.ip, ep.node) for ep, _ in with_local.endpoints] == [("10.0.0.11", "node1")]
    without = ask("external-local-without-endpoints", "node3", "10.0.0.13:30080", source="192.168.1.9")
    assert without.verdict == "drop" and "no endpoint on node3" in without.text()
    # The node's own traffic uses the cluster policy, as kube-proxy does.
    own = ask("external-local-without-endpoints", "node3", "10.0.0.13:30080", source="10.0.0.13")
    assert own.verdict == "forward" and len(own.endpoints) == 2 and own.masquerade


def test_internal_traffic_policy_local():
    assert ask("internal-local-without-endpoints", "node3", "10.96.0.10:80").verdict == "drop"
    e = ask("internal-local-with-endpoints", "node2", "10.96.0.10:80")
    assert [ep.ip for ep, _ in e.endpoints] == ["10.244.2.7"]


def test_source_ranges_decide_with_a_known_source():
    inside = ask("source-ranges", "node1", "192.0.2.1:80", source="203.0.113.9")
    outside = ask("source-ranges", "node1", "192.0.2.1:80", source="192.168.7.7")
    unknown = ask("source-ranges", "node1", "192.0.2.1:80")
    assert inside.verdict == "forward" and outside.verdict == "drop"
    assert "outside 203.0.113.0/24, 198.51.100.1" in outside.text()
    assert "--from" in unknown.text()


def test_no_endpoints_is_refused_at_once():
    e = ask("no-endpoints", "node1", "192.0.2.1:80")
    assert e.verdict == "reject" and "refused at once" in e.text()


def test_affinity_is_reported():
    e = ask("client-ip-affinity", "node1", "10.96.0.10:80")
    assert e.affinity_seconds == 600 and "600 s" in e.text()


@pytest.mark.parametrize(
    "text,message",
    [("10.0.0.1", "expected IP:PORT"), ("10.0.0.1:0", "port must be"), ("x:80", "not an IPv4"), ("10.0.0.1:80/icmp", "protocol")],
)
def test_bad_targets_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_target(text)
