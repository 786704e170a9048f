"""Endpoint resolution: selectors over the inventory, named ports, hand-written Endpoints."""

from __future__ import annotations

import render_fixtures as F

from svcops.compile.endpoints import local_endpoints, resolve
from svcops.site.model import (
    Allocations,
    Endpoint,
    EndpointAddress,
    EndpointPortSpec,
    EndpointSubset,
    ManualEndpoints,
    Node,
    ServicePort,
    Source,
    Workload,
    WorkloadPort,
)


def run(*services, endpoints=(), nodes=None, allocations=None):
    nodes = F.nodes() if nodes is None else nodes
    allocations = F.allocations(services) if allocations is None else allocations
    return resolve(F.site(services, endpoints), nodes, allocations)


def eps(port):
    return [(e.ip, e.port, e.node) for e in port.endpoints]


def test_selector_matches_workloads_on_every_node_with_their_own_port_numbers():
    (port,), diags = run(F.service("web", F.HTTP))
    assert diags == []
    # web-1 uses node1's address (no address of its own); web-2 calls its "http" 8080.
    assert eps(port) == [("10.0.0.11", 80, "node1"), ("10.244.2.7", 8080, "node2")]
    assert port.name == "default/web:http"
    assert port.cluster_ip == "10.96.0.10"


def test_endpoints_are_sorted_by_address_numerically_then_port():
    workloads = [
        Workload(f"w{i}", "node1", f"10.1.0.{i}", {"app": "x"}, (WorkloadPort("p", 100 - i),))
        for i in (10, 9, 100, 2)
    ]
    nodes = (Node("node1", "10.0.0.11", workloads=tuple(workloads)),)
    (port,), _ = run(F.service("x", ServicePort("", "TCP", 80, "p"), selector={"app": "x"}), nodes=nodes)
    assert [e.ip for e in port.endpoints] == ["10.1.0.2", "10.1.0.9", "10.1.0.10", "10.1.0.100"]


def test_every_selector_pair_must_match():
    nodes = (
        Node(
            "node1",
            "10.0.0.11",
            workloads=(
                Workload("a", "node1", "10.1.0.1", {"app": "web", "tier": "front"}, (WorkloadPort("http", 80),)),
                Workload("b", "node1", "10.1.0.2", {"app": "web", "tier": "back"}, (WorkloadPort("http", 80),)),
                Workload("c", "node1", "10.1.0.3", {"app": "api", "tier": "front"}, (WorkloadPort("http", 80),)),
            ),
        ),
    )
    (port,), _ = run(F.service("web", F.HTTP, selector={"app": "web", "tier": "front"}), nodes=nodes)
    assert [e.ip for e in port.endpoints] == ["10.1.0.1"]


def test_numeric_target_port_needs_no_named_port():
    (port,), diags = run(F.service("web", ServicePort("", "TCP", 80, 9000)))
    assert diags == []
    assert eps(port) == [("10.0.0.11", 9000, "node1"), ("10.244.2.7", 9000, "node2")]


def test_workload_lacking_the_named_port_is_skipped_with_a_warning():
    svc = F.service("web", F.HTTP, ServicePort("metrics", "TCP", 9100, "metrics", line=12))
    (http, metrics), diags = run(svc)
    assert len(http.endpoints) == 2
    assert eps(metrics) == [("10.0.0.11", 9100, "node1")]
    (d,) = diags
    assert d.severity == "warning"
    assert str(d) == (
        "services/web.yaml:12: warning: spec.ports[1].targetPort: 1 selected workload lacks a TCP port named "
        "'metrics' and is not an endpoint of default/web: node2/web-2"
    )


def test_named_port_must_match_the_protocol_too():
    svc = F.service("dns", ServicePort("dns", "TCP", 53, "dns"), selector={"app": "dns"})
    (port,), diags = run(svc)  # dns-1's "dns" port is UDP
    assert port.endpoints == ()
    assert [d.field for d in diags] == ["spec.ports[0].targetPort"]


def test_selector_matching_nothing_is_a_warning_and_the_port_has_no_endpoints():
    (port,), diags = run(F.service("web", F.HTTP, selector={"app": "nope"}))
    assert port.endpoints == ()
    (d,) = diags
    assert (d.file, d.line, d.field, d.severity) == ("services/web.yaml", 1, "spec.selector", "warning")
    assert "app=nope" in d.message


def test_workload_without_address_uses_the_allocated_node_address_else_ssh_host():
    nodes = (
        Node("n1", "n1.example", workloads=(Workload("w", "n1", None, {"app": "web"}, (WorkloadPort("http", 80),)),)),
        Node("n2", "192.0.2.99", workloads=(Workload("w", "n2", None, {"app": "web"}, (WorkloadPort("http", 80),)),)),
    )
    svc = F.service("web", F.HTTP)
    alloc = Allocations({"default/web": "10.96.0.10"}, node_addresses={"n1": "10.0.0.21"})
    (port,), _ = run(svc, nodes=nodes, allocations=alloc)
    assert eps(port) == [("10.0.0.21", 80, "n1"), ("192.0.2.99", 80, "n2")]


def test_external_name_and_headless_services_are_not_proxied():
    services = (
        F.service("ext", type="ExternalName", external_name="example.com", selector=None),
        F.service("hl", F.HTTP, cluster_ip="None"),
        F.service("web", F.HTTP),
    )
    ports, _ = run(*services)
    assert [p.service.name for p in ports] == ["web"]


def test_allocations_give_each_port_its_addresses():
    svc = F.service("web", F.HTTP, ServicePort("admin", "TCP", 81, 81), type="LoadBalancer")
    alloc = Allocations(
        {"default/web": "10.96.7.7"},
        {"default/web:80/TCP": 31000, "default/web:81/TCP": 31001},
        {"default/web": "192.0.2.5"},
    )
    ports, _ = run(svc, allocations=alloc)
    assert [(p.cluster_ip, p.node_port, p.load_balancer_ip) for p in ports] == [
        ("10.96.7.7", 31000, "192.0.2.5"),
        ("10.96.7.7", 31001, "192.0.2.5"),
    ]


def test_ports_are_ordered_by_service_namespace_and_name():
    services = (F.service("b", F.HTTP), F.service("a", F.HTTP))
    ports, _ = run(*services)
    assert [p.service.name for p in ports] == ["a", "b"]


MANUAL = ManualEndpoints(
    "default",
    "db",
    (
        EndpointSubset(
            (
                EndpointAddress("10.9.9.9", node="node3"),  # nodeName given
                EndpointAddress("10.244.1.5"),  # dns-1's own address: node1
                EndpointAddress("10.0.0.12"),  # node2's address
                EndpointAddress("203.0.113.7"),  # outside every node
            ),
            (EndpointPortSpec("sql", 5432), EndpointPortSpec("stats", 9187)),
        ),
    ),
    Source("services/db.yaml", 20),
)


def test_manual_endpoints_match_ports_by_name_and_find_their_node():
    svc = F.service("db", ServicePort("sql", "TCP", 5432, 5432), ServicePort("stats", "TCP", 9187, 9187), selector=None)
    (sql, stats), diags = run(svc, endpoints=(MANUAL,))
    assert diags == []
    assert eps(sql) == [
        ("10.0.0.12", 5432, "node2"),
        ("10.9.9.9", 5432, "node3"),
        ("10.244.1.5", 5432, "node1"),
        ("203.0.113.7", 5432, None),
    ]
    assert [e.port for e in stats.endpoints] == [9187] * 4


def test_manual_endpoint_port_with_another_name_is_not_used():
    svc = F.service("db", ServicePort("other", "TCP", 5432, 5432), selector=None)
    (port,), _ = run(svc, endpoints=(MANUAL,))
    assert port.endpoints == ()


def test_service_without_selector_nor_endpoints_has_no_endpoints_and_no_warning():
    (port,), diags = run(F.service("db", ServicePort("sql", "TCP", 5432, 5432), selector=None))
    assert port.endpoints == () and diags == []


def test_endpoints_object_for_a_service_with_selector_is_ignored_with_a_warning():
    manual = ManualEndpoints("default", "web", MANUAL.subsets, Source("services/web-eps.yaml", 3))
    (port,), diags = run(F.service("web", F.HTTP), endpoints=(manual,))
    assert len(port.endpoints) == 2
    assert [str(d) for d in diags] == [
        "services/web-eps.yaml:3: warning: kind: Endpoints default/web are ignored: the service has a selector "
        "(as in Kubernetes, its endpoints come from the selector)"
    ]


def test_local_view_of_a_port():
    (port,), _ = run(F.service("web", F.HTTP))
    assert local_endpoints(port, "node2") == (Endpoint("10.244.2.7", 8080, "node2"),)
    assert local_endpoints(port, "node3") == ()


def test_same_address_and_port_from_two_workloads_is_one_endpoint():
    w = Workload("a", "node1", "10.1.0.1", {"app": "web"}, (WorkloadPort("http", 80),))
    nodes = (Node("node1", "10.0.0.11", workloads=(w, Workload("b", "node1", "10.1.0.1", {"app": "web"}, w.ports))),)
    (port,), _ = run(F.service("web", F.HTTP), nodes=nodes)
    assert eps(port) == [("10.1.0.1", 80, "node1")]


def test_without_node_network_the_given_node_address_is_where_workloads_and_node_ports_are():
    from dataclasses import replace

    from svcops.compile.pipeline import compile_site

    svc = F.service("web", F.HTTP, type="NodePort")
    # node1 is reached over SSH at 127.0.0.1 but its address is 10.0.0.11; no nodeNetwork.
    nodes = tuple(replace(n, ssh_host="127.0.0.1", address="10.0.0.11") if n.name == "node1" else n for n in F.nodes())
    site = replace(F.site((svc,)), cluster=replace(F.CLUSTER, node_network=None))
    allocations = replace(F.allocations((svc,)), node_addresses={})
    compiled, diags = compile_site(site, nodes, allocations, mode="ipvs")
    assert compiled is not None, diags
    ports = next(p for p in compiled.ports if p.name == "default/web:http")
    assert "10.0.0.11" in {e.ip for e in ports.endpoints}  # web-1, on the node's own address
    out = compiled.outputs["node1"]
    assert out.address == "10.0.0.11" and out.interfaces == ""  # not configured by svcops
    assert "-A -t 10.0.0.11:30080 -s rr" in out.ipvs.ipvsadm


# --- readiness (the watch's): not-ready workloads are no endpoints ---------------------


def test_a_not_ready_workload_is_no_endpoint_of_any_service():
    from svcops.site.model import Readiness

    services = (F.service("web", F.HTTP),)
    down = Readiness(not_ready=frozenset({"node2/web-2"}))
    (port,), diags = resolve(F.site(services), F.nodes(), F.allocations(services), down)
    assert eps(port) == [("10.0.0.11", 80, "node1")]
    assert diags == []  # the selector still matches both: no "selects nothing" warning


def test_a_lost_node_takes_all_its_workloads_out():
    from svcops.site.model import Readiness

    services = (F.service("web", F.HTTP),)
    (port,), _ = resolve(F.site(services), F.nodes(), F.allocations(services), Readiness(lost=frozenset({"node1"})))
    assert eps(port) == [("10.244.2.7", 8080, "node2")]


def test_no_ready_workload_leaves_the_port_without_endpoints_and_without_a_warning():
    from svcops.site.model import Readiness

    services = (F.service("web", F.HTTP),)
    down = Readiness(not_ready=frozenset({"node1/web-1", "node2/web-2"}))
    (port,), diags = resolve(F.site(services), F.nodes(), F.allocations(services), down)
    assert port.endpoints == () and diags == []


def test_publish_not_ready_addresses_keeps_them():
    from svcops.site.model import Readiness

    services = (F.service("web", F.HTTP, publish_not_ready=True), F.service("api", F.HTTP))
    down = Readiness(not_ready=frozenset({"node2/web-2"}))
    ports, _ = resolve(F.site(services), F.nodes(), F.allocations(services), down)
    got = {p.service.name: eps(p) for p in ports}
    assert got["web"] == [("10.0.0.11", 80, "node1"), ("10.244.2.7", 8080, "node2")]
    assert got["api"] == [("10.0.0.11", 80, "node1")]


def test_headless_dns_leaves_not_ready_addresses_out_unless_published():
    from svcops.compile.endpoints import headless_endpoints
    from svcops.site.model import Readiness

    services = (F.service("db", F.HTTP, cluster_ip="None"), F.service("all", F.HTTP, cluster_ip="None", publish_not_ready=True))
    down = Readiness(not_ready=frozenset({"node2/web-2"}))
    got = headless_endpoints(F.site(services), F.nodes(), F.allocations(services), down)
    assert got["default/db"].addresses == ("10.0.0.11",)
    assert got["default/all"].addresses == ("10.0.0.11", "10.244.2.7")


def test_readiness_does_not_touch_hand_written_endpoints():
    # Kubernetes: Endpoints of a selectorless service are the user's; no probe is theirs.
    from svcops.site.model import Readiness

    svc = F.service("ext", ServicePort("http", "TCP", 80, 80), selector=None)
    m = ManualEndpoints("default", "ext", (EndpointSubset((EndpointAddress("10.0.0.11"),), (EndpointPortSpec("http", 80),)),))
    services = (svc,)
    (port,), _ = resolve(F.site(services, (m,)), F.nodes(), F.allocations(services), Readiness(lost=frozenset({"node1"})))
    assert eps(port) == [("10.0.0.11", 80, "node1")]
