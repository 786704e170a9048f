"""`svcops render --mode` and `--only`: each payload of a proxy mode, as a node would get it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from modes_fixtures import EXAMPLE, INVENTORY, root
from netns import netns

from svcops.cli import main
from svcops.render.ipvs import DUMMY_INTERFACE


@pytest.fixture
def site(tmp_path: Path) -> Path:
    dst = tmp_path / "site"
    shutil.copytree(EXAMPLE, dst)
    return dst


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_render_mode_prints_each_payload_of_the_mode(capsys, site):
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--mode", "nftables", str(site))
    assert code == 0
    assert "proxy mode nftables" in out and "# ==> nft -f payload for node1" in out
    assert "add table ip svcops" in out and "address 192.168.36.11/24" in out
    assert "iptables-restore" not in out
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--mode", "ipvs", str(site))
    assert code == 0
    for heading in ("sysctl settings", f"addresses of the dummy interface {DUMMY_INTERFACE}", "ipset restore", "iptables-restore", "ipvsadm -R"):
        assert f"# ==> {heading}" in out, heading
    assert "-A -t 10.1.11.83:8000 -s rr" in out  # the walkthrough's cluster IP as a virtual server
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node1", str(site))
    assert "proxy mode iptables" in out and "-d 10.1.11.83/32" in out  # the site's own mode


def test_render_only_a_part_of_another_mode_implies_it_or_is_an_error(capsys, site):
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--only", "ipvsadm", str(site))
    assert code == 0 and out.startswith("-A -t ")
    code, out, err = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--mode", "iptables", "--only", "nftables", str(site))
    assert code == 1 and "--only nftables is part of nftables mode" in err and out == ""
    # In nftables mode svcops has no iptables rules: the iptables part is empty.
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--mode", "nftables", "--only", "iptables", str(site))
    assert code == 0 and "SVCOPS-" not in out


@root
@pytest.mark.root
def test_render_only_nftables_passes_nft_check(capsys, site):
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node2", "--only", "nftables", str(site))
    assert code == 0
    with netns() as ns:
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"], input=out, text=True, capture_output=True)
        assert r.returncode == 0, r.stderr
