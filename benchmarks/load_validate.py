#!/usr/bin/env python3
"""How fast svcops loads and validates a big site, beside libyaml composing the same files.

    .venv/bin/python benchmarks/load_validate.py [--services N] [--repeat R]

Writes the synthetic site of benchmarks/sitegen.py (N services, 100 to a file) to a
temporary folder, then times, in the same run, the best of R runs of:

- compose: libyaml's C parser composing every services/*.yaml into node trees
  (``yaml.compose_all(text, Loader=yaml.CSafeLoader)``, each file read and decoded).
  Node trees are what carry line numbers, which svcops needs for every value, so
  this is the floor for any loader that can say where a value was written. Taken
  with Python's collector running and paused; the faster is the reference.
- load_site: svcops's whole reading and checking of the site, what
  ``svcops validate SITE`` does the first time (its parse cache off): YAML with lines, the schemas, the meaning of each
  object, the site-wide checks. Printed with its parts (YAML, schemas), and its
  ratio to compose against the target of 2.5x.

Then, for a person to see (not in the ratio: other files), the rest of what
``svcops validate -i INV SITE`` reads: svcops.lock (as `svcops plan` wrote it for
this site; read with or without -i), beside libyaml composing it, and the
inventory's host data (E endpoints a service over M nodes; no YAML, so no ratio).

Figures on this machine (2 cores shared with others; 10,000 services, 10 endpoints,
100 nodes; best of 5; the code before run from a copy of the commit before):

    before (jsonschema walking every document):
      compose 0.28 s; load_site 1.79 s = 6.4x (6.8x-7.8x when the machine was busy)
        YAML 0.37 s, schemas 1.01 s (57%)
      svcops.lock 0.22 s (4.8x its compose); host data 1.41 s
    after (a check generated from each schema proves valid documents valid, only the
    others go to jsonschema; YAML tags memoised; the collector paused while loading):
      compose 0.28 s; load_site 0.50 s = 1.8x (target 2.5x)
        YAML 0.29 s, schemas 0.05 s (10%)
      svcops.lock 0.10 s (2.1x its compose); host data 0.62 s
    with the parse cache (svcops.site.cache), one of the 100 files changed: 0.21 s at
    10,000 services x 3 endpoints (benchmarks/apply_lab.py's site; 1.6 s without)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sitegen  # noqa: E402

from svcops import schemas  # noqa: E402
from svcops.compile.allocate import allocate  # noqa: E402
from svcops.site.hostdata import nodes_from_hosts  # noqa: E402
from svcops.site.load import load_site  # noqa: E402
from svcops.site.lockfile import read_lock, write_lock  # noqa: E402
from svcops.site.model import Allocations  # noqa: E402
from svcops.site.yamlsrc import load_documents  # noqa: E402

TARGET_RATIO = 2.5


def best(fn, repeat: int, collector: bool = True):
    """(best seconds, last result) over `repeat` runs; `collector` False pauses it."""
    times, result = [], None
    for _ in range(repeat):
        result = None
        gc.collect()
        if not collector:
            gc.disable()
        try:
            t = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t)
        finally:
            gc.enable()
    return min(times), result


def compose(files: list[Path]) -> int:
    """libyaml's node trees of every file, one file's at a time (as a loader holds them)."""
    nodes = 0
    for f in files:
        nodes += len(list(yaml.compose_all(f.read_bytes().decode("utf-8"), Loader=yaml.CSafeLoader)))
    return nodes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10, help="workloads a service (host data)")
    ap.add_argument("--nodes", type=int, default=100, help="nodes of the inventory (host data)")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()

    print(f"site: {a.services} services, {sitegen.PER_FILE} a file (best of {a.repeat})")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sitegen.write_site(root, a.services)
        files = sorted((root / "services").glob("*.yaml"))

        t_on, documents = best(lambda: compose(files), a.repeat)
        t_off, _ = best(lambda: compose(files), a.repeat, collector=False)
        t_compose = min(t_on, t_off)
        t_site, (site, diags) = best(lambda: load_site(root, cache=False), a.repeat)
        # The parse cache (svcops.site.cache): one file changed, the other 99 remembered.
        saved = os.environ.get("SVCOPS_CACHE_DIR")
        with tempfile.TemporaryDirectory() as cache_dir:
            os.environ["SVCOPS_CACHE_DIR"] = cache_dir
            load_site(root)
            victim = files[len(files) // 2]
            original = victim.read_bytes()

            def one_changed():
                victim.write_bytes(original + b"# " + str(time.perf_counter()).encode() + b"\n")
                return load_site(root)

            t_cached, (cached, _) = best(one_changed, a.repeat)
            victim.write_bytes(original)
            os.environ.pop("SVCOPS_CACHE_DIR")
            if saved is not None:
                os.environ["SVCOPS_CACHE_DIR"] = saved
            assert cached == site
        assert site is not None and len(site.services) == a.services, [str(d) for d in diags[:5]]
        assert documents == a.services

        # Its parts, alone (each with the collector as load_site has it: paused).
        t_yaml, docs = best(lambda: [d for f in files for d in load_documents(f.read_bytes(), f.name)[0]], a.repeat, collector=False)
        t_schema, problems = best(
            lambda: [schemas.check_located("service", d.value, file=d.file, line_of=d.line) for d in docs], a.repeat, collector=False
        )
        assert not any(problems)

        # What `svcops validate -i` adds: the lock `svcops plan` writes, the host data.
        hosts = sitegen.hosts(a.services, a.endpoints, a.nodes)
        t_hosts, (nodes, diags) = best(lambda: nodes_from_hosts(hosts, "bench-inventory"), a.repeat)
        assert not [d for d in diags if d.is_error], [str(d) for d in diags[:5]]
        allocs, diags = allocate(site.cluster, site.services, nodes, Allocations())
        assert not [d for d in diags if d.is_error], [str(d) for d in diags[:5]]
        write_lock(root / "svcops.lock", allocs)
        t_lock, (lock, diags) = best(lambda: read_lock(root / "svcops.lock", cache=False), a.repeat)
        assert lock is not None and not diags, [str(d) for d in diags[:5]]
        t_lock_compose, _ = best(lambda: compose([root / "svcops.lock"]), a.repeat, collector=False)

    ratio = t_site / t_compose
    entries = len(allocs.cluster_ips) + len(allocs.node_ports) + len(allocs.load_balancer_ips) + len(allocs.node_addresses)
    workloads = sum(len(n.workloads) for n in nodes)
    rows = [
        (f"compose (libyaml, {len(files)} files)", t_compose,
         f"reference (collector on {t_on * 1000:.0f} ms, paused {t_off * 1000:.0f} ms)"),
        ("load_site (svcops validate SITE)", t_site,
         f"{ratio:.2f}x compose   target <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'NOT met'}"),
        ("  of it: YAML with lines", t_yaml, f"{t_yaml / t_compose:.2f}x compose"),
        ("  of it: schemas", t_schema, f"{t_schema / t_site:.0%} of load_site"),
        ("load_site, one file changed, the rest cached", t_cached, f"{t_cached / t_compose:.2f}x compose (svcops.site.cache)"),
        (f"svcops.lock ({entries} entries)", t_lock, f"{t_lock / t_lock_compose:.2f}x its compose ({t_lock_compose * 1000:.0f} ms)"),
        (f"with -i: host data ({len(nodes)} nodes, {workloads} workloads)", t_hosts, ""),
    ]
    width = max(len(r[0]) for r in rows)
    for name, secs, note in rows:
        print(f"  {name:<{width}}  {secs * 1000:8.1f} ms   {note}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
