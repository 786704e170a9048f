"""Readiness from what the nodes say (`svcops.compile.readiness.Tracker`): probe reports,
heartbeats and silence, with the clock as an argument."""

from __future__ import annotations

from svcops.compile.readiness import Tracker
from svcops.site.model import Node, Probe, Readiness, Workload

PROBE = Probe("httpGet", port=80)


def nodes():
    return (
        Node("node1", "10.0.0.11", workloads=(Workload("web-1", "node1", readiness_probe=PROBE), Workload("plain-1", "node1"))),
        Node("node2", "10.0.0.12", workloads=(Workload("web-2", "node2", readiness_probe=PROBE),)),
    )


def synced(t: Tracker, now: float = 0.0) -> Tracker:
    t.report("node1", "web-1", True, "HTTP 200", now)
    t.report("node2", "web-2", True, "HTTP 200", now)
    t.synced("node1", now)
    t.synced("node2", now)
    return t


def test_a_probed_workload_is_not_ready_until_its_probe_says_so_and_the_first_push_waits():
    t = Tracker(nodes(), grace=2, now=0)
    assert not t.all_synced()
    assert t.readiness().not_ready == {"node1/web-1", "node2/web-2"}  # Kubernetes' initial Failure
    synced(t)
    assert t.all_synced() and not t.readiness()


def test_a_failing_probe_takes_its_workload_out_and_says_why():
    t = synced(Tracker(nodes(), grace=2, now=0))
    changes = t.report("node2", "web-2", False, "HTTP 503", 1.0)
    assert [c.line() for c in changes] == ["node2/web-2: not ready (HTTP 503)"]
    r = t.readiness()
    assert r.not_ready == {"node2/web-2"} and r.why["node2/web-2"] == "HTTP 503"
    assert r.ready("node1", "plain-1") and not r.ready("node2", "web-2")
    assert t.report("node2", "web-2", False, "HTTP 500", 1.5) == []  # no transition: nothing to push


def test_a_silent_node_is_lost_after_the_grace_period_and_back_once_it_answers_and_syncs():
    t = synced(Tracker(nodes(), grace=2, now=0))
    t.heard("node1", 1.0)
    assert t.tick(1.9) == []
    lost = t.tick(2.1)
    assert [c.kind for c in lost] == ["lost"] and lost[0].node == "node2"
    r = t.readiness()
    assert r.lost == {"node2"} and not r.ready("node2", "web-2")
    assert r.ready("node1", "plain-1")
    t.disconnected("node2")
    assert t.heard("node2", 5.0) == []  # answering is not enough: its probes must run
    t.report("node2", "web-2", True, "HTTP 200", 5.1)
    back = t.synced("node2", 5.2)
    assert [c.line() for c in back] == ["node2: back (answering, probes run)"]
    assert not t.readiness()


def test_a_node_that_never_answers_is_lost_after_the_grace_period_from_the_start():
    t = Tracker(nodes(), grace=2, now=10.0)
    t.report("node1", "web-1", True, "HTTP 200", 10.5)
    t.synced("node1", 10.5)
    assert not t.all_synced()
    assert [c.node for c in t.tick(12.1)] == ["node2"]
    assert t.all_synced()  # the first push goes without it


def test_a_restarted_watch_keeps_what_the_last_one_knew_until_the_probes_report():
    start = Readiness(frozenset({"node2/web-2"}), frozenset(), {"node1/web-1": "HTTP 200", "node2/web-2": "HTTP 503"})
    t = Tracker(nodes(), grace=2, now=0, start=start)
    r = t.readiness()
    assert r.not_ready == {"node2/web-2"} and r.why["node2/web-2"] == "HTTP 503"


def test_a_new_inventory_drops_what_it_no_longer_has():
    t = synced(Tracker(nodes(), grace=2, now=0))
    t.report("node2", "web-2", False, "HTTP 503", 1)
    t.set_nodes(nodes()[:1], 2)
    assert not t.readiness() and t.report("node2", "web-2", True, "x", 3) == []
