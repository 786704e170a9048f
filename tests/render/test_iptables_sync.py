"""Comparing a node's live svcops chains with the rendered ones (`in_sync`: whether a restore runs
at all) and undoing an apply (`rollback_payload`), from `svcops.render.iptables_sync`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import pytest
import render_fixtures as F
from netns import iptables_saved as saved
from netns import netns, ns_run
from render_fixtures import FOREIGN_SAVE, rendered

from svcops.render.iptables import JUMPS, LiveTables, parse_iptables_save, restore_payload
from svcops.render.iptables_sync import (
    diff_tables,
    expected_tables,
    in_sync,
    live_text,
    rollback_payload,
    simulate,
)


def footprint(live: LiveTables) -> dict:
    return {t: (dict(live.table(t).chains), live.table(t).jumps) for t in ("filter", "nat")}


def live_after(rules, before: LiveTables | None = None) -> LiveTables:
    before = before or LiveTables()
    return simulate(before, restore_payload(rules, before))


SCENARIO_NAMES = sorted(F.SCENARIOS)


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_a_node_holding_the_rules_is_in_sync(name):
    rules = rendered(name)
    # As the node shows them after a first apply, with foreign rules around.
    live = parse_iptables_save(FOREIGN_SAVE + restore_payload(rules))
    assert in_sync(rules, live)
    assert diff_tables(rules, live).empty


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_a_clean_node_is_not_in_sync(name):
    rules = rendered(name)
    assert not in_sync(rules, parse_iptables_save(FOREIGN_SAVE))
    d = diff_tables(rules, LiveTables())
    assert set(d.tables["nat"].added) == set(expected_tables(rules).table("nat").chains)
    assert len(d.tables["filter"].jumps_added) + len(d.tables["nat"].jumps_added) == len(JUMPS)


def test_any_drift_makes_a_node_out_of_sync():
    rules = rendered("node-port")
    text = restore_payload(rules)
    live = parse_iptables_save(text)
    nat = live.table("nat")
    chain = next(c for c in nat.chains if c.startswith("SVCOPS-SEP-"))

    def with_nat(**changes) -> LiveTables:
        return LiveTables({"filter": live.table("filter"), "nat": replace(nat, **changes)})

    # a rule changed by hand
    edited = dict(nat.chains)
    edited[chain] = nat.chains[chain][:-1]
    assert not in_sync(rules, with_nat(chains=edited))
    assert diff_tables(rules, with_nat(chains=edited)).tables["nat"].changed == (chain,)
    # a jump missing, a jump twice
    assert not in_sync(rules, with_nat(jumps=nat.jumps[1:]))
    assert not in_sync(rules, with_nat(jumps=nat.jumps + nat.jumps[:1]))
    # a stale svcops chain (a removed service)
    stale = dict(nat.chains)
    stale["SVCOPS-SVC-AAAAAAAAAAAAAAAA"] = ("-A SVCOPS-SVC-AAAAAAAAAAAAAAAA -j SVCOPS-MARK-MASQ",)
    assert not in_sync(rules, with_nat(chains=stale))
    assert diff_tables(rules, with_nat(chains=stale)).tables["nat"].removed == ("SVCOPS-SVC-AAAAAAAAAAAAAAAA",)


def test_an_empty_stale_chain_a_foreign_chain_uses_does_not_count():
    rules = rendered("cluster-ip")
    live = parse_iptables_save(restore_payload(rules))
    nat = live.table("nat")
    chains = dict(nat.chains)
    chains["SVCOPS-SVC-OLDOLDOLDOLDOLDO"] = ()
    kept = replace(nat, chains=chains, foreign_refs=frozenset({"SVCOPS-SVC-OLDOLDOLDOLDOLDO"}))
    assert in_sync(rules, LiveTables({"filter": live.table("filter"), "nat": kept}))


def _olds():
    """Live states a node can be in before an apply."""
    yield "clean", LiveTables()
    yield "foreign only", parse_iptables_save(FOREIGN_SAVE)
    for name in ("source-ranges", "client-ip-affinity", "external-local-with-endpoints"):
        yield f"after {name}", parse_iptables_save(FOREIGN_SAVE + restore_payload(rendered(name)))
    # drifted by hand: a jump twice, one missing, an outdated svcops jump
    base = parse_iptables_save(restore_payload(rendered("udp")))
    f = base.table("filter")
    odd = replace(f, jumps=f.jumps[1:] + f.jumps[-1:] + ('-A INPUT -j SVCOPS-OLD-CHAIN',))
    # (read back as iptables-save would print it: jumps grouped by built-in chain)
    yield "drifted", parse_iptables_save(live_text(LiveTables({"filter": odd, "nat": base.table("nat")})))


@pytest.mark.parametrize("new_name", ["cluster-ip", "node-port", "load-balancer", "external-local-without-endpoints"])
@pytest.mark.parametrize("old_label,old", list(_olds()), ids=[label for label, _ in _olds()])
def test_rollback_gives_back_exactly_the_old_svcops_state(new_name, old_label, old):
    rules = rendered(new_name)
    applied = simulate(old, restore_payload(rules, old))
    assert in_sync(rules, applied)  # the apply did what it should
    back = simulate(applied, rollback_payload(old, rules))
    assert footprint(back) == footprint(old)


def test_rollback_names_no_foreign_chain():
    old = parse_iptables_save(FOREIGN_SAVE)
    payload = rollback_payload(old, rendered("load-balancer"))
    for line in payload.splitlines():
        if line.startswith((":", "-A ", "-X ")):
            assert line.split()[0].lstrip(":") .startswith("SVCOPS-") or line.split()[1].startswith("SVCOPS-")
        if line.startswith(("-D ", "-I ")):
            assert line.split()[-1].startswith("SVCOPS-")


def _have_iptables() -> bool:
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("ip", "iptables-restore", "iptables-save"))


@pytest.mark.root
@pytest.mark.skipif(not _have_iptables(), reason="needs root, ip and iptables")
def test_rollback_for_real_restores_the_saved_tables_byte_for_byte():
    with netns() as ns:
        ns_run(ns, "iptables-restore", "--noflush", stdin=FOREIGN_SAVE)
        ns_run(ns, "iptables-restore", "--noflush", stdin=restore_payload(rendered("source-ranges")))
        before = saved(ns)
        old = parse_iptables_save(before)
        rules = rendered("node-port")
        ns_run(ns, "iptables-restore", "--noflush", stdin=restore_payload(rules, old))
        assert in_sync(rules, parse_iptables_save(saved(ns)))
        ns_run(ns, "iptables-restore", "--noflush", stdin=rollback_payload(old, rules))
        assert saved(ns) == before
