"""`SvcopsNftables`: its command on a real nft (in a throwaway network namespace) and
its parser: the whole table read, content included, or a clean node.
"""

from __future__ import annotations

import subprocess

import pytest
from modes_fixtures import compiled
from netns import netns, ns_run, requires

from svcops.facts.nftables import SvcopsNftables, parse_nft_state
from svcops.render.nftables import full_payload
from svcops.render.nftables_diff import plan_update
from svcops.render.nftables_live import NftContent


def test_parse_a_whole_listing_with_the_boot_files_fingerprint():
    lines = [
        "svcops-nft boot # svcops-state 0123abcd",
        "table ip svcops {",
        "\tchain services {",
        "\t\tip daddr . meta l4proto . th dport vmap @service-ips",
        "\t}",
        "}",
    ]
    state = parse_nft_state(lines)
    assert state.available and state.boot_state == "0123abcd"
    assert state.live.exists and state.live.content.rules == {"services": ("ip daddr . meta l4proto . th dport vmap @service-ips",)}
    clean = parse_nft_state(["svcops-nft boot "])
    assert not clean.live.exists and clean.live.content == NftContent() and clean.boot_state == ""
    assert not parse_nft_state(["svcops-nft missing"]).available


def run_fact(ns: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", SvcopsNftables().command()], capture_output=True, text=True)


@pytest.mark.root
@requires("nft")
def test_the_command_reads_no_table_as_a_clean_node_and_a_table_whole():
    rules = compiled("nftables").outputs["node1"].nftables
    with netns() as ns:
        ns_run(ns, "nft", "add table ip svcops2")  # another table whose name starts the same
        r = run_fact(ns)
        assert r.returncode == 0, r.stderr
        assert not parse_nft_state(r.stdout.splitlines()).live.exists
        ns_run(ns, "nft", "-f", "-", stdin=full_payload(rules))
        r = run_fact(ns)
        assert r.returncode == 0, r.stderr
        state = parse_nft_state(r.stdout.splitlines())
        assert state.live.exists and state.live.content.rules
        assert plan_update(rules, state.live).transactions == ()
