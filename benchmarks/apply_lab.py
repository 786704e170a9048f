#!/usr/bin/env python3
"""`svcops apply` against the lab, end to end: wall time of the whole command (process
start, compile, SSH, facts, rules, DNS) on N nodes.

    sudo .venv/bin/python benchmarks/apply_lab.py [--nodes 3,20] [--runs 3]

For each lab size: `svcops lab up --nodes N`, the walkthrough site copied to a temporary
folder, then

    first        the first apply (rules, addresses, files, DNS server set up)
    no-op        an apply that changes nothing (every node "unchanged")
    dns change   an ExternalName service added: only the zone changes (a reload)
    rule change  a ClusterIP service added: rules and zone change

each `--runs` times (the median is printed), and `svcops lab down`. It refuses to run
when a lab is already up (it would take it over). Prints seconds and ratios.

Measured here (2 cores, loopback SSH; medians of 3):

    nodes   first    no-op    dns change   rule change (with the fresh-login check)
      3     1.5 s    0.92 s   0.97 s       1.37 s
     20     4.6 s    1.91 s   2.08 s       3.82 s

20 nodes cost 2-3x what 3 nodes do: the nodes are handled in parallel, on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVCOPS = str(Path(sys.executable).parent / "svcops")
INVENTORY = str(ROOT / "inventory" / "lab.py")

EXTERNAL = "apiVersion: v1\nkind: Service\nmetadata: {{name: ext{i}, namespace: default}}\nspec: {{type: ExternalName, externalName: example{i}.test}}\n"
CLUSTER_IP = (
    "apiVersion: v1\nkind: Service\nmetadata: {{name: bench{i}, namespace: default}}\n"
    "spec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n"
)


def run(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([SVCOPS, *argv], capture_output=True, text=True, timeout=timeout)


def timed_apply(site: Path, expect: str | None) -> float:
    t = time.perf_counter()
    r = run("apply", "-i", INVENTORY, "-y", str(site))
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"svcops apply failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    if expect and expect not in r.stdout:
        raise SystemExit(f"expected {expect!r} in the apply's results:\n{r.stdout[-2000:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="3,20")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (the lab)", file=sys.stderr)
        return 2
    if "up" in run("lab", "status").stdout.split("\n", 1)[0]:
        print("a lab is already up: take it down first (svcops lab down)", file=sys.stderr)
        return 2
    results: dict[int, dict[str, float]] = {}
    for n in (int(x) for x in a.nodes.split(",")):
        up = run("lab", "up", "--nodes", str(n))
        if up.returncode != 0:
            raise SystemExit(up.stderr)
        try:
            with tempfile.TemporaryDirectory(prefix="svbench-lab-") as tmp:
                site = Path(tmp) / "site"
                shutil.copytree(ROOT / "examples" / "walkthrough", site)
                row = {"first": timed_apply(site, "changed")}
                row["no-op"] = statistics.median(timed_apply(site, "unchanged") for _ in range(a.runs))
                dns, rules = [], []
                for i in range(a.runs):
                    (site / "services" / f"ext{i}.yaml").write_text(EXTERNAL.format(i=i))
                    dns.append(timed_apply(site, "changed (service dns)"))
                    (site / "services" / f"bench{i}.yaml").write_text(CLUSTER_IP.format(i=i))
                    rules.append(timed_apply(site, "changed"))
                row["dns change"], row["rule change"] = statistics.median(dns), statistics.median(rules)
                results[n] = row
                print(f"  {n:>3} nodes: " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items()), flush=True)
        finally:
            run("lab", "down")
    print("ratios:")
    for n, row in results.items():
        print(f"  {n:>3} nodes: no-op / first {row['no-op'] / row['first']:.2f}, dns change / no-op {row['dns change'] / row['no-op']:.2f}")
    sizes = sorted(results)
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for k in results[lo]:
            print(f"  {k}: {hi} nodes / {lo} nodes {results[hi][k] / results[lo][k]:.2f}x for {hi / lo:.1f}x the nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
