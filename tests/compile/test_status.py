"""`svcops status`'s table: services as kubectl shows them, endpoints with their readiness."""

from __future__ import annotations

import render_fixtures as F

from svcops.compile.status import service_statuses, status_json, status_text
from svcops.site.model import Readiness, ServicePort

DOWN = Readiness(frozenset({"node2/web-2"}), frozenset(), {"node2/web-2": "HTTP 503"})


def statuses(*services, readiness=DOWN):
    return service_statuses(F.site(services), F.nodes(), F.allocations(services), readiness)


def test_a_not_ready_endpoint_is_listed_with_why_and_is_not_in_the_rules():
    (s,) = statuses(F.service("web", F.HTTP))
    assert (s.key, s.type, s.cluster_ip, s.ports_text, s.ready_counts()) == ("default/web", "ClusterIP", "10.96.0.10", "80/TCP", (1, 2))
    eps = [(e.ip, e.node, e.ready, e.in_rules, e.why) for e in s.ports[0].endpoints]
    assert eps == [("10.0.0.11", "node1", True, True, ""), ("10.244.2.7", "node2", False, False, "HTTP 503")]
    text = status_text([s], "the watch (pid 1), 0 s ago")
    assert text.splitlines()[0] == "readiness: the watch (pid 1), 0 s ago"
    assert "default/web  ClusterIP  10.96.0.10  <none>       80/TCP   1/2 ready" in text
    assert "    80/TCP -> 10.244.2.7:8080  node2  not ready (HTTP 503)" in text


def test_published_not_ready_addresses_stay_in_the_rules_and_say_so():
    (s,) = statuses(F.service("web", F.HTTP, publish_not_ready=True))
    e = s.ports[0].endpoints[1]
    assert (e.ready, e.in_rules) == (False, True)
    assert "not ready (HTTP 503), kept: publishNotReadyAddresses" in status_text([s], "x")


def test_a_lost_node_says_so_for_every_endpoint_there():
    (s,) = statuses(F.service("web", F.HTTP), readiness=Readiness(lost=frozenset({"node1"})))
    assert [(e.node, e.ready, e.why) for e in s.ports[0].endpoints] == [("node1", False, "node lost"), ("node2", True, "")]


def test_node_ports_headless_and_external_names_as_kubectl_shows_them():
    got = statuses(
        F.service("np", ServicePort("http", "TCP", 80, "http", node_port=30080), type="NodePort"),
        F.service("db", F.HTTP, cluster_ip="None"),
        F.service("ext", type="ExternalName", external_name="db.example.com", selector=None),
    )
    by = {s.key: s for s in got}
    assert by["default/np"].ports_text == "80:30080/TCP"
    assert by["default/db"].cluster_ip == "None" and by["default/db"].ready_counts() == (1, 2)
    assert by["default/ext"].external == ("db.example.com",) and by["default/ext"].cluster_ip is None
    doc = status_json(got, "probed now")
    assert doc["version"] == 1 and [s["name"] for s in doc["services"]] == ["db", "ext", "np"]
    ep = doc["services"][0]["ports"][0]["endpoints"][1]
    assert ep == {"ip": "10.244.2.7", "port": 8080, "node": "node2", "ready": False, "inRules": False, "why": "HTTP 503"}
