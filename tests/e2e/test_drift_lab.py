"""End to end: a node's rules edited by hand are seen by `svcops apply --dry` and put
right by `svcops apply`, in iptables and nftables mode (issue 10), on a real 3-node lab.

In a mode with the fast path (issue 11: a record of the last apply, trusted while its
canary agrees), an edit inside svcops's chains that leaves the canary alone is not
seen by a plain apply (it says "unchanged": that is the price of not reading 10,000
services back); `svcops apply --verify` reads everything and repairs it.

Each drill: the walkthrough applied; the drill by hand on node1 (`svcops lab exec
node1 -- ...`); `svcops apply --dry` names the drift on node1 (and exits 0, as for
any change it would make), every other node in sync; the service is broken where the
drill breaks it (curl from node1 to the cluster IP, or from the client to node1's
node port); `svcops apply -y` changes node1 alone; the service answers from every
backend again; a second `svcops apply --dry` says node1 is in sync, and a second
`svcops apply` leaves every node unchanged.

Its own lab (module scope), brought up and down around this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from labkit import ADDRESS, INVENTORY, NODES, SVCOPS, apply, backends, curl, make_site, results, run, sh

from svcops.render.chains import endpoint_chain, port_hash
from svcops.render.nftables_live import parse_nft_list

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab")]

CLUSTER_IP = "10.1.11.83"  # the walkthrough's my-deploy, port 8000 -> 80
NODE_PORT = 30001  # the walkthrough's nginx-nodeport
ALL = set(ADDRESS.values())
URL = f"http://{CLUSTER_IP}:8000/"
NODE_PORT_URL = f"http://{ADDRESS['node1']}:{NODE_PORT}/"

# iptables mode: my-deploy's chains (its port has no name: "default/my-deploy").
IPT_SVC = "SVCOPS-SVC-" + port_hash("default/my-deploy", "TCP")
IPT_EP = endpoint_chain("default/my-deploy", "TCP", "192.168.36.12:80")


def nft_names() -> tuple[str, str]:
    """nftables mode: (my-deploy's service chain, the chain holding node2's endpoint's
    DNAT: the same chain, as no endpoint without ClientIP affinity has a chain of its
    own), read from node1's table."""
    live = parse_nft_list(sh("node1", "nft list table ip svcops"))
    svc = live.maps["service-ips"][f"{CLUSTER_IP} . tcp . 8000"][0].removeprefix("goto ")
    assert not [c for c in live.chains if c.startswith("endpoint-") and "default/my-deploy/" in c]
    return svc, svc


@dataclass(frozen=True)
class Drill:
    script: str  # shell on node1; {svc} and {ep} are the service's and an endpoint's chain
    seen: tuple[str, ...]  # what `apply --dry` says of node1 (substrings of its lines)
    breaks: str  # "all" (every request fails), "some", "none", or "skips" (node2's backend never answers)
    url: str = URL  # what is broken, from node1 (URL) or from the client (NODE_PORT_URL)
    # A hand edit inside one svcops chain leaves the canary as it is (iptables mode's
    # record, issue 11): a plain apply trusts the record, `apply --verify` repairs it.
    verify: bool = False


# A DNAT to a port where nothing listens: every request refused.
WRONG = "192.168.36.11:81"

IPTABLES = {
    "chain flushed": Drill("iptables -t nat -F {svc}", ("nat: ~ {svc}",), "all", verify=True),
    "rule inserted": Drill(
        f"iptables -t nat -I {{svc}} 1 -p tcp -j DNAT --to-destination {WRONG}", ("nat: ~ {svc}",), "all", verify=True
    ),
    "endpoint's DNAT deleted": Drill(
        "n=$(iptables -t nat -S {ep} | grep -v '^-N' | grep -n DNAT | cut -d: -f1); iptables -t nat -D {ep} $n",
        ("nat: ~ {ep}",),
        # The endpoint's chain returns without DNAT and the next endpoint's rule takes it.
        "skips",
        verify=True,
    ),
    "jump removed": Drill(
        "n=$(iptables -t nat -S OUTPUT | grep -v '^-P' | grep -n 'j SVCOPS-SERVICES' | cut -d: -f1); iptables -t nat -D OUTPUT $n",
        ("nat: + jump -A OUTPUT", "jumps +1 -0"),
        "all",
    ),
    "foreign SVCOPS- chain": Drill(
        f"iptables -t nat -N SVCOPS-FOREIGN && iptables -t nat -A SVCOPS-FOREIGN -p tcp -j DNAT --to-destination {WRONG} && "
        f"iptables -t nat -I OUTPUT 1 -d {CLUSTER_IP} -p tcp --dport 8000 -j SVCOPS-FOREIGN",
        ("nat: - SVCOPS-FOREIGN", "nat: - jump -A OUTPUT -d 10.1.11.83/32"),
        "all",
    ),
}

NFTABLES = {
    "chain flushed": Drill("nft flush chain ip svcops '{svc}'", ("nftables: drift: chain {svc} rules differ: 3 rules missing (flushed)",), "all"),
    "rule inserted": Drill(
        f"nft insert rule ip svcops '{{svc}}' meta l4proto tcp dnat to {WRONG}",
        ("nftables: drift: chain {svc} rules differ: 1 foreign rule",),
        "all",
    ),
    "endpoint's DNAT deleted": Drill(
        # node2's endpoint is the middle choice of three: without its rule the others
        # share every request and node2's backend never answers.
        "h=$(nft -a list chain ip svcops '{ep}' | sed -n 's/.*dnat to 192.168.36.12:80 # handle //p'); "
        "nft delete rule ip svcops '{ep}' handle $h",
        ("nftables: drift: chain {ep} rules differ: 1 rule missing",),
        "skips",
    ),
    "map element deleted": Drill(
        f"nft delete element ip svcops service-ips '{{{{ {CLUSTER_IP} . tcp . 8000 }}}}'",
        (f"nftables: drift: map service-ips element {CLUSTER_IP} . tcp . 8000 missing",),
        "all",
    ),
    "map element's verdict changed": Drill(
        f"c=$(nft list map ip svcops service-ips | grep -o 'default/my-deploy/tcp/ [A-Z2-7]*') && "
        f"nft delete element ip svcops service-ips '{{{{ {CLUSTER_IP} . tcp . 8000 }}}}' && "
        f"nft add element ip svcops service-ips \"{{{{ {CLUSTER_IP} . tcp . 8000 comment \\\"$c\\\" : drop }}}}\"",
        (f"nftables: drift: map service-ips element {CLUSTER_IP} . tcp . 8000 differs: drop",),
        "all",
    ),
    "foreign base chain": Drill(
        "nft add chain ip svcops foreign '{{ type nat hook output priority -150; policy accept; }}' && "
        f"nft add rule ip svcops foreign ip daddr {CLUSTER_IP} tcp dport 8000 dnat to {WRONG}",
        ("nftables: drift: foreign chain foreign",),
        "all",
    ),
    "base chain policy": Drill(
        "nft add chain ip svcops filter-forward '{{ type filter hook forward priority -110; policy drop; }}'",
        ("nftables: drift: chain filter-forward hook differs: type filter hook forward priority -110; policy drop;",),
        "some",  # node1's node port reaches its own backend, not the others (forwarded)
        NODE_PORT_URL,
    ),
    "base chain priority": Drill(
        "nft delete chain ip svcops nat-output && nft add chain ip svcops nat-output "
        "'{{ type nat hook output priority 0; policy accept; }}' && nft add rule ip svcops nat-output jump services",
        ("nftables: drift: chain nat-output hook differs: type nat hook output priority 0;",),
        "none",
    ),
    "table dormant": Drill("nft add table ip svcops '{{ flags dormant; }}'", ("nftables: drift: table ip svcops has flags dormant",), "all"),
}

CASES = [("iptables", name) for name in IPTABLES] + [("nftables", name) for name in NFTABLES]


def dry(site, *extra: str) -> tuple[int, dict[str, list[str]]]:
    """`svcops apply --dry`: (exit status, node -> its lines)."""
    r = run([SVCOPS, "apply", "-i", INVENTORY, "--dry", *extra, str(site)], timeout=180)
    out: dict[str, list[str]] = {}
    node = None
    for line in r.stdout.splitlines():
        m = re.match(r"  (node\d+): (.*)", line)
        if m:
            node = m.group(1)
            out[node] = [m.group(2)]
        elif node and line.startswith("      "):
            out[node].append(line.strip())
    return r.returncode, out


def failures(lines: list[str]) -> int:
    """How many of curl's requests failed (each ends with its " rc=N")."""
    codes = [int(m.group(1)) for ln in lines if (m := re.search(r" rc=(\d+)$", ln))]
    return sum(1 for c in codes if c != 0)


@pytest.mark.parametrize("mode,name", CASES, ids=[f"{m}: {n}" for m, n in CASES])
def test_a_hand_edit_is_seen_by_dry_and_repaired_by_apply(tmp_path, mode, name):
    drill = (IPTABLES if mode == "iptables" else NFTABLES)[name]
    site = make_site(tmp_path, {}, mode=mode)
    apply(site)
    svc, ep = (IPT_SVC, IPT_EP) if mode == "iptables" else nft_names()
    if mode == "iptables":
        assert f":{svc} " in sh("node1", "iptables-save -t nat") and f":{ep} " in sh("node1", "iptables-save -t nat")
    code, before = dry(site)
    assert code == 0 and before == {n: ["in sync"] for n in NODES}, before

    sh("node1", drill.script.format(svc=svc, ep=ep))

    # Every nftables drill here leaves the canary set alone: the record is trusted.
    verify = drill.verify or mode == "nftables"
    if verify:
        # The record says node1 is in sync: a dry run shows what apply would do.
        code, seen = dry(site)
        assert code == 0 and seen == {n: ["in sync"] for n in NODES}, seen
    code, seen = dry(site, *(("--verify",) if verify else ()))
    assert code == 0, seen
    assert seen["node2"] == seen["node3"] == ["in sync"]
    text = "\n".join(seen["node1"])
    assert seen["node1"] != ["in sync"]
    for what in drill.seen:
        assert what.format(svc=svc, ep=ep) in text, text
    host = "node1" if drill.url == URL else "client"
    if drill.breaks == "skips":
        lines = curl(host, drill.url, 20, max_time=1)
        assert failures(lines) == 0 and set(backends(lines)) == ALL - {ADDRESS["node2"]}, lines
    elif drill.breaks != "none":
        lines = curl(host, drill.url, 20, max_time=1)
        n = failures(lines)
        assert (n == 20 if drill.breaks == "all" else n >= 1), lines

    if verify:
        assert results(apply(site)) == {n: "unchanged" for n in NODES}
    r = apply(site, *(("--verify",) if verify else ()))
    assert results(r) == {"node1": "changed", "node2": "unchanged", "node3": "unchanged"}, r.stdout
    # The requests made while it was broken keep their NAT binding in node1's conntrack
    # (up to 2 minutes for a SYN without answer): one reusing a source port would still
    # fail. Gone, so that only the repaired rules are seen.
    port = 8000 if drill.url == URL else NODE_PORT
    sh("node1", f"conntrack -D -p tcp --orig-port-dst {port} >/dev/null 2>&1; true")
    lines = curl(host, drill.url, 30)
    assert failures(lines) == 0 and set(backends(lines)) == ALL, "\n".join(lines)
    code, after = dry(site, "--verify")
    assert code == 0 and after == {n: ["in sync"] for n in NODES}, after
    assert results(apply(site)) == {n: "unchanged" for n in NODES}
