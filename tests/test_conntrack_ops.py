"""UDP conntrack cleanup as the iptables operation runs it (svcops.conntrack_ops): the
previous state read back from the node's live rules, the next from the site, and the
deploy handing each node its UDP ports. The kernel side is in tests/test_conntrack.py;
the whole path over SSH in tests/e2e/test_dns_lab.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace

import pytest

import render_fixtures as F
from svcops.conntrack import udp_ports
from svcops.conntrack_ops import cleanup_commands, node_udp_ports
from svcops.deploy import plan_site
from svcops.model import Allocations, ServicePort
from svcops.pipeline import compile_site
from svcops.render.iptables import LiveTables, render_nodes, restore_payload
from svcops.render.rollback import simulate
from test_conntrack import CIP, SEL, SVC, nodes, resolved

DNS = ServicePort("dns", "UDP", 53, "dns")


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


def _compiled(mode: str = "iptables"):
    services = (SVC,)
    site = F.site(services)
    site = replace(site, cluster=replace(site.cluster, proxy_mode=mode))
    compiled, diags = compile_site(site, nodes("node1", "node2"), Allocations(cluster_ips={"default/dns": CIP}))
    assert compiled is not None, diags
    return compiled


def test_each_node_plan_carries_its_udp_ports_in_iptables_mode_and_the_sites_zone():
    plan = plan_site(_compiled())
    p1, p3 = plan.node("node1"), plan.node("node3")
    assert set(p1.udp_ports) == {"default/dns:dns"}
    assert p1.udp_ports["default/dns:dns"].endpoints == {"10.244.1.5", "10.244.2.5"}
    assert p1.udp_ports["default/dns:dns"].addresses == (CIP,)
    # The zone is rendered once for the site: every node holds the same object.
    assert p1.dns_zone is p3.dns_zone
    assert f"dns.default.svc IN A {CIP}\n" in p1.dns_zone.text


def test_nftables_mode_gets_its_udp_ports_and_ipvs_mode_none_yet():
    assert set(plan_site(_compiled("nftables")).node("node1").udp_ports) == {"default/dns:dns"}
    assert plan_site(_compiled("ipvs")).node("node1").udp_ports is None


def test_internal_local_policy_gives_each_node_only_its_own_endpoints():
    svc = F.service("dns", DNS, selector=SEL, internal_traffic_policy="Local")
    site = F.site((svc,))
    compiled, diags = compile_site(site, nodes("node1", "node2"), Allocations(cluster_ips={"default/dns": CIP}))
    assert compiled is not None, diags
    assert node_udp_ports(compiled, "node1")["default/dns:dns"].endpoints == {"10.244.1.5"}
    assert node_udp_ports(compiled, "node3")["default/dns:dns"].endpoints == frozenset()


# --- nftables mode: the previous state read back from the live table ---------------------

from svcops.conntrack_ops import udp_ports_from_nft  # noqa: E402
from svcops.render import nftables as nft_render  # noqa: E402
from svcops.render.nft_live import LIVE_COMMANDS, parse_nft_list  # noqa: E402
from netns import netns, ns_run  # noqa: E402
from test_render_nftables import simulated_live  # noqa: E402

# Every kind of UDP address: cluster IP, external IP, load-balancer IP, node port.
UDP_LB = F.service("dns", DNS, selector=SEL, type="LoadBalancer", external_ips=("198.51.100.7",))


def same(ports):
    """UdpPorts compared as the cleanup uses them (the order of addresses aside)."""
    return {k: (set(p.addresses), p.node_port, p.endpoints) for k, p in ports.items()}


def nft_rules(ports, node="node3"):
    return nft_render.render_nodes(F.CLUSTER, ports, ["node1", "node2", "node3"])[node]


def test_nft_table_reads_back_as_the_udp_ports_it_was_rendered_from():
    ports = resolved((UDP_LB,), ("node1", "node2"))
    live = simulated_live(nft_rules(ports))
    assert same(udp_ports_from_nft(live)) == same(udp_ports(ports, "node3"))
    assert udp_ports_from_nft(live)["default/dns:dns"].node_port == 30080


def test_nft_an_endpoint_gone_gets_its_flows_deleted():
    before = resolved((SVC,), ("node1", "node2"))
    after = resolved((SVC,), ("node1",))
    script = script_of(cleanup_commands(simulated_live(nft_rules(before)), udp_ports(after, "node3")))
    assert f"svcops_ct -D -p udp --orig-dst {CIP} --dst-nat 10.244.2.5" in script
    assert "10.244.1.5" not in script


@pytest.mark.root
def test_nft_reader_on_a_real_kernels_listing():
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("needs root and nft")
    ports = resolved((UDP_LB,), ("node1", "node2"))
    rules = nft_rules(ports)
    with netns() as ns:
        ns_run(ns, "nft", "-f", "-", stdin=nft_render.full_payload(rules))
        text = "".join(
            subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True).stdout for argv in LIVE_COMMANDS
        )
    assert same(udp_ports_from_nft(parse_nft_list(text))) == same(udp_ports(ports, "node3"))
