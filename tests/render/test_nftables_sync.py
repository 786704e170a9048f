"""Pushing nftables mode, its pure parts (`svcops.render.nftables_sync`): the chunked file and
its loader, the transactions for a node from its live table, the boot file's fingerprint,
the rollback from a listing. Real nftables in throwaway namespaces where root allows.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from modes_fixtures import SERVICES, compiled, live_state, ns_sh, root
from netns import netns

from svcops.render.nftables import NftLive
from svcops.render.nftables_sync import (
    DELETE_TABLE,
    LOADER,
    ROLLBACK_FROM_LISTING,
    boot_file,
    chunked,
    count_transactions,
    fingerprint,
    live_fingerprint,
    transactions,
)


def load(ns: str, text: str) -> subprocess.CompletedProcess:
    """The node side: LOADER on a chunked file."""
    path = f"/tmp/svmode-{uuid.uuid4().hex}"
    Path(path).write_text(text)
    try:
        return ns_sh(ns, f"{LOADER}\nsvcops_nft_load {path}", check=False)
    finally:
        os.unlink(path)


def test_chunked_file_marks_each_transaction_and_carries_the_state_first():
    text = chunked(["add table ip svcops\n", "add chain ip svcops x\n"], "abc")
    assert text.splitlines()[0] == "# svcops-state abc"
    assert count_transactions(text) == 2
    rules = compiled("nftables").outputs["node1"].nftables
    boot = boot_file(rules, chunk=2)
    assert boot.startswith(f"# svcops-state {fingerprint(rules)}\n")
    assert count_transactions(boot) == 1 + -(-len(rules.units) // 2)  # the skeleton, then chunks of 2


def test_transactions_for_another_mode_delete_the_table_only_if_there():
    assert transactions(None, NftLive()) == []
    assert transactions(None, NftLive(exists=True)) == [DELETE_TABLE]
    assert "svcops" in DELETE_TABLE and all(" svcops" in ln for ln in DELETE_TABLE.splitlines())


@root
@pytest.mark.root
def test_boot_file_loads_in_chunks_and_the_live_fingerprint_matches_it():
    rules = compiled("nftables").outputs["node1"].nftables
    with netns() as ns:
        r = load(ns, boot_file(rules, chunk=2))
        assert r.returncode == 0, r.stderr
        state = live_state(ns, f"# svcops-state {fingerprint(rules)}")
        assert state.available and state.live.exists
        assert state.boot_state == fingerprint(rules) == live_fingerprint(state.live)
        assert transactions(rules, state.live) == []  # in sync: the apply runs nothing
        # Loading it again (a second boot, or the restore script run by hand) is the same.
        assert load(ns, boot_file(rules)).returncode == 0
        assert transactions(rules, live_state(ns).live) == []


@root
@pytest.mark.root
def test_one_service_changed_is_one_small_transaction_and_the_fingerprint_follows():
    old = compiled("nftables").outputs["node1"].nftables
    changed = (SERVICES[0], replace(SERVICES[1], affinity_timeout=300), *SERVICES[2:])
    new = compiled("nftables", changed).outputs["node1"].nftables
    with netns() as ns:
        assert load(ns, boot_file(old)).returncode == 0
        live = live_state(ns).live
        assert live_fingerprint(live) == fingerprint(old) != fingerprint(new)
        txs = transactions(new, live)
        assert len(txs) == 1 and "default/web/" not in txs[0]
        assert load(ns, chunked(txs)).returncode == 0
        assert live_fingerprint(live_state(ns).live) == fingerprint(new)


@root
@pytest.mark.root
def test_rollback_from_the_listing_gives_back_the_table_and_a_failed_transaction_says_which():
    old = compiled("nftables").outputs["node1"].nftables
    new = compiled("nftables", SERVICES[:2]).outputs["node1"].nftables
    with netns() as ns:
        assert load(ns, boot_file(old)).returncode == 0
        # An affinity entry, as traffic would leave it: the listing shows it with "expires".
        aff = next(n for u in old.units for n, _ in u.sets)
        ns_sh(ns, f"nft add element ip svcops {aff} '{{ 203.0.113.9 }}'")
        before = live_state(ns).live
        snapshot = ns_sh(ns, ROLLBACK_FROM_LISTING).stdout
        assert load(ns, chunked(transactions(new, before))).returncode == 0
        assert live_fingerprint(live_state(ns).live) == fingerprint(new)
        assert load(ns, snapshot).returncode == 0
        assert live_fingerprint(live_state(ns).live) == fingerprint(old)
        assert "203.0.113.9" in ns_sh(ns, f"nft list set ip svcops {aff}").stdout
        # A transaction that fails: the loader returns its number; earlier ones stay applied.
        bad = chunked(["add chain ip svcops svmode-test\n", "add rule ip svcops no-such-chain accept\n"])
        assert load(ns, bad).returncode == 2
        assert "svmode-test" in ns_sh(ns, "nft list chains ip").stdout
