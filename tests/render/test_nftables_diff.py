"""Drift in svcops's nftables table (`svcops.render.nftables_diff`): every hand edit is
seen, named, and put right by what the plan sends; nothing else is touched.

First on simulated live tables (pure), then each drill by hand with the real nft in a
throwaway network namespace: the plan names it, its transactions load, the table is
then exactly a cold load's, and a second plan sends nothing.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace

import pytest
from modes_fixtures import compiled
from netns import netns, ns_run, requires
from render_fixtures import simulated_full_live

from svcops.render.nftables import SKELETON_COMMENT, full_payload
from svcops.render.nftables_diff import DRIFT_LINES, plan_update, rules_drift
from svcops.render.nftables_live import LIST_COMMAND, NftHook, NftLive, parse_nft_list

RULES = compiled("nftables").outputs["node1"].nftables
WEB = RULES.unit("default/web/tcp/http")
STICKY = RULES.unit("default/sticky/tcp/http")
SVC = next(c for c in WEB.chains if c.startswith("service-"))
# Endpoint chains: ClientIP affinity only (the others DNAT in their service chain).
EP = next(c for c in STICKY.chains if c.startswith("endpoint-"))
AFFINITY = STICKY.sets[0][0]
KEY = next(k for m, k, _ in WEB.elements if m == "service-ips")
HAIRPIN = next(k for u in RULES.units for m, k, _ in u.elements if m == "hairpin")


def simulated(rules=RULES) -> NftLive:
    """A live table holding `rules`, content included (as a listing would parse)."""
    return simulated_full_live(rules)


def with_content(live: NftLive, **changes) -> NftLive:
    return replace(live, content=replace(live.content, **changes))


def test_a_table_holding_the_render_is_in_sync():
    plan = plan_update(RULES, simulated())
    assert plan.transactions == () and plan.drift == () and plan.drifted == 0


def test_a_flushed_chain_is_named_and_its_unit_alone_is_re_sent_in_one_transaction():
    live = simulated()
    live = with_content(live, rules={**live.content.rules, SVC: ()})
    plan = plan_update(RULES, live)
    assert plan.drift == (f"chain {SVC} rules differ: 2 rules missing (flushed)",)
    assert (plan.added, plan.changed, plan.removed, plan.drifted) == (0, 0, 0, 1)
    (tx,) = plan.transactions
    flushed = re.findall(r"^flush chain ip svcops (\S+)", tx, re.M)
    assert set(flushed) == set(WEB.chains) and WEB.rules in tx
    assert not any(c in tx for u in RULES.units if u is not WEB for c in u.chains if c not in WEB.chains)


def test_rules_drift_counts_missing_and_foreign_rules():
    want = ("a", "b", "c")
    assert rules_drift("x", want, want) is None
    assert rules_drift("x", ("a", "c"), want) == "chain x rules differ: 1 rule missing"
    assert rules_drift("x", ("z", "a", "b", "c"), want) == "chain x rules differ: 1 foreign rule"
    assert rules_drift("x", ("c", "b", "a"), want) == "chain x rules differ: out of order"
    assert rules_drift("x", (), want) == "chain x rules differ: 3 rules missing (flushed)"
    assert rules_drift("x", ("z", "y"), ("a",)) == "chain x rules differ: 1 rule missing, 2 foreign rules"


def test_skeleton_drift_re_sends_the_skeleton_and_keeps_the_maps():
    live = simulated()
    c = live.content
    hook = NftHook("filter", "forward", -110, "drop")
    live = with_content(live, hooks={**c.hooks, "filter-forward": hook}, flags="dormant")
    plan = plan_update(RULES, live)
    assert plan.skeleton and not plan.reload and plan.drifted == 1
    assert "table ip svcops has flags dormant" in plan.drift
    assert any(d.startswith("chain filter-forward hook differs: type filter hook forward priority -110; policy drop;") for d in plan.drift)
    # The kernel refuses base chains made in the transaction that wakes a dormant table.
    wake, tx = plan.transactions
    assert wake == "add table ip svcops\n"
    assert "delete chain ip svcops filter-forward\n" in tx and "delete table" not in tx and "add element" not in tx


def test_a_base_chain_re_made_by_hand_without_svcops_comment_is_drift_not_another_version():
    live = simulated()
    live = replace(live, chains={**live.chains, "nat-output": None})
    plan = plan_update(RULES, live)
    assert plan.skeleton and plan.drifted == 1 and plan.drift == ("chain nat-output comment differs: none",)
    # Another svcops version's skeleton is no drift: it is re-sent all the same.
    old = {n: "svcops skeleton OLDOLDOLDOLDOLDO" if c and c.startswith("svcops skeleton") else c for n, c in simulated().chains.items()}
    plan = plan_update(RULES, replace(simulated(), chains=old))
    assert plan.skeleton and plan.drift == () and len(plan.transactions) == 1


def test_a_map_of_another_declaration_makes_the_table_re_made_whole():
    live = simulated()
    decls = {**live.content.decls, "service-nodeports": (("type", "inet_proto . inet_service : verdict"),)}
    plan = plan_update(RULES, with_content(live, decls=decls))
    assert plan.reload and plan.transactions == (full_payload(RULES),)
    assert plan.drift == ("map service-nodeports declaration differs: type inet_proto . inet_service : verdict",)


def test_foreign_objects_are_removed_and_named():
    live = simulated()
    live = replace(
        live,
        chains={**live.chains, "mine": None},
        sets={**live.sets, "blocked": None},
        maps={**live.maps, "mymap": {}, "service-ips": {**live.maps["service-ips"], "10.99.0.1 . tcp . 80": ("drop", None)}},
    )
    live = with_content(live, rules={**live.content.rules, "mine": ("drop",)}, objects=(("counter", "hits"),))
    plan = plan_update(RULES, live)
    assert set(plan.drift) == {
        "map service-ips foreign element 10.99.0.1 . tcp . 80",
        "foreign chain mine",
        "foreign set blocked",
        "foreign map mymap",
        "foreign counter hits",
    }
    last = plan.transactions[-1]
    assert last.index("flush chain ip svcops mine") < last.index("delete counter ip svcops hits") < last.index("delete chain ip svcops mine")
    assert "delete element ip svcops service-ips { 10.99.0.1 . tcp . 80 }" in "".join(plan.transactions)


def test_leftovers_of_a_changed_or_removed_service_are_no_drift():
    old = compiled("nftables").outputs["node1"].nftables
    services = [s for s in __import__("modes_fixtures").SERVICES if s.name != "sticky"]
    new = compiled("nftables", tuple(services)).outputs["node1"].nftables
    plan = plan_update(new, simulated(old))
    assert plan.removed == 1 and plan.drift == () and plan.drifted == 0 and plan.transactions


def test_deleted_elements_of_a_present_service_are_drift_not_a_new_service():
    live = simulated()
    maps = {m: {k: v for k, v in els.items() if not (v[1] or "").startswith(WEB.id + " ")} for m, els in live.maps.items()}
    plan = plan_update(RULES, replace(live, maps=maps))
    assert plan.added == 0 and plan.drifted == 1
    assert f"map service-ips element {KEY} missing" in plan.drift


def test_without_content_only_digests_are_compared():
    live = simulated()
    flushed = with_content(live, rules={**live.content.rules, SVC: ()})
    assert plan_update(RULES, replace(flushed, content=None)).transactions == ()


def test_many_drift_lines_are_capped():
    live = simulated()
    rules = {c: () for c in live.content.rules}
    plan = plan_update(RULES, with_content(live, rules=rules))
    assert len(plan.drift) == DRIFT_LINES and plan.drift[-1].startswith("... and ")


# --- by hand, with the real nft -----------------------------------------------------

DRILLS = {
    "service chain flushed": (f"nft flush chain ip svcops '{SVC}'", [f"chain {SVC} rules differ: 2 rules missing (flushed)"]),
    "rule inserted": (
        f"nft insert rule ip svcops '{SVC}' ip saddr 192.0.2.99 drop",
        [f"chain {SVC} rules differ: 1 foreign rule"],
    ),
    "endpoint's dnat deleted": (
        f"h=$(nft -a list chain ip svcops '{SVC}' | sed -n 's/.*dnat to.* # handle //p' | head -n 1); nft delete rule ip svcops '{SVC}' handle $h",
        [f"chain {SVC} rules differ: 1 rule missing"],
    ),
    "affinity endpoint's dnat deleted": (
        f"h=$(nft -a list chain ip svcops '{EP}' | sed -n 's/.*dnat to.* # handle //p'); nft delete rule ip svcops '{EP}' handle $h",
        [f"chain {EP} rules differ: 1 rule missing"],
    ),

    "map element deleted": (f"nft delete element ip svcops service-ips '{{ {KEY} }}'", [f"map service-ips element {KEY} missing"]),
    "map element's verdict changed": (
        f"nft delete element ip svcops service-ips '{{ {KEY} }}' && "
        f"nft add element ip svcops service-ips '{{ {KEY} comment \"{WEB.comment}\" : drop }}'",
        [f'map service-ips element {KEY} differs: drop comment "{WEB.comment}" (svcops: goto {SVC})'],
    ),
    "foreign element": ("nft add element ip svcops service-ips '{ 10.99.0.1 . tcp . 80 : drop }'", ["map service-ips foreign element 10.99.0.1 . tcp . 80"]),
    "foreign chain": ("nft add chain ip svcops mine && nft add rule ip svcops mine drop", ["foreign chain mine"]),
    "foreign base chain": (
        "nft add chain ip svcops mine '{ type filter hook input priority 0; policy accept; }' && nft add rule ip svcops mine tcp dport 80 drop",
        ["foreign chain mine"],
    ),
    "foreign rule jumping to a foreign chain": (
        "nft add chain ip svcops mine && nft add rule ip svcops nat-output jump mine",
        ["chain nat-output rules differ: 1 foreign rule", "foreign chain mine"],
    ),
    "base chain policy": (
        "nft add chain ip svcops filter-forward '{ type filter hook forward priority -110; policy drop; }'",
        ["chain filter-forward hook differs: type filter hook forward priority -110; policy drop; (svcops: type filter hook forward priority -110; policy accept;)"],
    ),
    "base chain priority": (
        "nft delete chain ip svcops nat-output && nft add chain ip svcops nat-output "
        "'{ type nat hook output priority 0; policy accept; comment \"" + SKELETON_COMMENT + "\"; }' && "
        "nft add rule ip svcops nat-output jump services",
        ["chain nat-output hook differs: type nat hook output priority 0; policy accept; (svcops: type nat hook output priority -100; policy accept;)"],
    ),
    "base chain deleted": ("nft delete chain ip svcops nat-prerouting", ["chain nat-prerouting missing"]),
    "top chain rule deleted": (
        "h=$(nft -a list chain ip svcops services | sed -n 's/.*@service-ips # handle //p'); nft delete rule ip svcops services handle $h",
        ["chain services rules differ: 1 rule missing"],
    ),
    "table dormant": ("nft add table ip svcops '{ flags dormant; }'", ["table ip svcops has flags dormant"]),
    "foreign set, map and objects": (
        "nft add set ip svcops s '{ type ipv4_addr; elements = { 192.0.2.1 }; }' && "
        "nft add map ip svcops m '{ type ipv4_addr : verdict; }' && nft add counter ip svcops c && "
        "nft add quota ip svcops q '{ over 10 mbytes; }' && nft add rule ip svcops services counter name c",
        ["foreign set s", "foreign map m", "foreign counter c", "foreign quota q", "chain services rules differ: 1 foreign rule"],
    ),
    "affinity set re-made": (
        # Its rules go first (they use it), then it comes back with another timeout.
        "for c in $(nft list table ip svcops | sed -n 's/^\\tchain \\(\\S*sticky\\S*\\) {/\\1/p'); do nft flush chain ip svcops \"$c\"; done && "
        f"nft delete set ip svcops '{AFFINITY}' && nft add set ip svcops '{AFFINITY}' '{{ type ipv4_addr; flags dynamic,timeout; timeout 5m; }}'",
        [f"set {AFFINITY} declaration differs: flags dynamic,timeout; timeout 300; type ipv4_addr"],
    ),
    "map re-made with another comment": (
        "nft flush chain ip svcops services && nft delete map ip svcops service-nodeports && "
        "nft add map ip svcops service-nodeports '{ type inet_proto . inet_service : verdict; comment \"mine\"; }'",
        ["map service-nodeports declaration differs: comment mine; type inet_proto . inet_service : verdict"],
    ),
}


def read(ns: str) -> NftLive:
    r = subprocess.run(["ip", "netns", "exec", ns, *LIST_COMMAND], capture_output=True, text=True)
    return parse_nft_list(r.stdout if r.returncode == 0 else "", full=True)


@pytest.mark.root
@requires("nft")
@pytest.mark.parametrize("drill", sorted(DRILLS))
def test_a_hand_edit_is_named_and_repaired(drill):
    script, expected = DRILLS[drill]
    with netns() as cold, netns() as ns:
        ns_run(cold, "nft", "-f", "-", stdin=full_payload(RULES))
        ns_run(ns, "nft", "-f", "-", stdin=full_payload(RULES))
        want = read(cold)
        ns_run(ns, "sh", "-c", script)
        drifted = read(ns)
        assert drifted != want, "the drill changed nothing"
        plan = plan_update(RULES, drifted)
        for line in expected:
            assert line in plan.drift, plan.drift
        assert plan.drifted >= 1 and plan.transactions
        for tx in plan.transactions:
            ns_run(ns, "nft", "-f", "-", stdin=tx)
        assert read(ns) == want
        assert plan_update(RULES, read(ns)).transactions == ()


@pytest.mark.root
@requires("nft")
def test_a_deleted_hairpin_element_is_put_back():
    """A hairpin unit is one element: deleted by hand, nothing on the node says it was
    there, so the plan counts it as new (and `svcops check` as missing) and adds it."""
    with netns() as cold, netns() as ns:
        ns_run(cold, "nft", "-f", "-", stdin=full_payload(RULES))
        ns_run(ns, "nft", "-f", "-", stdin=full_payload(RULES))
        want = read(cold)
        ns_run(ns, "nft", "delete", "element", "ip", "svcops", "hairpin", f"{{ {HAIRPIN} }}")
        drifted = read(ns)
        assert HAIRPIN not in drifted.maps["hairpin"]
        plan = plan_update(RULES, drifted)
        assert plan.added == 1 and len(plan.transactions) == 1 and HAIRPIN in plan.transactions[0]
        ns_run(ns, "nft", "-f", "-", stdin=plan.transactions[0])
        assert read(ns) == want
