"""Each fact's parser (pure): what `svcops.facts` makes of its command's output on a node.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import json

import pytest
import render_fixtures as F
from udp_fixtures import SVC, resolved

from svcops.facts.dns import DnsState, _state_command, parse_dns_state
from svcops.facts.ipvs import parse_ipvs_state
from svcops.facts.nftables import parse_nft_state
from svcops.facts.node import Address, parse_node_state
from svcops.render import dns
from svcops.render.iptables import parse_iptables_save, render_nodes, restore_payload
from svcops.render.ipvs import parse_ipvsadm_save


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


def test_parse_ipvs_state():
    lines = [
        "missing kernel module ip_vs (IP Virtual Server)",
        "module dummy",
        "sysctl net.ipv4.vs.conntrack 1",
        "link",
        "addr 10.96.0.10/32",
        "ipset create SVCOPS-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 262144",
        "ipset add SVCOPS-CLUSTER-IP 10.96.0.10,tcp:80",
        "vs -A -t 10.96.0.10:80 -s rr",
        "vs -a -t 10.96.0.10:80 -r 10.0.0.11:80 -m -w 1",
    ]
    st = parse_ipvs_state(lines)
    assert st.missing == ("kernel module ip_vs (IP Virtual Server)",)
    assert st.present and st.live.link and st.live.addresses == ("10.96.0.10",)
    assert st.live.members["SVCOPS-CLUSTER-IP"] == frozenset({"10.96.0.10,tcp:80"})
    assert st.live.sysctls == {"net.ipv4.vs.conntrack": "1"} and "dummy" in st.live.modules
    assert parse_ipvsadm_save(st.live.ipvsadm)["-t 10.96.0.10:80"][1] == {"10.0.0.11:80": "-m -w 1"}
    assert not parse_ipvs_state([]).present


def test_fact_output_is_parsed_with_resolv_conf_byte_for_byte():
    resolv = "# dhcp\nnameserver 10.0.0.1  \n\nsearch a.test"  # trailing spaces, no final newline
    lines = [
        "installed yes",
        "running yes",
        f"file {'a' * 64} {dns.CONFIG_FILE}",
        f"file {'b' * 64} /etc/powerdns/svcops/cluster.local.zone",
        "domain corp.test.",
        "link ../run/systemd/resolve/stub-resolv.conf",
        "resolv " + base64.b64encode(resolv.encode()).decode(),
    ]
    state = parse_dns_state(lines)
    assert state.installed and state.running and not state.systemd
    assert state.files == {dns.CONFIG_FILE: "a" * 64, "/etc/powerdns/svcops/cluster.local.zone": "b" * 64}
    assert state.resolv == resolv
    assert state.resolv_link == "../run/systemd/resolve/stub-resolv.conf"
    assert state.domain == "corp.test"
    assert parse_dns_state(["domain "]) == DnsState()


def test_fact_output_says_which_process_is_the_server_and_whether_it_is_supervised():
    lab = parse_dns_state(["installed yes", "pid 812", "supervised yes"])
    assert lab.pid == 812 and lab.supervised and lab.hung  # there, not answering
    unit = parse_dns_state(["systemd yes", "running yes", "unit MainPID=77", "unit ActiveState=active"])
    assert unit.pid == 77 and unit.supervised and not unit.hung
    stopped = parse_dns_state(["systemd yes", "unit ActiveState=inactive", "unit MainPID=0"])
    assert stopped.pid == 0 and not stopped.supervised and not stopped.present


def test_the_fact_bounds_what_can_hang_and_asks_no_resolver():
    command = _state_command()
    assert f"timeout -k 1 {dns.PING_DEADLINE} rec_control " in command
    assert "timeout -k 1 5 systemctl show" in command
    # `hostname -d` looks the host name up, through the very server being checked.
    assert "hostname" not in command and "uname -n" in command


# --- on the command line: ``pyinfra INVENTORY fact svcops.facts.node.SvcopsNodeState`` ----


def _json_as_pyinfra_prints_it(value) -> object:
    """pyinfra's CLI prints a fact's value with its own encoder (which calls ``to_json``)."""
    from pyinfra_cli.util import json_encode

    return json.loads(json.dumps(value, default=json_encode))


def test_every_facts_value_prints_as_json_on_pyinfras_command_line():
    rules = render_nodes(F.CLUSTER, resolved((SVC,)), ["node1"])["node1"]
    iptables = _json_as_pyinfra_prints_it(parse_iptables_save(restore_payload(rules)))
    assert "SVCOPS-SERVICES" in iptables["tables"]["nat"]["chains"]
    assert iptables["tables"]["filter"]["foreign_refs"] == []
    node = _json_as_pyinfra_prints_it(parse_node_state(["ip_forward 1", 'addresses [{"ifname":"eth0","addr_info":[{"family":"inet","local":"10.0.0.11","prefixlen":24}]}]']))
    assert node["addresses"] == [{"address": "10.0.0.11", "prefixlen": 24, "interface": "eth0", "label": "eth0"}]
    ipvs = _json_as_pyinfra_prints_it(parse_ipvs_state(["module ip_vs", "module dummy", "ipset create SVCOPS-CLUSTER-IP hash:ip,port family inet",
                                                        "ipset add SVCOPS-CLUSTER-IP 10.96.0.10,udp:53"]))
    assert ipvs["live"]["modules"] == ["dummy", "ip_vs"] and ipvs["live"]["members"] == {"SVCOPS-CLUSTER-IP": ["10.96.0.10,udp:53"]}
    nft = _json_as_pyinfra_prints_it(parse_nft_state(["svcops-nft boot ", "table ip svcops {", "}"]))
    assert nft["available"] is True and nft["live"]["exists"] is True
    dns_state = _json_as_pyinfra_prints_it(parse_dns_state(["installed yes", "domain corp.test"]))
    assert dns_state["installed"] is True and dns_state["domain"] == "corp.test"


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_the_fact_prints_a_line_on_a_bare_node():
    """pyinfra takes a fact command that prints nothing for the fact's default (None:
    "could not read the node's DNS state"): on a node with nothing of DNS, no
    resolv.conf and a host name without a dot, it still prints its domain line."""
    hide = "mount -t tmpfs tmpfs /etc && mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /usr/sbin"
    r = subprocess.run(
        ["unshare", "-m", "-u", "--propagation", "private", "sh", "-c", f'{hide} && hostname bare && exec sh -c "$0"', _state_command()],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "domain \n"
    assert parse_dns_state(r.stdout.splitlines()) == DnsState() and not DnsState().present
