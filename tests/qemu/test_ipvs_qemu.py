"""IPVS mode proven in a real Debian kernel, booted under qemu (tests/qemu/harness.py).

One guest boot (about 30 s with software emulation) checks two things:

* every golden IPVS payload (tests/golden/ipvs/) passes the real parsers, `ipset
  restore`, `iptables-restore --noflush` and `ipvsadm-restore`, and `ipvsadm-save -n`
  gives back exactly the virtual and real servers svcops rendered;
* a node with svcops's payloads for a small site forwards real traffic: requests from
  the node and from a client on its segment reach every backend through cluster IPs
  and node ports, with kube-proxy's semantics (persistence, Local policy keeping the
  client address, source ranges, reject without endpoints).

Needs root (apt-get for qemu-system-x86, busybox-static and cpio when missing, and
`apt-get download` of the kernel package into /var/cache/svcops-qemu); skipped, with
the reason, only when those cannot be had.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402

from svcops.render.ipvs import SYSCTLS, parse_ipvsadm_save, render_nodes  # noqa: E402
from svcops.render.ipvs_record import CANARY_MARK, fingerprint_of  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report() -> harness.Report:
    try:
        return harness.prove(timeout=300)
    except harness.Unavailable as e:
        pytest.skip(f"the qemu IPVS proof cannot run here: {e}")


def answers(report: harness.Report, label: str) -> list[str]:
    got = report.probes.get(label)
    assert got, f"no probe {label} in the guest's output:\n{report.output[-3000:]}"
    return got


def backends(lines: list[str]) -> set[str]:
    return {ln.split()[0] for ln in lines if ln.startswith("web-")}


def seen_clients(lines: list[str], backend: str) -> set[str]:
    return {ln.split()[1] for ln in lines if ln.startswith(backend + " ")}


def test_guest_boots_loads_every_module_and_applies_the_payloads(report):
    assert report.booted and report.done, report.output[-3000:]
    assert report.module_failures == []
    assert report.apply_failures == []


def test_every_golden_payload_passes_the_real_parsers_and_reads_back(report):
    golden = sorted(p.stem for p in harness.GOLDEN.glob("*.txt") if p.stem != "iptables")
    assert sorted(report.golden_rc) == golden
    for name in golden:
        assert report.golden_rc[name] == 0, f"{name}: {report.golden_errors.get(name)}"
        rendered = harness.golden_sections((harness.GOLDEN / f"{name}.txt").read_text())["## ipvsadm -R"]
        assert parse_ipvsadm_save(report.golden_saved.get(name, "")) == parse_ipvsadm_save(rendered), name


def test_the_cold_apply_sets_kube_proxys_sysctls_and_keeps_the_nodes_own(report):
    assert report.sysctls == dict(SYSCTLS)
    assert report.kept.split(" ") == ["net.ipv4.conf.all.arp_ignore", "=", "0", "net.ipv4.conf.all.arp_announce", "=", "0"]


def test_the_proof_nodes_ipvs_table_is_what_svcops_rendered(report):
    _, ports, cluster = harness.proof_site()
    rules = render_nodes(cluster, ports, [(harness.PROOF_NODE, (harness.PROOF_NODE_ADDRESS,))])[harness.PROOF_NODE]
    live = parse_ipvsadm_save(report.proof_ipvs)
    assert live == parse_ipvsadm_save(rules.ipvsadm)
    assert live["-t 10.96.0.11:80"][0] == "-s rr -p 600"  # ClientIP affinity
    assert live["-t 10.96.0.14:80"][0] == "-s wrr"  # the scheduler annotation


def test_cluster_ip_reaches_every_backend_from_the_node_and_from_a_client(report):
    from_node = answers(report, "node-cluster-ip")
    assert backends(from_node) == {"web-1", "web-2"}
    # The node's own traffic leaves with a cluster IP as source: the remote backend
    # must see it masqueraded, or its reply would never come back.
    assert seen_clients(from_node, "web-2") and not any(a.startswith("10.96.") for a in seen_clients(from_node, "web-2"))
    from_client = answers(report, "client-cluster-ip")
    assert backends(from_client) == {"web-1", "web-2"}
    # As in iptables mode, cluster IP traffic keeps its client address.
    assert seen_clients(from_client, "web-2") == {"10.0.0.100"}


def test_node_port_reaches_every_backend_masqueraded(report):
    got = answers(report, "client-node-port")
    assert backends(got) == {"web-1", "web-2"}
    assert "10.0.0.100" not in seen_clients(got, "web-2")  # Cluster policy: SNAT to the node


def test_client_ip_affinity_sticks_to_one_backend(report):
    got = answers(report, "client-sticky")
    assert len(got) == 6 and len(backends(got)) == 1 and all(a.startswith("web-") for a in got)


def test_external_traffic_policy_local_uses_local_endpoints_and_keeps_the_client_address(report):
    got = answers(report, "client-local-node-port")
    assert backends(got) == {"web-1"} and all(a.startswith("web-1 ") for a in got)
    assert seen_clients(got, "web-1") == {"10.0.0.100"}


def test_source_ranges_close_the_load_balancer_ip_but_not_the_node_port(report):
    assert backends(answers(report, "client-lb-closed")) == set()
    assert backends(answers(report, "client-lb-closed-node-port")) == {"web-1", "web-2"}


def test_no_endpoints_and_other_ports_are_refused(report):
    for label in ("client-no-endpoints", "client-other-port"):
        got = answers(report, label)
        assert all("Connection refused" in a for a in got), (label, got)


# --- svcops's apply steps in the same kernel: an update, then leaving IPVS mode ---------------


def test_an_update_applied_as_svcops_apply_does_gives_exactly_the_new_render(report):
    assert not [f for f in report.apply_failures if "update" in f], report.apply_failures
    _, ports, cluster = harness.update_site()
    new = render_nodes(cluster, ports, [(harness.PROOF_NODE, (harness.PROOF_NODE_ADDRESS,))])[harness.PROOF_NODE]
    assert parse_ipvsadm_save(report.update_ipvs) == parse_ipvsadm_save(new.ipvsadm)
    assert parse_ipvsadm_save(report.update_ipvs)["-t 10.96.0.11:80"][0] == "-s rr -p 300"


def test_after_the_update_the_new_service_answers_and_the_removed_one_is_gone(report):
    assert backends(report.update_probes["added"]) == {"web-1", "web-2"}
    assert backends(report.update_probes["lonely-gone"]) == set()
    # web's node port is now Local: only node1's own backend, with the client's address.
    local = report.update_probes["web-local-node-port"]
    assert backends(local) == {"web-1"} and seen_clients(local, "web-1") == {"10.0.0.100"}


def test_leaving_ipvs_mode_leaves_nothing_of_it(report):
    assert not [f for f in report.apply_failures if "removal" in f], report.apply_failures
    assert parse_ipvsadm_save(report.removed.get("ipvs", "")) == {}
    assert not any(n.startswith("SVCOPS-") for n in report.removed.get("sets", "").split())
    assert "svcops-ipvs0" not in report.removed.get("links", "")
    assert report.removed.get("iptables", "") == ""
    # The node-wide ARP sysctls are back to the values the node had before IPVS mode.
    assert report.removed.get("sysctl", "").split() == ["net.ipv4.conf.all.arp_ignore=0", "net.ipv4.conf.all.arp_announce=0"]
    assert "files" not in report.removed


def test_the_boot_script_alone_brings_back_the_whole_ipvs_mode(report):
    # After leaving IPVS the node held nothing of it, as after a reboot; the restore
    # script svcops persists, run twice, gives back the render and traffic flows.
    assert not [f for f in report.apply_failures if "boot" in f], report.apply_failures
    _, ports, cluster = harness.update_site()
    new = render_nodes(cluster, ports, [(harness.PROOF_NODE, (harness.PROOF_NODE_ADDRESS,))])[harness.PROOF_NODE]
    # Every rendered server, and the record's canary server (fwmark, no real server).
    assert parse_ipvsadm_save(report.boot_ipvs) == {**parse_ipvsadm_save(new.ipvsadm), f"-f {CANARY_MARK}": ("-s rr", {})}
    assert report.boot["addresses"] == str(len(new.addresses))
    assert report.boot["sysctl"] == "1"  # net.ipv4.vs.conntrack, from /etc/sysctl.d
    # The record loaded whole, run twice: the canary names it, its fwmark server is there.
    assert report.boot["canary"] == fingerprint_of(new)
    assert report.boot["mark"] == "yes"
    assert backends(report.update_probes["boot-added"]) == {"web-1", "web-2"}
    local = report.update_probes["boot-node-port"]
    assert backends(local) == {"web-1"} and seen_clients(local, "web-1") == {"10.0.0.100"}


def reply_sources(flows: list[str]) -> list[str]:
    """conntrack -L lines -> the reply direction's source (the real server) of each."""
    return [f.split("src=")[2].split()[0] for f in flows if f.count("src=") >= 2]


def test_udp_flows_to_a_removed_real_server_are_deleted_the_others_kept(report):
    before = reply_sources(report.conntrack.get("before", []))
    after = reply_sources(report.conntrack.get("after", []))
    gone = harness.UDP_ENDPOINTS[1]
    kept = harness.UDP_ENDPOINTS[0]
    # Both real servers had flows (round robin over six source ports)...
    assert gone in before and kept in before, report.conntrack
    # ...and after the update with svcops's cleanup only those to the live one remain.
    assert gone not in after, report.conntrack
    assert after.count(kept) == before.count(kept), report.conntrack
