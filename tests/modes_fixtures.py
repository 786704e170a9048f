"""A small site in every proxy mode, and throwaway-namespace helpers: for the tests of the
modes (pipeline, nftables and IPVS pushes, boot files, `svcops render --mode`)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import render_fixtures as F
from paths import ROOT

from svcops.compile.nodeplan import plan_site
from svcops.compile.pipeline import compile_site
from svcops.facts.nftables import parse_nft_state
from svcops.render.ipvs import SETS, SYSCTLS, ipvs_modules
from svcops.render.ipvs_sync import IpvsLive, parse_ipset_save
from svcops.render.nftables_live import LIST_COMMAND

EXAMPLE = ROOT / "examples" / "walkthrough"
INVENTORY = str(ROOT / "inventory" / "example.py")


SERVICES = (
    F.service("web", F.HTTP, type="NodePort"),
    F.service("sticky", F.HTTP, session_affinity="ClientIP", affinity_timeout=600),
    F.service("lb", F.HTTP, type="LoadBalancer", load_balancer_source_ranges=("203.0.113.0/24",)),
    F.service("lonely", F.HTTP, selector={"app": "missing"}),
    F.service("local", F.HTTP, type="NodePort", external_traffic_policy="Local"),
)


def compiled(mode: str, services=SERVICES):
    site = F.site(services)
    c, diags = compile_site(site, F.nodes(), F.allocations(services), mode=mode)
    assert c is not None, diags
    return c


root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")


def ns_sh(ns: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"{script[:200]}: {r.stderr[:2000]}"
    return r


def files_of(mode: str, node: str = "node1"):
    c = compiled(mode)
    return plan_site(c).node(node).files


def live_state(ns: str, boot: str = "") -> "object":
    """What SvcopsNftables reads on a node, from the namespace."""
    out = subprocess.run(["ip", "netns", "exec", ns, *LIST_COMMAND], capture_output=True, text=True).stdout
    return parse_nft_state([f"svcops-nft boot {boot}", *out.splitlines()])


def live_holding(rules) -> IpvsLive:
    """The IPVS facts of a node where `rules` were applied."""
    sets, members = {}, {}
    save = []
    for s in SETS:
        opts = f"range {rules._node_port_range[0]}-{rules._node_port_range[1]}" if s.type == "bitmap:port" else "family inet hashsize 1024 maxelem 262144 bucketsize 12 initval 0x1"
        save.append(f"create {s.name} {s.type} {opts}")
    for name, entries in rules.set_entries().items():
        save.extend(f"add {name} {e}" for e in entries)
    sets, members = parse_ipset_save("\n".join(save))
    return IpvsLive(True, rules.addresses, sets, members, rules.ipvsadm, dict(SYSCTLS), frozenset(ipvs_modules(rules.ipvsadm)))
