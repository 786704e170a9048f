#!/usr/bin/env python3
"""A node's DNS server killed or hung: what its lookups and `svcops apply` cost.

    sudo /work/isolated.sh .venv/bin/python benchmarks/dns_faults.py

Brings up a 3-node lab, starts a stand-in "outside" DNS server on the lab's client
(tests/dnsquery.py; the nodes' previous resolv.conf names it), applies the walkthrough
site, then on node1:

    healthy      getent of a cluster name and of an outside name
    killed       the server SIGKILLed: the same lookups (right away), how long until
                 the cluster name answers again (30 s at most), `svcops apply -y`
    stopped      the server SIGSTOPped: the same lookups, then `svcops apply -y`
                 (120 s at most), then the lookups again
    no upstream  the stand-in ended (the nodes' previous nameserver silent): the
                 lookups, `svcops apply -y`

and prints wall times (seconds; each lookup with a 60 s cap) and what each lookup gave.
Then `svcops lab down`. It refuses to run when a lab is already up. Every process it
starts on the lab is ended by PID (or goes with the lab).

Measured here (2 cores; getent through `svcops lab exec`, ~0.15 s of it its start):

    before (resolv.conf: svcops's server alone, glibc's defaults: timeout 5 s, 2 attempts)
      killed    cluster name fails 0.19 s, outside name fails 0.20 s, still both failing
                3 s later; the apply restarts it (1.5 s)
      stopped   cluster name fails 40 s, outside name fails 40 s; the apply hung on the
                fact's `rec_control ping` (killed at 120 s), and the lookups stayed at 40 s
    after (svcops's server, then the previous nameservers; timeout:1 attempts:2; supervised)
      killed    cluster name fails 0.15 s, outside name 0.13 s; the cluster name answers
                again 1.3 s after the kill (the supervisor); the apply then has nothing to do
      stopped   cluster name fails 8.2 s, outside name 5.3 s (`getent hosts`: its empty
                AAAA walks the 3-domain search list, 1 s a query; A alone: 1 s); the
                apply 6.9 s, after which both answer in 0.25 s
      no upstream  the apply 1.7 s (the outside name still answers, from the server's cache)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SVCOPS = str(Path(sys.executable).parent / "svcops")
INVENTORY = str(ROOT / "inventory" / "lab.py")
DNSQUERY = ROOT / "tests" / "dnsquery.py"
CLIENT = "192.168.36.2"
OUTSIDE = "outside.example.test"
CLUSTER_NAME = "my-deploy.default.svc.cluster.local"
PIDFILE = "/run/pdns-recursor-svcops/pdns_recursor-svcops.pid"


def run(*argv: str, timeout: float = 180, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, cwd=ROOT)


def sh(host: str, script: str, timeout: float = 60, input: str | None = None) -> str:
    return run(SVCOPS, "lab", "exec", host, "--", "sh", "-c", script, timeout=timeout, input=input).stdout


def timed(argv: list[str], cap: float) -> tuple[float, str]:
    t = time.monotonic()
    try:
        r = run(*argv, timeout=cap)
        out = (r.stdout.split() or [f"rc={r.returncode}"])[0] if "getent" in argv else f"rc={r.returncode}"
    except subprocess.TimeoutExpired:
        out = f"still running at {cap:.0f} s (killed)"
    return time.monotonic() - t, out


def lookups(label: str, rows: list[tuple[str, str, float, str]]) -> None:
    for name in (CLUSTER_NAME, OUTSIDE):
        took, out = timed([SVCOPS, "lab", "exec", "node1", "--", "getent", "hosts", name], 60)
        rows.append((label, f"getent hosts {name}", took, out))


def apply(site: Path, label: str, rows: list, cap: float = 120) -> None:
    took, out = timed([SVCOPS, "apply", "-i", INVENTORY, "-y", str(site)], cap)
    rows.append((label, "svcops apply -y", took, out))


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (the lab)", file=sys.stderr)
        return 2
    if "up" in run(SVCOPS, "lab", "status").stdout.split("\n", 1)[0]:
        print("a lab is already up: take it down first (svcops lab down)", file=sys.stderr)
        return 2
    up = run(SVCOPS, "lab", "up", "--nodes", "3")
    if up.returncode != 0:
        raise SystemExit(up.stderr)
    rows: list[tuple[str, str, float, str]] = []
    tmp = Path(tempfile.mkdtemp(prefix="svcops-dns-faults-"))
    try:
        sh("client", "cat > /tmp/dnsquery.py", input=DNSQUERY.read_text())
        sh("client", f"python3 /tmp/dnsquery.py serve {CLIENT} {OUTSIDE}={CLIENT} </dev/null >/tmp/outside.log 2>&1 & echo $! >/tmp/outside.pid")
        for node in ("node1", "node2", "node3"):
            sh(node, f"printf 'nameserver {CLIENT}\\nsearch lab.test\\n' > /etc/resolv.conf")
        site = tmp / "site"
        shutil.copytree(ROOT / "examples" / "walkthrough", site)
        apply(site, "first", rows)
        lookups("healthy", rows)

        pid = sh("node1", f"cat {PIDFILE}").strip()
        sh("node1", f"kill -9 {pid}")
        killed = time.monotonic()
        lookups("killed", rows)
        back = None
        while time.monotonic() - killed < 30:  # bounded: 30 s
            if run(SVCOPS, "lab", "exec", "node1", "--", "getent", "hosts", CLUSTER_NAME, timeout=30).returncode == 0:
                back = time.monotonic() - killed
                break
            time.sleep(0.1)
        rows.append(("killed", "cluster name answers again after", back or float("nan"), "" if back else "never (30 s)"))
        apply(site, "killed", rows)
        lookups("killed, applied", rows)

        pid = sh("node1", f"cat {PIDFILE}").strip()
        sh("node1", f"kill -STOP {pid}")
        lookups("stopped", rows)
        apply(site, "stopped", rows)
        lookups("stopped, applied", rows)
        sh("node1", f"kill -CONT {pid} 2>/dev/null; true")

        # The nodes' upstream gone (the stand-in ended): the apply must still end.
        sh("client", f"kill $(cat /tmp/outside.pid)")
        lookups("no upstream", rows)
        apply(site, "no upstream", rows)
    finally:
        run(SVCOPS, "lab", "down")
        shutil.rmtree(tmp, ignore_errors=True)
    for label, what, took, out in rows:
        print(f"{label:18} {what:52} {took:7.2f} s  {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
