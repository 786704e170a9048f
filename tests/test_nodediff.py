"""What `svcops apply --dry` shows for a node (`svcops.nodediff`): from its facts, the same
decisions the operations take.
"""

from __future__ import annotations

import render_fixtures as F
from modes_fixtures import compiled, live_holding
from render_fixtures import FOREIGN_SAVE, NODES

from svcops.compile.endpoints import resolve
from svcops.compile.nodeplan import plan_site
from svcops.compile.pipeline import compile_site
from svcops.facts.node import Address, NodeState
from svcops.render.iptables_record import applied_rules
from svcops.nodediff import mode_changes, node_diff
from svcops.render.iptables import LiveTables, parse_iptables_save, render_nodes, restore_payload
from svcops.render.nftables import NftLive
from svcops.render.nftables_sync import (
    transactions,
)
from svcops.render.node_files import (
    sha256_text,
)


def rendered(name: str, node: str = "node1"):
    services, manual, _ = F.SCENARIOS[name]
    ports, _ = resolve(F.site(services, manual), F.nodes(), F.allocations(services))
    return render_nodes(F.CLUSTER, ports, NODES)[node]


def _site_plan(services):
    compiled, diags = compile_site(F.site(services), F.nodes(), F.allocations(services))
    assert compiled is not None, diags
    return plan_site(compiled)


def test_dry_diff_of_a_fresh_node_lists_everything_and_of_a_done_node_nothing():
    plan = _site_plan((F.service("web", F.HTTP, type="LoadBalancer"),))
    winner = next(n for n, a in plan.announced.items() if a)
    np = plan.node(winner)
    fresh = NodeState(addresses=(Address("10.0.0.1", 24, "eth0", "eth0"),), ip_forward="0")
    d = node_diff(np, LiveTables(), fresh, "10.0.0.1")
    assert not d.empty
    assert d.ip_forward
    assert "192.0.2.1/32 on eth0" in d.addresses_added
    assert f"{np.output.address}/24 on eth0" in d.addresses_added
    assert set(np.files.files) <= {f for f in d.files_written}
    assert any(line.startswith("iptables: chains +") for line in d.lines())

    done = NodeState(
        files={p: sha256_text(t) for p, t in np.files.files.items()},
        unit_link=np.files.link[1],
        ip_forward="1",
        addresses=(
            Address(np.output.address, 24, "eth0", "eth0"),
            Address("192.0.2.1", 32, "eth0", "eth0:svc"),
        ),
    )
    # A node svcops applied to holds the canary chain too (iptables mode's record).
    live = parse_iptables_save(FOREIGN_SAVE + restore_payload(applied_rules(np.output.iptables)))
    d2 = node_diff(np, live, done, np.output.address)
    assert d2.empty and d2.lines() == ["in sync"]
    without = node_diff(np, parse_iptables_save(FOREIGN_SAVE + restore_payload(np.output.iptables)), done, np.output.address)
    assert without.rules.tables["nat"].added == ("SVCOPS-STATE",)


def test_dry_diff_shows_the_dns_servers_steps():
    from svcops.facts.dns import DnsState
    from svcops.facts.node import NodeState as NS
    from svcops.operations.dns import dns_plan

    plan = _site_plan((F.service("web", F.HTTP),))
    np = plan.node("node1")
    assert np.dns_zone is not None
    fresh = DnsState(resolv="nameserver 10.0.0.1\n")
    d = node_diff(np, LiveTables(), NS(), None, dns=fresh)
    assert "dns: install pdns-recursor" in d.lines() and "dns: (re)start the server" in d.lines()
    assert any(ln.startswith("dns: file ") and ln.endswith(".zone") for ln in d.lines())
    assert "dns: /etc/resolv.conf to the cluster's server" in d.lines()
    assert d.as_json()["dns"] == [ln for ln in d.lines() if ln.startswith("dns: ")]
    # The node after the apply: nothing left for DNS.
    p = dns_plan(fresh, np.dns_zone)
    files = {path: np.dns_zone.digest if path.endswith(".zone") else sha256_text(t) for path, t in p.write.items()}
    done = DnsState(installed=True, running=True, files=files, resolv=p.resolv, pid=812, supervised=True)
    assert node_diff(np, LiveTables(), NS(), None, dns=done).dns == ()


def test_dry_diff_removes_an_address_another_node_now_announces_but_never_the_session_address():
    plan = _site_plan((F.service("web", F.HTTP, type="LoadBalancer"),))
    loser = next(n for n, a in plan.announced.items() if not a)
    np = plan.node(loser)
    st = NodeState(
        ip_forward="1",
        addresses=(
            Address("192.0.2.1", 32, "eth0", "eth0:svc"),  # it held it before
            Address("10.0.0.99", 32, "eth0", "eth0"),  # someone else's /32
            Address("10.0.0.1", 32, "eth0", "eth0:svc"),  # labelled, but the session's
        ),
    )
    d = node_diff(np, LiveTables(), st, "10.0.0.1")
    assert d.addresses_removed == ("192.0.2.1/32 on eth0",)


def test_dry_run_lines_for_nftables_and_ipvs():
    nft_out = compiled("nftables").outputs["node1"]
    from svcops.facts.ipvs import IpvsState
    from svcops.facts.nftables import NftState

    assert mode_changes(nft_out, NftState(True, NftLive()), IpvsState()) == [
        f"nftables: cold start, {len(transactions(nft_out.nftables, NftLive()))} transactions"
    ]
    assert "apply fails" in mode_changes(nft_out, NftState(available=False))[0]
    ipt_out = compiled("iptables").outputs["node1"]
    assert mode_changes(ipt_out, NftState(True, NftLive(exists=True))) == ["nftables: - table ip svcops"]
    ipvs_out = compiled("ipvs").outputs["node1"]
    missing = IpvsState(("kernel module ip_vs (IP Virtual Server)",))
    assert "cannot do IPVS" in mode_changes(ipvs_out, None, missing)[0]
    live = live_holding(ipvs_out.ipvs)
    assert mode_changes(ipt_out, None, IpvsState((), live)) == ["ipvs: - svcops's sets, virtual servers and dummy interface"]


def test_dry_run_names_nftables_drift_and_ipvs_hand_edits():
    from dataclasses import replace

    from svcops.facts.ipvs import IpvsState
    from svcops.facts.nftables import NftState
    from svcops.render.iptables_sync import expected_tables
    from svcops.render.nftables_live import parse_nft_list
    from svcops.render.nftables_normal import printed_listing
    from render_fixtures import simulated_live

    out = compiled("nftables").outputs["node1"]
    rules = out.nftables
    live = simulated_live(rules)
    live = replace(live, content=parse_nft_list(printed_listing(rules), full=True).content)
    assert mode_changes(out, NftState(True, live)) == []
    chain = next(c for c in rules.unit("default/web/tcp/http").chains if c.startswith("service-"))
    flushed = replace(live, content=replace(live.content, rules={**live.content.rules, chain: ()}))
    assert mode_changes(out, NftState(True, flushed)) == [
        "nftables: service ports +0 ~0 -0, drift in 1, 1 transaction",
        f"nftables: drift: chain {chain} rules differ: 2 rules missing (flushed)",
    ]
    ipvs_out = compiled("ipvs").outputs["node1"]
    held = live_holding(ipvs_out.ipvs)
    edited = replace(held, ipvsadm=held.ipvsadm.replace("-A -t 10.96.0.10:80 -s rr", "-A -t 10.96.0.10:80 -s wlc"))
    ipt = expected_tables(ipvs_out.ipvs.iptables_rules)
    assert mode_changes(ipvs_out, None, IpvsState((), held), ipt) == []
    assert mode_changes(ipvs_out, None, IpvsState((), edited), ipt) == [
        "ipvs: 1 virtual/real server change",
        "ipvs: ~ virtual server -t 10.96.0.10:80: -s wlc -> -s rr",
    ]
