"""`svcops check`'s report and exit status (`svcops.check`), and its errors before any
node is read. (Reading real nodes: tests/e2e/test_check_lab.py.)"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from paths import ROOT

from svcops.check import JSON_VERSION, exit_status, report_json, report_text
from svcops.drift import DriftItem, NodeCheck

SVCOPS = str(Path(sys.executable).with_name("svcops"))

IN_SYNC = NodeCheck.of("node1", [])
DRIFT = NodeCheck.of(
    "node2",
    [
        DriftItem(None, None, "extra", "nat chain SVCOPS-SVC-4HLMZ2E2LF7QQWQO (service chain) (no service)"),
        DriftItem("shop/web", "80/TCP", "differs", "nat chain SVCOPS-SVC-ABC (service chain) rules differ: 2 rules missing (flushed)"),
        DriftItem("shop/web", "443/TCP", "missing", "not on the node: none of its iptables chains and rules (4)"),
    ],
)
ERROR = NodeCheck.failed("node3", "unreachable: could not connect: timed out")


def test_the_text_report_is_one_line_a_node_and_one_an_item_each_naming_its_node():
    assert report_text([IN_SYNC, DRIFT, ERROR], "sites/shop", "iptables") == (
        "svcops check: site sites/shop, proxy mode iptables, 3 nodes\n"
        "node1: in sync\n"
        "node2: drift: 1 service, 1 node item\n"
        "node2: shop/web port 80/TCP: differs: nat chain SVCOPS-SVC-ABC (service chain) rules differ: 2 rules missing (flushed)\n"
        "node2: shop/web port 443/TCP: missing: not on the node: none of its iptables chains and rules (4)\n"
        "node2: (node): extra: nat chain SVCOPS-SVC-4HLMZ2E2LF7QQWQO (service chain) (no service)\n"
        "node3: error: unreachable: could not connect: timed out\n"
        "svcops check: 1 in sync, 1 drift (node2), 1 error (node3)\n"
    )
    assert report_text([IN_SYNC], "s", "nftables") == "svcops check: site s, proxy mode nftables, 1 node\nnode1: in sync\nsvcops check: 1 in sync\n"


def test_exit_status_is_0_in_sync_2_drift_1_when_any_node_is_not_known():
    assert exit_status([IN_SYNC]) == 0
    assert exit_status([IN_SYNC, DRIFT]) == 2
    assert exit_status([IN_SYNC, DRIFT, ERROR]) == 1
    assert exit_status([ERROR]) == 1


def test_the_json_report_has_its_version_and_each_nodes_items():
    doc = report_json([IN_SYNC, DRIFT, ERROR], "sites/shop", "inventory/prod.py", "iptables")
    assert doc["version"] == JSON_VERSION == 1
    assert (doc["status"], doc["error"], doc["proxyMode"]) == ("error", None, "iptables")
    assert doc["counts"] == {"in-sync": 1, "drift": 1, "error": 1}
    assert [(n["node"], n["status"], n["error"]) for n in doc["nodes"]] == [
        ("node1", "in-sync", None),
        ("node2", "drift", None),
        ("node3", "error", "unreachable: could not connect: timed out"),
    ]
    assert doc["nodes"][1]["items"][1] == {
        "service": "shop/web",
        "port": "443/TCP",
        "what": "missing",
        "detail": "not on the node: none of its iptables chains and rules (4)",
    }
    assert doc["nodes"][1]["items"][2]["service"] is None
    assert json.loads(json.dumps(doc)) == doc
    assert report_json([IN_SYNC, DRIFT], "s", "i", "nftables")["status"] == "drift"


def _check(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([SVCOPS, "check", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_a_missing_inventory_or_a_broken_site_is_an_error_before_any_node_is_read(tmp_path):
    r = _check("-i", "inventory/nope.py", "examples/walkthrough")
    assert r.returncode == 1 and "inventory/nope.py: inventory file not found" in r.stderr and r.stdout == ""
    r = _check("-i", "inventory/example.py", "--json", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "site folder" in r.stderr
    doc = json.loads(r.stdout)
    assert (doc["version"], doc["status"], doc["nodes"]) == (1, "error", []) and "site folder" in doc["error"]
    site = tmp_path / "site"
    shutil.copytree(ROOT / "examples" / "walkthrough", site)
    (site / "services" / "bad.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name}\nspec: {ports: [{port: 80}]}\n")
    before = sorted(str(p.relative_to(site)) for p in site.rglob("*"))
    r = _check("-i", "inventory/example.py", str(site))
    assert r.returncode == 1 and "services/bad.yaml:" in r.stderr, r.stderr
    assert sorted(str(p.relative_to(site)) for p in site.rglob("*")) == before
    r = _check("-i", "inventory/example.py", "--limit", "nosuch*", "examples/walkthrough")
    assert r.returncode == 1 and "--limit 'nosuch*' matches no host of inventory/example.py" in r.stderr, r.stderr


def test_help_teaches_what_it_reads_the_exit_codes_and_a_cron_line():
    r = _check("--help")
    assert r.returncode == 0
    for needle in ("whole live state", "missing", "extra", "differs", "exit status: 0", "*/15 * * * *", '"version": 1'):
        assert needle in r.stdout, needle
