"""`svcops apply`'s pure helpers (`--limit`, `--serial`, `--fail-percent`) and its refusal to change
nodes without confirmation (`svcops.apply`). Real applies run against the lab in tests/e2e/.
"""

from __future__ import annotations

import subprocess

from paths import ROOT

from svcops.apply import batches, over_fail_percent, select_hosts


def test_limit_selects_names_and_globs_in_inventory_order():
    names = ["node1", "node2", "node3", "web-a", "web-b"]
    assert select_hosts(names, None) == (names, [])
    assert select_hosts(names, "web-*,node2") == (["node2", "web-a", "web-b"], [])
    assert select_hosts(names, "node[13], db1") == (["node1", "node3"], ["db1"])


def test_batches_and_fail_percent():
    names = [f"n{i}" for i in range(7)]
    assert batches(names, None) == [names]
    assert batches(names, 3) == [names[0:3], names[3:6], names[6:]]
    assert batches([], 2) == []
    assert not over_fail_percent(0, 3, 0)
    assert over_fail_percent(1, 3, 0)
    assert not over_fail_percent(1, 4, 25) and over_fail_percent(2, 4, 25)


def test_apply_without_yes_and_without_a_terminal_refuses_before_touching_anything(tmp_path):
    import sys
    from pathlib import Path

    svcops = str(Path(sys.executable).with_name("svcops"))
    root = ROOT
    r = subprocess.run(
        [svcops, "apply", "-i", "inventory/example.py", "examples/walkthrough"],
        cwd=root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1
    assert "pass -y" in r.stderr
    assert "Connect" not in r.stderr + r.stdout
