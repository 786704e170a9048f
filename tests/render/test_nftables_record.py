"""The nftables fast path's core: the record (buckets, index, fingerprint), the canary and
`fast_plan` (issue 11), against the whole-table comparison and a real kernel."""

from __future__ import annotations

import render_fixtures as F
from modes_fixtures import SERVICES, compiled, root
from netns import netns, ns_run

from svcops.render.nftables import cold_payloads
from svcops.render.nftables_diff import plan_update
from svcops.render.nftables_live import LIST_COMMAND, parse_nft_list
from svcops.render.nftables_record import (
    UNIT_MARK,
    canary_command,
    fast_buckets,
    fast_plan,
    fingerprint_of,
    parse_bucket,
    parse_canary,
    record_files,
)
from svcops.render.nftables_sync import transactions
from svcops.render.record import bucket_of, digest_text, parse_index

OLD = compiled("nftables").outputs["node1"].nftables
# One service changed: ClientIP affinity on "web" (its chains, sets and elements change).
CHANGED = tuple(
    F.service("web", F.HTTP, type="NodePort", session_affinity="ClientIP", affinity_timeout=60) if s.name == "web" else s
    for s in SERVICES
)
NEW = compiled("nftables", CHANGED).outputs["node1"].nftables
WEB = "default/web/tcp/http"


def index_of(rules):
    return parse_index(record_files(rules)["index"].splitlines(), "nftables")


def read_back(files: dict, names) -> dict:
    """What `SvcopsNftBuckets` gives for `names` on a node holding `files`."""
    return {b: ((digest_text(files[b]), files[b]) if files.get(b) else ("", "")) for b in names}


def test_each_bucket_file_parses_back_into_exactly_its_units():
    files = record_files(OLD)
    by_id = {u.id: u for u in OLD.units}
    seen = []
    for b, text in files.items():
        if text is None or b in ("index", "sk"):
            continue
        units = parse_bucket(text)
        assert units is not None and all(bucket_of(u.id) == b and u == by_id[u.id] for u in units)
        seen += [u.id for u in units]
    assert sorted(seen) == sorted(by_id)
    assert parse_bucket("add rule ip svcops x counter\n") is None  # a rule before any unit
    assert parse_bucket(UNIT_MARK + "{not json\n") is None


def test_the_index_is_checked_against_its_own_fingerprint():
    text = record_files(OLD)["index"]
    index = parse_index(text.splitlines(), "nftables")
    assert index is not None and index.fingerprint == fingerprint_of(OLD)
    lines = text.splitlines()
    assert parse_index(lines[:1] + lines[2:], "nftables") is None  # a bucket's line deleted
    assert parse_index([lines[0].replace(index.fingerprint, "0" * 32)] + lines[1:], "nftables") is None
    assert parse_index(text.splitlines(), "iptables") is None
    assert parse_index([], "nftables") is None


def test_a_node_in_sync_reads_no_bucket_and_gets_nothing():
    assert fast_buckets(index_of(OLD), OLD) == []
    plan = fast_plan(OLD, index_of(OLD), {})
    assert plan is not None and plan.transactions == () and plan.files == {}


def test_a_one_service_change_reads_and_rewrites_its_bucket_only_and_ends_with_the_canary():
    have = index_of(OLD)
    names = fast_buckets(have, NEW)
    assert names == [bucket_of(WEB)]
    plan = fast_plan(NEW, have, read_back(record_files(OLD), names))
    assert plan is not None and plan.buckets == tuple(names)
    (tx,) = plan.transactions
    assert tx.endswith(canary_command(fingerprint_of(NEW)))
    # Only web's objects are named (besides the canary set).
    web = NEW.unit(WEB)
    for u in OLD.units:
        if u.id != WEB and bucket_of(u.id) != bucket_of(WEB):
            assert not any(c in tx for c in u.chains), u.id
    assert all(f"add chain ip svcops {c}" in tx or f"flush chain ip svcops {c}" in tx for c in web.chains)
    # The files: that bucket and the index, which is the whole record's index for NEW.
    assert set(plan.files) == {bucket_of(WEB), "index"}
    assert plan.files["index"] == record_files(NEW)["index"]
    assert plan.files[bucket_of(WEB)] == record_files(NEW)[bucket_of(WEB)]
    # Back: web's unit as it was, then (alone, last) its endpoint chains deleted: only
    # ClientIP affinity has a chain per endpoint.
    *_, last = plan.rollback
    assert last.endswith(canary_command(fingerprint_of(OLD)))
    assert len(plan.rollback) == 2 and "delete chain ip svcops endpoint-" in last


def test_the_fast_plan_sends_what_the_whole_comparison_would_for_those_service_ports():
    have = index_of(OLD)
    names = fast_buckets(have, NEW)
    plan = fast_plan(NEW, have, read_back(record_files(OLD), names))
    whole = transactions(NEW, F.simulated_live(OLD))
    assert len(whole) == 1
    assert plan.transactions[0] == whole[0] + canary_command(fingerprint_of(NEW))


def test_a_bucket_that_is_not_the_one_the_index_names_sends_the_apply_to_the_whole_read():
    have = index_of(OLD)
    names = fast_buckets(have, NEW)
    files = record_files(OLD)
    edited = {b: (digest_text(files[b] + "# edited\n"), files[b] + "# edited\n") for b in names}
    assert fast_plan(NEW, have, edited) is None
    assert fast_plan(NEW, have, {b: ("", "") for b in names}) is None  # the file is gone


def test_the_canary_is_read_from_the_sets_listing():
    listing = [
        "table ip svcops {",
        "\tset state {",
        "\t\ttype ipv4_addr",
        '\t\tcomment "what svcops applied last"',
        '\t\telements = { 127.0.0.1 comment "svcops-state 0123abcd" }',
        "\t}",
        "}",
    ]
    assert parse_canary(listing) == "0123abcd"
    assert parse_canary(listing[:4] + listing[5:]) is None  # flushed: no element
    assert parse_canary([]) is None  # no table


@root
def test_in_the_kernel_the_fast_change_and_its_rollback_give_the_whole_tables_back():
    """Loaded for real: OLD, then the fast path to NEW equals NEW loaded cold (as the
    whole read compares it), and the rollback gives OLD back, canary included."""
    have = index_of(OLD)
    names = fast_buckets(have, NEW)
    plan = fast_plan(NEW, have, read_back(record_files(OLD), names))
    with netns() as ns:
        for tx in cold_payloads(OLD):
            ns_run(ns, "nft", "-f", "-", stdin=tx)
        ns_run(ns, "nft", "-f", "-", stdin=canary_command(fingerprint_of(OLD)))
        for tx in plan.transactions:
            ns_run(ns, "nft", "-f", "-", stdin=tx)
        live = parse_nft_list(ns_run(ns, *LIST_COMMAND), full=True)
        assert plan_update(NEW, live).transactions == ()
        assert parse_canary(ns_run(ns, "nft", "list", "set", "ip", "svcops", "state").splitlines()) == fingerprint_of(NEW)
        for tx in plan.rollback:
            ns_run(ns, "nft", "-f", "-", stdin=tx)
        live = parse_nft_list(ns_run(ns, *LIST_COMMAND), full=True)
        assert plan_update(OLD, live).transactions == ()
        assert parse_canary(ns_run(ns, "nft", "list", "set", "ip", "svcops", "state").splitlines()) == fingerprint_of(OLD)
