"""End to end: switching a site's proxy mode and applying leaves nothing of the old
mode behind (iptables <-> nftables, on a real 3-node lab, with traffic), and IPVS mode
on nodes that cannot do IPVS (the lab shares this machine's kernel: no ip_vs) fails
cleanly, naming what is missing, and changes nothing.

Its own lab (module scope), brought up and down around this module.
"""

from __future__ import annotations

import pytest
from labkit import (
    ADDRESS,
    INVENTORY,
    NODES,
    SVCOPS,
    apply,
    backends,
    curl,
    iptables_save,
    make_site,
    nft_table,
    results,
    run,
    sh,
    ssh_ok,
)

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab")]

CLUSTER_IP = "10.1.11.83"  # the walkthrough's my-deploy, port 8000
NODE_PORT = 30001
ALL = set(ADDRESS.values())


def files(node: str) -> set[str]:
    return set(sh(node, "ls /etc/svcops").split())


def serves(node: str = "node1") -> None:
    assert set(backends(curl(node, f"http://{CLUSTER_IP}:8000/", 30))) == ALL
    assert set(backends(curl("client", f"http://{ADDRESS['node2']}:{NODE_PORT}/", 30))) == ALL


def test_iptables_to_nftables_and_back_leaves_nothing_of_the_old_mode(tmp_path):
    site = make_site(tmp_path / "ipt", {}, mode="iptables")
    apply(site)
    for n in NODES:
        assert "SVCOPS-SVC-" in iptables_save(n) and nft_table(n) == ""
        assert "iptables.d" in files(n) and "rules.v4" not in files(n) and "rules.nft" not in files(n)
    serves()

    site = make_site(tmp_path / "nft", {}, mode="nftables")
    r = apply(site)
    assert set(results(r).values()) == {"changed"}
    for n in NODES:
        save = iptables_save(n)
        assert "SVCOPS-" not in save, save  # no chain and no jump left
        assert "chain services" in nft_table(n)
        assert "nft.d" in files(n) and "rules.nft" not in files(n) and "rules.v4" not in files(n) and "iptables.d" not in files(n)
        assert "iptables" not in sh(n, "cat /etc/svcops/restore")
    serves()
    again = apply(site)
    assert results(again) == {n: "unchanged" for n in NODES}, again.stdout

    site = make_site(tmp_path / "back", {}, mode="iptables")
    apply(site)
    for n in NODES:
        assert nft_table(n) == ""  # the table is gone
        assert "SVCOPS-SVC-" in iptables_save(n)
        assert "iptables.d" in files(n) and "rules.nft" not in files(n) and "nft.d" not in files(n)
    serves()
    assert all(ssh_ok(n) for n in NODES)


def test_ipvs_mode_on_nodes_without_ipvs_fails_cleanly_and_changes_nothing(tmp_path):
    site = make_site(tmp_path / "nft", {}, mode="nftables")
    apply(site)
    before = {n: (iptables_save(n), nft_table(n), sh(n, "cat /etc/svcops/* | sha256sum")) for n in NODES}
    ipvs = make_site(tmp_path / "ipvs", {}, mode="ipvs")
    dry = run([SVCOPS, "apply", "-i", INVENTORY, "--dry", str(ipvs)], timeout=120)
    assert "cannot do IPVS" in dry.stdout and "ip_vs" in dry.stdout, dry.stdout
    r = apply(ipvs, check=False)
    assert r.returncode == 1
    assert results(r) == {n: "failed" for n in NODES}, r.stdout
    out = r.stdout + r.stderr
    assert "IPVS mode cannot run on this node" in out and "kernel module ip_vs" in out and "nothing changed" in out
    after = {n: (iptables_save(n), nft_table(n), sh(n, "cat /etc/svcops/* | sha256sum")) for n in NODES}
    assert after == before
    serves()
