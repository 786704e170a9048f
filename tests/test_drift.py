"""Drift said per service port (`svcops.drift`, what `svcops check` reports): each hand
edit of a node's state is filed under the service port it breaks, classed missing /
extra / differs; a node holding the render has no item at all.

Every live state here is the render's own (as the node would read it back) with one
edit, in each proxy mode.
"""

from __future__ import annotations

from dataclasses import replace

import render_fixtures as F
from modes_fixtures import SERVICES, compiled, live_holding
from render_fixtures import FOREIGN_SAVE, simulated_full_live

from svcops.compile.nodeplan import plan_site
from svcops.drift import DriftItem, NodeCheck, ServiceIndex, iptables_drift, ipvs_drift, nftables_drift, node_check
from svcops.facts.dns import DnsState
from svcops.facts.ipvs import IpvsState
from svcops.facts.nftables import NftState
from svcops.facts.node import Address, NodeState
from svcops.operations.dns import dns_plan
from svcops.render.chains import SEP, SVC, endpoint_chain, port_hash
from svcops.render.iptables import LiveTable, LiveTables, parse_iptables_save, restore_payload
from svcops.render.iptables_record import applied_rules
from svcops.render.iptables_sync import expected_tables
from svcops.render.nftables_diff import DRIFT_LINES
from svcops.render.nftables_live import NftLive
from svcops.render.nftables_normal import unit_chains
from svcops.render.node_files import sha256_text

WEB = ("default/web", "80/TCP")
WEB_NAME = "default/web:http"  # kube-proxy's service port name: chains hash it


def site(mode: str, services=SERVICES):
    c = compiled(mode, services)
    return plan_site(c), ServiceIndex(c.ports)


def edited(live: LiveTables, table: str, **chains) -> LiveTables:
    """`live` with some chains of `table` replaced (None: deleted)."""
    t = live.table(table)
    new = {c: r for c, r in {**t.chains, **chains}.items() if r is not None}
    return LiveTables({**live.tables, table: LiveTable(new, t.jumps, t.foreign_refs)})


def owned(items, owner) -> list[DriftItem]:
    return [i for i in items if (i.service, i.port) == owner]


# --- iptables ------------------------------------------------------------------------

PLAN, INDEX = site("iptables")
RULES = PLAN.node("node1").output.iptables
HELD = parse_iptables_save(FOREIGN_SAVE + restore_payload(RULES))
WEB_SVC = SVC + port_hash(WEB_NAME, "TCP")


def test_a_node_holding_the_render_has_no_iptables_drift():
    assert iptables_drift(RULES, HELD, INDEX) == []


def test_a_flushed_service_chain_is_that_service_ports_and_names_the_chain():
    want = expected_tables(RULES).table("nat").chains[WEB_SVC]
    items = iptables_drift(RULES, edited(HELD, "nat", **{WEB_SVC: ()}), INDEX)
    assert items == [
        DriftItem(*WEB, "differs", f"nat chain {WEB_SVC} (service chain) rules differ: {len(want)} rules missing (flushed)")
    ]


def test_a_missing_dispatch_rule_is_filed_under_the_service_port_it_dispatches_to():
    services = HELD.table("nat").chains["SVCOPS-SERVICES"]
    rule = next(r for r in services if WEB_SVC in r)
    items = iptables_drift(RULES, edited(HELD, "nat", **{"SVCOPS-SERVICES": tuple(r for r in services if r != rule)}), INDEX)
    assert items == [DriftItem(*WEB, "missing", f"nat rule in SVCOPS-SERVICES: {rule}")]


def test_a_stale_endpoint_chain_is_known_by_its_comment_and_a_chain_of_no_service_as_such():
    stale = endpoint_chain(WEB_NAME, "TCP", "10.9.9.9:80")
    rules = (f'-A {stale} -s 10.9.9.9/32 -m comment --comment "{WEB_NAME}" -j SVCOPS-MARK-MASQ',)
    nobody = SVC + port_hash("gone/old:http", "TCP")
    live = edited(HELD, "nat", **{stale: rules, nobody: ("-A " + nobody + " -j RETURN",)})
    items = iptables_drift(RULES, live, INDEX)
    assert items == [
        DriftItem(*WEB, "extra", f"nat chain {stale} (endpoint chain)"),
        DriftItem(None, None, "extra", f"nat chain {nobody} (service chain) (no service)"),
    ]
    assert stale.startswith(SEP)


def test_a_node_without_any_svcops_rule_has_each_service_port_missing_once():
    items = iptables_drift(RULES, parse_iptables_save(FOREIGN_SAVE), INDEX)
    node = [i for i in items if i.service is None]
    assert node == [DriftItem(None, None, "missing", "every svcops iptables chain and jump (the node has none)")]
    ports = {(i.service, i.port) for i in items if i.service}
    assert ports == {(s.key, "80/TCP") for s in SERVICES}
    assert all(i.what == "missing" and i.detail.startswith("not on the node: none of its iptables chains and rules (") for i in items if i.service)


def test_a_removed_jump_is_the_nodes_own():
    nat = HELD.table("nat")
    gone = next(j for j in nat.jumps if j.startswith("-A OUTPUT "))
    live = LiveTables({**HELD.tables, "nat": LiveTable(nat.chains, tuple(j for j in nat.jumps if j != gone), nat.foreign_refs)})
    assert iptables_drift(RULES, live, INDEX) == [DriftItem(None, None, "missing", f"nat jump: {gone}")]


# --- nftables ------------------------------------------------------------------------

NPLAN, NINDEX = site("nftables")
NRULES = NPLAN.node("node1").output.nftables
NWEB = NRULES.unit("default/web/tcp/http")


def nft_held(rules=NRULES) -> NftLive:
    return simulated_full_live(rules)


def test_a_table_holding_the_render_has_no_nftables_drift():
    assert nftables_drift(NRULES, NftState(True, nft_held()), NINDEX) == []


def test_a_flushed_nftables_chain_is_its_service_ports():
    live = nft_held()
    chain = next(c for c in NWEB.chains if c.startswith("service-"))
    n = len(unit_chains(NWEB)[chain])
    flushed = replace(live, content=replace(live.content, rules={**live.content.rules, chain: ()}))
    assert nftables_drift(NRULES, NftState(True, flushed), NINDEX) == [
        DriftItem(*WEB, "differs", f"chain {chain} rules differ: {n} rules missing (flushed)")
    ]


def test_every_chain_flushed_names_every_service_port_however_many_lines_that_is():
    live = nft_held()
    emptied = replace(live, content=replace(live.content, rules={c: () for c in live.content.rules}))
    items = nftables_drift(NRULES, NftState(True, emptied), NINDEX)
    chains = [c for u in NRULES.units for c, rules in unit_chains(u).items() if rules]
    assert len(items) > DRIFT_LINES  # more lines than apply --dry shows: the skeleton's chains too
    assert sorted(i.detail.split()[1] for i in items if i.service) == sorted(chains)
    assert {i.service for i in items if i.service} == {NINDEX.units[u.id].service for u in NRULES.units if u.chains}
    assert all(i.what == "differs" for i in items)


def test_a_deleted_map_element_a_foreign_chain_and_a_gone_table():
    live = nft_held()
    m, key, _ = NWEB.elements[0]
    maps = {**live.maps, m: {k: v for k, v in live.maps[m].items() if k != key}}
    live = replace(live, maps=maps, chains={**live.chains, "foreign": None}, content=replace(live.content, rules={**live.content.rules, "foreign": ()}))
    assert nftables_drift(NRULES, NftState(True, live), NINDEX) == [
        DriftItem(*WEB, "missing", f"map {m} element {key} missing"),
        DriftItem(None, None, "extra", "foreign chain foreign"),
    ]
    gone = nftables_drift(NRULES, NftState(True, NftLive()), NINDEX)
    assert gone[0] == DriftItem(None, None, "missing", "table ip svcops")
    assert sorted((i.service, i.what) for i in gone[1:]) == sorted((s.key, "missing") for s in SERVICES)
    assert nftables_drift(NRULES, NftState(available=False), NINDEX) == [DriftItem(None, None, "missing", "nft is not installed on the node")]


def test_a_service_port_the_site_no_longer_has_is_extra_and_another_version_differs():
    fewer = SERVICES[:-1]  # the last ("local"): the others keep their allocations
    rules = compiled("nftables", fewer).outputs["node1"].nftables
    items = nftables_drift(rules, NftState(True, nft_held()), ServiceIndex(compiled("nftables", fewer).ports))
    assert items == [DriftItem(None, None, "extra", "service port default/local/tcp/http (not in the site): its objects are in table ip svcops")]
    old = replace(NWEB, digest="AAAAAAAAAAAAAAAA")
    older = replace(NRULES, units=tuple(old if u is NWEB else u for u in NRULES.units))
    items = nftables_drift(NRULES, NftState(True, nft_held(older)), NINDEX)
    assert [(i.service, i.port, i.what) for i in items] == [(*WEB, "differs")]
    assert "another version is on the node (AAAAAAAAAAAAAAAA" in items[0].detail


# --- IPVS ----------------------------------------------------------------------------

IPLAN, IINDEX = site("ipvs")
IRULES = IPLAN.node("node1").output.ipvs
IHELD = live_holding(IRULES)
IIPT = expected_tables(IRULES.iptables_rules)


def test_a_node_holding_the_ipvs_render_has_no_drift_and_a_deleted_real_server_is_its_service_ports():
    assert ipvs_drift(IRULES, IpvsState((), IHELD), IIPT, IINDEX) == []
    cluster_ip = next(rp.cluster_ip for rp in compiled("ipvs").ports if rp.service.name == "web")
    line = next(ln for ln in IHELD.ipvsadm.splitlines() if ln.startswith(f"-a -t {cluster_ip}:80 "))
    real = line.split()[4]
    gone = replace(IHELD, ipvsadm=IHELD.ipvsadm.replace(line + "\n", ""))
    items = ipvs_drift(IRULES, IpvsState((), gone), IIPT, IINDEX)
    assert items == [DriftItem(*WEB, "missing", f"real server {real} of -t {cluster_ip}:80 -m -w 1")]
    assert ipvs_drift(IRULES, IpvsState(("missing ipvsadm",)), IIPT, IINDEX) == [
        DriftItem(None, None, "missing", "the node cannot do IPVS: missing ipvsadm")
    ]


# --- the whole node ------------------------------------------------------------------


def done_state(np, session: str) -> NodeState:
    """The node's own state once `np` is applied (files, addresses, forwarding)."""
    addresses = [Address(session, 24, "eth0", "eth0")] + [Address(a.address, 32, "eth0", "eth0:svc") for a in np.announced]
    if np.output.address:
        addresses.append(Address(np.output.address, 24, "eth0", "eth0"))
    return NodeState({p: sha256_text(t) for p, t in np.files.files.items()}, np.files.link[1], "1", tuple(addresses))


def test_node_check_of_a_node_in_sync_and_of_its_files_addresses_and_forwarding():
    plan, index = site("iptables", (F.service("lb", F.HTTP, type="LoadBalancer"),))
    node = next(n for n, a in plan.announced.items() if a)
    np = plan.node(node)
    live = parse_iptables_save(restore_payload(applied_rules(np.output.iptables)))  # with its canary
    state = done_state(np, "10.0.0.1")
    quiet = (NftState(True, NftLive()), IpvsState(), None)
    assert node_check(np, index, live, state, *quiet, "10.0.0.1") == NodeCheck(node, "in-sync")

    lb = np.announced[0].address
    boot = next(iter(np.files.files))
    worse = replace(
        state,
        ip_forward="0",
        addresses=tuple(a for a in state.addresses if a.address != lb),
        files={**state.files, boot: "0" * 64},
    )
    check = node_check(np, index, live, worse, NftState(True, NftLive(exists=True)), IpvsState(), None, "10.0.0.1")
    assert check.status == "drift"
    assert check.items == (
        DriftItem("default/lb", None, "missing", f"load-balancer address {lb}/32 on eth0 (this node announces it)"),
        DriftItem(None, None, "extra", "table ip svcops (the site's proxy mode is iptables)"),
        DriftItem(None, None, "differs", f"file {boot}: not as svcops renders it"),
        DriftItem(None, None, "differs", "sysctl net.ipv4.ip_forward is 0 (svcops: 1)"),
    )


def test_node_check_names_the_dns_servers_drift():
    plan, index = site("iptables", (F.service("web", F.HTTP),))
    np = plan.node("node1")
    assert np.dns_zone is not None
    live = parse_iptables_save(restore_payload(applied_rules(np.output.iptables)))  # with its canary
    check = node_check(np, index, live, done_state(np, "10.0.0.1"), NftState(True, NftLive()), IpvsState(), DnsState(resolv="nameserver 10.0.0.1\n"), "10.0.0.1")
    assert DriftItem(None, None, "missing", "dns: install pdns-recursor") in check.items
    assert all(i.service is None and i.detail.startswith("dns: ") for i in check.items)
    assert not any("start" in i.detail for i in check.items)  # what apply does about it is no drift
    p = dns_plan(DnsState(resolv="nameserver 10.0.0.1\n"), np.dns_zone)
    files = {path: np.dns_zone.digest if path.endswith(".zone") else sha256_text(t) for path, t in p.write.items()}
    done = DnsState(installed=True, running=True, files=files, resolv=p.resolv, pid=812, supervised=True)
    quiet = (live, done_state(np, "10.0.0.1"), NftState(True, NftLive()), IpvsState())
    assert node_check(np, index, *quiet, done, "10.0.0.1").status == "in-sync"
    stopped = replace(done, running=False, pid=None)
    assert node_check(np, index, *quiet, stopped, "10.0.0.1").items == (
        DriftItem(None, None, "differs", "dns: the server is not running as svcops runs it (apply starts it)"),
    )


def test_the_items_of_a_node_are_sorted_services_first_ports_by_number():
    items = [
        DriftItem(None, None, "differs", "b"),
        DriftItem("ns/b", "80/TCP", "missing", "x"),
        DriftItem("ns/a", "8080/TCP", "missing", "x"),
        DriftItem("ns/a", "443/TCP", "extra", "x"),
        DriftItem(None, None, "missing", "a"),
    ]
    check = NodeCheck.of("n1", items)
    assert [i.subject for i in check.items] == ["ns/a port 443/TCP", "ns/a port 8080/TCP", "ns/b port 80/TCP", "(node)", "(node)"]
    assert [i.what for i in check.items][-2:] == ["missing", "differs"]
    assert NodeCheck.of("n1", reversed(items)) == check


def test_another_proxy_modes_leftovers_are_one_item_each():
    np = NPLAN.node("node1")
    state = done_state(np, "10.0.0.1")
    iptables_left = parse_iptables_save(restore_payload(RULES))
    ipvs_left = IpvsState((), live_holding(IPLAN.node("node1").output.ipvs))
    check = node_check(np, NINDEX, iptables_left, state, NftState(True, nft_held()), ipvs_left, None, "10.0.0.1")
    held = expected_tables(RULES)
    chains = sum(len(held.table(t).chains) for t in ("filter", "nat"))
    jumps = sum(len(held.table(t).jumps) for t in ("filter", "nat"))
    assert check.items == (
        DriftItem(None, None, "extra", "IPVS mode's ipsets, virtual servers, dummy interface svcops-ipvs0 (the site's proxy mode is nftables)"),
        DriftItem(None, None, "extra", f"svcops iptables chains ({chains}) and jumps ({jumps}) (the site's proxy mode is nftables)"),
    )


def test_hairpin_elements_deleted_or_left_over_are_named():
    live = nft_held()
    key, (verdict, comment) = next(iter(live.maps["hairpin"].items()))
    group = comment.split()[0]
    gone = {k for k, (_v, c) in live.maps["hairpin"].items() if c.split()[0] == group}
    without = replace(live, maps={**live.maps, "hairpin": {k: v for k, v in live.maps["hairpin"].items() if k not in gone}})
    assert nftables_drift(NRULES, NftState(True, without), NINDEX) == [
        DriftItem(None, None, "missing", f"map hairpin element {k} missing") for k in sorted(gone, key=list(live.maps["hairpin"]).index)
    ]
    extra = {**live.maps["hairpin"], "192.0.2.9 . 192.0.2.9": (verdict, "hairpin/fff AAAAAAAAAAAAAAAA")}
    items = nftables_drift(NRULES, NftState(True, replace(live, maps={**live.maps, "hairpin": extra})), NINDEX)
    assert DriftItem(None, None, "extra", "hairpin group hairpin/fff (no endpoint address in it): its elements are in map hairpin") in items
