"""Stale UDP conntrack entries (svcops.render.conntrack): which flows to delete, read back from a
node's live rules, and the real kernel deleting them.

The `root` test builds a throwaway network namespace with two local endpoint addresses,
loads svcops's rules for a UDP service with both, makes flows to its cluster IP that
the kernel DNATs to each, removes one endpoint from the site, and runs the commands:
the flows to the removed endpoint are gone, the others stay."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest
import render_fixtures as F
from netns import netns, ns_run  # noqa: E402
from render_fixtures import simulated_full_live  # noqa: E402
from udp_fixtures import CIP, DNS, DNS_TCP, SEL, SVC, UDP_LB, nft_rules, resolved, same

from svcops.render import nftables as nft_render  # noqa: E402
from svcops.render.conntrack import (
    UdpPort,
    conntrack_script,
    stale_conntrack,
    udp_ports,
    udp_ports_from_iptables,
    udp_ports_from_ipvsadm,
    udp_ports_from_nft,  # noqa: E402
)
from svcops.render.iptables import parse_iptables_save, render_nodes, restore_payload
from svcops.render.nftables_live import LIST_COMMAND, parse_nft_list  # noqa: E402
from svcops.site.model import ServicePort


def cmds(prev, new):
    return [" ".join(c) for c in stale_conntrack(prev, new)]


# --- the decision ----------------------------------------------------------------------


def test_udp_ports_keep_only_udp_with_every_address_clients_use():
    svc = F.service("dns", DNS, DNS_TCP, selector=SEL, type="LoadBalancer", external_ips=("198.51.100.7",))
    ports = udp_ports(resolved((svc,)))
    assert list(ports) == ["default/dns:dns"]
    p = ports["default/dns:dns"]
    assert p.addresses == (CIP, "198.51.100.7", "192.0.2.1")
    assert p.node_port == 30080
    assert p.endpoints == {"10.244.1.5", "10.244.2.5"}


def test_a_removed_endpoint_gets_its_flows_deleted_on_every_address_and_node_port():
    svc = F.service("dns", DNS, DNS_TCP, selector=SEL, type="NodePort", external_ips=("198.51.100.7",))
    before, after = resolved((svc,), ("node1", "node2")), resolved((svc,), ("node1",))
    assert cmds(before, after) == [
        f"-D -p udp --orig-dst {CIP} --dst-nat 10.244.2.5",
        "-D -p udp --orig-dst 198.51.100.7 --dst-nat 10.244.2.5",
        "-D -p udp --orig-port-dst 30080 --dst-nat 10.244.2.5",
    ]


def test_nothing_to_delete_when_nothing_changed_or_only_tcp_did():
    before = resolved((SVC,))
    assert cmds(before, before) == []
    tcp_only = F.service("web", F.HTTP)
    assert cmds(resolved((tcp_only,)), resolved((tcp_only,), ())) == []


def test_a_service_getting_its_first_endpoints_clears_the_flows_to_its_addresses():
    svc = F.service("dns", DNS, selector=SEL, type="NodePort")
    assert cmds(resolved((svc,), ()), resolved((svc,), ("node1",))) == [
        f"-D -p udp --orig-dst {CIP}",
        "-D -p udp --orig-port-dst 30080",
    ]
    # New service, with endpoints at once: the same (kube-proxy's "stale services").
    assert cmds([], resolved((svc,), ("node1",))) == [f"-D -p udp --orig-dst {CIP}", "-D -p udp --orig-port-dst 30080"]


def test_a_removed_service_clears_every_flow_to_where_it_was():
    assert cmds(resolved((SVC,)), []) == [f"-D -p udp --orig-dst {CIP}"]


def test_commands_name_the_previous_addresses_the_flows_were_made_to():
    prev = {"default/dns:dns": UdpPort("default/dns:dns", ("10.96.0.99",), None, frozenset({"10.244.1.5"}))}
    new = {"default/dns:dns": UdpPort("default/dns:dns", (CIP,), None, frozenset())}
    assert cmds(prev, new) == ["-D -p udp --orig-dst 10.96.0.99 --dst-nat 10.244.1.5"]


def test_internal_local_policy_sees_only_the_nodes_own_endpoints():
    svc = F.service("dns", DNS, selector=SEL, internal_traffic_policy="Local")
    ports = resolved((svc,))
    assert udp_ports(ports, "node2")["default/dns:dns"].endpoints == {"10.244.2.5"}
    assert udp_ports(ports, "node3")["default/dns:dns"].endpoints == frozenset()
    assert udp_ports(ports)["default/dns:dns"].endpoints == {"10.244.1.5", "10.244.2.5"}


def test_conntrack_script_tolerates_nothing_to_delete():
    script = conntrack_script([["-D", "-p", "udp", "--orig-dst", CIP]])
    assert "svcops_ct -D -p udp --orig-dst 10.96.0.10\n" in script
    assert '*" 0 flow entries have been deleted"*) return 0' in script
    assert conntrack_script([]) == ""


# --- the previous state, read back from the node's rules ---------------------------------

UDP_SCENARIOS = {
    "cluster-ip": (F.service("dns", DNS, DNS_TCP, selector=SEL),),
    "node-port": (F.service("dns", DNS, selector=SEL, type="NodePort"),),
    "load-balancer": (F.service("dns", DNS, selector=SEL, type="LoadBalancer", external_ips=("198.51.100.7",)),),
    "no-endpoints": (F.service("dns", DNS, selector={"app": "none"}, type="LoadBalancer", external_ips=("198.51.100.7",)),),
    "affinity": (F.service("dns", DNS, selector=SEL, session_affinity="ClientIP"),),
    "external-local": (F.service("dns", DNS, selector=SEL, type="NodePort", external_traffic_policy="Local"),),
    "internal-local": (F.service("dns", DNS, selector=SEL, internal_traffic_policy="Local"),),
    "unnamed": (F.service("dns", ServicePort("", "UDP", 53, 53), selector=SEL),),
}


@pytest.mark.parametrize("name", sorted(UDP_SCENARIOS))
@pytest.mark.parametrize("node", ["node1", "node2", "node3"])
def test_live_rules_read_back_as_what_was_rendered(name, node):
    services = UDP_SCENARIOS[name]
    ports = resolved(services)
    payload = restore_payload(render_nodes(F.CLUSTER, ports, ["node1", "node2", "node3"])[node])
    assert udp_ports_from_iptables(parse_iptables_save(payload)) == udp_ports(ports, node)


def test_an_apply_that_changes_nothing_deletes_nothing_on_any_node():
    for services in UDP_SCENARIOS.values():
        ports = resolved(services)
        rules = render_nodes(F.CLUSTER, ports, ["node1", "node2", "node3"])
        for node, r in rules.items():
            live = udp_ports_from_iptables(parse_iptables_save(restore_payload(r)))
            assert stale_conntrack(live, udp_ports(ports, node)) == []


# --- IPVS mode: the previous state is ipvsadm-save -n ------------------------------------


def ipvs_udp(services, on=("node1", "node2"), node="node1"):
    from svcops.render.ipvs import render_nodes as render_ipvs

    r = render_ipvs(F.CLUSTER, resolved(services, on), [(node, ("10.0.0.11",))])[node]
    return udp_ports_from_ipvsadm(r.ipvsadm, r.addresses, r.node_addresses)


def test_ipvs_udp_virtual_servers_stand_for_service_ports():
    svc = F.service("dns", DNS, DNS_TCP, selector=SEL, type="NodePort", external_ips=("198.51.100.7",))
    ports = ipvs_udp((svc,))
    # One per UDP virtual server: the cluster and external IPs by address, the node port
    # on the node's address by port; the TCP ones and foreign servers are not there.
    assert sorted(ports) == ["10.0.0.11:30080", f"{CIP}:53", "198.51.100.7:53"]
    assert ports[f"{CIP}:53"] == UdpPort(f"{CIP}:53", (CIP,), None, frozenset({"10.244.1.5", "10.244.2.5"}))
    assert ports["10.0.0.11:30080"].node_port == 30080 and ports["10.0.0.11:30080"].addresses == ()
    foreign = "-A -u 198.51.100.99:53 -s rr\n-a -u 198.51.100.99:53 -r 10.9.9.9:53 -m -w 1\n"
    assert udp_ports_from_ipvsadm(foreign, (CIP,), ("10.0.0.11",)) == {}


def test_ipvs_a_removed_real_server_gets_its_flows_deleted_once_per_address_and_node_port():
    svc = F.service("dns", DNS, selector=SEL, type="NodePort")
    before, after = ipvs_udp((svc,), ("node1", "node2")), ipvs_udp((svc,), ("node1",))
    assert cmds(before, after) == [
        "-D -p udp --orig-port-dst 30080 --dst-nat 10.244.2.5",
        f"-D -p udp --orig-dst {CIP} --dst-nat 10.244.2.5",
    ]
    assert cmds(after, after) == []


# --- the real kernel --------------------------------------------------------------------


def _have_tools() -> bool:
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("ip", "iptables-restore", "iptables-save", "conntrack"))


@pytest.mark.root
@pytest.mark.skipif(not _have_tools(), reason="needs root, ip, iptables and conntrack")
def test_kernel_flows_to_a_removed_endpoint_are_deleted_and_the_others_kept():
    ns = f"svcops-cttest-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")

    def run(*argv: str, stdin: str | None = None, check: bool = True) -> str:
        r = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 or not check, f"{argv}: {r.stderr}"
        return r.stdout

    def flows() -> dict[str, set[int]]:
        """endpoint -> client source ports of the UDP flows to the cluster IP."""
        out: dict[str, set[int]] = {}
        for line in run("conntrack", "-L", "-p", "udp", "--orig-dst", CIP, check=False).splitlines():
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            srcs = [kv.split("=", 1)[1] for kv in line.split() if kv.startswith("src=")]
            sports = [kv.split("=", 1)[1] for kv in line.split() if kv.startswith("sport=")]
            if f and len(srcs) == 2:
                out.setdefault(srcs[1], set()).add(int(sports[0]))  # reply source: the endpoint
        return out

    try:
        # Both endpoints are addresses of this namespace (a veth pair inside it), so the
        # DNATed datagrams are delivered locally and nothing leaves.
        run("ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        run("ip", "addr", "add", "10.244.1.5/24", "dev", "eth0")
        run("ip", "addr", "add", "10.244.2.5/24", "dev", "eth0")
        run("ip", "link", "set", "eth0", "up")
        run("ip", "route", "add", "10.96.0.0/12", "dev", "eth0")
        before = resolved((SVC,), ("node1", "node2"))
        run("iptables-restore", "--noflush", stdin=restore_payload(render_nodes(F.CLUSTER, before, ["node3"])["node3"]))
        # Datagrams from distinct source ports until both endpoints hold flows (bounded).
        sender = (
            "import socket, sys\n"
            "for i in range(int(sys.argv[1])):\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('10.244.1.5', 40000 + i))\n"
            f"    s.sendto(b'x', ('{CIP}', 53)); s.close()\n"
        )
        run(sys.executable, "-c", sender, "40")
        held = flows()
        assert set(held) == {"10.244.1.5", "10.244.2.5"}, held

        after = resolved((SVC,), ("node1",))  # dns-2 (10.244.2.5) leaves the site
        live = udp_ports_from_iptables(parse_iptables_save(run("iptables-save")))
        assert live == udp_ports(before, "node3")
        rules = render_nodes(F.CLUSTER, after, ["node3"])["node3"]
        run("iptables-restore", "--noflush", stdin=restore_payload(rules, parse_iptables_save(run("iptables-save"))))
        commands = stale_conntrack(live, udp_ports(after, "node3"))
        assert commands == [["-D", "-p", "udp", "--orig-dst", CIP, "--dst-nat", "10.244.2.5"]]
        run("sh", "-c", conntrack_script(commands))
        assert flows() == {"10.244.1.5": held["10.244.1.5"]}
        # A second run finds nothing to delete and still succeeds.
        run("sh", "-c", conntrack_script(commands))
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_nft_table_reads_back_as_the_udp_ports_it_was_rendered_from():
    ports = resolved((UDP_LB,), ("node1", "node2"))
    rules = nft_rules(ports)
    # The whole listing (what the operation reads): endpoints are the DNAT targets.
    live = simulated_full_live(rules)
    assert same(udp_ports_from_nft(live)) == same(udp_ports(ports, "node3"))
    assert udp_ports_from_nft(live)["default/dns:dns"].node_port == 30080


@pytest.mark.root
def test_nft_reader_on_a_real_kernels_listing():
    if os.geteuid() != 0 or not shutil.which("nft"):
        pytest.skip("needs root and nft")
    ports = resolved((UDP_LB,), ("node1", "node2"))
    rules = nft_rules(ports)
    with netns() as ns:
        ns_run(ns, "nft", "-f", "-", stdin=nft_render.full_payload(rules))
        text = subprocess.run(["ip", "netns", "exec", ns, *LIST_COMMAND], capture_output=True, text=True).stdout
    assert same(udp_ports_from_nft(parse_nft_list(text, full=True))) == same(udp_ports(ports, "node3"))
