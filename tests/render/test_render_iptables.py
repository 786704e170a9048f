"""The iptables renderer: golden payloads, kube-proxy semantics, live state, real iptables.

Golden files: tests/golden/iptables/<scenario>.txt hold the exact `iptables-restore
--noflush` payload one node gets for a small site (tests/render_fixtures.py names the
scenarios). After an intended change of the rules, regenerate them and review the diff:

    SVCOPS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/render/test_render_iptables.py

Tests marked `root` load payloads into throwaway network namespaces with the real
iptables-restore / iptables-save (skipped when not root or without iptables); the
host's own tables are never touched.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import replace

import pytest
import render_fixtures as F
from golden import check_golden
from hypothesis import given, settings
from hypothesis import strategies as st
from netns import iptables_saved as saved
from netns import netns, ns_run
from paths import GOLDEN as GOLDEN_DIR
from render_fixtures import FOREIGN_SAVE

from svcops.compile.endpoints import resolve
from svcops.render import chains
from svcops.render.iptables import (
    JUMPS,
    LiveTables,
    parse_iptables_save,
    render_nodes,
    restore_payload,
    restore_transactions,
)
from svcops.render.iptables_sync import expected_tables, in_sync, rollback_payload, simulate
from svcops.site.model import Endpoint, ResolvedPort, Service, ServicePort

GOLDEN = GOLDEN_DIR / "iptables"
NODES = ["node1", "node2", "node3"]


def render_scenario(name: str, nodes=NODES):
    services, manual, node = F.SCENARIOS[name]
    ports, _ = resolve(F.site(services, manual), F.nodes(), F.allocations(services))
    return render_nodes(F.CLUSTER, ports, nodes), node


def golden_text(name: str) -> str:
    rules, node = render_scenario(name)
    header = f"# svcops golden payload: scenario {name}, node {node} (tests/render_fixtures.py)\n"
    return header + restore_payload(rules[node])


def rules_of(payload: str, table: str, chain: str) -> list[str]:
    return list(parse_iptables_save(payload).table(table).chains.get(chain, ()))


# --- golden files -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(F.SCENARIOS))
def test_golden_payload(name):
    path = GOLDEN / f"{name}.txt"
    text = golden_text(name)
    check_golden(path, text)


def test_every_golden_file_has_a_scenario():
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted(F.SCENARIOS)


# --- what the rules mean (checked on the payload, as a reviewer would) -------------


def test_external_name_and_headless_render_nothing_of_their_own():
    for name in ("external-name", "headless"):
        rules, node = render_scenario(name)
        live = parse_iptables_save(restore_payload(rules[node]))
        assert sorted(live.table("nat").chains) == sorted(chains.NAT_TOP)
        assert all(not r for c, r in live.table("filter").chains.items() if c != chains.FORWARD)
        nat = live.table("nat").chains
        assert nat[chains.SERVICES] == (
            '-A SVCOPS-SERVICES ! -d 127.0.0.0/8 -m comment --comment "svcops service nodeports; '
            'NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j SVCOPS-NODEPORTS',
        )


def test_no_endpoints_rejects_on_every_address():
    rules, node = render_scenario("no-endpoints")
    payload = restore_payload(rules[node])
    rejects = [ln for ln in payload.splitlines() if "REJECT" in ln]
    assert len(rejects) == 3  # cluster IP, LB IP, node port
    assert rejects[0].startswith("-A SVCOPS-SERVICES -d 10.96.0.10/32 ")
    assert any(ln.startswith("-A SVCOPS-EXTERNAL-SERVICES -d 192.0.2.1/32 ") for ln in rejects)
    assert any("-m addrtype --dst-type LOCAL -m tcp --dport 30080" in ln for ln in rejects)
    assert all('"default/web:http has no endpoints"' in ln for ln in rejects)
    assert "SVCOPS-SVC-" not in payload and "SVCOPS-SEP-" not in payload


def test_external_traffic_policy_local():
    rules, _ = render_scenario("external-local-with-endpoints")
    h = chains.port_hash("default/web:http", "tcp")
    ext, svl, svc = chains.EXT + h, chains.SVL + h, chains.SVC + h
    with_eps = restore_payload(rules["node1"])
    without = restore_payload(rules["node3"])
    # Local sources are masqueraded and may use any endpoint; the rest keeps its
    # source address and only reaches this node's endpoints.
    ext_rules = rules_of(with_eps, "nat", ext)
    assert "-m addrtype --src-type LOCAL -j SVCOPS-MARK-MASQ" in ext_rules[0]
    assert ext_rules[1].endswith(f"-m addrtype --src-type LOCAL -j {svc}")
    assert ext_rules[2] == f"-A {ext} -j {svl}"
    assert [r.rsplit("-> ", 1)[1].split('"')[0] for r in rules_of(with_eps, "nat", svl)] == ["10.0.0.11:80"]
    # Without local endpoints: no SVL chain, external traffic dropped, local traffic still served.
    assert svl not in parse_iptables_save(without).table("nat").chains
    assert rules_of(without, "nat", ext)[-1].endswith(f"-j {svc}")
    drops = rules_of(without, "filter", chains.EXTERNAL_SERVICES)
    assert drops == [
        '-A SVCOPS-EXTERNAL-SERVICES -p tcp -m comment --comment "default/web:http has no local endpoints" '
        "-m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP"
    ]
    assert not rules_of(with_eps, "filter", chains.EXTERNAL_SERVICES)


def test_internal_traffic_policy_local():
    rules, _ = render_scenario("internal-local-with-endpoints")
    h = chains.port_hash("default/web:http", "tcp")
    on2 = restore_payload(rules["node2"])
    on3 = restore_payload(rules["node3"])
    (dispatch,) = [r for r in rules_of(on2, "nat", chains.SERVICES) if "cluster IP" in r]
    assert dispatch.endswith(f"-j {chains.SVL + h}")
    svl = rules_of(on2, "nat", chains.SVL + h)
    assert len(svl) == 1 and "10.244.2.7:8080" in svl[0]
    assert chains.SVC + h not in on2  # the other node's endpoint is unreachable from here
    assert [r for r in rules_of(on3, "filter", chains.SERVICES)] == [
        '-A SVCOPS-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http has no local endpoints" '
        "-m tcp --dport 80 -j DROP"
    ]
    assert "SVCOPS-SEP-" not in on3


def test_source_ranges_gate_the_load_balancer_ip():
    rules, node = render_scenario("source-ranges")
    payload = restore_payload(rules[node])
    h = chains.port_hash("default/web:http", "tcp")
    assert f"-d 192.0.2.1/32 -p tcp -m comment --comment \"default/web:http loadbalancer IP\" -m tcp --dport 80 -j {chains.FW + h}" in payload
    fw = rules_of(payload, "nat", chains.FW + h)
    assert [r.split(" -m comment")[0] for r in fw] == [
        f"-A {chains.FW + h} -s 203.0.113.0/24",
        f"-A {chains.FW + h} -s 198.51.100.1/32",
        f"-A {chains.FW + h}",
    ]
    assert rules_of(payload, "filter", chains.FIREWALL) == [
        f'-A SVCOPS-FIREWALL -d 192.0.2.1/32 -p tcp -m comment --comment "default/web:http traffic not accepted by {chains.FW + h}" '
        "-m tcp --dport 80 -j DROP"
    ]


def test_client_ip_affinity_checks_recent_before_choosing():
    rules, node = render_scenario("client-ip-affinity")
    payload = restore_payload(rules[node])
    svc = rules_of(payload, "nat", chains.SVC + chains.port_hash("default/web:http", "tcp"))
    assert ["--rcheck --seconds 600 --reap" in r for r in svc] == [True, True, False, False]
    seps = [c for c in parse_iptables_save(payload).table("nat").chains if c.startswith(chains.SEP)]
    for sep in seps:
        dnat = rules_of(payload, "nat", sep)[1]
        assert f"-m recent --set --name {sep} --mask 255.255.255.255 --rsource" in dnat


def test_hairpin_and_dnat_per_endpoint():
    rules, node = render_scenario("cluster-ip")
    payload = restore_payload(rules[node])
    sep = chains.endpoint_chain("default/web:http", "TCP", "10.244.2.7:8080")
    assert rules_of(payload, "nat", sep) == [
        f'-A {sep} -s 10.244.2.7/32 -m comment --comment "default/web:http" -j SVCOPS-MARK-MASQ',
        f'-A {sep} -p tcp -m comment --comment "default/web:http" -m tcp -j DNAT --to-destination 10.244.2.7:8080',
    ]


def test_chain_names_are_stable_kube_proxy_style_hashes():
    import base64
    import hashlib

    expected = base64.b32encode(hashlib.sha256(b"default/web:httptcp").digest()).decode()[:16]
    assert chains.port_hash("default/web:http", "TCP") == expected
    rules, node = render_scenario("source-ranges")
    names = rules[node].nat.chain_names() + rules[node].filter.chain_names()
    assert all(n.startswith("SVCOPS-") and len(n) <= 28 for n in names)
    assert chains.SVC + expected in names


def test_nodes_share_fragments():
    """Cluster-policy rules are one string every node holds; Local views are cached."""
    rules, _ = render_scenario("external-local-with-endpoints", nodes=["node1", "node2", "node3", "node4"])
    n3, n4 = rules["node3"], rules["node4"]  # neither runs a web workload
    assert all(a is b for a, b in zip(n3.nat.rules, n4.nat.rules, strict=True))
    assert all(a is b for a, b in zip(n3.filter.rules, n4.filter.rules, strict=True))
    assert restore_payload(rules["node1"]) != restore_payload(n3)
    shared = render_scenario("multi-port")[0]
    assert all(a is b for a, b in zip(shared["node1"].nat.rules, shared["node3"].nat.rules, strict=True))


# --- equal shares -------------------------------------------------------------------


def _port_with(n: int, affinity: bool = False) -> ResolvedPort:
    svc = Service("ns", "many", ports=(ServicePort("p", "TCP", 80, 8080),),
                  session_affinity="ClientIP" if affinity else "None")  # fmt: skip
    eps = tuple(Endpoint(f"10.1.{i // 250}.{i % 250 + 1}", 8080, None) for i in range(n))
    return ResolvedPort(svc, svc.ports[0], "10.96.0.99", None, None, eps)


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=300), st.booleans())
def test_every_endpoint_gets_an_equal_share(n, affinity):
    rp = _port_with(n, affinity)
    payload = restore_payload(render_nodes(F.CLUSTER, [rp], ["node1"])["node1"])
    svc_rules = [r for r in rules_of(payload, "nat", chains.SVC + chains.port_hash(rp.name, "tcp")) if "--rcheck" not in r]
    assert len(svc_rules) == n
    remaining, shares = 1.0, []
    for rule in svc_rules:
        m = re.search(r"--probability (\S+)", rule)
        p = float(m.group(1)) if m else 1.0
        shares.append(remaining * p)
        remaining *= 1 - p
    assert "--probability" not in svc_rules[-1]
    assert all(abs(s - 1 / n) < 1e-6 for s in shares)
    assert abs(sum(shares) - 1) < 1e-9


# --- live state: idempotent jumps, stale chains, foreign chains (FOREIGN_SAVE) -----


def test_clean_node_gets_every_jump_once():
    rules, node = render_scenario("cluster-ip")
    payload = restore_payload(rules[node])
    inserted = [ln for ln in payload.splitlines() if ln.startswith("-I ")]
    assert len(inserted) == len(JUMPS) == len(set(inserted))
    live = parse_iptables_save(payload)
    assert [*live.table("filter").jumps, *live.table("nat").jumps] == [
        j.line for t in ("filter", "nat") for c in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
        for j in JUMPS if j.table == t and j.chain == c
    ]  # fmt: skip


def test_jumps_present_are_not_added_again():
    rules, node = render_scenario("node-port")
    live = parse_iptables_save(FOREIGN_SAVE + restore_payload(rules[node]))
    again = restore_payload(rules[node], live)
    assert not [ln for ln in again.splitlines() if ln.startswith(("-I ", "-D ", "-X "))]
    # Chains already holding their rules are not named at all (partial sync).
    assert again == "*filter\nCOMMIT\n*nat\nCOMMIT\n"


def test_a_one_service_change_writes_only_that_services_chains():
    web, other = F.service("web", F.HTTP), F.service("other", F.HTTP, type="NodePort")
    before = render_nodes(F.CLUSTER, resolve(F.site((web, other)), F.nodes(), F.allocations((web, other)))[0], ["node1"])["node1"]
    changed = replace(other, session_affinity="ClientIP", affinity_timeout=60)
    after = render_nodes(F.CLUSTER, resolve(F.site((web, changed)), F.nodes(), F.allocations((web, changed)))[0], ["node1"])["node1"]
    live = expected_tables(before)
    payload = restore_payload(after, live)
    written = {ln[1:].split()[0] for ln in payload.splitlines() if ln.startswith(":")}
    assert written and all("web" not in ln for ln in payload.splitlines() if ln.startswith("-A ")), payload
    total = {c for t in ("filter", "nat") for c in live.table(t).chains}
    assert len(written) < len(total) / 2
    # And what the node holds afterwards is exactly what a clean node would get.
    assert simulate(live, payload) == expected_tables(after)


def test_missing_and_duplicate_jumps_are_repaired():
    rules, node = render_scenario("cluster-ip")
    first = JUMPS[0]
    text = "*filter\n" + "".join(f"-A {j.chain} {j.spec}\n" for j in JUMPS if j.table == "filter" and j != first)
    dup = next(j for j in JUMPS if j.table == "nat")
    text += f"COMMIT\n*nat\n-A {dup.chain} {dup.spec}\n-A {dup.chain} {dup.spec}\nCOMMIT\n"
    payload = restore_payload(rules[node], parse_iptables_save(text))
    lines = payload.splitlines()
    assert [ln for ln in lines if ln.startswith("-D ")] == [f"-D {dup.chain} {dup.spec}"]
    inserted = [ln for ln in lines if ln.startswith("-I ")]
    assert f"-I {first.chain} 1 {first.spec}" in inserted
    assert len(inserted) == 1 + sum(1 for j in JUMPS if j.table == "nat") - 1


def test_stale_svcops_chains_are_deleted():
    old, node = render_scenario("multi-port")
    new, _ = render_scenario("cluster-ip")
    live = parse_iptables_save(FOREIGN_SAVE + restore_payload(old[node]))
    payload = restore_payload(new[node], live)
    gone = {chains.EXT + chains.port_hash("default/web:http", "tcp"),
            chains.SVC + chains.port_hash("default/web:metrics", "tcp"),
            chains.EXT + chains.port_hash("default/web:metrics", "tcp"),
            chains.endpoint_chain("default/web:metrics", "tcp", "10.0.0.11:9100")}  # fmt: skip
    deleted = {ln[3:] for ln in payload.splitlines() if ln.startswith("-X ")}
    assert deleted == gone
    for chain in gone:
        assert f":{chain} - [0:0]" in payload  # flushed before it is deleted
    after = parse_iptables_save(FOREIGN_SAVE + restore_payload(old[node]) + payload)
    assert after.table("nat").chains == parse_iptables_save(restore_payload(new[node])).table("nat").chains


def test_foreign_chains_are_never_mentioned():
    rules, node = render_scenario("load-balancer")
    live = parse_iptables_save(FOREIGN_SAVE)
    for payload in (restore_payload(rules[node]), restore_payload(rules[node], live)):
        assert "DOCKER" not in payload and "ufw" not in payload and "docker0" not in payload
        for ln in payload.splitlines():
            if ln.startswith((":", "-A ", "-X ")):
                assert ln.split()[0 if ln[0] == ":" else 1].lstrip(":").startswith("SVCOPS-"), ln
            elif ln.startswith(("-I ", "-D ")):
                assert ln.split()[1] in ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING")
                assert re.search(r" -j SVCOPS-[A-Z-]+$", ln), ln
            else:
                assert ln in ("*filter", "*nat", "COMMIT"), ln


def test_a_stale_chain_a_foreign_chain_still_uses_is_kept():
    old, node = render_scenario("multi-port")
    new, _ = render_scenario("cluster-ip")
    stale = chains.SVC + chains.port_hash("default/web:metrics", "tcp")
    live_text = restore_payload(old[node]) + f"*nat\n:MINE - [0:0]\n-A MINE -j {stale}\nCOMMIT\n"
    payload = restore_payload(new[node], parse_iptables_save(live_text))
    assert f"-X {stale}" not in payload
    assert "MINE" not in payload


def test_parse_iptables_save_reads_counters_too():
    rules, node = render_scenario("cluster-ip")
    plain = parse_iptables_save(restore_payload(rules[node]))
    counted = restore_payload(rules[node]).replace("\n-I ", "\n[3:180] -I ").replace("\n-A ", "\n[0:0] -A ")
    assert parse_iptables_save(counted) == plain


def test_parse_iptables_save_reads_svcops_footprint_only():
    live = parse_iptables_save(FOREIGN_SAVE)
    assert live.table("filter").chains == {} and live.table("filter").jumps == ()
    assert live.table("raw").chains == {}


# --- real iptables, in throwaway network namespaces ---------------------------------


def _have_iptables() -> bool:
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("ip", "iptables-restore", "iptables-save"))


root = pytest.mark.skipif(not _have_iptables(), reason="needs root, ip and iptables")


@pytest.mark.root
@root
def test_every_golden_payload_passes_iptables_restore_test():
    with netns() as ns:
        for path in sorted(GOLDEN.glob("*.txt")):
            ns_run(ns, "iptables-restore", "--test", "--noflush", stdin=path.read_text())
        assert saved(ns) == ""  # --test committed nothing


def _assert_reads_back(payload: str, ns: str) -> str:
    ns_run(ns, "iptables-restore", "--noflush", stdin=payload)
    text = saved(ns)
    expected, live = parse_iptables_save(payload), parse_iptables_save(text)
    for table in ("filter", "nat"):
        assert live.table(table).chains == expected.table(table).chains
        assert live.table(table).jumps == expected.table(table).jumps
    return text


@pytest.mark.root
@root
@pytest.mark.parametrize("name", sorted(F.SCENARIOS))
def test_rules_read_back_byte_for_byte_and_reapply_changes_nothing(name):
    rules, node = render_scenario(name)
    with netns() as ns:
        ns_run(ns, "iptables-restore", "--noflush", stdin=FOREIGN_SAVE)
        first = _assert_reads_back(restore_payload(rules[node]), ns)
        again = restore_payload(rules[node], parse_iptables_save(first))
        assert not [ln for ln in again.splitlines() if ln.startswith(("-I ", "-D ", "-X "))]
        ns_run(ns, "iptables-restore", "--noflush", stdin=again)
        assert saved(ns) == first
        # Everything that was there before svcops is still there, in its order.
        for ln in FOREIGN_SAVE.splitlines():
            if ln.startswith("-A "):
                assert ln in first.splitlines()


@pytest.mark.root
@root
def test_probabilities_and_affinity_read_back_for_many_endpoint_counts():
    ports = [_port_with(n, affinity=n % 2 == 0) for n in range(1, 14)]
    ports = [
        replace(p, service=replace(p.service, name=f"many-{i}"), cluster_ip=f"10.96.1.{i}")
        for i, p in enumerate(ports, 1)
    ]
    rules = render_nodes(F.CLUSTER, ports, ["node1"])["node1"]
    with netns() as ns:
        _assert_reads_back(restore_payload(rules), ns)


@pytest.mark.root
@root
def test_stale_chains_and_jumps_are_removed_for_real():
    old, node = render_scenario("source-ranges")
    new, _ = render_scenario("udp")
    with netns() as ns:
        first = _assert_reads_back(restore_payload(old[node]), ns)
        # An outdated svcops jump (say, from an older version) is removed too.
        ns_run(ns, "iptables-restore", "--noflush",
               stdin='*nat\n-I OUTPUT 1 -m comment --comment "old svcops" -j SVCOPS-SERVICES\nCOMMIT\n')  # fmt: skip
        payload = restore_payload(new[node], parse_iptables_save(saved(ns)))
        assert "-D OUTPUT" in payload and "-X " in payload
        ns_run(ns, "iptables-restore", "--noflush", stdin=payload)
        now = parse_iptables_save(saved(ns))
        clean = parse_iptables_save(restore_payload(new[node]))
        for table in ("filter", "nat"):
            assert now.table(table).chains == clean.table(table).chains
            assert now.table(table).jumps == clean.table(table).jumps
        assert first != saved(ns)


@pytest.mark.root
@root
def test_partial_sync_through_every_scenario_in_turn_gives_what_a_clean_node_gets():
    # One node going from each golden scenario to the next (each restore writes only the
    # chains that differ): after each, its svcops footprint equals a clean node's.
    with netns() as ns:
        ns_run(ns, "iptables-restore", "--noflush", stdin=FOREIGN_SAVE)
        for name in sorted(F.SCENARIOS):
            rules, node = render_scenario(name)
            ns_run(ns, "iptables-restore", "--noflush", stdin=restore_payload(rules[node], parse_iptables_save(saved(ns))))
            now = parse_iptables_save(saved(ns))
            clean = parse_iptables_save(restore_payload(rules[node]))
            for table in ("filter", "nat"):
                assert now.table(table).chains == clean.table(table).chains, name
                assert now.table(table).jumps == clean.table(table).jumps, name
        assert all(ln in saved(ns).splitlines() for ln in FOREIGN_SAVE.splitlines() if ln.startswith("-A "))


# --- many chains: the change cut into transactions ----------------------------------------


def _many(n: int, affinity_on: int | None = None):
    """n ClusterIP/NodePort services of the fixture site (node1's rules)."""
    services = tuple(
        F.service(f"s{i}", F.HTTP, type="NodePort" if i % 2 else "ClusterIP",
                  session_affinity="ClientIP" if i == affinity_on else "None")
        for i in range(n)
    )  # fmt: skip
    ports, _ = resolve(F.site(services), F.nodes(), F.allocations(services))
    return render_nodes(F.CLUSTER, ports, ["node1"])["node1"]


def _svcops_targets(line: str) -> str | None:
    t = line.rsplit(" -j ", 1)[-1].split()[0] if " -j " in line else None
    return t if t and t.startswith("SVCOPS-") else None


def test_a_cold_start_of_many_chains_is_cut_and_nothing_is_reachable_before_the_end():
    rules = _many(12)
    txs = restore_transactions(rules, LiveTables(), chunk=10)
    assert len(txs) > 3 and "".join(txs).count("COMMIT") > len(txs)
    state = LiveTables()
    for i, tx in enumerate(txs):
        state = simulate(state, tx)
        if i < len(txs) - 1:
            # No jump from a built-in chain yet: the new chains are not reachable...
            assert not state.table("nat").jumps and not state.table("filter").jumps
        # ...and every chain already there has every svcops chain it jumps to.
        for t in ("filter", "nat"):
            chains = state.table(t).chains
            for lines in chains.values():
                assert all(_svcops_targets(ln) in chains for ln in lines if _svcops_targets(ln)), (i, t)
    assert state == expected_tables(rules)
    # A small change is one transaction, exactly restore_payload's.
    assert restore_transactions(_many(12, affinity_on=3), state, chunk=10) == [restore_payload(_many(12, affinity_on=3), state)]


def test_a_cut_short_apply_is_undone_by_the_rollback_without_jumps():
    for old in (LiveTables(), expected_tables(_many(4))):
        rules = _many(12, affinity_on=1)
        txs = restore_transactions(rules, old, chunk=10)
        assert len(txs) > 2
        for cut in range(len(txs)):
            state = old
            for tx in txs[:cut]:
                state = simulate(state, tx)
            # (as the operation builds it too: from the state simulated once from the transactions)
            after = simulate(old, "".join(txs))
            for rollback in (rollback_payload(old, rules, jumps=False), rollback_payload(old, rules, jumps=False, after=after)):
                back = simulate(state, rollback)
                for t in ("filter", "nat"):
                    assert back.table(t).chains == old.table(t).chains, cut
                    assert back.table(t).jumps == old.table(t).jumps, cut
        # The whole apply done: the full rollback (jumps too), from that same state.
        back = simulate(after, rollback_payload(old, rules, after=after))
        for t in ("filter", "nat"):
            assert back.table(t).chains == old.table(t).chains
            assert back.table(t).jumps == old.table(t).jumps


@pytest.mark.root
@root
def test_transactions_for_real_from_clean_then_changed_then_cut_short():
    first, second = _many(12), _many(14, affinity_on=5)
    with netns() as ns:
        ns_run(ns, "iptables-restore", "--noflush", stdin=FOREIGN_SAVE)
        ns_run(ns, "iptables-restore", "--noflush", stdin="".join(restore_transactions(first, None, chunk=10)))
        assert in_sync(first, parse_iptables_save(saved(ns)))
        before = saved(ns)
        live = parse_iptables_save(before)
        txs = restore_transactions(second, live, chunk=10)
        assert len(txs) > 1
        # Cut short: the first transactions only, then the rollback without jumps.
        ns_run(ns, "iptables-restore", "--noflush", stdin="".join(txs[:2]))
        ns_run(ns, "iptables-restore", "--noflush", stdin=rollback_payload(live, second, jumps=False))
        assert saved(ns) == before
        ns_run(ns, "iptables-restore", "--noflush", stdin="".join(txs))
        assert in_sync(second, parse_iptables_save(saved(ns)))
        assert all(ln in saved(ns).splitlines() for ln in FOREIGN_SAVE.splitlines() if ln.startswith("-A "))


@pytest.mark.parametrize("ip", ["10.0.0.5 -j ACCEPT", "10.0.0.5\n-A INPUT -j ACCEPT", "node1.example.com"])
def test_an_endpoint_address_that_is_not_one_raises_instead_of_becoming_rule_text(ip):
    from svcops.render.ipvs import render_nodes as render_ipvs
    from svcops.render.nftables import render_nodes as render_nft

    svc = F.service("web", F.HTTP)
    rp = ResolvedPort(svc, F.HTTP, "10.96.0.10", None, None, (Endpoint(ip, 80, "node1"),))
    for render in (render_nodes, render_nft):
        with pytest.raises(ValueError, match="is not an IP address"):
            render(F.CLUSTER, [rp], ["node1"])
    with pytest.raises(ValueError, match="is not an IP address"):
        render_ipvs(F.CLUSTER, [rp], [("node1", ("10.0.0.11",))])
