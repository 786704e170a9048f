"""The pipeline (`svcops.compile.pipeline.compile_site`) per proxy mode: each mode's rules, and
the iptables footprint every mode leaves (what the iptables operation keeps in sync).
"""

from __future__ import annotations

from dataclasses import replace

import render_fixtures as F
from modes_fixtures import SERVICES, compiled

from svcops.compile.pipeline import compile_site
from svcops.render.iptables import JUMPS, parse_iptables_save, restore_payload
from svcops.render.iptables_sync import expected_tables
from svcops.render.ipvs import IPVS_JUMPS


def test_compile_renders_the_sites_mode_by_default_and_any_mode_on_request():
    site = F.site(SERVICES)
    for mode in ("iptables", "nftables", "ipvs"):
        s = replace(site, cluster=replace(site.cluster, proxy_mode=mode))
        c, _ = compile_site(s, F.nodes(), F.allocations(SERVICES))
        assert c.mode == mode and all(o.mode == mode for o in c.outputs.values())
    c = compiled("nftables")
    out = c.outputs["node1"]
    assert out.nftables is not None and out.ipvs is None
    assert {u.id for u in out.nftables.units} >= {"default/web/tcp/http", "default/lonely/tcp/http"}


def test_each_modes_iptables_footprint():
    ipt = compiled("iptables").outputs["node1"].iptables
    assert ipt.jumps == JUMPS and ipt.counts()[0] > 0
    # nftables mode: no svcops chain and no jump at all; applied live, it removes iptables mode's.
    none = compiled("nftables").outputs["node1"].iptables
    assert none.jumps == () and none.counts() == (0, 0)
    live = expected_tables(ipt)
    payload = restore_payload(none, live)
    after = parse_iptables_save(restore_payload(ipt) + payload)
    assert all(not after.table(t).chains and not after.table(t).jumps for t in ("filter", "nat"))
    # IPVS mode: the IPVS renderer's few chains.
    ipvs = compiled("ipvs").outputs["node1"]
    assert ipvs.iptables.jumps == IPVS_JUMPS and ipvs.iptables is ipvs.ipvs.iptables_rules


def test_ipvs_mode_gets_a_node_port_virtual_server_on_each_node_address():
    out = compiled("ipvs").outputs["node2"]
    assert out.node_addresses == ("10.0.0.12",)
    assert "-A -t 10.0.0.12:30080 -s rr" in out.ipvs.ipvsadm
    assert "10.0.0.11:30080" not in out.ipvs.ipvsadm


def test_with_readiness_is_compile_site_with_the_same_allocations():
    import render_fixtures as F

    from svcops.compile.pipeline import compile_site, with_readiness
    from svcops.site.model import Readiness

    services = (
        F.service("web", F.HTTP),
        F.service("db", F.HTTP, cluster_ip="None"),
        F.service("all", F.HTTP, publish_not_ready=True),
        F.service("dns", F.ServicePort("dns", "UDP", 53, "dns"), selector={"app": "dns"}),
        F.service("legacy", F.ServicePort("db", "TCP", 5432, 5432), selector=None),
    )
    site, nodes = F.site(services, (F._MANUAL,)), F.nodes()
    steps = [
        Readiness(frozenset({"node2/web-2"})),
        Readiness(frozenset({"node2/web-2", "node1/dns-1"})),
        Readiness(frozenset({"node1/dns-1"}), frozenset({"node2"})),
        Readiness(lost=frozenset({"node1"})),
        None,
    ]
    for mode in ("iptables", "nftables", "ipvs"):
        c, _ = compile_site(site, nodes, F.allocations(services), mode=mode)
        first = c
        for r in steps:  # each step from the one before, as the watch goes
            again = with_readiness(c, r)
            want, _ = compile_site(site, nodes, first.allocations, mode=mode, readiness=r)
            assert again == want, (mode, r)
            c = again
        assert with_readiness(first, Readiness(frozenset({"node2/web-2"}))).outputs != first.outputs  # it does change
        assert c == first  # all ready again: what the plain compile gave
