"""The IPVS renderer: golden payloads, kube-proxy IPVS-mode semantics, real ipset/iptables.

Golden files: tests/golden/ipvs/<scenario>.txt hold, for the scenarios of
tests/render_fixtures.py, the dummy interface's addresses, the ``ipvsadm -R`` input and
the ``ipset restore`` input one node gets; tests/golden/ipvs/iptables.txt holds the
``iptables-restore --noflush`` input, the same for every node and scenario. After an
intended change, regenerate them and review the diff:

    SVCOPS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/render/test_render_ipvs.py

Tests marked `root` load the payloads with the real ``ipset`` and ``iptables-restore``
in throwaway network namespaces (this machine's kernel has no IPVS: tests/qemu/ proves
the ``ipvsadm`` part in an emulated Debian kernel, see tests/qemu/test_ipvs_qemu.py).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import pytest
import render_fixtures as F
from golden import check_golden
from netns import netns, ns_run
from paths import GOLDEN as GOLDEN_DIR

from svcops.compile.endpoints import resolve
from svcops.render import chains
from svcops.render import iptables as ipt
from svcops.render.ipvs import (
    DUMMY_INTERFACE,
    IPVS_JUMPS,
    SCHEDULERS,
    SETS,
    ipset_destroy_payload,
    ipvsadm_update,
    parse_ipvsadm_save,
    render_nodes,
)
from svcops.site.model import SCHEDULER_ANNOTATION, Endpoint

GOLDEN = GOLDEN_DIR / "ipvs"
NODES = [("node1", ("10.0.0.11",)), ("node2", ("10.0.0.12",)), ("node3", ("10.0.0.13",))]

# Section markers of a golden file (tests/qemu/ reads them too).
ADDRESSES, IPVSADM, IPSET = "## addresses", "## ipvsadm -R", "## ipset restore"


def resolved(name: str):
    services, manual, node = F.SCENARIOS[name]
    ports, _ = resolve(F.site(services, manual), F.nodes(), F.allocations(services))
    return ports, node


def render_scenario(name: str, nodes=NODES, cluster=F.CLUSTER):
    ports, node = resolved(name)
    return render_nodes(cluster, ports, nodes), node


def golden_text(name: str) -> str:
    rules, node = render_scenario(name)
    r = rules[node]
    return (
        f"# svcops golden IPVS payloads: scenario {name}, node {node} (tests/render_fixtures.py)\n"
        f"{ADDRESSES} ({DUMMY_INTERFACE})\n" + "".join(f"{a}/32\n" for a in r.addresses)
        + f"{IPVSADM}\n{r.ipvsadm}"
        + f"{IPSET}\n{r.ipset}"
    )  # fmt: skip


def sections(text: str) -> dict[str, str]:
    """A golden file's sections, by marker ("## ipset restore" -> its lines)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            current = out.setdefault(line.split(" (")[0].strip(), [])
        elif current is not None:
            current.append(line)
    return {k: "".join(v) for k, v in out.items()}


def virtual_servers(text: str) -> dict[str, tuple[str, list[str]]]:
    """{"-t 10.96.0.10:80": ("-s rr", [real servers])} from an ipvsadm payload."""
    return {vs: (opts, sorted(reals)) for vs, (opts, reals) in parse_ipvsadm_save(text).items()}


# --- golden files -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(F.SCENARIOS))
def test_golden_payloads(name):
    path = GOLDEN / f"{name}.txt"
    text = golden_text(name)
    check_golden(path, text)


def test_golden_iptables_is_the_same_for_every_node_and_scenario():
    path = GOLDEN / "iptables.txt"
    payloads = {r.iptables for name in F.SCENARIOS for r in render_scenario(name)[0].values()}
    assert len(payloads) == 1
    (text,) = payloads
    check_golden(path, text)


def test_every_golden_file_has_a_scenario():
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted([*F.SCENARIOS, "iptables"])


# --- what the rules mean ------------------------------------------------------------


def test_cluster_ip_virtual_server_has_every_endpoint_masqueraded_with_weight_one():
    rules, node = render_scenario("cluster-ip")
    r = rules[node]
    assert r.addresses == ("10.96.0.10",)
    assert virtual_servers(r.ipvsadm) == {
        "-t 10.96.0.10:80": ("-s rr", ["10.0.0.11:80", "10.244.2.7:8080"]),
    }
    assert parse_ipvsadm_save(r.ipvsadm)["-t 10.96.0.10:80"][1] == {
        "10.0.0.11:80": "-m -w 1",
        "10.244.2.7:8080": "-m -w 1",
    }
    assert r.set_entries()["SVCOPS-CLUSTER-IP"] == ["10.96.0.10,tcp:80"]
    assert r.set_entries()["SVCOPS-IPVS-IPS"] == ["10.96.0.10"]


def test_node_port_is_a_virtual_server_per_node_address():
    nodes = [("node1", ("10.0.0.11", "192.168.7.11", "fe80::1", "node1.example")), ("node3", ("10.0.0.13",))]
    rules, _ = render_scenario("node-port", nodes=nodes)
    vs1, vs3 = virtual_servers(rules["node1"].ipvsadm), virtual_servers(rules["node3"].ipvsadm)
    eps = ["10.0.0.11:80", "10.244.2.7:8080"]
    assert vs1 == {
        "-t 10.96.0.10:80": ("-s rr", eps),
        "-t 10.0.0.11:30080": ("-s rr", eps),
        "-t 192.168.7.11:30080": ("-s rr", eps),
    }
    assert set(vs3) == {"-t 10.96.0.10:80", "-t 10.0.0.13:30080"}
    # Node addresses carry node ports, but are never put on the dummy interface.
    assert rules["node1"].addresses == ("10.96.0.10",)
    assert rules["node1"].set_entries()["SVCOPS-NODE-PORT-TCP"] == ["30080"]


def test_load_balancer_and_external_ips_get_virtual_servers_and_dummy_addresses():
    rules, node = render_scenario("load-balancer")
    r = rules[node]
    assert set(virtual_servers(r.ipvsadm)) == {"-t 10.96.0.10:80", "-t 192.0.2.1:80", "-t 10.0.0.11:30080"}
    assert r.addresses == ("10.96.0.10", "192.0.2.1")
    assert r.set_entries()["SVCOPS-LOAD-BALANCER"] == ["192.0.2.1,tcp:80"]
    assert "SVCOPS-LOAD-BALANCER-FW" not in r.set_entries()
    rules, node = render_scenario("external-ips")
    r = rules[node]
    assert set(virtual_servers(r.ipvsadm)) == {"-t 10.96.0.10:80", "-t 198.51.100.7:80"}
    assert r.addresses == ("10.96.0.10", "198.51.100.7")
    assert r.set_entries()["SVCOPS-EXTERNAL-IP"] == ["198.51.100.7,tcp:80"]


def test_an_external_ip_that_is_a_node_address_stays_off_that_nodes_dummy_interface():
    services = (F.service("web", F.HTTP, external_ips=("10.0.0.12",)),)
    ports, _ = resolve(F.site(services), F.nodes(), F.allocations(services))
    rules = render_nodes(F.CLUSTER, ports, NODES)
    assert rules["node2"].addresses == ("10.96.0.10",)
    assert rules["node1"].addresses == ("10.0.0.12", "10.96.0.10")
    assert "-t 10.0.0.12:80" in virtual_servers(rules["node2"].ipvsadm)


def test_scheduler_default_and_per_service_annotation():
    ports, node = resolved("multi-port")
    rules = render_nodes(replace(F.CLUSTER, ipvs_scheduler="wlc"), ports, NODES)[node]
    assert {o for o, _ in virtual_servers(rules.ipvsadm).values()} == {"-s wlc"}
    for scheduler in SCHEDULERS:
        svc = replace(ports[0].service, annotations={SCHEDULER_ANNOTATION: scheduler})
        one = render_nodes(F.CLUSTER, [replace(p, service=svc) for p in ports], NODES)[node]
        assert {o for o, _ in virtual_servers(one.ipvsadm).values()} == {f"-s {scheduler}"}
    bad = replace(ports[0].service, annotations={SCHEDULER_ANNOTATION: "random"})
    with pytest.raises(ValueError, match="default/web.*'random'"):
        render_nodes(F.CLUSTER, [replace(ports[0], service=bad)], NODES)


def test_client_ip_affinity_is_persistence_with_its_timeout():
    rules, node = render_scenario("client-ip-affinity")
    assert virtual_servers(rules[node].ipvsadm)["-t 10.96.0.10:80"][0] == "-s rr -p 600"


def test_udp_and_sctp_flags_and_sets():
    rules, node = render_scenario("udp")
    assert set(virtual_servers(rules[node].ipvsadm)) == {"-u 10.96.0.10:53", "-t 10.96.0.10:53"}
    assert sorted(rules[node].set_entries()["SVCOPS-CLUSTER-IP"]) == ["10.96.0.10,tcp:53", "10.96.0.10,udp:53"]
    rules, node = render_scenario("sctp")
    r = rules[node]
    assert set(virtual_servers(r.ipvsadm)) == {"--sctp-service 10.96.0.10:3868", "--sctp-service 10.0.0.11:30080"}
    # SCTP node ports are node address,sctp:port entries (kube-proxy's SCTP hash set).
    assert r.set_entries()["SVCOPS-NODE-PORT-SCTP"] == ["10.0.0.11,sctp:30080"]
    assert "SVCOPS-NODE-PORT-TCP" not in r.set_entries()


def test_external_traffic_policy_local_keeps_external_servers_local():
    rules, _ = render_scenario("external-local-with-endpoints")
    on1, on3 = rules["node1"], rules["node3"]
    vs1 = virtual_servers(on1.ipvsadm)
    assert vs1["-t 10.0.0.11:30080"][1] == ["10.0.0.11:80"]
    assert vs1["-t 10.96.0.10:80"][1] == ["10.0.0.11:80", "10.244.2.7:8080"]  # internal: Cluster
    assert on1.set_entries()["SVCOPS-NODE-PORT-LOCAL-TCP"] == ["30080"]
    assert on1.set_entries()["SVCOPS-NODE-PORT-TCP"] == ["30080"]
    # node3 runs no endpoint: no node-port server, and its node port drops.
    assert set(virtual_servers(on3.ipvsadm)) == {"-t 10.96.0.10:80"}
    assert on3.set_entries()["SVCOPS-NO-LOCAL-ENDPOINTS"] == ["10.0.0.13,tcp:30080"]
    assert "SVCOPS-NODE-PORT-TCP" not in on3.set_entries()


def test_internal_traffic_policy_local_keeps_the_cluster_ip_local():
    rules, _ = render_scenario("internal-local-with-endpoints")
    assert virtual_servers(rules["node2"].ipvsadm) == {"-t 10.96.0.10:80": ("-s rr", ["10.244.2.7:8080"])}
    on3 = rules["node3"]
    assert on3.ipvsadm == ""
    assert on3.set_entries()["SVCOPS-NO-LOCAL-ENDPOINTS"] == ["10.96.0.10,tcp:80"]
    assert on3.addresses == ("10.96.0.10",)  # still local, so that the drop applies


def test_no_endpoints_means_no_virtual_server_and_a_reject_on_every_address():
    rules, node = render_scenario("no-endpoints")
    r = rules[node]
    assert r.ipvsadm == ""
    assert sorted(r.set_entries()["SVCOPS-NO-ENDPOINTS"]) == [
        "10.0.0.11,tcp:30080", "10.96.0.10,tcp:80", "192.0.2.1,tcp:80",
    ]  # fmt: skip
    assert r.addresses == ("10.96.0.10", "192.0.2.1")
    assert "SVCOPS-CLUSTER-IP" not in r.set_entries()


def test_source_ranges_fill_the_firewall_sets():
    rules, node = render_scenario("source-ranges")
    e = rules[node].set_entries()
    assert e["SVCOPS-LOAD-BALANCER-FW"] == ["192.0.2.1,tcp:80"]
    assert e["SVCOPS-LB-SOURCE-CIDR"] == ["192.0.2.1,tcp:80,203.0.113.0/24", "192.0.2.1,tcp:80,198.51.100.1"]
    ports, _ = resolved("source-ranges")
    svc = replace(ports[0].service, load_balancer_source_ranges=("203.0.113.0/24", "0.0.0.0/0"))
    open_ = render_nodes(F.CLUSTER, [replace(ports[0], service=svc)], NODES)[node].set_entries()
    assert "SVCOPS-LOAD-BALANCER-FW" not in open_ and "SVCOPS-LB-SOURCE-CIDR" not in open_


def test_dns_only_services_render_nothing():
    for name in ("external-name", "headless"):
        rules, node = render_scenario(name)
        r = rules[node]
        assert r.ipvsadm == "" and r.addresses == ()
        assert r.set_entries() == {}


def test_hairpin_set_holds_this_nodes_endpoints_only():
    rules, _ = render_scenario("cluster-ip")
    assert rules["node1"].set_entries()["SVCOPS-LOOP-BACK"] == ["10.0.0.11,tcp:80,10.0.0.11"]
    assert rules["node2"].set_entries()["SVCOPS-LOOP-BACK"] == ["10.244.2.7,tcp:8080,10.244.2.7"]
    assert "SVCOPS-LOOP-BACK" not in rules["node3"].set_entries()


def test_manual_endpoints_outside_every_node_are_real_servers_too():
    rules, node = render_scenario("manual-endpoints")
    vs = virtual_servers(rules[node].ipvsadm)
    assert vs == {"-t 10.96.0.10:5432": ("-s rr", ["10.0.0.12:5432", "203.0.113.50:5432"])}


def test_names_fit_the_kernel_limits():
    assert len(DUMMY_INTERFACE) <= 15
    for s in SETS:
        assert s.name.startswith("SVCOPS-") and len(s.name + "-T") <= 31
    rules, node = render_scenario("source-ranges")
    names = rules[node].iptables_rules.nat.chain_names() + rules[node].iptables_rules.filter.chain_names()
    assert all(n.startswith("SVCOPS-") and len(n) <= chains.MAX_CHAIN for n in names)


def test_nodes_share_fragments():
    nodes = [*NODES, ("node4", ("10.0.0.14",))]
    rules, _ = render_scenario("external-local-with-endpoints", nodes=nodes)
    n3, n4 = rules["node3"], rules["node4"]
    assert all(a is b for a, b in zip(n3._ipvs, n4._ipvs, strict=True))
    assert all(a is b for a, b in zip(n3._ipvs_templates, n4._ipvs_templates, strict=True))
    assert n3.iptables_rules.nat is n4.iptables_rules.nat
    assert n3.ipvsadm.replace("10.0.0.13", "10.0.0.14") == n4.ipvsadm


def test_many_services_render_every_endpoint_once_per_virtual_server():
    base, node = resolved("node-port")
    ports = []
    for i in range(300):
        svc = replace(base[0].service, name=f"web-{i}")
        eps = tuple(Endpoint(f"10.244.{i // 200}.{i % 200 + j}", 8080, f"node{j % 3 + 1}") for j in range(5))
        ports.append(replace(base[0], service=svc, cluster_ip=f"10.96.{i // 250}.{i % 250 + 1}", node_port=30000 + i, endpoints=eps))
    r = render_nodes(F.CLUSTER, ports, NODES)["node2"]
    vs = virtual_servers(r.ipvsadm)
    assert len(vs) == 600  # a cluster IP and a node port each
    assert all(len(reals) == 5 for _, reals in vs.values())
    assert len(r.addresses) == 300 and len(set(r.set_entries()["SVCOPS-NODE-PORT-TCP"])) == 300


# --- applying to a live node --------------------------------------------------------


def test_ipvsadm_update_edits_only_what_changed_and_only_svcops_servers():
    old, node = render_scenario("multi-port")
    new, _ = render_scenario("client-ip-affinity")
    foreign = "-A -t 172.16.0.1:443 -s wlc\n-a -t 172.16.0.1:443 -r 172.16.0.2:443 -g -w 1\n"
    live = foreign + old[node].ipvsadm
    edit = ipvsadm_update(new[node], live)
    lines = edit.splitlines()
    assert "-E -t 10.96.0.10:80 -s rr -p 600" in lines
    assert "-D -t 10.96.0.10:9100" in lines and "-D -t 10.0.0.11:30080" in lines and "-D -t 10.0.0.11:30081" in lines
    assert not [ln for ln in lines if "172.16.0.1" in ln]
    assert not [ln for ln in lines if ln.startswith("-a ")]  # the real servers stay as they are
    assert ipvsadm_update(new[node], foreign + new[node].ipvsadm) == ""
    assert ipvsadm_update(new[node], "") == new[node].ipvsadm  # a fresh node gets it all


def test_ipvsadm_update_deletes_a_deleted_services_server_by_the_dummy_interfaces_addresses():
    ports, node = resolved("cluster-ip")
    gone = replace(ports[0], service=replace(ports[0].service, name="old"), cluster_ip="10.96.0.99")
    old = render_nodes(F.CLUSTER, [*ports, gone], NODES)[node]
    new = render_nodes(F.CLUSTER, ports, NODES)[node]
    assert "10.96.0.99" in old.addresses and "10.96.0.99" not in new.addresses
    assert ipvsadm_update(new, old.ipvsadm) == ""  # not known to be svcops's: left alone
    assert ipvsadm_update(new, old.ipvsadm, [f"{a}/32" for a in old.addresses]) == "-D -t 10.96.0.99:80\n"


def test_switching_from_iptables_mode_removes_its_chains_and_jumps():
    ports, node = resolved("source-ranges")
    before = ipt.restore_payload(ipt.render_nodes(F.CLUSTER, ports, ["node1"])["node1"])
    rules = render_nodes(F.CLUSTER, ports, NODES)[node]
    payload = ipt.restore_payload(rules.iptables_rules, ipt.parse_iptables_save(before))
    after = ipt.parse_iptables_save(before + payload)
    clean = ipt.parse_iptables_save(rules.iptables)
    for table in ("filter", "nat"):
        assert after.table(table).chains == clean.table(table).chains
        assert after.table(table).jumps == clean.table(table).jumps
    assert "-X SVCOPS-NODEPORTS" in payload and "-X SVCOPS-EXTERNAL-SERVICES" in payload


def test_ipset_destroy_payload_names_svcops_sets_only():
    assert ipset_destroy_payload(["SVCOPS-CLUSTER-IP", "f2b-sshd"]) == "destroy SVCOPS-CLUSTER-IP\n"
    assert ipset_destroy_payload().count("destroy SVCOPS-") == len(SETS)


# --- real ipset and iptables, in throwaway network namespaces -------------------------


def _have_tools() -> bool:
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("ip", "ipset", "iptables-restore", "iptables-save"))


root = pytest.mark.skipif(not _have_tools(), reason="needs root, ip, ipset and iptables")


def saved_entries(ns: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ln in ns_run(ns, "ipset", "save").splitlines():
        parts = ln.split(" ")
        if parts[0] == "create":
            out.setdefault(parts[1], [])
        elif parts[0] == "add":
            out[parts[1]].append(parts[2])
    return out


@pytest.mark.root
@root
@pytest.mark.parametrize("name", sorted(F.SCENARIOS))
def test_golden_payloads_load_into_ipset_and_iptables_and_read_back(name):
    golden = sections((GOLDEN / f"{name}.txt").read_text())
    iptables_payload = (GOLDEN / "iptables.txt").read_text()
    rules, node = render_scenario(name)
    with netns() as ns:
        ns_run(ns, "ipset", "restore", stdin=golden[IPSET])
        ns_run(ns, "iptables-restore", "--test", "--noflush", stdin=iptables_payload)
        ns_run(ns, "iptables-restore", "--noflush", stdin=iptables_payload)
        # Again, now that rules use the sets: every set is swapped, none is destroyed.
        ns_run(ns, "ipset", "restore", stdin=golden[IPSET])
        entries = saved_entries(ns)
        assert sorted(entries) == sorted(s.name for s in SETS)  # no temporary set is left
        want = rules[node].set_entries()
        for s in SETS:
            assert sorted(entries[s.name]) == sorted(want.get(s.name, [])), s.name
        live = ipt.parse_iptables_save(ns_run(ns, "iptables-save"))
        expected = ipt.parse_iptables_save(iptables_payload)
        for table in ("filter", "nat"):
            assert live.table(table).chains == expected.table(table).chains
            assert live.table(table).jumps == expected.table(table).jumps
        again = ipt.restore_payload(rules[node].iptables_rules, live)
        assert not [ln for ln in again.splitlines() if ln.startswith(("-I ", "-D ", "-X "))]


@pytest.mark.root
@root
def test_switching_modes_for_real_leaves_nothing_of_the_other_behind():
    ports, node = resolved("source-ranges")
    iptables_rules = ipt.render_nodes(F.CLUSTER, ports, ["node1"])["node1"]
    rules = render_nodes(F.CLUSTER, ports, NODES)[node]
    with netns() as ns:
        ns_run(ns, "iptables-restore", "--noflush", stdin=ipt.restore_payload(iptables_rules))
        # iptables -> ipvs
        ns_run(ns, "ipset", "restore", stdin=rules.ipset)
        live = ipt.parse_iptables_save(ns_run(ns, "iptables-save"))
        ns_run(ns, "iptables-restore", "--noflush", stdin=ipt.restore_payload(rules.iptables_rules, live))
        text = ns_run(ns, "iptables-save")
        assert "SVCOPS-SVC-" not in text and "SVCOPS-NODEPORTS" not in text
        assert {j.line for j in IPVS_JUMPS} == {
            ln for ln in text.splitlines() if ln.startswith("-A ") and ln.split()[1].isupper() and "-j SVCOPS-" in ln
            and not ln.split()[1].startswith("SVCOPS-")
        }
        # ipvs -> iptables: the rules first, then the sets nothing uses any more.
        live = ipt.parse_iptables_save(text)
        ns_run(ns, "iptables-restore", "--noflush", stdin=ipt.restore_payload(iptables_rules, live))
        ns_run(ns, "ipset", "restore", stdin=ipset_destroy_payload())
        assert saved_entries(ns) == {}
        text = ns_run(ns, "iptables-save")
        assert "match-set" not in text and "SVCOPS-IPVS-FILTER" not in text
