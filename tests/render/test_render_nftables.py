"""The nftables renderer: golden payloads, kube-proxy semantics, updates, a real kernel.

Golden files: tests/golden/nftables/<scenario>.txt hold the exact `nft -f` payload
(`full_payload`) one node gets for the small sites of tests/render_fixtures.py, the
same scenarios as iptables mode. After an intended change of the rules, regenerate
them and review the diff:

    SVCOPS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/render/test_render_nftables.py

Tests marked `root` load payloads with the real `nft` into throwaway network
namespaces ("svnft-<pid>-<n>", deleted after); the machine's own ruleset is never
touched. They are skipped without root or nft.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import replace
from fractions import Fraction

import pytest
import render_fixtures as F
from golden import check_golden
from hypothesis import given, settings
from hypothesis import strategies as st
from netns import netns, ns_run
from paths import GOLDEN as GOLDEN_DIR
from render_fixtures import simulated_live

from svcops.compile.endpoints import resolve
from svcops.render.nftables import (
    LIVE_COMMANDS,
    NftRules,
    chain_names,
    full_payload,
    parse_nft_list,
    render_nodes,
)
from svcops.render.nftables_diff import update_payloads
from svcops.render.nftables_live import NftLive, parse_timeout, unit_of_name
from svcops.site.model import Endpoint, ResolvedPort, Service, ServicePort

GOLDEN = GOLDEN_DIR / "nftables"
NODES = ["node1", "node2", "node3"]
WEB = "default/web/tcp/http"


def resolved(services, manual=()):
    ports, _ = resolve(F.site(services, manual), F.nodes(), F.allocations(services))
    return ports


def render_scenario(name: str, nodes=NODES):
    services, manual, node = F.SCENARIOS[name]
    return render_nodes(F.CLUSTER, resolved(services, manual), nodes), node


def golden_text(name: str) -> str:
    rules, node = render_scenario(name)
    header = f"# svcops golden payload: scenario {name}, node {node} (tests/render_fixtures.py)\n"
    return header + full_payload(rules[node])


def choices(rules: list[str]) -> list[tuple[int | None, str]]:
    """The endpoint choice of a service chain: (m, target) for `numgen random mod m 0
    <go>`, (None, target) for the last, unconditional one; <go> is `meta l4proto P dnat
    to target` (target "ip:port"), or `goto target` (an endpoint chain: ClientIP
    affinity)."""
    out = []
    go = r"(?:goto (endpoint-\S+)|meta l4proto \w+ dnat to (\S+))"
    for r in rules:
        if m := re.fullmatch(r"numgen random mod (\d+) 0 " + go, r):
            out.append((int(m.group(1)), m.group(2) or m.group(3)))
        elif m := re.fullmatch(go, r):
            out.append((None, m.group(1) or m.group(2)))
    return out


def rules_of(payload: str, chain: str) -> list[str]:
    """The rules a payload adds to `chain`, in order."""
    prefix = f"add rule ip svcops {chain} "
    return [ln[len(prefix) :] for ln in payload.splitlines() if ln.startswith(prefix)]


def elements_of(payload: str) -> dict[str, dict[str, str]]:
    """map -> key -> verdict, for every element a payload adds (comments dropped)."""
    text = "".join(
        "table ip svcops {\n"
        + "".join(f"map {m} {{\nelements = {{ {body} }}\n}}\n" for m, body in re.findall(
            r"^add element ip svcops (\S+) \{ (.*?) \}$", payload, re.M | re.S))  # fmt: skip
        + "}\n"
    )
    live = parse_nft_list(text)
    out: dict[str, dict[str, str]] = {}
    for m, els in live.maps.items():
        out.setdefault(m, {}).update({k: v for k, (v, _c) in els.items()})
    return out


def declared_chains(payload: str) -> list[str]:
    return re.findall(r"^add chain ip svcops (\S+)", payload, re.M)


# --- golden files -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(F.SCENARIOS))
def test_golden_payload(name):
    path = GOLDEN / f"{name}.txt"
    text = golden_text(name)
    check_golden(path, text)


def test_every_golden_file_has_a_scenario():
    assert sorted(p.stem for p in GOLDEN.glob("*.txt")) == sorted(F.SCENARIOS)


# --- what the rules mean (checked on the payload, as a reviewer would) -------------


def test_only_the_svcops_table_is_ever_named():
    for name in F.SCENARIOS:
        rules, node = render_scenario(name)
        for payload in (full_payload(rules[node]), *update_payloads(rules[node], None, chunk=1)):
            for ln in payload.splitlines():
                if ln and not ln.startswith(("#", "\t")):
                    assert re.match(r"^(add|delete|flush) (table|chain|rule|map|set|element) ip svcops\b", ln), ln


def test_external_name_and_headless_render_the_skeleton_only():
    for name in ("external-name", "headless"):
        rules, node = render_scenario(name)
        assert rules[node].units == ()
        payload = full_payload(rules[node])
        assert "add element" not in payload
        assert rules_of(payload, "services") == [
            "ip daddr . meta l4proto . th dport vmap @service-ips",
            "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports",
        ]


def test_base_chains_hook_before_and_around_nat():
    rules, node = render_scenario("cluster-ip")
    payload = full_payload(rules[node])
    hooks = dict(re.findall(r"^add chain ip svcops (\S+) \{ type (\w+ hook \w+ priority -?\d+) ;", payload, re.M))
    assert hooks == {
        "filter-prerouting": "filter hook prerouting priority -110",
        "filter-input": "filter hook input priority -110",
        "filter-forward": "filter hook forward priority -110",
        "filter-output": "filter hook output priority -110",
        "nat-prerouting": "nat hook prerouting priority -100",
        "nat-output": "nat hook output priority -100",
        "nat-postrouting": "nat hook postrouting priority 100",
    }
    assert rules_of(payload, "masquerading") == [
        "ct status dnat ip saddr . ip daddr vmap @hairpin",
        "mark and 0x4000 == 0 return",
        "mark set mark xor 0x4000",
        "masquerade fully-random",
    ]
    # A clean load replaces any older svcops table, and only that.
    assert payload.startswith("add table ip svcops\ndelete table ip svcops\n")


def test_cluster_ip_dispatches_to_an_equal_random_choice_with_hairpin_and_dnat():
    rules, node = render_scenario("cluster-ip")
    payload = full_payload(rules[node])
    svc = chain_names(resolved(F.SCENARIOS["cluster-ip"][0])[0])["service"]
    elements = elements_of(payload)
    assert elements.pop("service-ips") == {"10.96.0.10 . tcp . 80": f"goto {svc}"}
    # Each endpoint address reaching itself through the service is masqueraded.
    assert elements == {"hairpin": {
        "10.0.0.11 . 10.0.0.11": "jump mark-for-masquerade",
        "10.244.2.7 . 10.244.2.7": "jump mark-for-masquerade",
    }}  # fmt: skip
    # Each choice DNATs in the service chain itself: no chain per endpoint.
    assert rules_of(payload, svc) == [
        "numgen random mod 2 0 meta l4proto tcp dnat to 10.0.0.11:80",
        "meta l4proto tcp dnat to 10.244.2.7:8080",
    ]
    assert not [c for c in declared_chains(payload) if c.startswith("endpoint-")]


def test_no_endpoints_rejects_on_every_address():
    rules, node = render_scenario("no-endpoints")
    payload = full_payload(rules[node])
    assert elements_of(payload) == {
        "no-endpoint-services": {"10.96.0.10 . tcp . 80": "goto reject-chain"},
        "no-endpoint-external": {"192.0.2.1 . tcp . 80": "goto reject-chain"},
        "no-endpoint-nodeports": {"tcp . 30080": "goto reject-chain"},
    }
    assert rules_of(payload, "reject-chain") == ["reject"]
    assert not [c for c in declared_chains(payload) if "/" in c]


def test_external_traffic_policy_local():
    rules, _ = render_scenario("external-local-with-endpoints")
    names = chain_names(resolved(F.SCENARIOS["external-local-with-endpoints"][0])[0])
    ext, local, svc = names["external"], names["local"], names["service"]
    with_eps, without = full_payload(rules["node1"]), full_payload(rules["node3"])
    # The node's own traffic is masqueraded and may use any endpoint; everyone else
    # keeps the client address and reaches this node's endpoints only.
    assert rules_of(with_eps, ext) == [
        "fib saddr type local jump mark-for-masquerade",
        f"fib saddr type local goto {svc}",
        f"goto {local}",
    ]
    assert rules_of(with_eps, local) == ["meta l4proto tcp dnat to 10.0.0.11:80"]
    assert elements_of(with_eps)["service-nodeports"] == {"tcp . 30080": f"goto {ext}"}
    # Without local endpoints: no local chain, outside traffic dropped, local still served.
    assert local not in declared_chains(without)
    assert rules_of(without, ext) == rules_of(with_eps, ext)[:2]
    assert elements_of(without)["no-endpoint-nodeports"] == {"tcp . 30080": "drop"}
    assert "no-endpoint-nodeports" not in elements_of(with_eps)


def test_internal_traffic_policy_local():
    rules, _ = render_scenario("internal-local-with-endpoints")
    names = chain_names(resolved(F.SCENARIOS["internal-local-with-endpoints"][0])[0])
    on2, on3 = full_payload(rules["node2"]), full_payload(rules["node3"])
    assert elements_of(on2)["service-ips"] == {"10.96.0.10 . tcp . 80": f"goto {names['local']}"}
    assert rules_of(on2, names["local"]) == ["meta l4proto tcp dnat to 10.244.2.7:8080"]
    assert names["service"] not in declared_chains(on2)  # the other node's endpoint is unreachable
    assert "10.0.0.11:" not in on2.partition("add element")[0]
    assert elements_of(on3)["no-endpoint-services"] == {"10.96.0.10 . tcp . 80": "drop"}
    assert set(elements_of(on3)) == {"no-endpoint-services", "hairpin"}
    assert not [c for c in declared_chains(on3) if "/" in c]


def test_source_ranges_gate_the_load_balancer_ip():
    rules, node = render_scenario("source-ranges")
    payload = full_payload(rules[node])
    fw = chain_names(resolved(F.SCENARIOS["source-ranges"][0])[0])["firewall"]
    assert elements_of(payload)["firewall-ips"] == {"192.0.2.1 . tcp . 80": f"goto {fw}"}
    assert rules_of(payload, fw) == ["ip saddr != { 198.51.100.1, 203.0.113.0/24 } drop"]
    assert rules_of(payload, "firewall-check") == ["ip daddr . meta l4proto . th dport vmap @firewall-ips"]
    assert rules_of(payload, "filter-prerouting") == ["ct state new jump firewall-check"]


def _lb(ranges):
    svc = F.service("web", F.HTTP, type="LoadBalancer", load_balancer_source_ranges=ranges)
    rules = render_nodes(F.CLUSTER, resolved((svc,)), ["node1"])["node1"]
    fw = chain_names(resolved((svc,))[0])["firewall"]
    return rules_of(full_payload(rules), fw)


def test_source_ranges_are_merged_and_all_allowed_means_no_firewall():
    # nft refuses overlapping intervals in one set: they are merged first.
    assert _lb(("203.0.113.0/24", "203.0.113.7/32", "203.0.112.0/24")) == ["ip saddr != { 203.0.112.0/23 } drop"]
    assert _lb(("0.0.0.0/0", "10.0.0.0/8")) == []


def test_client_ip_affinity_checks_timed_sets_before_choosing():
    rules, node = render_scenario("client-ip-affinity")
    payload = full_payload(rules[node])
    svc = chain_names(resolved(F.SCENARIOS["client-ip-affinity"][0])[0])["service"]
    chain = rules_of(payload, svc)
    assert [r.startswith("ip saddr @affinity-") for r in chain] == [True, True, False, False]
    sets = re.findall(r"^add set ip svcops (\S+) \{ type ipv4_addr ; flags dynamic,timeout ; timeout (\d+)s ; \}$",
                      payload, re.M)  # fmt: skip
    assert len(sets) == 2 and {t for _, t in sets} == {"600"}
    for aff, _ in sets:
        ep = "endpoint-" + aff.removeprefix("affinity-")
        assert f"ip saddr @{aff} goto {ep}" in chain
        assert rules_of(payload, ep) == [f"update @{aff} {{ ip saddr }}", f"meta l4proto tcp dnat to {ep.rsplit('__', 1)[1].replace('/', ':')}"]


def test_udp_and_sctp_keep_their_protocol():
    for name, proto, port in (("udp", "udp", 53), ("sctp", "sctp", 3868)):
        rules, node = render_scenario(name)
        payload = full_payload(rules[node])
        assert f"10.96.0.10 . {proto} . {port}" in elements_of(payload)["service-ips"]
        assert re.search(rf"^add rule ip svcops service-\S+ (numgen random mod \d+ 0 )?meta l4proto {proto} dnat to [\d.]+:{port}$", payload, re.M)


def test_chain_names_are_kube_proxy_style():
    expected = base64.b32encode(hashlib.sha256(WEB.encode()).digest()).decode()[:8]
    for name in F.SCENARIOS:
        rules, node = render_scenario(name)
        for chain in declared_chains(full_payload(rules[node])):
            # nft identifiers: a letter first, then [A-Za-z0-9/_.-]; at most 255 bytes.
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9/_.-]*", chain) and len(chain) <= 255, chain
            if "/" in chain:
                assert unit_of_name(chain) is not None
    rp = resolved(F.SCENARIOS["cluster-ip"][0])[0]
    assert chain_names(rp)["service"] == f"service-{expected}-{WEB}"
    unnamed = resolved(F.SCENARIOS["sctp"][0])[0]
    assert chain_names(unnamed)["service"].endswith("-default/sig/sctp/")


def test_nodes_share_units():
    """Units without a Local policy are one object every node holds; Local views are cached."""
    rules, _ = render_scenario("external-local-with-endpoints", nodes=["node1", "node2", "node3", "node4"])
    n3, n4 = rules["node3"].units, rules["node4"].units  # neither runs a web workload
    assert all(a is b for a, b in zip(n3, n4, strict=True))
    web = next(i for i, u in enumerate(n3) if u.id == WEB)
    assert rules["node1"].units[web].digest != n3[web].digest
    shared, _ = render_scenario("multi-port")
    assert all(a is b for a, b in zip(shared["node1"].units, shared["node3"].units, strict=True))


def test_a_key_two_services_claim_goes_to_the_first():
    a = F.service("a", F.HTTP, external_ips=("198.51.100.7",))
    b = F.service("b", F.HTTP, external_ips=("198.51.100.7",))
    payload = full_payload(render_nodes(F.CLUSTER, resolved((a, b)), ["node1"])["node1"])
    (target,) = [v for k, v in elements_of(payload)["service-ips"].items() if k.startswith("198.51.100.7 ")]
    assert "/default/a/" in target or "-default/a/" in target


# --- equal shares -------------------------------------------------------------------


def _port_with(n: int, affinity: bool = False, name: str = "many", cip: str = "10.96.0.99") -> ResolvedPort:
    svc = Service("ns", name, ports=(ServicePort("p", "TCP", 80, 8080),),
                  session_affinity="ClientIP" if affinity else "None")  # fmt: skip
    eps = tuple(Endpoint(f"10.1.{i // 250}.{i % 250 + 1}", 8080, None) for i in range(n))
    return ResolvedPort(svc, svc.ports[0], cip, None, None, eps)


def shares(rules: list[str]) -> dict[str, Fraction]:
    """endpoint chain -> the share of new connections it gets, from the choice rules."""
    left, out = Fraction(1), {}
    for m, target in choices(rules):
        p = Fraction(1) if m is None else Fraction(1, m)  # `numgen random mod m 0`: 1 in m
        out[target] = out.get(target, 0) + left * p
        left -= left * p
    assert left == 0  # the last rule takes whatever is left: nothing falls through
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=300), st.booleans())
def test_every_endpoint_gets_an_equal_share(n, affinity):
    rp = _port_with(n, affinity)
    payload = full_payload(render_nodes(F.CLUSTER, [rp], ["node1"])["node1"])
    got = shares(rules_of(payload, chain_names(rp)["service"]))
    assert len(got) == n and set(got.values()) == {Fraction(1, n)}
    dnat = {rules_of(payload, c)[-1].rsplit(" ", 1)[1] for c in got} if affinity else set(got)
    assert dnat == {f"{e.ip}:{e.port}" for e in rp.endpoints}


# --- live state, without a kernel ----------------------------------------------------


SITE = (
    F.service("web", F.HTTP, type="NodePort"),
    F.service("sticky", F.HTTP, session_affinity="ClientIP", affinity_timeout=600),
    F.service("lb", F.HTTP, type="LoadBalancer", load_balancer_source_ranges=("203.0.113.0/24",)),
    F.service("dns", F.ServicePort("dns", "UDP", 53, "dns"), selector={"app": "dns"}),
    F.service("gone", F.HTTP, selector={"app": "missing"}),
    F.service("local", F.HTTP, type="NodePort", external_traffic_policy="Local"),
)

# name -> the site after one change (same allocations for the services kept)
CHANGES = {
    "endpoint-removed": lambda s: tuple(replace(x, selector={"app": "web", "x": "y"}) if x.name == "web" else x
                                        for x in s),  # fmt: skip
    "affinity-timeout": lambda s: tuple(replace(x, affinity_timeout=1200) if x.name == "sticky" else x for x in s),
    "service-removed": lambda s: tuple(x for x in s if x.name != "sticky"),
    "service-added": lambda s: (*s, F.service("new", F.HTTP, type="NodePort")),
    "policy-local": lambda s: tuple(replace(x, external_traffic_policy="Local") if x.name == "web" else x for x in s),
    "ranges-changed": lambda s: tuple(replace(x, load_balancer_source_ranges=("198.51.100.0/24",)) if x.name == "lb"
                                      else x for x in s),  # fmt: skip
    "endpoints-appear": lambda s: tuple(replace(x, selector={"app": "web"}) if x.name == "gone" else x for x in s),
}


def site_rules(services, node="node1") -> NftRules:
    # Allocations from the original site, so kept services keep their addresses.
    kept = {s.key for s in SITE}
    allocs = F.allocations((*SITE, *(s for s in services if s.key not in kept)))
    ports, _ = resolve(F.site(services), F.nodes(), allocs)
    return render_nodes(F.CLUSTER, ports, [node])[node]


def test_nothing_to_do_when_the_live_table_matches():
    rules = site_rules(SITE)
    assert update_payloads(rules, simulated_live(rules)) == []


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_touches_only_its_service(change):
    old, new = site_rules(SITE), site_rules(CHANGES[change](SITE))
    payloads = update_payloads(new, simulated_live(old))
    assert payloads
    touched = {unit_of_name(n) for p in payloads for n in re.findall(r"[a-z]+-[A-Z2-7]{8}-[^\s,}]+", p)}
    touched |= {c.split('"')[1].rsplit(" ", 1)[0] for p in payloads for c in re.findall(r'comment "[^"]+"', p)}
    changed_units = {u.id for u in new.units} ^ {u.id for u in old.units}
    changed_units |= {u.id for u in new.units if (o := old.unit(u.id)) is not None and o.digest != u.digest}
    assert touched == changed_units and len(changed_units) == 1
    assert not any("add table" in p or "flush chain ip svcops services" in p for p in payloads)


def test_cold_start_comes_in_chunks():
    ports = [_port_with(3, affinity=i % 2 == 0, name=f"s{i}", cip=f"10.96.1.{i}") for i in range(25)]
    rules = render_nodes(F.CLUSTER, ports, ["node1"])["node1"]
    payloads = update_payloads(rules, None, chunk=10)
    assert len(payloads) == 1 + 3
    assert "add element" not in payloads[0] and payloads[0].startswith("add table ip svcops\ndelete table")
    for p in payloads[1:]:
        # Each chunk declares the chains (and sets) its rules and elements use.
        declared = set(declared_chains(p)) | set(re.findall(r"^add set ip svcops (\S+)", p, re.M))
        used = set(re.findall(r"goto (\S+?)[,} \n]", p)) | set(re.findall(r"@(affinity-\S+?) ", p))
        assert used - {"reject-chain"} <= declared
    assert [len(elements_of(p).get("service-ips", {})) for p in payloads[1:]] == [10, 10, 5]
    assert "".join(payloads[1:]).count("add chain") == full_payload(rules).count("add chain") - 14


def test_a_stale_skeleton_is_rebuilt_without_losing_services():
    rules = site_rules(SITE)
    live = simulated_live(rules)
    old = NftLive(True, {**live.chains, "filter-input": "svcops skeleton OLDOLDOLDOLDOLDO"}, live.sets, live.maps)
    (payload,) = update_payloads(rules, old)
    assert "delete chain ip svcops filter-input\n" in payload and "delete table" not in payload
    assert "add element" not in payload and "flush map" not in payload


def test_parse_nft_list_reads_units_sets_and_multiline_elements():
    text = """table ip svcops {
\tcomment "service rules of svcops"
\tset affinity-ABCDEFGH-ns/a/tcp/p__10.0.0.1/80 {
\t\ttype ipv4_addr
\t\tsize 65535
\t\tflags dynamic,timeout
\t\ttimeout 3h
\t\telements = { 10.9.9.9 timeout 3h expires 2h59m58s,
\t\t\t     10.9.9.8 timeout 3h expires 1h }
\t}

\tmap service-ips {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.1 . tcp . 80 comment "ns/a/tcp/p AAAA" : goto service-ABCDEFGH-ns/a/tcp/p,
\t\t\t     192.0.2.1 . tcp . 80 comment "ns/a/tcp/p AAAA" : goto external-ABCDEFGH-ns/a/tcp/p }
\t}

\tmap no-endpoint-services {
\t\ttype ipv4_addr . inet_proto . inet_service : verdict
\t\telements = { 10.96.0.2 . udp . 53 comment "ns/b/udp/dns BBBB" : goto reject-chain }
\t}

\tchain nat-output {
\t\tcomment "svcops skeleton X"
\t\ttype nat hook output priority -100; policy accept;
\t\tjump services
\t}

\tchain service-ABCDEFGH-ns/a/tcp/p {
\t\tnumgen random mod 1 vmap { 0 : goto endpoint-ABCDEFGH-ns/a/tcp/p__10.0.0.1/80 }
\t}
}
"""
    live = parse_nft_list(text)
    assert live.exists
    assert live.sets == {"affinity-ABCDEFGH-ns/a/tcp/p__10.0.0.1/80": 10800}
    assert live.chains == {"nat-output": "svcops skeleton X", "service-ABCDEFGH-ns/a/tcp/p": None}
    assert live.maps["service-ips"]["192.0.2.1 . tcp . 80"] == (
        "goto external-ABCDEFGH-ns/a/tcp/p", "ns/a/tcp/p AAAA")
    assert live.units() == {"ns/a/tcp/p": "AAAA", "ns/b/udp/dns": "BBBB"}
    assert parse_nft_list("") == NftLive()
    assert [parse_timeout(t) for t in ("10m", "11m40s", "1d2h", "3h", "bad")] == [600, 700, 93600, 10800, None]


# --- a real kernel, in throwaway network namespaces ---------------------------------


def _have_nft() -> bool:
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("ip", "nft"))


root = pytest.mark.skipif(not _have_nft(), reason="needs root, ip and nft")


def nft_apply(ns: str, *payloads: str) -> None:
    for p in payloads:
        ns_run(ns, "nft", "-f", "-", stdin=p)


def listing(ns: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "ip", "svcops"],
                       capture_output=True, text=True)  # fmt: skip
    return r.stdout if r.returncode == 0 else ""


def normalized(text: str) -> dict[str, tuple]:
    """A listing as {object header: its lines}, map elements sorted: what the table
    holds, whatever order the objects were created in."""
    blocks: dict[str, tuple] = {}
    head, body, depth = None, [], 0
    for line in text.splitlines():
        s = line.strip()
        if depth == 1 and s.endswith("{") and s.split(" ", 1)[0] in ("chain", "set", "map"):
            head, body = s, []
        elif depth == 2 and s == "}" and head:
            joined = " ".join(body)
            if "elements = {" in joined:
                pre, _, els = joined.partition("elements = {")
                items = sorted(" ".join(i.split()) for i in els.rstrip("} ").split(","))
                body = [pre.strip(), *items]
            blocks[head] = tuple(x for x in body if not x.startswith("size "))
            head = None
        elif head:
            body.append(s)
        depth += s.count("{") - s.count("}") if not s.startswith("comment") else 0
    return blocks


@pytest.mark.root
@root
def test_every_golden_payload_passes_nft_check():
    with netns() as ns:
        for path in sorted(GOLDEN.glob("*.txt")):
            ns_run(ns, "nft", "-c", "-f", "-", stdin=path.read_text())
        assert listing(ns) == ""  # check mode committed nothing


@pytest.mark.root
@root
@pytest.mark.parametrize("name", sorted(F.SCENARIOS))
def test_scenario_loads_and_a_second_apply_changes_nothing(name):
    rules, node = render_scenario(name)
    with netns() as ns:
        nft_apply(ns, full_payload(rules[node]))
        live = parse_nft_list(listing(ns), full=True)
        assert live.exists and {u.id for u in rules[node].units} == set(live.units())
        assert update_payloads(rules[node], live) == []
        # Loading the full payload again replaces the table with the same one.
        before = normalized(listing(ns))
        nft_apply(ns, full_payload(rules[node]))
        assert normalized(listing(ns)) == before


@pytest.mark.root
@root
@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_small_change_is_a_small_transaction_that_matches_a_cold_load(change):
    old, new = site_rules(SITE), site_rules(CHANGES[change](SITE))
    with netns() as cold, netns() as ns:
        nft_apply(cold, full_payload(new))
        nft_apply(ns, full_payload(old))
        payloads = update_payloads(new, parse_nft_list(listing(ns), full=True))
        assert 1 <= len(payloads) <= 3 and sum(map(len, payloads)) < len(full_payload(new)) / 2
        nft_apply(ns, *payloads)
        assert normalized(listing(ns)) == normalized(listing(cold))
        assert update_payloads(new, parse_nft_list(listing(ns), full=True)) == []


@pytest.mark.root
@root
def test_chunked_cold_load_gives_the_same_table_as_one_transaction():
    ports = [_port_with(1 + i % 4, affinity=i % 3 == 0, name=f"s{i}", cip=f"10.96.1.{i}") for i in range(40)]
    ports += resolved(SITE)
    rules = render_nodes(F.CLUSTER, ports, ["node1"])["node1"]
    with netns() as one, netns() as chunked:
        nft_apply(one, full_payload(rules))
        payloads = update_payloads(rules, None, chunk=7)
        assert len(payloads) == 1 + -(-len(rules.units) // 7)
        nft_apply(chunked, *payloads)
        assert normalized(listing(chunked)) == normalized(listing(one))
        assert update_payloads(rules, parse_nft_list(listing(chunked), full=True)) == []


@pytest.mark.root
@root
def test_other_tables_are_left_byte_identical():
    foreign = (
        "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority 0; policy accept;\n"
        '\t\ttcp dport 22 accept comment "ssh"\n\t}\n}\n'
        "table inet mine {\n\tset blocked {\n\t\ttype ipv4_addr\n\t\telements = { 192.0.2.99 }\n\t}\n"
        "\tchain c {\n\t\tip saddr @blocked drop\n\t}\n}\n"
    )
    old, new = site_rules(SITE), site_rules(CHANGES["service-removed"](SITE))
    with netns() as ns:
        nft_apply(ns, foreign)
        before = ns_run(ns, "nft", "list", "ruleset")
        nft_apply(ns, *update_payloads(old, None, chunk=2))
        nft_apply(ns, *update_payloads(new, parse_nft_list(listing(ns), full=True)))
        nft_apply(ns, full_payload(old))
        after = ns_run(ns, "nft", "list", "ruleset")
        assert before in after  # the foreign tables come first, unchanged
        ns_run(ns, "nft", "delete", "table", "ip", "svcops")
        assert ns_run(ns, "nft", "list", "ruleset") == before


@pytest.mark.root
@root
def test_the_cheap_live_commands_read_the_same_state_as_a_full_listing():
    rules = site_rules(SITE)
    with netns() as ns:
        nft_apply(ns, "table ip filter {\n\tchain x {\n\t\tcomment \"not ours\"\n\t}\n\tset s {\n\t\ttype ipv4_addr\n\t}\n}\n")
        assert parse_nft_list("".join(ns_run(ns, *cmd) for cmd in LIVE_COMMANDS[:2])) == NftLive()
        nft_apply(ns, full_payload(rules))
        cheap = "".join(ns_run(ns, *cmd) for cmd in LIVE_COMMANDS)
        assert parse_nft_list(cheap) == parse_nft_list(listing(ns))
        assert update_payloads(rules, parse_nft_list(cheap)) == []


@pytest.mark.root
@root
def test_a_damaged_table_is_repaired():
    rules = site_rules(SITE)
    with netns() as ns, netns() as cold:
        nft_apply(cold, full_payload(rules))
        nft_apply(ns, full_payload(rules))
        web = rules.units[[u.id for u in rules.units].index("default/web/tcp/http")]
        # Someone deletes a base chain and an element by hand.
        ns_run(ns, "nft", "delete", "chain", "ip", "svcops", "nat-output")
        key = next(k for m, k, _ in web.elements if m == "service-nodeports")
        ns_run(ns, "nft", f"delete element ip svcops service-nodeports {{ {key} }}")
        payloads = update_payloads(rules, parse_nft_list(listing(ns), full=True))
        nft_apply(ns, *payloads)
        assert normalized(listing(ns)) == normalized(listing(cold))


@pytest.mark.root
@root
def test_equal_shares_read_back_from_the_kernel():
    ports = [_port_with(n, affinity=n % 2 == 0, name=f"many-{n}", cip=f"10.96.2.{n}") for n in (1, 2, 3, 7, 64)]
    rules = render_nodes(F.CLUSTER, ports, ["node1"])["node1"]
    with netns() as ns:
        nft_apply(ns, full_payload(rules))
        text = listing(ns)
        for rp in ports:
            body = normalized(text)[f"chain {chain_names(rp)['service']} {{"]
            got = shares([r for r in body if not r.startswith("ip saddr @")])
            assert len(got) == len(rp.endpoints) and set(got.values()) == {Fraction(1, len(rp.endpoints))}


# --- real traffic: a client namespace and a backend namespace on a veth pair --------


def _http_get(ns: str, url: str) -> str:
    code = ("import sys, urllib.request\n"
            "try:\n print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())\n"
            "except Exception as e:\n print('ERROR', type(e).__name__, getattr(e, 'reason', e))\n")  # fmt: skip
    return ns_run(ns, "python3", "-c", code, url).strip()


@pytest.mark.root
@root
def test_real_traffic_reaches_the_endpoints_and_rejects_without_them():
    backends = ("10.77.0.2", "10.77.0.3")
    svc = Service("default", "web", ports=(ServicePort("http", "TCP", 80, 8080),))
    empty = Service("default", "empty", ports=(ServicePort("http", "TCP", 80, 8080),))
    ports = [
        ResolvedPort(svc, svc.ports[0], "10.96.0.10", None, None, tuple(Endpoint(b, 8080, None) for b in backends)),
        ResolvedPort(empty, empty.ports[0], "10.96.0.11", None, None, ()),
    ]
    rules = render_nodes(F.CLUSTER, ports, ["client"])["client"]
    with netns() as client, netns() as backend:
        veth = f"svnft{os.getpid() % 100000}"
        subprocess.run(["ip", "link", "add", veth, "netns", client, "type", "veth", "peer", "name", "b0",
                        "netns", backend], check=True)  # fmt: skip
        ns_run(client, "ip", "addr", "add", "10.77.0.1/24", "dev", veth)
        for b in backends:
            ns_run(backend, "ip", "addr", "add", f"{b}/24", "dev", "b0")
        for ns, dev in ((client, veth), (backend, "b0"), (client, "lo"), (backend, "lo")):
            ns_run(ns, "ip", "link", "set", dev, "up")
        # The node routes the service range somewhere (as any node does: a default route).
        ns_run(client, "ip", "route", "add", "10.96.0.0/12", "via", "10.77.0.2")
        servers = [
            subprocess.Popen(["ip", "netns", "exec", backend, "python3", "-c",
                              "import http.server, sys\n"
                              "class H(http.server.BaseHTTPRequestHandler):\n"
                              " def do_GET(self):\n"
                              "  self.send_response(200); self.end_headers(); self.wfile.write(sys.argv[1].encode())\n"
                              " def log_message(self, *a): pass\n"
                              "http.server.HTTPServer((sys.argv[1], 8080), H).serve_forever()\n", b],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            for b in backends
        ]
        try:
            for _ in range(50):  # wait for both servers to listen
                if all(_http_get(backend, f"http://{b}:8080/") == b for b in backends):
                    break
                time.sleep(0.1)
            nft_apply(client, full_payload(rules))
            seen = [_http_get(client, "http://10.96.0.10/") for _ in range(30)]
            assert set(seen) == set(backends), seen  # both endpoints answer (2^-29 to fail by chance)
            refused = _http_get(client, "http://10.96.0.11/")
            assert refused.startswith("ERROR") and "refused" in refused.lower(), refused
        finally:
            for s in servers:
                s.terminate()
                s.wait()


_ECHO_CLIENT = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    " def do_GET(self):\n"
    "  self.send_response(200); self.end_headers(); self.wfile.write(self.client_address[0].encode())\n"
    " def log_message(self, *a): pass\n"
    "http.server.HTTPServer((sys.argv[1], 8080), H).serve_forever()\n"
)


@pytest.mark.root
@root
def test_an_endpoint_reaching_itself_through_its_service_is_masqueraded():
    """Hairpin: a pod behind the node reaches its own service and is DNATed to itself.
    The node must masquerade it (as kube-proxy does): the pod then sees the node as
    its client and the reply goes back through the node. Without the `hairpin` map's
    element the connection cannot complete (the pod answers itself directly)."""
    pod_ip, node_ip = "10.78.0.2", "10.78.0.1"
    svc = Service("default", "web", ports=(ServicePort("http", "TCP", 80, 8080),))
    other = Service("default", "other", ports=(ServicePort("http", "TCP", 80, 8080),))
    ports = [
        ResolvedPort(svc, svc.ports[0], "10.96.0.10", None, None, (Endpoint(pod_ip, 8080, None),)),
        ResolvedPort(other, other.ports[0], "10.96.0.11", None, None, (Endpoint("10.78.0.3", 8080, None),)),
    ]
    rules = render_nodes(F.CLUSTER, ports, ["node"])["node"]
    with netns() as node, netns() as pod:
        veth = f"svhp{os.getpid() % 100000}"
        subprocess.run(["ip", "link", "add", veth, "netns", node, "type", "veth", "peer", "name", "p0",
                        "netns", pod], check=True)  # fmt: skip
        ns_run(node, "ip", "addr", "add", f"{node_ip}/24", "dev", veth)
        ns_run(pod, "ip", "addr", "add", f"{pod_ip}/24", "dev", "p0")
        for ns, dev in ((node, veth), (pod, "p0"), (node, "lo"), (pod, "lo")):
            ns_run(ns, "ip", "link", "set", dev, "up")
        ns_run(pod, "ip", "route", "add", "default", "via", node_ip)
        ns_run(node, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
               f"net.ipv4.conf.{veth}.send_redirects=0")  # fmt: skip
        server = subprocess.Popen(["ip", "netns", "exec", pod, "python3", "-c", _ECHO_CLIENT, pod_ip],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            for _ in range(50):
                if _http_get(pod, f"http://{pod_ip}:8080/") == pod_ip:
                    break
                time.sleep(0.1)
            nft_apply(node, full_payload(rules))
            assert _http_get(pod, "http://10.96.0.10/") == node_ip
            # Only endpoint addresses are in the map: the hairpin rule matches nothing else.
            hairpin = listing(node).split("map hairpin {", 1)[1].split("}", 1)[0]
            assert f"{pod_ip} . {pod_ip}" in hairpin and "10.78.0.1 . " not in hairpin
            ns_run(node, "nft", "delete", "element", "ip", "svcops", "hairpin", f"{{ {pod_ip} . {pod_ip} }}")
            assert _http_get(pod, "http://10.96.0.10/").startswith("ERROR")
        finally:
            server.terminate()
            server.wait()
