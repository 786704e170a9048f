"""The ifupdown renderer: /etc/network/interfaces.d/ stanzas, compared with golden files.

Regenerate the golden files after an intended change (and review the diff) with:

    SVCOPS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/render/test_render_ifupdown.py
"""

from __future__ import annotations

import pytest
from golden import check_golden
from paths import GOLDEN as GOLDEN_DIR

from svcops.render.ifupdown import render_interfaces
from svcops.site.model import Cluster, Node, NodeNetwork

GOLDEN = GOLDEN_DIR / "ifupdown"

FULL = Cluster(node_network=NodeNetwork("10.0.0.0/24", "10.0.0.1", ("10.0.0.1", "10.0.0.2")))

CASES = {
    "full": (Node("node1", "10.0.0.11"), FULL, "10.0.0.11"),
    "other-interface": (Node("edge", "edge.example", interface="enp3s0"), FULL, "10.0.0.200"),
    "no-gateway-no-dns": (Node("node2", "10.0.8.2"), Cluster(node_network=NodeNetwork("10.0.8.0/21")), "10.0.8.2"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_interfaces(name):
    node, cluster, address = CASES[name]
    text = render_interfaces(node, cluster, address)
    path = GOLDEN / f"{name}.txt"
    check_golden(path, text)


def test_stanza_reads_as_debian_expects():
    lines = render_interfaces(*CASES["full"]).splitlines()
    body = [ln for ln in lines if not ln.startswith("#")]
    assert lines[0].startswith("# Written by svcops")
    assert body == [
        "auto eth0",
        "iface eth0 inet static",
        "    address 10.0.0.11/24",
        "    gateway 10.0.0.1",
        "    dns-nameservers 10.0.0.1 10.0.0.2",
    ]


def test_prefix_length_comes_from_the_node_network():
    assert "    address 10.0.8.2/21" in render_interfaces(*CASES["no-gateway-no-dns"]).splitlines()


def test_nothing_without_node_network_or_address():
    node = Node("node1", "10.0.0.11")
    assert render_interfaces(node, Cluster(), "10.0.0.11") == ""
    assert render_interfaces(node, FULL, None) == ""


# --- values that validation should have stopped: refused, never written -----------


@pytest.mark.parametrize(
    "node",
    [
        Node("node1", "10.0.0.11", interface="eth0\nup touch /tmp/pwned"),
        Node("node1", "10.0.0.11", interface="eth0 inet"),
        Node("node1", "10.0.0.11", interface="eth0:svc"),
        Node("node1", "10.0.0.11", interface="$(reboot)"),
        Node("node1\niface lo inet loopback\n    up touch /tmp/pwned", "10.0.0.11"),
        Node("node1\\", "10.0.0.11"),  # a backslash would continue the comment onto the next line
    ],
    ids=["iface-newline", "iface-space", "iface-colon", "iface-shell", "name-stanza", "name-backslash"],
)
def test_a_name_that_is_not_one_raises_instead_of_being_written(node):
    with pytest.raises(ValueError, match="cannot go into an ifupdown file"):
        render_interfaces(node, FULL, "10.0.0.11")


@pytest.mark.parametrize("address", ["10.0.0.11\n", "10.0.0.11\nup reboot", "10.0.0.11 ", "010.0.0.11"])
def test_an_address_that_is_not_one_raises(address):
    with pytest.raises(Exception):
        render_interfaces(Node("node1", "10.0.0.11"), FULL, address)


def test_the_longest_names_make_one_stanza_and_nothing_else():
    name = ".".join(["h" * 63] * 3 + ["h" * 61])
    text = render_interfaces(Node(name, "10.0.0.11", interface="enx001122334455"), FULL, "10.0.0.11")
    lines = text.splitlines()
    assert [ln for ln in lines if ln.startswith("#")] == lines[:2] and name in lines[0]
    assert [ln.split()[0] for ln in lines[2:]] == ["auto", "iface", "address", "gateway", "dns-nameservers"]
    assert lines[2:4] == ["auto enx001122334455", "iface enx001122334455 inet static"]
    assert not any(ln.rstrip().endswith("\\") for ln in lines)
