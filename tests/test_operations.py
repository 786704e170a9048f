"""The pure parts of pushing: in-sync detection, rollback payloads, the announce choice,
the boot files, the dry-run diff and the apply driver's helpers.

The operations themselves run against real nodes in tests/e2e/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import replace

import pytest

import render_fixtures as F
from netns import netns, ns_run, iptables_saved as saved
from svcops.announce import address_label, announcements, choose
from svcops.apply import batches, over_fail_percent, select_hosts
from svcops.deploy import plan_site
from svcops.endpoints import resolve
from svcops.facts import Address, NodeState, parse_node_state
from svcops.model import Endpoint, ResolvedPort, Service, ServicePort
from svcops.node_files import (
    RULES_FILE,
    SYSCTL_FILE,
    UNIT_FILE,
    UNIT_LINK,
    boot_payload,
    deadman_script,
    node_files,
    restore_script,
    sha256_text,
    unit_text,
)
from svcops.nodediff import node_diff
from svcops.pipeline import compile_site
from svcops.render.iptables import JUMPS, LiveTables, parse_iptables_save, render_nodes, restore_payload
from svcops.render.rollback import diff_tables, expected_tables, in_sync, live_text, rollback_payload, simulate

NODES = ["node1", "node2", "node3"]

FOREIGN_SAVE = """\
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:ufw-before-input - [0:0]
-A INPUT -j ufw-before-input
-A FORWARD -o docker0 -j DOCKER
-A ufw-before-input -i lo -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
"""


def rendered(name: str, node: str = "node1"):
    services, manual, _ = F.SCENARIOS[name]
    ports, _ = resolve(F.site(services, manual), F.nodes(), F.allocations(services))
    return render_nodes(F.CLUSTER, ports, NODES)[node]


def footprint(live: LiveTables) -> dict:
    return {t: (dict(live.table(t).chains), live.table(t).jumps) for t in ("filter", "nat")}


def live_after(rules, before: LiveTables | None = None) -> LiveTables:
    before = before or LiveTables()
    return simulate(before, restore_payload(rules, before))


SCENARIO_NAMES = sorted(F.SCENARIOS)


# --- in sync: the decision to run a restore at all ----------------------------------------


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_a_node_holding_the_rules_is_in_sync(name):
    rules = rendered(name)
    # As the node shows them after a first apply, with foreign rules around.
    live = parse_iptables_save(FOREIGN_SAVE + restore_payload(rules))
    assert in_sync(rules, live)
    assert diff_tables(rules, live).empty


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_a_clean_node_is_not_in_sync(name):
    rules = rendered(name)
    assert not in_sync(rules, parse_iptables_save(FOREIGN_SAVE))
    d = diff_tables(rules, LiveTables())
    assert set(d.tables["nat"].added) == set(expected_tables(rules).table("nat").chains)
    assert len(d.tables["filter"].jumps_added) + len(d.tables["nat"].jumps_added) == len(JUMPS)


def test_any_drift_makes_a_node_out_of_sync():
    rules = rendered("node-port")
    text = restore_payload(rules)
    live = parse_iptables_save(text)
    nat = live.table("nat")
    chain = next(c for c in nat.chains if c.startswith("SVCOPS-SEP-"))

    def with_nat(**changes) -> LiveTables:
        return LiveTables({"filter": live.table("filter"), "nat": replace(nat, **changes)})

    # a rule changed by hand
    edited = dict(nat.chains)
    edited[chain] = nat.chains[chain][:-1]
    assert not in_sync(rules, with_nat(chains=edited))
    assert diff_tables(rules, with_nat(chains=edited)).tables["nat"].changed == (chain,)
    # a jump missing, a jump twice
    assert not in_sync(rules, with_nat(jumps=nat.jumps[1:]))
    assert not in_sync(rules, with_nat(jumps=nat.jumps + nat.jumps[:1]))
    # a stale svcops chain (a removed service)
    stale = dict(nat.chains)
    stale["SVCOPS-SVC-AAAAAAAAAAAAAAAA"] = ("-A SVCOPS-SVC-AAAAAAAAAAAAAAAA -j SVCOPS-MARK-MASQ",)
    assert not in_sync(rules, with_nat(chains=stale))
    assert diff_tables(rules, with_nat(chains=stale)).tables["nat"].removed == ("SVCOPS-SVC-AAAAAAAAAAAAAAAA",)


def test_an_empty_stale_chain_a_foreign_chain_uses_does_not_count():
    rules = rendered("cluster-ip")
    live = parse_iptables_save(restore_payload(rules))
    nat = live.table("nat")
    chains = dict(nat.chains)
    chains["SVCOPS-SVC-OLDOLDOLDOLDOLDO"] = ()
    kept = replace(nat, chains=chains, foreign_refs=frozenset({"SVCOPS-SVC-OLDOLDOLDOLDOLDO"}))
    assert in_sync(rules, LiveTables({"filter": live.table("filter"), "nat": kept}))


# --- rollback --------------------------------------------------------------------------------


def _olds():
    """Live states a node can be in before an apply."""
    yield "clean", LiveTables()
    yield "foreign only", parse_iptables_save(FOREIGN_SAVE)
    for name in ("source-ranges", "client-ip-affinity", "external-local-with-endpoints"):
        yield f"after {name}", parse_iptables_save(FOREIGN_SAVE + restore_payload(rendered(name)))
    # drifted by hand: a jump twice, one missing, an outdated svcops jump
    base = parse_iptables_save(restore_payload(rendered("udp")))
    f = base.table("filter")
    odd = replace(f, jumps=f.jumps[1:] + f.jumps[-1:] + ('-A INPUT -j SVCOPS-OLD-CHAIN',))
    # (read back as iptables-save would print it: jumps grouped by built-in chain)
    yield "drifted", parse_iptables_save(live_text(LiveTables({"filter": odd, "nat": base.table("nat")})))


@pytest.mark.parametrize("new_name", ["cluster-ip", "node-port", "load-balancer", "external-local-without-endpoints"])
@pytest.mark.parametrize("old_label,old", list(_olds()), ids=[label for label, _ in _olds()])
def test_rollback_gives_back_exactly_the_old_svcops_state(new_name, old_label, old):
    rules = rendered(new_name)
    applied = simulate(old, restore_payload(rules, old))
    assert in_sync(rules, applied)  # the apply did what it should
    back = simulate(applied, rollback_payload(old, rules))
    assert footprint(back) == footprint(old)


def test_rollback_names_no_foreign_chain():
    old = parse_iptables_save(FOREIGN_SAVE)
    payload = rollback_payload(old, rendered("load-balancer"))
    for line in payload.splitlines():
        if line.startswith((":", "-A ", "-X ")):
            assert line.split()[0].lstrip(":") .startswith("SVCOPS-") or line.split()[1].startswith("SVCOPS-")
        if line.startswith(("-D ", "-I ")):
            assert line.split()[-1].startswith("SVCOPS-")


def _have_iptables() -> bool:
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("ip", "iptables-restore", "iptables-save"))


@pytest.mark.root
@pytest.mark.skipif(not _have_iptables(), reason="needs root, ip and iptables")
def test_rollback_for_real_restores_the_saved_tables_byte_for_byte():
    with netns() as ns:
        ns_run(ns, "iptables-restore", "--noflush", stdin=FOREIGN_SAVE)
        ns_run(ns, "iptables-restore", "--noflush", stdin=restore_payload(rendered("source-ranges")))
        before = saved(ns)
        old = parse_iptables_save(before)
        rules = rendered("node-port")
        ns_run(ns, "iptables-restore", "--noflush", stdin=restore_payload(rules, old))
        assert in_sync(rules, parse_iptables_save(saved(ns)))
        ns_run(ns, "iptables-restore", "--noflush", stdin=rollback_payload(old, rules))
        assert saved(ns) == before


# --- the announce choice ---------------------------------------------------------------------


def test_choice_is_deterministic_and_ignores_candidate_order():
    names = [f"node{i}" for i in range(1, 11)]
    for i in range(40):
        ip = f"192.0.2.{i}"
        assert choose(ip, names) == choose(ip, list(reversed(names))) in names


def test_choice_spreads_addresses_over_nodes():
    names = [f"node{i}" for i in range(1, 4)]
    winners = {choose(f"192.0.2.{i}", names) for i in range(1, 60)}
    assert winners == set(names)


def test_a_node_leaving_moves_only_the_addresses_it_held():
    names = [f"node{i}" for i in range(1, 6)]
    ips = [f"198.51.100.{i}" for i in range(1, 100)]
    before = {ip: choose(ip, names) for ip in ips}
    after = {ip: choose(ip, names[:-1]) for ip in ips}
    moved = {ip for ip in ips if before[ip] != after[ip]}
    assert moved == {ip for ip in ips if before[ip] == "node5"}
    assert moved  # node5 did hold some


def _lb_port(policy: str, endpoints: tuple[Endpoint, ...], ip: str = "192.0.2.5") -> ResolvedPort:
    svc = Service("default", f"lb-{policy.lower()}", "LoadBalancer", external_traffic_policy=policy)
    return ResolvedPort(svc, ServicePort("http", "TCP", 80, 80), "10.96.0.9", 30080, ip, endpoints)


def test_each_load_balancer_address_is_announced_by_exactly_one_node():
    nodes = F.nodes()
    eps = (Endpoint("10.0.0.11", 80, "node1"), Endpoint("10.244.2.7", 80, "node2"))
    ports = [_lb_port("Cluster", eps, f"192.0.2.{i}") for i in range(1, 9)]
    ann = announcements(ports, nodes)
    holders = [a.address for n in ann for a in ann[n]]
    assert sorted(holders) == sorted(f"192.0.2.{i}" for i in range(1, 9))
    for n, items in ann.items():
        for a in items:
            assert a.interface == "eth0" and a.label == "eth0:svc" and a.services == ("default/lb-cluster",)


def test_local_policy_announces_from_a_node_with_a_local_endpoint_only():
    nodes = F.nodes()
    eps = (Endpoint("10.244.2.7", 80, "node2"),)
    for i in range(1, 20):
        ann = announcements([_lb_port("Local", eps, f"192.0.2.{i}")], nodes)
        assert [a.address for a in ann["node2"]] == [f"192.0.2.{i}"]
        assert not ann["node1"] and not ann["node3"]


def test_no_endpoints_no_announcement():
    ann = announcements([_lb_port("Cluster", ())], F.nodes())
    assert not any(ann.values())


def test_label_fits_the_kernels_limit():
    assert address_label("eth0") == "eth0:svc"
    assert address_label("enp0s31f6") == "enp0s31f6:svc"
    assert address_label("a-very-long-if") is None  # 14 + 4 > 15


# --- boot persistence -----------------------------------------------------------------------


def test_boot_payload_holds_the_chains_and_rules_but_no_jump():
    rules = rendered("load-balancer")
    boot = parse_iptables_save(boot_payload(rules))
    want = expected_tables(rules)
    for t in ("filter", "nat"):
        assert boot.table(t).chains == want.table(t).chains
        assert boot.table(t).jumps == ()


def test_restore_script_restores_then_inserts_each_missing_jump_in_order():
    script = restore_script(JUMPS)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    restore_at = lines.index(f"iptables-restore -w 5 --noflush {RULES_FILE}")
    ensures = [ln for ln in lines if ln.startswith("ensure ")]
    assert len(ensures) == len(JUMPS) and lines.index(ensures[0]) > restore_at
    # Each is inserted at the top when missing: per chain, bottom-up.
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        specs = [j.spec for j in JUMPS if j.table == "filter" and j.chain == chain]
        got = [ln.split(" ", 3)[3] for ln in ensures if ln.startswith(f"ensure filter {chain} ")]
        assert got == list(reversed(specs))
    assert '-C "$c" "$@" 2>/dev/null || iptables -w 5 -t "$t" -I "$c" 1 "$@"' in script


def test_restore_script_is_valid_shell():
    if not shutil.which("sh"):
        pytest.skip("no sh")
    r = subprocess.run(["sh", "-n"], input=restore_script(JUMPS), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_unit_runs_the_script_once_before_the_network():
    text = unit_text()
    sections = {}
    current = None
    for line in text.splitlines():
        if line.startswith("["):
            current = sections.setdefault(line, {})
        elif "=" in line:
            k, v = line.split("=", 1)
            current[k] = v
    assert "network-pre.target" in sections["[Unit]"]["Before"].split()
    # After the loaders that flush the whole ruleset (Debian's nftables.conf does).
    assert {"nftables.service", "netfilter-persistent.service"} <= set(sections["[Unit]"]["After"].split())
    assert sections["[Unit]"]["DefaultDependencies"] == "no"
    assert sections["[Service]"]["Type"] == "oneshot"
    assert sections["[Service]"]["RemainAfterExit"] == "yes"
    assert sections["[Service]"]["ExecStart"].endswith("/etc/svcops/restore")
    assert sections["[Install]"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    # systemd's own parser: no warning (an unknown key or value prints one), exit 0.
    unit = tmp_path / "svcops-rules.service"
    unit.write_text(unit_text())
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_node_files_and_their_symlink():
    rules = rendered("cluster-ip")
    files = node_files(rules, "auto eth0\n", ())
    assert "net.ipv4.ip_forward = 1" in files.files[SYSCTL_FILE].splitlines()
    assert files.files[UNIT_FILE] == unit_text()
    assert files.link == (UNIT_LINK, UNIT_FILE)
    assert files.files["/etc/network/interfaces.d/svcops"] == "auto eth0\n"
    assert "/etc/network/interfaces.d/svcops" not in node_files(rules, "", ()).files


def test_deadman_script_fires_only_if_still_armed():
    text = deadman_script("abc123", 45)
    assert "sleep 45" in text
    assert "if mv /run/svcops/armed.abc123 /run/svcops/fired.abc123 2>/dev/null; then" in text
    assert "iptables-restore -w 5 --noflush /run/svcops/rollback.abc123" in text


# --- facts and the dry diff ------------------------------------------------------------------


def test_parse_node_state():
    lines = [
        "file " + "a" * 64 + " /etc/svcops/rules.v4",
        "link /etc/systemd/system/svcops-rules.service",
        "ip_forward 0",
        "announced 192.0.2.5 eth0 eth0:svc",
        'addresses [{"ifname":"eth0","addr_info":[{"family":"inet","local":"10.0.0.11","prefixlen":24,"label":"eth0"},'
        '{"family":"inet","local":"192.0.2.5","prefixlen":32,"label":"eth0:svc"}]},{"ifname":"lo","addr_info":[]}]',
    ]
    st = parse_node_state(lines)
    assert st.files == {"/etc/svcops/rules.v4": "a" * 64}
    assert st.unit_link == "/etc/systemd/system/svcops-rules.service"
    assert st.ip_forward == "0"
    assert st.announced == ("192.0.2.5",)
    assert st.addresses == (Address("10.0.0.11", 24, "eth0", "eth0"), Address("192.0.2.5", 32, "eth0", "eth0:svc"))


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
    live = parse_iptables_save(FOREIGN_SAVE + restore_payload(np.output.iptables))
    d2 = node_diff(np, live, done, np.output.address)
    assert d2.empty and d2.lines() == ["in sync"]


def test_dry_diff_shows_the_dns_servers_steps():
    from svcops.dns_ops import DnsState, dns_plan
    from svcops.facts import NodeState as NS

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
    done = DnsState(installed=True, running=True, files=files, resolv=p.resolv)
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


# --- the apply driver's pure helpers ----------------------------------------------------------


def test_limit_selects_names_and_globs_in_inventory_order():
    names = ["node1", "node2", "node3", "web-a", "web-b"]
    assert select_hosts(names, None) == (names, [])
    assert select_hosts(names, "web-*,node2") == (["node2", "web-a", "web-b"], [])
    assert select_hosts(names, "node[13], db1") == (["node1", "node3"], ["db1"])


def test_batches_and_fail_percent():
    names = [f"n{i}" for i in range(7)]
    assert batches(names, None) == [names]
    assert batches(names, 3) == [names[0:3], names[3:6], names[6:]]
    assert batches([], 2) == []
    assert not over_fail_percent(0, 3, 0)
    assert over_fail_percent(1, 3, 0)
    assert not over_fail_percent(1, 4, 25) and over_fail_percent(2, 4, 25)


def test_apply_without_yes_and_without_a_terminal_refuses_before_touching_anything(tmp_path):
    import sys
    from pathlib import Path

    svcops = str(Path(sys.executable).with_name("svcops"))
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [svcops, "apply", "-i", "inventory/example.py", "examples/walkthrough"],
        cwd=root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    assert "pass -y" in r.stderr
    assert "Connect" not in r.stderr + r.stdout
