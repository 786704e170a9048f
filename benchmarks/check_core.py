#!/usr/bin/env python3
"""What `svcops check` costs on the controller per node, beside `apply --dry`'s diff.

    .venv/bin/python benchmarks/check_core.py [--services N] [--endpoints E] [--nodes M] [--repeat R]

A synthetic site (benchmarks/sitegen.py) compiled in iptables and nftables mode; node1's
live state is the render's own (as its facts would read it back), once in sync and once
with one service's chain flushed. Timed, best of R: the per-site index of which object
is whose (`ServiceIndex`, once per check), then per node `svcops.drift.node_check` (what
check computes) and `svcops.nodediff.node_diff` (what apply --dry computes from the same
facts), and their ratio. No node, no SSH: the controller's share only.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import sitegen  # noqa: E402
from render_fixtures import simulated_live  # noqa: E402

from svcops.compile.nodeplan import plan_site  # noqa: E402
from svcops.compile.pipeline import compile_site  # noqa: E402
from svcops.drift import ServiceIndex, node_check  # noqa: E402
from svcops.facts.ipvs import IpvsState  # noqa: E402
from svcops.facts.nftables import NftState  # noqa: E402
from svcops.facts.node import Address, NodeState  # noqa: E402
from svcops.nodediff import node_diff  # noqa: E402
from svcops.render.iptables import LiveTable, LiveTables, parse_iptables_save, restore_payload  # noqa: E402
from svcops.render.nftables_live import NftLive, parse_nft_list  # noqa: E402
from svcops.render.nftables_normal import printed_listing  # noqa: E402
from svcops.render.node_files import sha256_text  # noqa: E402
from svcops.site.hostdata import nodes_from_hosts  # noqa: E402
from svcops.site.load import load_site  # noqa: E402
from svcops.site.model import Allocations  # noqa: E402


def best(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        result = None
        gc.collect()
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def nft_live(rules) -> NftLive:
    """A table holding `rules`, content included (what SvcopsNftables reads back)."""
    return replace(simulated_live(rules), content=parse_nft_list(printed_listing(rules), full=True).content)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print(f"site: {a.services} services x {a.endpoints} endpoints over {a.nodes} nodes (best of {a.repeat}); node1's share")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sitegen.write_site(root, a.services)
        site, _ = load_site(root)
        nodes, _ = nodes_from_hosts(sitegen.hosts(a.services, a.endpoints, a.nodes), "bench")
    for mode in ("iptables", "nftables"):
        compiled, diags = compile_site(site, nodes, Allocations(), mode=mode)
        assert compiled is not None, [str(d) for d in diags[:5]]
        np = plan_site(compiled).node(nodes[0].name)
        out = np.output
        # The node's own state once applied: its files, its static and load-balancer addresses.
        addresses = tuple(Address(a.address, 32, a.interface, a.label or a.interface) for a in np.announced)
        if out.address and np.prefixlen:
            addresses += (Address(out.address, np.prefixlen, out.node.interface, out.node.interface),)
        files = {p: sha256_text(t) for p, t in np.files.files.items()}
        state = NodeState(files, np.files.link[1], "1", addresses)
        def indexed() -> ServiceIndex:
            i = ServiceIndex(compiled.ports)
            _ = i.chains if mode == "iptables" else i.units  # the mode's table: once per check, for every node
            return i

        t_index, index = best(indexed, a.repeat)
        if mode == "iptables":
            held = parse_iptables_save(restore_payload(out.iptables))
            nat = held.table("nat")
            one = next(c for c in nat.chains if c.startswith("SVCOPS-SVC-"))
            flushed = LiveTables({**held.tables, "nat": LiveTable({**nat.chains, one: ()}, nat.jumps, nat.foreign_refs)})
            nft_held = nft_flushed = NftState(True, NftLive())
        else:
            held = flushed = LiveTables()
            live = nft_live(out.nftables)
            one = next(c for u in out.nftables.units for c in u.chains if c.startswith("service-"))
            nft_held = NftState(True, live)
            nft_flushed = NftState(True, replace(live, content=replace(live.content, rules={**live.content.rules, one: ()})))
        print(f"{mode}: ServiceIndex {t_index * 1000:.0f} ms (once per check)")
        for what, ipt, nft in (("in sync", held, nft_held), ("one chain flushed", flushed, nft_flushed)):
            t_check, chk = best(lambda: node_check(np, index, ipt, state, nft, IpvsState(), None), a.repeat)
            t_diff, _ = best(lambda: node_diff(np, ipt, state, None, nft, IpvsState(), None), a.repeat)
            print(
                f"  {what:<18} check {t_check * 1000:7.0f} ms   apply --dry {t_diff * 1000:7.0f} ms   "
                f"ratio {t_check / t_diff:.2f}   ({len(chk.items)} item{'s' if len(chk.items) != 1 else ''})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
