"""UDP conntrack cleanup as the rule operations run it (`svcops.operations.conntrack`): the
flows to delete after a change, from the live state read before it.
"""

from __future__ import annotations

import subprocess

import render_fixtures as F
from render_fixtures import simulated_full_live  # noqa: E402
from udp_fixtures import CIP, SVC, nft_rules, resolved

from svcops.operations.conntrack import cleanup_commands
from svcops.render.conntrack import (
    udp_ports,  # noqa: E402
)
from svcops.render.iptables import LiveTables, render_nodes, restore_payload
from svcops.render.iptables_sync import simulate


def live_with(ports, node: str = "node3") -> LiveTables:
    """What a node's iptables-save shows once the rules for `ports` were restored."""
    rules = render_nodes(F.CLUSTER, ports, ["node1", "node2", "node3"])[node]
    return simulate(LiveTables(), restore_payload(rules, LiveTables()))


def script_of(commands) -> str:
    assert len(commands) == 1
    return str(commands[0].get_raw_value())


def test_an_endpoint_gone_from_the_site_gets_its_flows_deleted_after_the_restore():
    before = resolved((SVC,), ("node1", "node2"))
    after = resolved((SVC,), ("node1",))
    commands = cleanup_commands(live_with(before), udp_ports(after, "node3"))
    script = script_of(commands)
    assert f"svcops_ct -D -p udp --orig-dst {CIP} --dst-nat 10.244.2.5" in script
    assert "10.244.1.5" not in script  # the endpoint that stays keeps its flows
    # The command is valid shell, and says so when the tool is missing.
    assert subprocess.run(["sh", "-n", "-c", script], capture_output=True).returncode == 0
    assert "conntrack not found" in script


def test_no_cleanup_when_nothing_changed_or_none_was_asked_for():
    ports = resolved((SVC,))
    assert cleanup_commands(live_with(ports), udp_ports(ports, "node3")) == []
    assert cleanup_commands(live_with(ports), None) == []
    assert cleanup_commands(None, udp_ports(ports, "node3")) == []


def test_nft_an_endpoint_gone_gets_its_flows_deleted():
    before = resolved((SVC,), ("node1", "node2"))
    after = resolved((SVC,), ("node1",))
    script = script_of(cleanup_commands(simulated_full_live(nft_rules(before)), udp_ports(after, "node3")))
    assert f"svcops_ct -D -p udp --orig-dst {CIP} --dst-nat 10.244.2.5" in script
    assert "10.244.1.5" not in script


def test_the_fast_path_cleans_up_from_the_changed_buckets_alone():
    # iptables mode's fast path knows the old state of the changed buckets only: the
    # service's dispatch rules (bucket s1) are not among them when only its endpoints
    # changed, and its addresses come from the new rules, which did not change them.
    from svcops.operations.iptables import _udp_scope
    from svcops.render.iptables_record import Canary, TABLES, partial_plan, record_of, state_rule
    from svcops.render.record import changed_buckets, digest_text

    def rules_of(ports):
        return render_nodes(F.CLUSTER, ports, ["node1", "node2", "node3"])["node3"]

    before, after = resolved((SVC,), ("node1", "node2")), resolved((SVC,), ("node1",))
    old, new = record_of(rules_of(before)), record_of(rules_of(after))
    index = old.index()
    canary = Canary({t: (state_rule("x"),) for t in TABLES}, {}, index)
    changed = changed_buckets(index, new.index())
    assert "s1" not in changed
    read = {b: (digest_text(old.buckets[b]), old.buckets[b]) if old.buckets.get(b) else ("", "") for b in changed}
    plan = partial_plan(rules_of(after), new, canary, read)
    commands = cleanup_commands(None, *_udp_scope(plan.live, udp_ports(after, "node3"), set(changed)))
    script = script_of(commands)
    assert f"svcops_ct -D -p udp --orig-dst {CIP} --dst-nat 10.244.2.5" in script
    assert "10.244.1.5" not in script
