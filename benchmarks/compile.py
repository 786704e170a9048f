#!/usr/bin/env python3
"""How fast the core compiles a big site: 10,000 services x 10 endpoints over 100 nodes.

    .venv/bin/python benchmarks/compile.py [--services N] [--endpoints E] [--nodes M] [--repeat R]

Writes a synthetic site (benchmarks/sitegen.py) to a temporary folder, then times each
stage of what `svcops plan` does: load (YAML parsing), validate (schemas and meaning),
inventory (host data -> nodes), allocate (from an empty lock, and again from the lock it
made: the steady state), resolve (endpoints), render (the rules of every node), and
payload (joining every node's iptables-restore text). Prints each stage's best time of
R runs, the total of allocate + resolve + render against the 1 s target, and the peak
memory (max RSS) against the 500 MB target.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sitegen  # noqa: E402

from svcops.compile.allocate import allocate  # noqa: E402
from svcops.compile.endpoints import resolve  # noqa: E402
from svcops.gcpause import gc_paused  # noqa: E402
from svcops.site.hostdata import nodes_from_hosts  # noqa: E402
from svcops.site.load import load_site  # noqa: E402
from svcops.site.model import Allocations  # noqa: E402
from svcops.render.iptables import render_nodes, restore_payload  # noqa: E402
from svcops.site.yamlsrc import load_documents  # noqa: E402

TARGET_CORE_S = 1.0
TARGET_RSS_MB = 500


def best(fn, repeat: int):
    """(best seconds, last result) over `repeat` runs, with the collector quiet."""
    times, result = [], None
    for _ in range(repeat):
        result = None  # never hold two results at once: the peak memory must be one run's
        gc.collect()
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()

    print(f"site: {a.services} services x {a.endpoints} endpoints over {a.nodes} nodes (best of {a.repeat})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sitegen.write_site(root, a.services)
        hosts = sitegen.hosts(a.services, a.endpoints, a.nodes)
        files = sorted((root / "services").glob("*.yaml"))
        rss_start = rss_mb()

        rows: list[tuple[str, float]] = []
        # With the collector paused, as load_site parses: validate is then the difference.
        t_parse, _ = best(gc_paused()(lambda: [load_documents(f.read_bytes(), f.name) for f in files]), a.repeat)
        rows.append(("load (YAML parse)", t_parse))
        t_site, (site, diags) = best(lambda: load_site(root), a.repeat)
        assert site is not None, [str(d) for d in diags[:5]]
        rows.append(("validate (schemas + meaning)", max(t_site - t_parse, 0.0)))
        t_inv, (nodes, diags) = best(lambda: nodes_from_hosts(hosts, "bench-inventory"), a.repeat)
        assert not [d for d in diags if d.is_error], [str(d) for d in diags[:5]]
        rows.append(("inventory (host data)", t_inv))

        t_alloc, (allocs, diags) = best(
            lambda: allocate(site.cluster, site.services, nodes, Allocations()), a.repeat
        )
        assert not [d for d in diags if d.is_error], [str(d) for d in diags[:5]]
        rows.append(("allocate (empty lock)", t_alloc))
        t_alloc2, _ = best(lambda: allocate(site.cluster, site.services, nodes, allocs), a.repeat)
        rows.append(("allocate (from lock)", t_alloc2))
        t_res, (ports, diags) = best(lambda: resolve(site, nodes, allocs), a.repeat)
        rows.append(("resolve (endpoints)", t_res))
        names = [n.name for n in nodes]
        t_render, rules = best(lambda: render_nodes(site.cluster, ports, names), a.repeat)
        rows.append((f"render ({len(names)} nodes)", t_render))

        def payloads() -> int:
            # One node's text at a time, as apply streams it: never all nodes' at once.
            return sum(len(restore_payload(rules[n])) for n in names)

        t_payload, total_bytes = best(payloads, 1)
        rows.append((f"payload text ({len(names)} nodes)", t_payload))

    width = max(len(r[0]) for r in rows)
    for name, secs in rows:
        print(f"  {name:<{width}}  {secs * 1000:9.1f} ms")
    core = t_alloc + t_res + t_render
    print(f"  {'allocate + resolve + render':<{width}}  {core * 1000:9.1f} ms"
          f"   target <= {TARGET_CORE_S * 1000:.0f} ms: {core / TARGET_CORE_S:.2f} of it")
    endpoints = sum(len(p.endpoints) for p in ports)
    print(f"  service ports {len(ports)}, endpoints {endpoints}, "
          f"payload {total_bytes / len(names) / 1e6:.1f} MB per node")
    peak = rss_mb()
    print(f"  peak memory (max RSS) {peak:.0f} MB (at start {rss_start:.0f} MB)"
          f"   target <= {TARGET_RSS_MB} MB: {peak / TARGET_RSS_MB:.2f} of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
