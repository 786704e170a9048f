"""iptables mode's record on the node and its fast path (`svcops.render.iptables_record`):
the render cut into buckets, read back, the canary, and the partial plan of a
one-service change, which must end where the full plan ends, and undo exactly.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace

import pytest
import render_fixtures as F
from netns import iptables_saved, netns, ns_run

from svcops.compile.endpoints import resolve
from svcops.render import chains as C
from svcops.render.iptables import parse_iptables_save, render_nodes, restore_payload
from svcops.render.iptables_record import (
    FIRST,
    LAST,
    STATE,
    UNVERIFIED,
    Canary,
    bucket_units,
    canary_agrees,
    parse_canary,
    partial_plan,
    record_files,
    record_of,
    state_rule,
    with_state,
    without_empty_tables,
)
from svcops.render.iptables_sync import TABLES, expected_tables, in_sync, rollback_payload, simulate
from svcops.render.node_files import restore_script
from svcops.render.record import changed_buckets, digest_text, index_text, parse_index

ONE = (F.service("web", F.HTTP),)


def _services(n: int = 40, change: int | None = None, **changes):
    """n services of every kind the scenarios hold (distinct names); `change`: the one
    whose spec gets `changes`."""
    kinds = [s for name, (svcs, _, _) in sorted(F.SCENARIOS.items()) if name != "manual-endpoints" for s in svcs]
    out = []
    for i in range(n):
        s = kinds[i % len(kinds)]
        s = replace(s, name=f"{s.name}-{i}", cluster_ip=s.cluster_ip if s.cluster_ip == "None" else None)
        if i == change:
            s = replace(s, **changes)
        out.append(s)
    return tuple(out)


def _rules(services, node: str = "node1"):
    ports, _ = resolve(F.site(services), F.nodes(), F.allocations(services))
    return render_nodes(F.CLUSTER, ports, F.NODES)[node]


def _applied(rules):
    """A node after a cold apply of `rules` with its canary (what the full path does)."""
    full = with_state(rules, record_of(rules).index())
    return simulate(parse_iptables_save(F.FOREIGN_SAVE), restore_payload(full, parse_iptables_save(F.FOREIGN_SAVE)))


def _canary_of(live, index) -> Canary:
    """The canary fact's value on a node whose svcops state is `live`."""
    text = "".join(
        f"*{t}\n" + "".join(r + "\n" for r in live.table(t).chains.get(STATE, ())) + "".join(j + "\n" for j in live.table(t).jumps) + "COMMIT\n"
        for t in TABLES
    )
    return parse_canary(text, index)


def _read_back(record, buckets):
    """The bucket files of `record` as the node's fact reads them: bucket -> (the
    file's digest, "" when there is none; its text)."""
    return {b: (digest_text(record.buckets[b]), record.buckets[b]) if record.buckets.get(b) else ("", "") for b in buckets}


def footprint(live):
    return {t: (dict(live.table(t).chains), sorted(live.table(t).jumps)) for t in TABLES}


def test_the_buckets_hold_every_chain_once_and_load_on_their_own_in_order():
    rules = _rules(_services())
    record = record_of(rules)
    want = expected_tables(rules)
    seen: dict[str, dict[str, tuple[str, ...]]] = {t: {} for t in TABLES}
    for b, text in record.buckets.items():
        got = parse_iptables_save(text)
        for t in TABLES:
            for c, r in got.table(t).chains.items():
                assert c not in seen[t], f"{c} in two buckets"
                seen[t][c] = r
            assert got.table(t).jumps == ()
    assert seen == {t: dict(want.table(t).chains) for t in TABLES}
    # s0, the hex buckets, s1: each jump goes to a chain declared before or in its bucket.
    order = [FIRST, *sorted(b for b in record.buckets if b[0] not in "sn"), *sorted(b for b in record.buckets if b[0] == "n"), LAST]
    assert any(b[0] == "n" for b in record.buckets)  # the scenarios have Local policies
    declared: set[str] = set()
    for b in order:
        live = parse_iptables_save(record.buckets[b])
        for t in TABLES:
            declared |= set(live.table(t).chains)
        for t in TABLES:
            for rules_ in live.table(t).chains.values():
                for r in rules_:
                    target = r.rsplit(" -j ", 1)[-1].split(" ")[0] if " -j " in r else ""
                    assert not C.is_svcops_chain(target) or target in declared, (b, r)


def test_every_node_s_index_names_the_digest_of_each_bucket_s_text():
    # The buckets every node shares are hashed once per render (and the shared head of
    # s1): each node's digests must still be those of its own texts.
    services = _services()
    ports, _ = resolve(F.site(services), F.nodes(), F.allocations(services))
    for node, rules in render_nodes(F.CLUSTER, ports, F.NODES).items():
        record = record_of(rules)
        assert record.digests() == {b: digest_text(t) for b, t in record.buckets.items()}, node


def test_a_bucket_reads_back_into_its_units():
    rules = _rules(_services())
    record = record_of(rules)
    services = _services()
    resolved, _ = resolve(F.site(services), F.nodes(), F.allocations(services))
    ports = {C.port_hash(rp.name, rp.port.protocol) for rp in resolved}
    units = {}
    for b, text in record.buckets.items():
        for u, live in bucket_units(text).items():
            units.setdefault(u, []).append(live)
    assert units.keys() >= {FIRST, LAST}
    # A service port's chains, SEP chains included, are one unit named by its hash (its
    # node's own part of it, in an n* bucket, under the same name).
    with_chains = {u for u in units if u not in (FIRST, LAST)}
    assert with_chains and with_chains <= ports
    for u in with_chains:
        for live in units[u]:
            for c in live.table("nat").chains:
                assert c.endswith(u) or c.startswith(C.SEP)


def test_the_index_names_a_changed_service_bucket_only():
    before, after = _rules(_services()), _rules(_services(change=3, session_affinity="ClientIP", affinity_timeout=60))
    a, b = record_of(before).index(), record_of(after).index()
    changed = changed_buckets(a, b)
    assert 1 <= len(changed) <= 2 and a.fingerprint != b.fingerprint
    assert parse_index(index_text(b).splitlines(), "iptables") == b


@pytest.mark.parametrize(
    "label,local,changes",
    [
        ("affinity on", False, dict(session_affinity="ClientIP", affinity_timeout=60)),
        ("made a node port", False, dict(type="NodePort")),
        ("endpoints gone", False, dict(selector={"app": "missing"})),
        ("local traffic", False, dict(type="NodePort", external_traffic_policy="Local")),
        # A Local service's endpoints: its chains in a hex bucket and in an n* bucket change.
        ("local endpoints gone", True, dict(selector={"app": "missing"})),
    ],
)
def test_the_partial_plan_ends_where_the_full_plan_ends_and_its_rollback_undoes_it(label, local, changes):
    # Service 1: a ClusterIP service; else the first with a Local traffic policy.
    which = next(i for i, s in enumerate(_services()) if s.external_traffic_policy == "Local") if local else 1
    old_rules = _rules(_services())
    new_rules = _rules(_services(change=which, **changes))
    node = _applied(old_rules)
    old_record = record_of(old_rules)
    canary = _canary_of(node, old_record.index())
    assert canary_agrees(canary, old_rules)

    record = record_of(new_rules)
    changed = changed_buckets(old_record.index(), record.index())
    assert changed
    plan = partial_plan(new_rules, record, canary, _read_back(old_record, changed))
    assert plan is not None
    partial = simulate(node, restore_payload(plan.rules, plan.live))
    full = with_state(new_rules, record.index())
    assert footprint(partial) == footprint(simulate(node, restore_payload(full, node)))
    assert in_sync(full, partial)
    # Only the changed buckets' chains and the canary are named.
    named = {ln.split()[0].lstrip(":") if ln.startswith(":") else ln.split()[1] for ln in restore_payload(plan.rules, plan.live).splitlines() if ln[:1] in ":-"}
    mine = {ch for b in changed for t in TABLES for ch in parse_iptables_save(old_record.buckets.get(b, "") + record.buckets.get(b, "")).table(t).chains}
    assert named <= mine | {STATE}
    if FIRST not in changed:  # service ports only: nat alone is named
        assert without_empty_tables(restore_payload(plan.rules, plan.live)).startswith("*nat\n")
    # The new canary agrees with the new index, and the record files follow.
    assert canary_agrees(_canary_of(partial, record.index()), new_rules)
    assert set(plan.files) == set(changed) | {"index"}
    # The rollback gives the node back as it was.
    back = simulate(partial, rollback_payload(plan.live, plan.rules))
    assert footprint(back) == footprint(node)


def test_the_canary_disagrees_with_anything_but_the_record():
    rules = _rules(_services(8))
    node = _applied(rules)
    index = record_of(rules).index()
    assert canary_agrees(_canary_of(node, index), rules)
    assert not canary_agrees(_canary_of(node, None), rules)  # no index
    other = record_of(_rules(_services(9))).index()
    assert not canary_agrees(_canary_of(node, other), rules)  # another record
    for t in TABLES:  # a table flushed or wiped
        tables = dict(node.tables)
        tables[t] = replace(node.table(t), chains={}, jumps=())
        assert not canary_agrees(_canary_of(replace(node, tables=tables), index), rules)
    nat = node.table("nat")
    no_jump = replace(node, tables={**node.tables, "nat": replace(nat, jumps=nat.jumps[1:])})
    assert not canary_agrees(_canary_of(no_jump, index), rules)
    booted = {t: replace(node.table(t), chains={**node.table(t).chains, STATE: (state_rule(UNVERIFIED),)}) for t in TABLES}
    assert not canary_agrees(_canary_of(replace(node, tables=booted), index), rules)


def test_the_canary_reads_iptables_minus_s_output():
    fp = "0123456789abcdef0123456789abcdef"
    text = (
        "*filter\n-N SVCOPS-STATE\n" + state_rule(fp) + "\n-P INPUT ACCEPT\n"
        '-A INPUT -m comment --comment "x" -j SVCOPS-FIREWALL\n-A INPUT -j DOCKER\nCOMMIT\n'
        "*nat\n-N SVCOPS-STATE\nCOMMIT\n"
    )
    canary = parse_canary(text, None)
    assert canary.fingerprints() == {"filter": fp, "nat": None}
    assert canary.jumps["filter"] == ('-A INPUT -m comment --comment "x" -j SVCOPS-FIREWALL',)


def test_the_partial_plan_trusts_no_bucket_file_but_the_one_the_index_names():
    old_rules, new_rules = _rules(_services()), _rules(_services(change=1, type="NodePort"))
    old_record, record = record_of(old_rules), record_of(new_rules)
    canary = _canary_of(_applied(old_rules), old_record.index())
    changed = changed_buckets(old_record.index(), record.index())
    named = [b for b in changed if old_record.buckets.get(b)]
    assert named and partial_plan(new_rules, record, canary, _read_back(old_record, changed)) is not None
    b = named[0]
    text = old_record.buckets[b]
    edited = text.replace("COMMIT\n", "-A SVCOPS-FORWARD -j ACCEPT\nCOMMIT\n", 1)
    for what, got in [
        ("edited by hand", (digest_text(edited), edited)),
        ("truncated", (digest_text(text[:-7]), text[:-7])),
        ("removed", ("", "")),
        ("not read at all", None),
    ]:
        old = _read_back(old_record, changed)
        if got is None:
            del old[b]
        else:
            old[b] = got
        assert partial_plan(new_rules, record, canary, old) is None, what
    # One more service, in a bucket the old index does not name: a file there (a
    # leftover) is not trusted either.
    more = _rules(_services(41))
    record = record_of(more)
    changed = changed_buckets(old_record.index(), record.index())
    unnamed = [b for b in changed if not old_record.buckets.get(b)]
    assert unnamed and partial_plan(more, record, canary, _read_back(old_record, changed)) is not None
    stray = "*nat\n:SVCOPS-X - [0:0]\nCOMMIT\n"
    old = {**_read_back(old_record, changed), unnamed[0]: (digest_text(stray), stray)}
    assert partial_plan(more, record, canary, old) is None


def test_record_files_write_what_differs_and_remove_what_is_gone():
    record = record_of(_rules(_services(8)))
    everything = record_files(record, None)
    assert set(everything) == set(record.buckets) | {"index"}
    have = {n: digest_text(t) for n, t in everything.items()}
    assert record_files(record, have) == {}
    have["zz"] = "0" * 32
    have.pop("s1")
    assert record_files(record, have) == {"s1": record.buckets["s1"], "zz": None}
    empty = record_of(_rules(()))
    assert all(v is None for v in record_files(replace(empty, buckets={}), have).values())


_TOOLS = ("ip", "iptables-restore", "iptables-save", "sha256sum")


@pytest.mark.root
@pytest.mark.skipif(not all(shutil.which(t) for t in _TOOLS) or __import__("os").geteuid() != 0, reason="needs root and iptables")
def test_the_boot_script_loads_the_record_and_its_canary(tmp_path):
    rules = _rules(_services())
    record = record_of(rules)
    d = tmp_path / "iptables.d"
    d.mkdir()
    for n, t in record_files(record, None).items():
        (d / n).write_text(t)
    script = restore_script(rules.jumps).replace("/etc/svcops/iptables.d", str(d)).replace("/etc/svcops/announce", str(tmp_path / "a"))
    with netns() as ns:
        for _ in range(2):  # idempotent
            subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], check=True)
            live = parse_iptables_save(iptables_saved(ns))
            assert in_sync(with_state(rules, record.index()), live)
        # A bucket edited by hand: loaded, but the canary says "unverified".
        s0 = d / FIRST
        s0.write_text(s0.read_text().replace("COMMIT\n", "-A SVCOPS-FORWARD -j ACCEPT\nCOMMIT\n", 1))
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], check=True)
        out = ns_run(ns, "iptables", "-t", "nat", "-S", STATE)
        assert UNVERIFIED in out


@pytest.mark.root
@pytest.mark.skipif(not all(shutil.which(t) for t in (*_TOOLS, "awk")) or __import__("os").geteuid() != 0, reason="needs root and iptables")
def test_the_canary_read_with_the_render_digests_brings_the_changed_buckets(tmp_path):
    from svcops.facts.iptables import SvcopsIptablesBuckets, SvcopsIptablesCanary
    from svcops.render.iptables_record import RECORD_DIR

    old_rules, new_rules = _rules(_services()), _rules(_services(change=1, type="NodePort"))
    old_record, record = record_of(old_rules), record_of(new_rules)
    d = tmp_path / "iptables.d"
    d.mkdir()
    for n, t in record_files(old_record, None).items():
        (d / n).write_text(t)
    (d / "zz").write_text("a file the index does not name\n")

    def read(fact, **kw):
        script = fact().command(**kw).replace(RECORD_DIR, str(d))
        out = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], capture_output=True, text=True, check=True)
        return fact().process(out.stdout.splitlines())

    with netns() as ns:
        want = record.index()
        canary = read(SvcopsIptablesCanary, want=tuple(want.digests.items()))
        assert canary.index == old_record.index() and read(SvcopsIptablesCanary).buckets is None
        changed = changed_buckets(canary.index, want)
        assert changed and sorted(canary.buckets) == changed  # the difference, taken on the node
        assert canary.buckets == read(SvcopsIptablesBuckets, buckets=tuple(changed))
        assert partial_plan(new_rules, record, canary, canary.buckets) is not None
        # A bucket edited by hand: its digest (the node's) says so.
        b = next(b for b in changed if old_record.buckets.get(b))
        (d / b).write_text(old_record.buckets[b] + "# edited\n")
        canary = read(SvcopsIptablesCanary, want=tuple(want.digests.items()))
        assert canary.buckets[b][0] != digest_text(old_record.buckets[b])
        assert partial_plan(new_rules, record, canary, canary.buckets) is None
