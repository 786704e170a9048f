#!/usr/bin/env python3
"""`svcops watch` on the lab: how long a readiness change takes to reach every node.

    /work/isolated.sh .venv/bin/python benchmarks/watch_lab.py --nodes 20 --services 10000
    sudo .venv/bin/python benchmarks/watch_lab.py --nodes 3 --services 1000 --rounds 5

A fresh lab of N nodes; the site is apply_lab.py's big site (S selectorless services
over the lab's demo backends, in --mode) plus ``default/api``, a ClusterIP service
selecting ``api-nodeK``: a second backend on port 8080 of every node, with an httpGet
readinessProbe (periodSeconds 1, failureThreshold 1, successThreshold 1). After the
cold apply, `svcops watch` runs; then each round kills one node's api backend by PID
and later starts it again, and reads the watch's lines as they arrive:

    detect   the kill to the watch's "not ready" line (the node's probe period, the report)
    push     that line to the end of the push to every node (compile, each node's
             transaction: the fast path sends the api service's rules only)
    total    detect + push: the kill to every node's rules without the endpoint
    back     the restart to the push that puts it back (probe, report, push)

and checks from node1 that the killed backend gets no request once the push is done
(15 requests, bounded). Prints each round, the medians, and the anchors: Kubernetes'
defaults take a failing pod out after about 30 s (periodSeconds 10 x failureThreshold
3); HAProxy's default check after 6 s (2 s x 3 falls).

Measured here (2 cores, every node a namespace on this machine; 20 nodes, 10,000
services, nftables; medians of 3 rounds):

    when, what                                   push to all 20   its parts
    12-04 a.m., every part pushed, re-allocated  2.63-2.92 s      compile 0.38-0.63 s, nodes 2.2-2.4 s
    12-04 a.m., rules only (a quiet machine)     1.91 s           compile 0.30 s, nodes 1.5 s
    12-04 p.m., rules only, 3 runs in a row      2.32, 2.67, 2.89 s  compile 0.30-0.58 s, nodes 1.8-2.5 s
                                                                  (nodes' CPU 3.1-3.7 s, controller's 0.6-0.9 s)

The machine of the afternoon runs was about 2x slower throughout (`svcops plan` of
the same site, pure Python, 2.08 s against 1.02 s; an `iptables-restore --noflush` of
one chain at this size 0.44 s against 0.18 s; nft's own check of the one-service
transaction 0.175 s). The push is
CPU-bound: 20 nodes x about 0.17 s of CPU each, nearly all of it the one nft
transaction: the kernel validates the whole table (every chain reachable from each
base chain) on any transaction holding a rule with a verdict, NAT or a verdict-map
element (about 0.1 s at 17,700 chains), and nft 1.0.6 first fetches every chain and set
of the ruleset (about 0.05 s). Detect ~0.3-0.9 s (the probe period is 1 s); kill to
every node 2.6-3.8 s; back 2.8-4.5 s.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from apply_lab import SVCOPS, lab, lab_cpu, run, write_big_site  # noqa: E402

from svcops.lab.plan import node_address, node_name  # noqa: E402

BACKEND = ROOT / "svcops" / "lab" / "backend.py"
API = """apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  selector: {app: api}
  ports: [{name: http, port: 8080, targetPort: http}]
"""
INVENTORY = '''\
import runpy
_lab = runpy.run_path({lab!r})
nodes = []
for _name, _data in _lab["nodes"]:
    _data = dict(_data, svcops_site={site!r})
    _data["svcops_workloads"] = list(_data.get("svcops_workloads", [])) + [
        {{"name": "api-" + _name, "labels": {{"app": "api"}}, "ports": [{{"name": "http", "port": 8080}}],
          "readinessProbe": {{"httpGet": {{"port": "http"}}, "periodSeconds": 1, "failureThreshold": 1}}}}]
    nodes.append((_name, _data))
'''


def lab_sh(node: str, script: str, timeout: float = 60) -> str:
    r = subprocess.run([SVCOPS, "lab", "exec", node, "--", "sh", "-c", script], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"{node}: {script}: {r.stderr}")
    return r.stdout


def start_backend(k: int) -> int:
    # The script through stdin into the node's own /tmp: a lab node sees none of the
    # machine's /tmp, where a checkout may live.
    node, path = node_name(k), "/tmp/svcops-api-backend.py"
    subprocess.run([SVCOPS, "lab", "exec", node, "--", "sh", "-c", f"cat > {path}"], input=BACKEND.read_text(), text=True, check=True, timeout=60)
    return int(lab_sh(node, f"setsid python3 -I -S {path} --address {node_address(k)} --port 8080 >/dev/null 2>&1 < /dev/null & echo $!").strip())


class Watch:
    def __init__(self, argv: list[str]):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        self.q: queue.Queue = queue.Queue()
        self.lines: list[str] = []
        self.stamped: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            self.stamped.append((time.time(), line.rstrip()))
            self.q.put((time.time(), line.rstrip()))
        self.q.put((time.time(), None))

    def wait(self, pattern: str, timeout: float = 120) -> tuple[float, str]:
        rx, end = re.compile(pattern), time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                t, line = self.q.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if rx.search(line):
                return t, line
        raise SystemExit(f"no /{pattern}/ from the watch within {timeout} s:\n" + "\n".join(self.lines[-30:]))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--mode", default="nftables", choices=["nftables", "iptables", "ipvs"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--node-timeout", default="120", help="for the cold apply and the watch's pushes")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="svcops-watch-bench-"))
    site = tmp / "site"
    write_big_site(site, args.services, args.nodes, args.mode)
    (site / "services" / "api.yaml").write_text(API)
    inv = tmp / "inventory.py"
    inv.write_text(INVENTORY.format(lab=str(ROOT / "inventory" / "lab.py"), site=str(site)))
    rows = []
    with lab(args.nodes):
        pids = {k: start_backend(k) for k in range(1, args.nodes + 1)}
        t = time.monotonic()
        r = run("apply", "-i", str(inv), "-y", "--node-timeout", args.node_timeout, str(site), timeout=1800)
        if r.returncode != 0:
            raise SystemExit(r.stdout[-3000:] + r.stderr[-3000:])
        print(f"{args.nodes} nodes, {args.services} services, {args.mode}: cold apply {time.monotonic() - t:.1f} s", flush=True)
        ip = re.search(r"default/api:\s*(\S+)", (site / "svcops.lock").read_text()).group(1)
        w = Watch([SVCOPS, "watch", "-i", str(inv), str(site), "--node-timeout", args.node_timeout])
        try:
            _, line = w.wait(r"push to \d+ nodes", timeout=300)
            print(f"  the watch's first push: {line.split('svcops watch: ', 1)[1]}", flush=True)
            for i in range(args.rounds):
                k = 2 + i % (args.nodes - 1)
                node = node_name(k)
                t0 = time.time()
                lab_sh(node, f"kill {pids[k]}")
                t1, _ = w.wait(rf"{node}/api-{node}: not ready")
                c1 = lab_cpu()
                t2, pushed = w.wait(r"push to \d+ nodes")
                nodes_cpu = lab_cpu() - c1  # the push's, and a second of the agents' probes
                answers = lab_sh("node1", f"for i in $(seq 15); do curl -s --max-time 1 http://{ip}:8080/; echo; done", timeout=60)
                hit = node_address(k) in answers
                t3 = time.time()
                pids[k] = start_backend(k)
                _, _ = w.wait(rf"{node}/api-{node}: ready")
                t4, _ = w.wait(r"push to \d+ nodes")
                row = {"detect": t1 - t0, "push": t2 - t1, "total": t2 - t0, "back": t4 - t3, "nodes_cpu": nodes_cpu, "still_hit": hit}
                rows.append(row)
                took = re.search(r"in ([\d.]+) s", pushed).group(1)
                split = re.search(r"; (compile .*?)\)$", pushed)
                print(
                    f"  round {i + 1} ({node}): detect {row['detect']:.2f} s, push {row['push']:.2f} s "
                    f"(its own {took} s: {split.group(1) if split else '?'}; the nodes' cpu {nodes_cpu:.2f} s), total {row['total']:.2f} s, back {row['back']:.2f} s"
                    + ("; ERROR: the killed backend still got requests" if hit else ""),
                    flush=True,
                )
        finally:
            w.stop()
            for k, pid in pids.items():
                subprocess.run([SVCOPS, "lab", "exec", node_name(k), "--", "kill", str(pid)], capture_output=True)
    med = {k: statistics.median(r[k] for r in rows) for k in ("detect", "push", "total", "back")}
    print(
        f"\nmedians of {len(rows)}: detect {med['detect']:.2f} s, push to all {args.nodes} nodes {med['push']:.2f} s, "
        f"kill to every node {med['total']:.2f} s, back {med['back']:.2f} s"
    )
    print(
        f"ratios: Kubernetes' defaults (~30 s) / total {30 / med['total']:.0f}x; "
        f"HAProxy's default check (6 s) / total {6 / med['total']:.1f}x; target push <= 2 s: {'met' if med['push'] <= 2 else 'NOT met'}"
    )
    print(json.dumps({"nodes": args.nodes, "services": args.services, "mode": args.mode, "medians": med}))
    return 1 if any(r["still_hit"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
