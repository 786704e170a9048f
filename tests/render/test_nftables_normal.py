"""The render in nft's printed form (`svcops.render.nftables_normal`), and the listing's
parser (`parse_nft_list(..., full=True)`): golden files, then the real nft.

tests/golden/nftables-printed/<scenario>.txt hold `printed_listing` of each scenario of
tests/render_fixtures.py: every chain's rules, every base chain's hook, every set's and
map's declaration, as the drift check expects `nft list table ip svcops` to show them.
The root tests load each scenario's payload into a throwaway network namespace and
check that the real listing parses to exactly that. Regenerate after an intended
change and review the diff:

    SVCOPS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/render/test_nftables_normal.py
"""

from __future__ import annotations

import subprocess

import pytest
import render_fixtures as F
from golden import check_golden
from netns import netns, ns_run, requires
from paths import GOLDEN as GOLDEN_DIR

from svcops.compile.endpoints import resolve
from svcops.render.nftables import full_payload, render_nodes
from svcops.render.nftables_diff import plan_update
from svcops.render.nftables_live import LIST_COMMAND, NftContent, NftHook, parse_nft_list, parse_priority
from svcops.render.nftables_normal import (
    MAP_DECLS,
    SKELETON_CHAINS,
    SKELETON_HOOKS,
    printed_chains,
    printed_listing,
    printed_rule,
)

GOLDEN = GOLDEN_DIR / "nftables-printed"


def scenario(name: str):
    services, manual, node = F.SCENARIOS[name]
    ports, _ = resolve(F.site(services, manual), F.nodes(), F.allocations(services))
    return render_nodes(F.CLUSTER, ports, F.NODES)[node]


@pytest.mark.parametrize("name", sorted(F.SCENARIOS))
def test_golden_printed_form(name):
    check_golden(GOLDEN / f"{name}.txt", printed_listing(scenario(name)))


def test_every_golden_file_has_a_scenario():
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted(F.SCENARIOS)


def test_rules_nft_prints_otherwise_are_rewritten_and_the_rest_kept():
    assert printed_rule("mark set mark or 0x4000") == "meta mark set meta mark | 0x00004000"
    assert printed_rule("mark and 0x4000 == 0 return") == "meta mark & 0x00004000 == 0x00000000 return"
    assert printed_rule("mark set mark xor 0x4000") == "meta mark set meta mark ^ 0x00004000"
    assert printed_rule("ip saddr != { 203.0.113.0/24 } drop") == "ip saddr != 203.0.113.0/24 drop"
    assert printed_rule("ip saddr != { 10.0.0.0/8, 198.51.100.7 } drop") == "ip saddr != { 10.0.0.0/8, 198.51.100.7 } drop"
    assert printed_rule("update @aff-x { ip saddr }") == "update @aff-x { ip saddr }"
    assert printed_rule("  numgen random  mod 2 0 goto endpoint-x ") == "numgen random mod 2 0 goto endpoint-x"
    # Idempotent: the printed form is its own printed form.
    for rules in SKELETON_CHAINS.values():
        assert all(printed_rule(r) == r for r in rules)


def test_printed_chains_reads_add_rule_lines():
    text = "add chain ip svcops a\nadd rule ip svcops a goto b\nadd rule ip svcops a reject\nadd rule ip svcops b mark set mark or 0x4000\n"
    assert printed_chains(text) == {"a": ("goto b", "reject"), "b": ("meta mark set meta mark | 0x00004000",)}


def test_priorities_read_back_as_numbers():
    assert [parse_priority(t) for t in ("-110", "dstnat - 10", "dstnat", "srcnat", "filter + 5", "mangle", "raw", "x", "dstnat * 2")] == [
        -110, -110, -100, 100, 5, -150, -300, None, None,
    ]  # fmt: skip


LISTING = """table ip svcops {
\tflags dormant
\tcomment "service rules of svcops"
\tcounter hits {
\t\tpackets 0 bytes 0
\t}

\tct helper "my helper" {
\t\ttype "ftp" protocol tcp
\t\tl3proto ip
\t}

\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\tcomment "cluster, external and load-balancer IPs"
\t\telements = { 10.96.0.1 . tcp . 80 comment "ns/a/tcp/p AAAA" : goto service-ABCDEFGH-ns/a/tcp/p }
\t}

\tset affinity-ABCDEFGH-ns/a/tcp/p__10.0.0.1/80 {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags timeout,dynamic
\t\ttimeout 3h
\t\telements = { 10.9.9.9 timeout 3h expires 2h59m58s,
\t\t\t     10.9.9.8 timeout 3h expires 1h }
\t}

\tchain filter-prerouting {
\t\tcomment "svcops skeleton X"
\t\ttype filter hook prerouting priority dstnat - 10; policy drop;
\t\tct state new jump firewall-check
\t}

\tchain service-ABCDEFGH-ns/a/tcp/p {
\t\tip saddr 1.2.3.4 counter packets 3 bytes 180 accept comment "a { brace"
\t\tgoto endpoint-ABCDEFGH-ns/a/tcp/p__10.0.0.1/80
\t}

\tchain empty {
\t}
}
"""


def test_the_whole_listing_parses_to_its_content():
    live = parse_nft_list(LISTING, full=True)
    assert live.exists and live.units() == {"ns/a/tcp/p": "AAAA"}
    assert live.chains == {"filter-prerouting": "svcops skeleton X", "service-ABCDEFGH-ns/a/tcp/p": None, "empty": None}
    assert live.sets == {"affinity-ABCDEFGH-ns/a/tcp/p__10.0.0.1/80": 10800}
    c = live.content
    assert c.flags == "dormant"
    assert c.objects == (("counter", "hits"), ("ct helper", "my helper"))
    assert c.hooks == {"filter-prerouting": NftHook("filter", "prerouting", -110, "drop")}
    assert c.rules == {
        "filter-prerouting": ("ct state new jump firewall-check",),
        "service-ABCDEFGH-ns/a/tcp/p": (
            'ip saddr 1.2.3.4 counter packets 3 bytes 180 accept comment "a { brace"',
            "goto endpoint-ABCDEFGH-ns/a/tcp/p__10.0.0.1/80",
        ),
        "empty": (),
    }
    assert c.decls == {
        "service-ips": MAP_DECLS["service-ips"],
        # The affinity set's elements are its state (clients), not its declaration.
        "affinity-ABCDEFGH-ns/a/tcp/p__10.0.0.1/80": (("flags", "dynamic,timeout"), ("timeout", "10800"), ("type", "ipv4_addr")),
    }
    # The cheap reading and an empty one.
    assert parse_nft_list(LISTING).content is None
    assert parse_nft_list("", full=True).content == NftContent() and not parse_nft_list("", full=True).exists


def test_the_expected_skeleton_is_the_renderers():
    assert set(SKELETON_HOOKS) <= set(SKELETON_CHAINS)
    assert SKELETON_HOOKS["nat-postrouting"] == NftHook("nat", "postrouting", 100, "accept")


# --- the real nft -----------------------------------------------------------------


def listed(ns: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *LIST_COMMAND], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else ""


@pytest.mark.root
@requires("nft")
@pytest.mark.parametrize("name", sorted(F.SCENARIOS))
def test_a_loaded_scenario_lists_exactly_as_its_printed_form(name):
    rules = scenario(name)
    with netns() as ns:
        ns_run(ns, "nft", "-f", "-", stdin=full_payload(rules))
        live = parse_nft_list(listed(ns), full=True)
    expected = parse_nft_list(printed_listing(rules), full=True).content
    assert live.content == expected
    assert plan_update(rules, live).transactions == ()
