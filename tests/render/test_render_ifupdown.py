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
