"""End to end: `svcops apply` (and the pyinfra path) against a real 3-node lab, checked
with real traffic from the client and the nodes (issue 3's scenarios), in iptables
mode and in nftables mode (issue 4): every scenario runs once per proxy mode.

Every test applies the site it needs first, so each stands on its own; they share the
one lab of the module (tests/e2e/labkit.py). The mode is a module-scoped parameter, so
pytest runs all iptables-mode scenarios, then all nftables-mode ones, on the same lab
(the first nftables apply is itself a switch from iptables mode).
"""

from __future__ import annotations

import json
import re

import pytest
from labkit import (
    ADDRESS,
    CLIENT,
    INVENTORY,
    NODES,
    PYINFRA,
    apply,
    backends,
    clients,
    curl,
    curl_rc,
    foreign_lines,
    iptables_save,
    make_site,
    mode_fixture,
    nft_ruleset_without_svcops,
    nft_table,
    results,
    run,
    sh,
    ssh_ok,
    svcops_rules,
)

from svcops.render.chains import port_hash

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab", "proxy_mode")]


proxy_mode = mode_fixture()  # every test once per proxy mode (labkit.make_site's mode)

CLUSTER_IP = "10.1.11.83"  # the walkthrough's my-deploy, port 8000
NODE_PORT = 30001  # the walkthrough's nginx-nodeport
LB_IP = "192.168.36.252"  # the walkthrough's web-lb (from its lock)
ALL = set(ADDRESS.values())


def service(name: str, spec: str) -> str:
    return f"apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"


@pytest.fixture
def walkthrough(tmp_path):
    site = make_site(tmp_path, {})
    r = apply(site)
    assert set(results(r)) == set(NODES)
    return site


def test_01_cluster_ip_from_a_node_reaches_every_backend(walkthrough):
    lines = curl("node1", f"http://{CLUSTER_IP}:8000/", 60)
    got = backends(lines)
    assert set(got) == ALL, lines[:5]
    assert sum(got.values()) == 60
    assert min(got.values()) >= 10, got


def test_02_node_port_on_every_node_from_the_client(walkthrough):
    seen = set()
    for node, address in ADDRESS.items():
        lines = curl("client", f"http://{address}:{NODE_PORT}/", 30)
        got = backends(lines)
        assert sum(got.values()) == 30, f"{node}: {lines[:3]}"
        seen |= set(got)
    assert seen == ALL


def test_09_second_apply_changes_nothing_and_runs_no_restore(walkthrough, proxy_mode):
    # Traffic first, so svcops's rules carry packet counters: a restore would reset them.
    curl("node1", f"http://{CLUSTER_IP}:8000/", 5)
    def service_rules() -> list[str]:
        if proxy_mode == "nftables":
            # Rule handles: a rewritten chain gets new ones.
            return sh("node1", "nft -a list table ip svcops").splitlines()
        # The services' own chains: no traffic reaches them while apply runs (SSH does
        # reach the jumps in INPUT, so those counters move anyway).
        text = iptables_save("node1", counters=True)
        return [ln for ln in text.splitlines() if "-A SVCOPS-SVC-" in ln or "-A SVCOPS-SEP-" in ln]

    before = service_rules()
    if proxy_mode == "iptables":
        assert [ln for ln in before if not ln.startswith("[0:0]")], "expected packet counters on the service's rules"
    else:
        assert any("# handle" in ln and "dnat to" in ln for ln in before), before[:20]
    r = apply(walkthrough)
    assert results(r) == {n: "unchanged" for n in NODES}, r.stdout
    assert "iptables rules" not in r.stdout.split("results")[-1]
    assert service_rules() == before


FOREIGN = """\
*filter
:DOCKER-USER - [0:0]
:ufw-before-input - [0:0]
-A INPUT -j ufw-before-input
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -s 203.0.113.0/24 -j DROP
-A ufw-before-input -i lo -j ACCEPT
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
"""


# A foreign nftables table (a firewall's), next to svcops's.
FOREIGN_NFT = """\
table inet filter-theirs {
	set blocked {
		type ipv4_addr
		elements = { 203.0.113.9 }
	}

	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr @blocked drop
		tcp dport 2222 counter packets 0 bytes 0 reject
	}
}
"""


def test_10_foreign_rules_stay_byte_identical(tmp_path, walkthrough, proxy_mode):
    node = "node2"
    sh(node, f"cat > /tmp/foreign.v4 <<'EOF'\n{FOREIGN}EOF\niptables-restore --noflush /tmp/foreign.v4")
    sh(node, f"cat > /tmp/foreign.nft <<'EOF'\n{FOREIGN_NFT}EOF\nnft -f /tmp/foreign.nft")
    try:
        theirs = foreign_lines(iptables_save(node))
        theirs_nft = nft_ruleset_without_svcops(node)
        assert "-A DOCKER-USER -s 203.0.113.0/24 -j DROP" in theirs
        assert "table inet filter-theirs" in theirs_nft
        extra = make_site(tmp_path / "more", {"extra.yaml": service("extra", "  selector: {app: web}\n  ports: [{name: http, port: 81, targetPort: http}]\n")})
        apply(extra)
        assert foreign_lines(iptables_save(node)) == theirs
        assert nft_ruleset_without_svcops(node) == theirs_nft
        empty = make_site(tmp_path / "empty", {}, with_walkthrough=False)
        apply(empty)
        after = iptables_save(node)
        assert foreign_lines(after) == theirs
        assert nft_ruleset_without_svcops(node) == theirs_nft
        assert "SVCOPS-SVC-" not in after  # every service's chains are gone
        table = nft_table(node)
        # No service port's chain is left (kube-proxy-style names: kind-HASH8-ns/name/...).
        assert not re.search(r"chain (service|endpoint)-[A-Z2-7]{8}-", table)  # in either mode
        if proxy_mode == "nftables":
            assert "chain services" in table  # the skeleton stays, empty
    finally:
        sh(node, "iptables -D INPUT -j ufw-before-input; iptables -D FORWARD -j DOCKER-USER; "
           "iptables -F DOCKER-USER; iptables -X DOCKER-USER; iptables -F ufw-before-input; iptables -X ufw-before-input; "
           "iptables -t nat -D PREROUTING -m addrtype --dst-type LOCAL -j DOCKER; iptables -t nat -X DOCKER; "
           "iptables -t nat -D POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE; "
           "nft delete table inet filter-theirs", check=False)


def test_12_ssh_survives_and_a_rule_that_cuts_ssh_is_rolled_back(tmp_path, walkthrough):
    assert all(ssh_ok(n) for n in NODES)
    before = iptables_save("node1")
    before_nft = sorted(nft_table("node1").splitlines())
    # externalIPs with node1's own address on port 22: new SSH connections to node1 would
    # be sent to the web backends.
    cutting = make_site(
        tmp_path / "cut",
        {"cut.yaml": service("cut-ssh", f"  selector: {{app: web}}\n  externalIPs: [{ADDRESS['node1']}]\n  ports: [{{name: ssh, port: 22, targetPort: http}}]\n")},
    )
    r = apply(cutting, "--rollback-after", "120", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    status = results(r)
    assert status["node1"] == "failed", r.stdout
    assert "rolling back" in r.stderr
    assert iptables_save("node1") == before  # the previous rules are back
    assert sorted(nft_table("node1").splitlines()) == before_nft
    assert ssh_ok("node1")
    # node1 still serves the walkthrough.
    assert backends(curl("node1", f"http://{CLUSTER_IP}:8000/", 6))
    apply(walkthrough)
    assert all(ssh_ok(n) for n in NODES)


def test_03_load_balancer_and_external_ips_from_the_client(tmp_path):
    site = make_site(
        tmp_path,
        {"ext.yaml": service("ext", f"  selector: {{app: web}}\n  externalIPs: [{ADDRESS['node2']}]\n  ports: [{{name: http, port: 8080, targetPort: http}}]\n")},
    )
    r = apply(site)
    assert set(results(r)) == set(NODES)
    lb = backends(curl("client", f"http://{LB_IP}/", 30))
    assert set(lb) == ALL, lb
    # Exactly one node holds the address (and says so on its interface).
    holders = [n for n in NODES if LB_IP in sh(n, "ip -4 -o addr show")]
    assert len(holders) == 1
    assert "eth0:svc" in sh(holders[0], "ip -4 -o addr show")
    ext = backends(curl("client", f"http://{ADDRESS['node2']}:8080/", 30))
    assert set(ext) == ALL, ext


def test_04_client_ip_affinity_sticks_to_one_backend(tmp_path):
    site = make_site(
        tmp_path,
        {"sticky.yaml": service("sticky", "  selector: {app: web}\n  sessionAffinity: ClientIP\n  ports: [{name: http, port: 8001, targetPort: http, nodePort: 30101}]\n  type: NodePort\n")},
    )
    apply(site)
    got = backends(curl("client", f"http://{ADDRESS['node1']}:30101/", 20))
    assert sum(got.values()) == 20 and len(got) == 1, got


def test_05_external_traffic_policy_local(tmp_path):
    site = make_site(
        tmp_path,
        {"local.yaml": service("local", "  type: NodePort\n  externalTrafficPolicy: Local\n  selector: {app: web}\n  ports: [{name: http, port: 8002, targetPort: http, nodePort: 30102}]\n")},
    )
    apply(site)
    for node, address in ADDRESS.items():
        lines = curl("client", f"http://{address}:30102/", 10)
        assert backends(lines) == {address: 10}, f"{node}: {lines[:3]}"
        assert clients(lines) == {CLIENT}  # the backend saw the real client


def test_06_load_balancer_source_ranges(tmp_path):
    site = make_site(
        tmp_path,
        {
            "ranged.yaml": service(
                "ranged",
                f"  type: LoadBalancer\n  loadBalancerIP: 192.168.36.250\n  loadBalancerSourceRanges: [{CLIENT}/32]\n"
                "  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n",
            )
        },
    )
    apply(site)
    assert backends(curl("client", "http://192.168.36.250/", 5))  # inside the range
    holder = next(n for n in NODES if "192.168.36.250" in sh(n, "ip -4 -o addr show"))
    outsider = next(n for n in NODES if n != holder)
    assert curl_rc(outsider, "http://192.168.36.250/") != 0  # outside: nothing
    assert not backends(curl(outsider, "http://192.168.36.250/", 3))
    # A client outside the range: the lab's client with a second address of its own.
    other = "192.168.36.3"
    sh("client", f"ip addr add {other}/32 dev eth0")
    try:
        assert not backends(curl("client", f"--interface {other} http://192.168.36.250/", 3))
        # (the same source does reach a node port: only the range keeps it out)
        assert backends(curl("client", f"--interface {other} http://{ADDRESS[holder]}:{NODE_PORT}/", 3))
    finally:
        sh("client", f"ip addr del {other}/32 dev eth0")


def test_07_a_service_without_endpoints_is_refused_at_once(tmp_path):
    site = make_site(
        tmp_path,
        {"none.yaml": service("nobody", "  clusterIP: 10.1.200.7\n  selector: {app: nothing-has-this}\n  ports: [{name: http, port: 80}]\n")},
    )
    apply(site)
    assert curl_rc("node1", "http://10.1.200.7/", max_time=5) == 7  # refused, not 28 (timed out)
    assert curl_rc("client", f"http://{ADDRESS['node2']}:{NODE_PORT}/") == 0  # the others still work


def test_08_a_removed_service_stops_answering_and_its_chains_go(tmp_path, proxy_mode):
    extra = service("gone", "  clusterIP: 10.1.200.8\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n")
    site = make_site(tmp_path, {"gone.yaml": extra})
    apply(site)
    # iptables mode: its SVCOPS-SVC- chain; nftables mode: its chains, all named after it.
    chain = "SVCOPS-SVC-" + port_hash("default/gone:http", "TCP") if proxy_mode == "iptables" else "default/gone/tcp/http"
    assert backends(curl("node1", "http://10.1.200.8/", 3))
    assert chain in svcops_rules("node1")
    (site / "services" / "gone.yaml").unlink()
    apply(site)
    assert curl_rc("node1", "http://10.1.200.8/") != 0
    for n in NODES:
        assert chain not in svcops_rules(n)
        assert "10.1.200.8" not in svcops_rules(n)


def test_11_reboot_drill_restores_the_rules_from_the_boot_unit(walkthrough, proxy_mode):
    node = "node3"
    unit = sh(node, "cat /etc/systemd/system/svcops-rules.service")
    assert "Before=network-pre.target" in unit
    assert sh(node, "readlink /etc/systemd/system/multi-user.target.wants/svcops-rules.service").strip() == "/etc/systemd/system/svcops-rules.service"
    exec_start = next(ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("ExecStart="))
    before, before_nft = iptables_save(node), sorted(nft_table(node).splitlines())
    # A reboot's clean slate: no rules of any kind.
    sh(node, "iptables -t nat -F && iptables -t nat -X && iptables -F && iptables -X && sysctl -q -w net.ipv4.ip_forward=0; "
       "nft delete table ip svcops 2>/dev/null; true")
    assert "SVCOPS-" not in iptables_save(node) and nft_table(node) == ""
    sh(node, "cat /etc/sysctl.d/90-svcops.conf | sysctl -q -p - >/dev/null; " + exec_start)
    def same() -> None:
        # (Listing order of map elements may differ; their set may not.)
        assert sorted(nft_table(node).splitlines()) == before_nft
        if proxy_mode == "iptables":
            assert iptables_save(node) == before
        else:
            assert "SVCOPS-" not in iptables_save(node)
    same()
    sh(node, exec_start)  # idempotent: a second run changes nothing
    same()
    assert sh(node, "sysctl -n net.ipv4.ip_forward").strip() == "1"
    got = backends(curl("client", f"http://{ADDRESS[node]}:{NODE_PORT}/", 30))
    assert set(got) == ALL


def test_13_the_pyinfra_path_gives_the_same_result(tmp_path, proxy_mode):
    other = make_site(tmp_path / "other", {}, with_walkthrough=False)
    apply(other)
    site = make_site(tmp_path, {})
    r = run([PYINFRA, "-y", "--data", f"svcops_site={site}", INVENTORY, "deploys/services.py"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    again = apply(site)
    assert results(again) == {n: "unchanged" for n in NODES}, again.stdout
    assert set(backends(curl("node2", f"http://{CLUSTER_IP}:8000/", 30))) == ALL
    # svcops's facts, read as the README shows: pyinfra's own fact command prints them.
    r = run([PYINFRA, "-y", INVENTORY, "fact", "svcops.facts.iptables.SvcopsIptables"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout + r.stderr
    facts, _ = json.JSONDecoder().raw_decode(out[out.index("{", out.index("Fact data for")) :])
    assert sorted(facts) == sorted(NODES)
    if proxy_mode == "iptables":
        assert all("SVCOPS-SERVICES" in f["tables"]["nat"]["chains"] for f in facts.values()), facts


def test_14_each_node_has_its_own_static_address_file_and_stays_reachable(walkthrough):
    for node, address in ADDRESS.items():
        text = sh(node, "cat /etc/network/interfaces.d/svcops")
        assert f"address {address}/24" in text
        assert f"svcops for {node}:" in text
        assert ssh_ok(node)


def test_15_a_large_site_is_loaded_in_several_transactions_and_a_small_change_in_one(tmp_path, proxy_mode):
    # 300 ClusterIP services over the three backends: iptables mode writes ~1,200 chains,
    # more than one transaction holds (svcops.render.iptables.CHUNK_CHAINS), nftables
    # mode more than one chunk of service ports. The last one must answer, from every
    # backend; then one service changed is one small transaction.
    docs = "---\n".join(
        service(f"bulk-{i}", f"  clusterIP: 10.1.{200 + i // 250}.{i % 250 + 1}\n  selector: {{app: web}}\n"
                             "  ports: [{name: http, port: 80, targetPort: http}]\n")
        for i in range(300)
    )  # fmt: skip
    site = make_site(tmp_path, {"bulk.yaml": docs})
    r = apply(site)
    assert set(results(r)) == set(NODES), r.stdout + r.stderr
    last = "10.1.201.50"  # bulk-299
    assert set(backends(curl("node2", f"http://{last}/", 30))) == ALL
    assert set(backends(curl("client", f"http://{ADDRESS['node1']}:{NODE_PORT}/", 30))) == ALL
    before = svcops_rules("node1")
    text = (site / "services" / "bulk.yaml").read_text()
    (site / "services" / "bulk.yaml").write_text(
        text.replace("name: bulk-7, namespace: default}\nspec:\n", "name: bulk-7, namespace: default}\nspec:\n  sessionAffinity: ClientIP\n")
    )
    r = apply(site, "--dry")
    assert r.returncode == 0
    apply(site)
    after = svcops_rules("node1")
    changed = set(after.splitlines()) ^ set(before.splitlines())
    # Only bulk-7's part of thousands of lines moved.
    assert 0 < len(changed) < 40 and any("bulk-7" in ln for ln in changed), changed
    assert len(before.splitlines()) > 1000
    got = curl("node3", "http://10.1.200.8/", 6)
    assert len(set(backends(got))) == 1  # ClientIP affinity: one backend for one client


def test_16_a_rolling_apply_stops_at_a_failing_node_and_limit_touches_only_its_nodes(tmp_path, walkthrough):
    # node2 cannot be changed (svcops's run directory is taken by a file): with --serial 1
    # and --fail-percent 0, node1 gets the change, node2 fails untouched, node3 is not
    # started. Then --limit node3 changes node3 alone, and a full apply finishes node2.
    extra = service("rolled", "  clusterIP: 10.1.200.20\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n")
    site = make_site(tmp_path, {"rolled.yaml": extra})
    before = {n: svcops_rules(n) for n in NODES}
    sh("node2", "rm -rf /run/svcops && touch /run/svcops")
    try:
        r = apply(site, "--serial", "1", "--fail-percent", "0", check=False)
        assert r.returncode != 0
        assert results(r) == {"node1": "changed", "node2": "failed", "node3": "skipped"}, r.stdout + r.stderr
        assert "10.1.200.20" in svcops_rules("node1")
        assert svcops_rules("node2") == before["node2"]  # the failure changed nothing there
        assert svcops_rules("node3") == before["node3"]  # never started
    finally:
        sh("node2", "rm -f /run/svcops")
    r = apply(site, "--limit", "node3")
    assert results(r) == {"node3": "changed"}, r.stdout
    assert svcops_rules("node2") == before["node2"]
    r = apply(site)
    assert results(r) == {"node1": "unchanged", "node2": "changed", "node3": "unchanged"}, r.stdout
    # (40 random picks over 3 backends miss one with probability 2 in 10 million; 15 did 1 in 150)
    for n in NODES:
        assert set(backends(curl(n, "http://10.1.200.20/", 40))) == ALL, n
