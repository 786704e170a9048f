"""Each node's plan (`svcops.compile.nodeplan`): its UDP service ports for conntrack cleanup in
every mode that has them, and the site's DNS zone.
"""

from __future__ import annotations

from dataclasses import replace

import render_fixtures as F
from udp_fixtures import CIP, DNS, SEL, SVC, nodes

from svcops.compile.nodeplan import node_udp_ports, plan_site
from svcops.compile.pipeline import compile_site
from svcops.site.model import Allocations


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
