"""End to end: `svcops check` on a real 3-node lab, in iptables and nftables mode (issue 11).

After an apply every node is in sync (exit 0); one service's chain flushed by hand on
one node is named, that node and that service (exit 2); a node whose rules were flushed
wholly has every service missing (exit 2); a node that cannot be reached is named
(exit 1) while the others are still checked. And a check changes nothing: every
node's svcops rules are the same text before and after, svcops.lock keeps its bytes,
the site folder gains no file, no node gains a file in svcops's run folder.

Its own lab (module scope), brought up and down around this module; every test once
per proxy mode.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from labkit import INVENTORY, NODES, ROOT, SVCOPS, apply, make_site, mode_fixture, run, sh, svcops_rules

from svcops.render.chains import SVC, port_hash
from svcops.render.nftables_live import parse_nft_list

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab")]

proxy_mode = mode_fixture()  # every test once per proxy mode (labkit.make_site's mode)

MY_DEPLOY = "default/my-deploy port 8000/TCP"  # the walkthrough's my-deploy (cluster IP 10.1.11.83)


@pytest.fixture(scope="module")
def site(proxy_mode, tmp_path_factory):
    """The walkthrough, applied to every node in this module's mode."""
    s = make_site(tmp_path_factory.mktemp(f"check-{proxy_mode}"), {})
    apply(s)
    return s


@pytest.fixture
def in_sync(site):
    """Every node back on the site before a test (a test's drill repaired by an apply)."""
    if check(site).returncode != 0:
        apply(site)
    return site


def check(site, *extra: str, inventory: str = INVENTORY) -> subprocess.CompletedProcess:
    return run([SVCOPS, "check", "-i", inventory, *extra, str(site)], timeout=180)


def lines_of(out: str) -> dict[str, list[str]]:
    """node -> what the report says of it (its lines without the "NODE: " prefix)."""
    got: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"(node\d+): (.*)", line)
        if m:
            got.setdefault(m.group(1), []).append(m.group(2))
    return got


def service_chain(mode: str, node: str) -> tuple[str, str]:
    """(the shell that flushes my-deploy's service chain on `node`, that chain's name)."""
    if mode == "iptables":
        chain = SVC + port_hash("default/my-deploy", "TCP")
        return f"iptables -t nat -F {chain}", chain
    live = parse_nft_list(sh(node, "nft list table ip svcops"))
    chain = live.maps["service-ips"]["10.1.11.83 . tcp . 8000"][0].removeprefix("goto ")
    return f"nft flush chain ip svcops '{chain}'", chain


def footprint(site) -> dict:
    """What a check must leave as it is: each node's svcops rules and run folder, the
    lock's bytes, the site folder's files."""
    return {
        "rules": {n: svcops_rules(n) for n in NODES},
        "run": {n: sh(n, "ls -a /run/svcops 2>/dev/null; true") for n in NODES},
        "lock": (site / "svcops.lock").read_bytes(),
        "files": sorted(str(p.relative_to(site)) for p in site.rglob("*")),
    }


def test_01_after_an_apply_every_node_is_in_sync_and_a_check_changes_nothing(in_sync, proxy_mode):
    before = footprint(in_sync)
    r = check(in_sync)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines_of(r.stdout) == {n: ["in sync"] for n in NODES}, r.stdout
    assert r.stdout.splitlines()[0] == f"svcops check: site {in_sync}, proxy mode {proxy_mode}, 3 nodes"
    assert r.stdout.splitlines()[-1] == "svcops check: 3 in sync"
    j = check(in_sync, "--json")
    assert j.returncode == 0, j.stderr
    doc = json.loads(j.stdout)
    assert (doc["version"], doc["status"], doc["proxyMode"]) == (1, "in-sync", proxy_mode)
    assert [(n["node"], n["status"], n["items"]) for n in doc["nodes"]] == [(n, "in-sync", []) for n in NODES]
    assert footprint(in_sync) == before


def test_02_one_services_chain_flushed_on_one_node_names_that_node_and_that_service(in_sync, proxy_mode):
    script, chain = service_chain(proxy_mode, "node2")
    sh("node2", script)
    before = footprint(in_sync)
    r = check(in_sync)
    assert r.returncode == 2, r.stdout + r.stderr
    seen = lines_of(r.stdout)
    assert seen["node1"] == seen["node3"] == ["in sync"], r.stdout
    assert seen["node2"][0] == "drift: 1 service", r.stdout
    (item,) = seen["node2"][1:]
    assert item.startswith(f"{MY_DEPLOY}: differs: ") and chain in item and "rules missing (flushed)" in item, item
    assert r.stdout.splitlines()[-1] == "svcops check: 2 in sync, 1 drift (node2)"
    doc = json.loads(check(in_sync, "--json").stdout)
    node2 = next(n for n in doc["nodes"] if n["node"] == "node2")
    assert node2["status"] == "drift" and doc["status"] == "drift"
    assert [(i["service"], i["port"], i["what"]) for i in node2["items"]] == [("default/my-deploy", "8000/TCP", "differs")]
    assert footprint(in_sync) == before  # the drift is still there: check repairs nothing
    apply(in_sync, "--verify")  # a hand edit inside svcops's chains: the canary cannot see it
    assert check(in_sync).returncode == 0


def test_03_a_node_whose_rules_were_flushed_wholly_has_every_service_missing(in_sync, proxy_mode):
    if proxy_mode == "iptables":
        sh("node3", "for t in nat filter; do iptables -t $t -F && iptables -t $t -X; done")
        node_item = "(node): missing: every svcops iptables chain and jump (the node has none)"
    else:
        sh("node3", "nft flush ruleset")
        node_item = "(node): missing: table ip svcops"
    r = check(in_sync)
    assert r.returncode == 2, r.stdout + r.stderr
    seen = lines_of(r.stdout)
    assert seen["node1"] == seen["node2"] == ["in sync"], r.stdout
    assert node_item in seen["node3"], r.stdout
    services = {ln.split(": ", 1)[0] for ln in seen["node3"][1:] if not ln.startswith("(node)")}
    assert MY_DEPLOY in services, r.stdout
    assert all(": missing: " in ln for ln in seen["node3"][1:]), r.stdout
    apply(in_sync)
    assert check(in_sync).returncode == 0


def test_04_a_node_that_cannot_be_reached_is_named_and_the_others_are_still_checked(in_sync, tmp_path):
    # node3 on a port where nothing listens: its connection is refused at once.
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        "import runpy as _runpy\n"
        f"_lab = _runpy.run_path({str(ROOT / INVENTORY)!r})\n"
        "nodes = [(n, {**d, 'ssh_port': 1}) if n == 'node3' else (n, d) for n, d in _lab['nodes']]\n"
    )
    r = check(in_sync, inventory=str(inventory))
    assert r.returncode == 1, r.stdout + r.stderr
    seen = lines_of(r.stdout)
    assert seen["node1"] == seen["node2"] == ["in sync"], r.stdout
    (line,) = seen["node3"]
    assert line.startswith("error: unreachable: could not connect"), line
    assert r.stdout.splitlines()[-1] == "svcops check: 2 in sync, 1 error (node3)"
    doc = json.loads(check(in_sync, "--json", inventory=str(inventory)).stdout)
    assert doc["status"] == "error" and doc["counts"] == {"in-sync": 2, "drift": 0, "error": 1}
    assert next(n for n in doc["nodes"] if n["node"] == "node3")["status"] == "error"


def test_05_a_service_not_applied_yet_is_missing_everywhere_and_svcops_lock_is_not_written(in_sync):
    new = in_sync / "services" / "later.yaml"
    new.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: later, namespace: default}\n"
        "spec:\n  selector: {app: web}\n  ports: [{name: http, port: 81, targetPort: http}]\n"
    )
    try:
        before = footprint(in_sync)
        r = check(in_sync)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "svcops.lock lacks 1 allocation change (made in memory for this check" in r.stderr, r.stderr
        seen = lines_of(r.stdout)
        for n in NODES:
            assert any(ln.startswith("default/later port 81/TCP: missing: ") for ln in seen[n]), r.stdout
        assert footprint(in_sync) == before  # the lock's bytes too: the allocation was not recorded
    finally:
        new.unlink()
    assert check(in_sync).returncode == 0
