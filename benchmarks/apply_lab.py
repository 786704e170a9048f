#!/usr/bin/env python3
"""`svcops apply` against the lab, end to end: wall time of the whole command (process
start, compile, SSH, facts, rules, DNS) on N nodes.

    sudo .venv/bin/python benchmarks/apply_lab.py [--nodes 3,20] [--runs 3]
    /work/isolated.sh .venv/bin/python benchmarks/apply_lab.py --nodes 20 \
        --services 1000,10000 --modes nftables,iptables --runs 2 --node-timeout 120

Without `--services`, for each lab size: `svcops lab up --nodes N`, the walkthrough site
copied to a temporary folder, then

    first        the first apply (rules, addresses, files, DNS server set up)
    no-op        an apply that changes nothing (every node "unchanged")
    dns change   an ExternalName service added: only the zone changes (a reload)
    rule change  a ClusterIP service added: rules and zone change

each `--runs` times (the median is printed), and `svcops lab down`. It refuses to run
when a lab is already up (it would take it over). Prints seconds and ratios.

With `--services S`: for each size and each of `--modes`, a fresh lab and a site of S
selectorless services (benchmarks/sitegen.py's mix of types, affinity and traffic
policies; a load-balancer pool of its own) whose Endpoints objects name the demo
backends of 3 of the lab's nodes (port 80 of their addresses), then

    cold           the first apply
    no-op          an apply that changes nothing
    one-service    svc-5's port changed (its rules and its SRV record: a zone reload)
    affinity only  svc-5's sessionAffinity toggled (its rules only)
    plan           `svcops plan` of the same site (load, validate, compile, render; no SSH)

each apply split into its parts from its own progress lines, stamped as they arrive
(see `parts`): controller (start to the first node connected: load, validate,
compile, render, the lock, the connects), prepare (each node's operations built),
the slowest and the median node (its "begin" to its "commit"), tail (disconnect,
report). A cold 10,000-service apply on 20 nodes needs `--node-timeout` above the
default 10 s: nodes sharing 2 cores stay silent longer (9 of 20 were "unreachable").

Measured here (2 cores, loopback SSH; medians of 3):

    nodes   first    no-op    dns change   rule change (with the fresh-login check)
      3     1.5 s    0.92 s   0.97 s       1.37 s
     20     4.6 s    1.91 s   2.08 s       3.82 s

20 nodes cost 2-3x what 3 nodes do: the nodes are handled in parallel, on 2 cores.

20 nodes, 2026-12-03 (medians of 2 at 10,000, of 3 at 1,000; iptables mode as it is on
this branch: no fast path yet; other labs ran on the machine during the 10,000 runs):

    services mode      apply          wall    controller  prepare  node max  node median
     1,000   nftables  cold           28.3 s    1.15 s    0.25 s   26.6 s    25.9 s
     1,000   nftables  no-op           3.8 s    1.86 s    0.35 s    1.2 s     1.1 s
     1,000   nftables  one-service     6.4 s    1.23 s    0.26 s    4.3 s     4.3 s
     1,000   nftables  plan            1.0 s
     1,000   iptables  cold           14.8 s    0.92 s    0.81 s   12.6 s    12.1 s
     1,000   iptables  no-op           7.0 s    1.05 s    0.61 s    5.3 s     5.1 s
     1,000   iptables  one-service    14.4 s    1.44 s    0.87 s   11.7 s    11.5 s
    10,000   nftables  cold           92.9 s    3.25 s    0.28 s   88.3 s    84.9 s
    10,000   nftables  no-op          12.9 s    6.22 s    0.38 s    5.3 s     5.1 s
    10,000   nftables  one-service    25.4 s    6.14 s    0.49 s   17.9 s    17.8 s
    10,000   nftables  affinity only  25.3 s    6.05 s    0.41 s   17.3 s    17.1 s
    10,000   nftables  plan            5.7 s
    10,000   iptables  cold          148.1 s    4.87 s   11.3 s   130.8 s   127.1 s
    10,000   iptables  no-op          76.5 s    5.87 s   10.4 s    59.1 s    50.0 s
    10,000   iptables  one-service   115.9 s    5.72 s    9.1 s   100.5 s    98.2 s
    10,000   iptables  affinity only  92.8 s    3.53 s    7.8 s    80.9 s    79.7 s
    10,000   iptables  plan            3.7 s

At 10,000 services in nftables mode a one-service change is 0.27x the cold apply and
25 s against the 3 s target. The nodes dominate (0.71 of it): per node, from the
progress lines of one run, "nftables table" 10.5 s, "iptables rules" (the check that
no svcops iptables chains are left, in nftables mode) 3.7 s, "service dns" 2.3 s,
the rest under 0.5 s each; 20 nodes on 2 cores, so about 1/10 of each is one node's
own CPU. The controller's part (6 s) is mostly loading and validating the site (plan:
5.7 s); the fast path's digests cost 1.9 s for 20 nodes before `bucket_of` and
`content_digests` remembered their results, 0.5 s after (the figures above are with it).

20 nodes, nftables mode, 2026-12-03, one run each, back to back, with the CPU each apply
took (`ctl cpu`: svcops itself; `nodes cpu`: everything in the nodes' namespaces, sshd,
the commands, the DNS server's reload). "before": the branch's start (with the
replace_files fix, without which a cold 10,000-service apply filled the nodes' /run);
"after": the parse cache, facts shared across operations by area, undo scripts in their
steps' commands, the zone patched, the DNS files and reload in one step, leaner facts:

    services apply         wall    controller  node max  ctl cpu  nodes cpu
    10,000  cold   before  63.7 s    2.67 s    60.0 s   10.9 s   95.9 s
                   after   60.8 s    3.17 s    56.8 s   10.7 s   96.0 s   (the cache filled)
    10,000  no-op  before   5.25 s   3.51 s    1.07 s    3.65 s   2.10 s
                   after    3.24 s   1.76 s    0.84 s    2.36 s   1.79 s
    10,000  one-   before  11.44 s   3.24 s    7.47 s    4.33 s  13.15 s
            service after   8.43 s   1.44 s    6.27 s    2.77 s  11.48 s
    10,000  affin- before  13.67 s   5.30 s    7.56 s    4.43 s  11.44 s
            ity    after    7.23 s   1.43 s    5.08 s    2.51 s   9.48 s
    10,000  plan   before   3.19 s;  after 1.48 s
     1,000  one-service     4.80 s -> 3.20 s; no-op 2.19 s -> 1.76 s; plan 0.77 s -> 0.58 s

Per node, one-service change at 10,000, median: before, nftables table 4.81 s, iptables
rules 0.20, ipvs (none) 0.21, load-balancer addresses 0.27, service dns 1.52, commit
0.28; after, nftables table 4.93 s (the facts' one read, then the table), the three
operations between under 5 ms (their facts come from that read: the table's change
touches no other area), service dns 0.77 s (17 kB sent instead of the 1.17 MB zone; its
reload in the same step), commit 0.26. Commands a node: 19 -> 9. The 3 s target is not
met: the machine is CPU-bound throughout (wall ~ total CPU / 2), and of the nodes'
11.5 CPU-s the table's transaction is the largest part (0.19 s of one node's 0.45 s when
it is alone), then the pdns reload of 20,000 records (66 ms a node, in pdns itself), the
facts' one read (about 50 ms), the commit's fresh SSH login, the record's files. The
controller's 1.44 s before the first connection: Python, pyinfra and svcops imported
0.45 s, the site loaded from the cache 0.21 s, allocate + resolve + render 0.5 s.

The same on main after the nftables table's change and record went into one step in
one round trip (no endpoint chains without affinity, the hairpin map), 2026-12-04, one
run each, `--nodes 20 --services 10000 --modes nftables --runs 1 --node-timeout 120`:

    services apply          wall    controller  node max  ctl cpu  nodes cpu
    10,000  cold           34.26 s    2.52 s    31.13 s   10.36 s  43.83 s
    10,000  no-op           2.47 s    1.25 s     0.76 s    1.66 s   1.44 s
    10,000  one-service     4.13 s    0.98 s     2.64 s    1.76 s   4.78 s
    10,000  affinity only   3.48 s    0.99 s     1.94 s    1.62 s   3.65 s
    10,000  plan            1.02 s

Per node, one-service change, median: nftables table 1.56 s, service dns 0.74 s, commit
0.20 s. Still CPU-bound (20 nodes x the table's ~0.19 s, nft's own 0.14 s of it, on 2
cores is ~1.9 s of wall before anything else): the 3 s target is not met (4.13 s).

The same command on a machine about 2x slower throughout (`plan` 2.08 s against
1.02 s), 2026-12-04 afternoon, after the watch's work (one-service: table 2.36 s, dns
0.94 s, commit 0.19 s a node, median):

    10,000  cold           46.52 s    1.81 s    43.71 s   10.67 s  66.28 s
    10,000  no-op           3.63 s    1.98 s     0.85 s    2.79 s   1.71 s
    10,000  one-service     6.42 s    1.49 s     3.82 s    3.25 s   6.71 s
    10,000  affinity only   5.84 s    1.77 s     2.94 s    3.21 s   5.34 s
    10,000  plan            2.08 s
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SVCOPS = str(Path(sys.executable).parent / "svcops")
INVENTORY = str(ROOT / "inventory" / "lab.py")
sys.path.insert(0, str(ROOT))

from svcops.lab.plan import BACKEND_PORT, node_address, node_name  # noqa: E402

EXTERNAL = "apiVersion: v1\nkind: Service\nmetadata: {{name: ext{i}, namespace: default}}\nspec: {{type: ExternalName, externalName: example{i}.test}}\n"
CLUSTER_IP = (
    "apiVersion: v1\nkind: Service\nmetadata: {{name: bench{i}, namespace: default}}\n"
    "spec:\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n"
)

# --- the big site: N selectorless services over the lab's real backends ---------------

PER_FILE = 100
ENDPOINTS = 3  # backends per service: each service is served by 3 of the lab's nodes
CHANGED = 5  # the service the one-service change edits (svc-5: ClusterIP, ClientIP affinity)


def big_service(i: int, port: int = 80, affinity: bool | None = None) -> dict:
    """Service i, in benchmarks/sitegen.py's mix (75% ClusterIP, 15% NodePort, 10%
    LoadBalancer; every 20th ClientIP affinity, every 25th non-ClusterIP Local), without
    a selector: its Endpoints object names its backends."""
    kind = "LoadBalancer" if i % 10 == 0 else "NodePort" if i % 10 in (1, 2) and i % 20 != 12 else "ClusterIP"
    spec: dict = {"type": kind, "ports": [{"name": "http", "port": port, "targetPort": BACKEND_PORT}]}
    if (i % 20 == 5) if affinity is None else affinity:
        spec["sessionAffinity"] = "ClientIP"
    if kind != "ClusterIP" and i % 25 == 0:
        spec["externalTrafficPolicy"] = "Local"
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 50}"}, "spec": spec}


def big_endpoints(i: int, nodes: int) -> dict:
    """The Endpoints of service i: the demo backends of ENDPOINTS consecutive lab nodes
    (port 80 of each node's address, the backend `svcops lab up` starts), with their
    nodeName so that Local traffic policies know where each one runs."""
    ks = sorted({(i + j) % nodes + 1 for j in range(min(ENDPOINTS, nodes))})
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 50}"},
        "subsets": [
            {
                "addresses": [{"ip": node_address(k), "nodeName": node_name(k)} for k in ks],
                "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
            }
        ],
    }


def part_file(site: Path, i: int) -> Path:
    return site / "services" / f"part-{i // PER_FILE:04d}.yaml"


def write_part(site: Path, f: int, services: int, nodes: int, edits: dict[int, dict]) -> None:
    """The services file holding services f.. (PER_FILE of them); `edits`: service ->
    big_service keyword arguments (its port, its affinity)."""
    docs = []
    for i in range(f, min(f + PER_FILE, services)):
        docs += [big_service(i, **edits.get(i, {})), big_endpoints(i, nodes)]
    part_file(site, f).write_text(yaml.safe_dump_all(docs, sort_keys=False))


def write_big_site(site: Path, services: int, nodes: int, mode: str) -> None:
    """A site of `services` services in proxy mode `mode`, on the lab's network (the
    walkthrough's nodeNetwork); a load-balancer pool big enough for 10% of them."""
    (site / "services").mkdir(parents=True)
    cfg = yaml.safe_load((ROOT / "examples" / "walkthrough" / "svcops.yaml").read_text())
    cfg.update(serviceCIDR="10.96.0.0/12", proxyMode=mode)
    cfg["loadBalancerPools"] = [{"name": "default", "addresses": ["100.64.0.0/18"]}]
    (site / "svcops.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for f in range(0, services, PER_FILE):
        write_part(site, f, services, nodes, {})


# --- running svcops, its output timestamped --------------------------------------------

APPLY_FLAGS: list[str] = []  # --node-timeout, when given

PREFIX = re.compile(r"\[(node\d+)\]")


def run(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([SVCOPS, *argv], capture_output=True, text=True, timeout=timeout)


def lab_cpu() -> float:
    """CPU seconds spent so far in the lab's node namespaces: every live process's own
    and what it reaped (a command's shell is reaped by its sshd, each sshd session by
    the node's sshd), so a difference taken once an apply ended is what it cost the
    nodes (their commands, sshd, the DNS server's reloads). Read inside the lab's
    namespaces (`svcops lab` keeps them under /run/netns)."""
    import glob

    nodes = set()
    for path in glob.glob("/run/netns/svl-node*"):
        try:
            nodes.add(os.stat(path).st_ino)
        except OSError:
            pass
    hz, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino not in nodes:
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / hz


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


CPU: dict[str, float] = {}  # the last timed_run's "controller cpu" and "nodes cpu"


def timed_run(argv: list[str], timeout: float) -> tuple[float, int, list[tuple[float, str]]]:
    """Run svcops; (wall seconds, exit status, [(seconds since start, line)]): every line
    of its output stamped as it arrives (unbuffered), to split the wall time into parts.
    The CPU it took, on the controller (svcops itself) and on the nodes, goes to `CPU`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    own, nodes = _children_cpu(), lab_cpu()
    t0 = time.perf_counter()
    p = subprocess.Popen([SVCOPS, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[tuple[float, str]] = []
    try:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
            if time.perf_counter() - t0 > timeout:
                raise subprocess.TimeoutExpired(argv, timeout)
        rc = p.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
    except BaseException:
        p.kill()
        p.wait()
        raise
    took = time.perf_counter() - t0
    time.sleep(0.2)  # the last sshd sessions reaped
    CPU.update({"ctl cpu": _children_cpu() - own, "nodes cpu": lab_cpu() - nodes})
    return took, rc, lines


def parts(lines: list[tuple[float, str]], took: float) -> dict[str, float]:
    """The apply's wall time in parts, from its stamped lines (pyinfra's "[nodeK]
    Connected" and svcops's "[nodeK] svcops | <operation>: <word>" progress lines):

    controller  start to the first node connected: load, validate, compile and render
                for every node, the lock file, pyinfra's inventory; SSH connects
    prepare     first node connected to the first "begin" done: the rest of the
                connects, each node's operations built (payloads, on the controller)
    node max    the slowest node's "begin" to its "commit": facts (the record's canary,
                the changed buckets), the transaction, the fresh-login check, the commit
    node median the median node, the same way
    tail        the last commit to the process's end (disconnect, the report)
    """
    connected: list[float] = []
    begin: dict[str, float] = {}
    commit: dict[str, float] = {}
    for t, line in lines:
        m = PREFIX.search(line)
        if not m:
            continue
        if line.rstrip().endswith("Connected"):
            connected.append(t)
        elif "svcops | begin" in line:
            begin[m.group(1)] = t
        elif "svcops | commit" in line:
            commit[m.group(1)] = t
    spans = [commit[n] - begin[n] for n in commit if n in begin]
    if not connected or not spans:
        return {}
    return {
        "controller": min(connected),
        "prepare": min(begin.values()) - min(connected),
        "node max": max(spans),
        "node median": statistics.median(spans),
        "tail": took - max(commit.values()),
    }


OP_LINE = re.compile(r"\[(node\d+)\]\s*svcops \| ([^:]+):")


def operations(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Each svcops operation's median time over the nodes: from the line of the one
    before it on that node to its own (the fact reads it starts with included)."""
    last: dict[str, float] = {}
    took: dict[str, list[float]] = {}
    for t, line in lines:
        m = OP_LINE.search(line)
        if not m:
            continue
        node, op = m.groups()
        if node in last:
            took.setdefault(op.strip(), []).append(t - last[node])
        last[node] = t
    return {op: statistics.median(v) for op, v in took.items()}


def timed_apply(site: Path, expect: str | None, timeout: float = 600) -> float:
    return timed_apply_parts(site, expect, timeout)[0]


def timed_apply_parts(site: Path, expect: str | None, timeout: float = 600) -> tuple[float, dict[str, float]]:
    took, rc, lines = timed_run(["apply", "-i", INVENTORY, "-y", *APPLY_FLAGS, str(site)], timeout)
    text = "\n".join(line for _, line in lines)
    if rc != 0:
        raise SystemExit(f"svcops apply failed:\n{text[-4000:]}")
    if expect and expect not in text:
        raise SystemExit(f"expected {expect!r} in the apply's results:\n{text[-2000:]}")
    got = parts(lines, took)
    got.update(CPU)
    got.update({f"op {k}": v for k, v in operations(lines).items()})
    return took, got


def timed_plan(site: Path, timeout: float = 600) -> float:
    """`svcops plan` of the site: load, validate, compile and render every node, no SSH."""
    t = time.perf_counter()
    r = run("plan", "-i", INVENTORY, str(site), timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"svcops plan failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return time.perf_counter() - t


# --- the two benchmarks ----------------------------------------------------------------


def walkthrough_row(runs: int) -> dict[str, float]:
    """The walkthrough site: first, no-op, a DNS-only change, a rule change."""
    with tempfile.TemporaryDirectory(prefix="svbench-lab-") as tmp:
        site = Path(tmp) / "site"
        shutil.copytree(ROOT / "examples" / "walkthrough", site)
        row = {"first": timed_apply(site, "changed")}
        row["no-op"] = statistics.median(timed_apply(site, "unchanged") for _ in range(runs))
        dns, rules = [], []
        for i in range(runs):
            (site / "services" / f"ext{i}.yaml").write_text(EXTERNAL.format(i=i))
            dns.append(timed_apply(site, "changed (service dns)"))
            (site / "services" / f"bench{i}.yaml").write_text(CLUSTER_IP.format(i=i))
            rules.append(timed_apply(site, "changed"))
        row["dns change"], row["rule change"] = statistics.median(dns), statistics.median(rules)
    return row


def median_parts(got: list[tuple[float, dict[str, float]]]) -> tuple[float, dict[str, float]]:
    keys = set.intersection(*(set(p) for _, p in got)) if got else set()
    return statistics.median(t for t, _ in got), {k: statistics.median(p[k] for _, p in got) for k in sorted(keys)}


def big_row(services: int, nodes: int, mode: str, runs: int, timeout: float) -> dict:
    """A `services`-service site in `mode`: the cold apply, no-op applies, one-service
    changes (svc-5's port, a different one each run) with their parts, and `svcops plan`."""
    with tempfile.TemporaryDirectory(prefix="svbench-lab-") as tmp:
        site = Path(tmp) / "site"
        write_big_site(site, services, nodes, mode)
        row: dict = {}
        row["cold"] = timed_apply_parts(site, ": changed", timeout)
        print(f"    {mode} {services}: cold {row['cold'][0]:.2f} s", flush=True)
        row["no-op"] = median_parts([timed_apply_parts(site, ": unchanged", timeout) for _ in range(runs)])
        # Two kinds of one-service change: its port (its rules, and its SRV record: the
        # zone is reloaded on every node) and its affinity (its rules only).
        port, affinity = [], []
        edit = {"port": 80, "affinity": CHANGED % 20 == 5}
        for r in range(runs):
            edit["port"] += 1
            write_part(site, CHANGED - CHANGED % PER_FILE, services, nodes, {CHANGED: edit})
            port.append(timed_apply_parts(site, ": changed", timeout))
            edit["affinity"] = not edit["affinity"]
            write_part(site, CHANGED - CHANGED % PER_FILE, services, nodes, {CHANGED: edit})
            affinity.append(timed_apply_parts(site, ": changed", timeout))
        row["one-service"] = median_parts(port)
        row["affinity only"] = median_parts(affinity)
        row["plan"] = statistics.median(timed_plan(site, timeout) for _ in range(runs))
    return row


def print_big(results: dict[tuple[int, str], dict]) -> None:
    cols = ("controller", "prepare", "node max", "node median", "tail", "ctl cpu", "nodes cpu")
    print("\n  services mode      apply         wall    " + "".join(f"{c:>12}" for c in cols))
    for (n, mode), row in results.items():
        for what in ("cold", "no-op", "one-service", "affinity only"):
            t, p = row[what]
            print(f"  {n:>8} {mode:<9} {what:<12} {t:6.2f} s" + "".join(f"{p.get(c, float('nan')):10.2f} s" for c in cols))
        print(f"  {n:>8} {mode:<9} {'plan':<12} {row['plan']:6.2f} s   (svcops plan: load, validate, compile, render; no SSH)")
    print("\n  per operation, one-service change (median node; from the operation before it):")
    for (n, mode), row in results.items():
        ops = {k[3:]: v for k, v in row["one-service"][1].items() if k.startswith("op ")}
        print(f"  {n:>8} {mode:<9} " + ", ".join(f"{k} {v:.2f}" for k, v in ops.items() if v >= 0.005))
    print("\nratios:")
    for (n, mode), row in results.items():
        one, p = row["one-service"]
        print(
            f"  {n:>6} {mode:<9} one-service / cold {one / row['cold'][0]:.2f}, one-service / no-op {one / row['no-op'][0]:.2f}, "
            f"controller / one-service {p.get('controller', 0) / one:.2f}, slowest node / one-service {p.get('node max', 0) / one:.2f}, "
            f"plan / one-service {row['plan'] / one:.2f}"
        )
    sizes = sorted({n for n, _ in results})
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for mode in sorted({m for _, m in results}):
            if (lo, mode) in results and (hi, mode) in results:
                a, b = results[(lo, mode)], results[(hi, mode)]
                print(
                    f"  {mode}: {hi} / {lo} services: cold {b['cold'][0] / a['cold'][0]:.1f}x, no-op {b['no-op'][0] / a['no-op'][0]:.1f}x, "
                    f"one-service {b['one-service'][0] / a['one-service'][0]:.1f}x for {hi / lo:.0f}x the services"
                )


@contextmanager
def lab(n: int):
    """`svcops lab up --nodes N` for the block, `svcops lab down` after it."""
    up = run("lab", "up", "--nodes", str(n))
    if up.returncode != 0:
        raise SystemExit(up.stderr)
    try:
        yield
    finally:
        run("lab", "down")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="3,20")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--services", default="", help="comma-separated site sizes (e.g. 1000,10000); default: the walkthrough site")
    ap.add_argument("--modes", default="nftables,iptables", help="proxy modes of the big sites")
    ap.add_argument("--timeout", type=float, default=900, help="seconds any one svcops command may take")
    ap.add_argument("--node-timeout", type=int, default=None, help="svcops apply --node-timeout (a cold 10,000-service apply on 20 nodes sharing 2 cores leaves nodes silent for more than the default 10 s)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (the lab)", file=sys.stderr)
        return 2
    if "up" in run("lab", "status").stdout.split("\n", 1)[0]:
        print("a lab is already up: take it down first (svcops lab down)", file=sys.stderr)
        return 2
    sizes = [int(x) for x in a.services.split(",") if x]
    if a.node_timeout:
        APPLY_FLAGS[:] = ["--node-timeout", str(a.node_timeout)]
    walk: dict[int, dict[str, float]] = {}
    big: dict[tuple[int, str], dict] = {}
    for n in (int(x) for x in a.nodes.split(",")):
        if not sizes:
            with lab(n):
                walk[n] = row = walkthrough_row(a.runs)
            print(f"  {n:>3} nodes: " + ", ".join(f"{k} {v:.2f} s" for k, v in row.items()), flush=True)
        for s in sizes:
            for mode in a.modes.split(","):
                # A fresh lab for each: a cold apply finds no other mode's rules to remove.
                print(f"  {n} nodes, {s} services, {mode}:", flush=True)
                with lab(n):
                    big[(s, mode)] = big_row(s, n, mode, a.runs, a.timeout)
        if big:
            print(f"\n{n} nodes:")
            print_big(big)
            big = {}
    if walk:
        print("ratios:")
        for n, row in walk.items():
            print(f"  {n:>3} nodes: no-op / first {row['no-op'] / row['first']:.2f}, dns change / no-op {row['dns change'] / row['no-op']:.2f}")
        ns = sorted(walk)
        if len(ns) > 1:
            lo, hi = ns[0], ns[-1]
            for k in walk[lo]:
                print(f"  {k}: {hi} nodes / {lo} nodes {walk[hi][k] / walk[lo][k]:.2f}x for {hi / lo:.1f}x the nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
