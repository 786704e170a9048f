#!/usr/bin/env python3
"""Apply time on one node, per proxy mode, at 1,000 and 10,000 services: cold, for a
one-service change and in sync; and nftables mode's read of the live table, whole
(what svcops does since issue 10) against digests only (what it did before).

    sudo .venv/bin/python benchmarks/apply_modes.py [--services 1000,10000] [--endpoints 10]
                                                    [--modes iptables,nftables] [--single]

Where: directly in throwaway network namespaces on this machine's kernel (not over SSH:
the lab's SSH round trips add the same few tens of milliseconds to every mode and
would hide nothing). Each measurement is what `svcops apply`'s rule operation does on
the node, with svcops's own payloads, timed end to end:

    iptables   read the live state (iptables-save -t filter; -t nat), parse it, decide
               (in_sync), build restore_transactions(rules, live) (only the chains that
               differ; many are cut into transactions of 1,000 chains), one
               iptables-restore --noflush
    nftables   read the live state (LIST_COMMAND: nft list table ip svcops, every rule),
               parse it, decide (update_payloads: the skeleton and 1,000-service chunks
               cold, only what differs live), load the transactions with the same shell
               loader the operation and the boot script use

"cold" is a clean node (a fresh namespace); "change" is the same node afterwards, with
one service changed (ClientIP affinity turned on for one service): the live state is
read again and only the difference is applied. --single also times nftables' cold
load as one transaction (`full_payload`), the way a naive push would do it.

IPVS is not measured here: this machine's kernel has no ip_vs. benchmarks/ipvs_qemu.py
times it in Debian's kernel under qemu software emulation (TCG), with guest/native
ratios measured beside it to estimate real hardware.

The synthetic site is benchmarks/sitegen.py's (services x endpoints over 20 nodes);
the node measured is node1. Prints seconds and the nftables/iptables ratios.

Measured here (2 cores, kernel 6.18, nft 1.0.6, iptables-nft 1.8.9; 10 endpoints per
service; take the 1,000-service figures as +-20%). Before issue 10, on a quiet machine:

    services  mode      cold                 one-service change                 in sync
    1,000     iptables   0.86 s (5 MB)        0.66 s (one 7.6 kB transaction)    0.56 s
    1,000     nftables   0.6 s (2 tx)         0.17 s (one 9.5 kB transaction)    0.1 s
    2,000     iptables   2.0 s (10 MB)        1.35 s                             1.1 s
    10,000    iptables  15.0 s (50 MB, 115 tx) 9.4 s (7.0 s reading the live state) 7.0 s
    10,000    nftables  11.4 s (11 tx)        2.7 s (1.6 s reading the live state) 1.6 s

With the whole table read (nftables), in one run on the machine shared and loaded
(iptables measured beside it for scale):

    1,000     iptables   1.62 s               1.08 s                             1.02 s
    1,000     nftables   1.14 s               1.72 s                             1.33 s
    10,000    iptables  27.5 s                20.8 s                            15.9 s
    10,000    nftables  24.9 s                89.5 s (1.8 s the transaction)     74.7 s

    the read      digests only   whole table   of which nft's system time   in-sync apply
    1,000         0.24 s         1.88 s (7.7x)  0.63 s                       0.29 -> 2.15 s (7.4x)
    10,000        3.9 s          56.3 s (13x)   48.6 s                       4.9 -> 58.6 s (12x)

(an earlier, quieter run: 0.24 -> 1.24 s and 3.0 -> 63.9 s, in sync 3.6 -> 65.6 s). The
kernel dominates: its rule dump restarts from the table's first chain for every
32 kB batch, so the whole listing grows with the square of the table (10x the
services, 80x the system time); parsing it takes 1.8 s at 10,000, deciding 0.5 s.

iptables' fast path (issue 11: the record on the node and its canary,
`svcops.render.iptables_record`), beside its floor: one `iptables-restore --noflush` of
one small chain on the same node (iptables-nft-restore reads the whole table's cache
first: kube-proxy pays it too). --fast-only measures just this, as the operation does it
(`svcops.operations.iptables.rules`): one round trip reads the canary with the changed
buckets, one runs the step (the restore, then the record's files; `svcops.render.
iptables_step`). Seven changes (the service changed and back in turn), each set against
the floor measured just before and just after it; the median printed (2 runs, the
machine shared, load 4):

    services  cold (record written)  one-service change     in sync   floor     change / floor (all rounds)
    1,000      0.9-1.2 s             0.064-0.081 s (4.6 kB)  0.02 s    0.025 s   2.8-2.9x (2.3-4.1x)
    10,000    15.8-16.4 s            0.28 s (7.7 kB)         0.02 s    0.225 s   1.23-1.27x (1.16-1.37x)

    parts at 10,000: the render's record and index 0.002 s; the canary with the changed
    bucket, one round trip 0.020 s (8 `iptables -S CHAIN`, filter's and nat's at once,
    and beside them the record: one awk compares the node's index with the render's
    digests, the changed 200 kB bucket hashed and sent); the plan 0.002 s (only the
    bucket's changed unit parsed); the step 0.256 s: its restore about 0.24 s (the
    floor, and ~0.015 s for the change's own 11 chains and 31 rules), the rest 0.015 s
    (the exec, flock, timeout, the shell reading its 440 kB script: the bucket's new
    text, and its old one in the undo; no other process). Once per compile for every
    node, the buckets all nodes share 0.11 s. At 1,000 the floor is 25 ms and those
    same processes are most of the change.

    Before (the same benchmark, the same day): 0.29-0.32 s, 1.28-1.33x: the canary
    0.026-0.036 s, the bucket read apart 0.005-0.011 s, the plan 0.006-0.015 s (the
    whole bucket parsed), the restore, then the record files in a step of their own
    0.019-0.032 s (~15 processes). Over SSH the fast path was 8 commands on the node,
    each its own round trip (the canary, the buckets, 3 uploads, 2 undo scripts, 2
    steps); it is 2 now.

nftables' fast path (`svcops.render.nftables_record`), beside nft's own cost for the
same transaction (`nft -c -f`: checked, not committed), since endpoints DNAT in their
service chain (no chain per endpoint without ClientIP affinity; hairpin through the
`hairpin` map). 2026-12-03, the machine shared with other jobs (load 2-4):

    services  chains    cold     one-service change   nft -c alone   ratio   whole read   in sync, whole read
    1,000      1,770   0.46 s    0.038-0.053 s        0.022 s        1.7x    0.44 s       0.54 s
    10,000    17,700   6.7 s     0.18-0.22 s          0.145 s        1.24x   15.2 s       8.8 s
    (before: 10,000 services were 112,700 chains: cold 11.8 s, change 0.86 s, nft -c
    0.81 s; whole read 56-72 s, in sync 58-75 s)

    What nft costs at 10,000 (`nft -c -f` of one statement on that table): `add chain`
    0.012 s (no cache), `add rule ... counter` 0.057 s (nft fetches every chain and
    set), any rule or element with a DNAT, jump or goto 0.14 s: the kernel then
    validates the table's whole jump graph, from each base chain (both NAT hooks walk
    every service chain's rules), ~80 ms. A one-service change adds DNAT rules, so
    that is its floor; kube-proxy's transactions pay the same.

Before iptables mode wrote only the chains that differ and cut big changes into
transactions, one restore of everything took 3.7 s (1,000), 40-55 s (2,000) and did
not finish in 8 minutes (10,000): Debian 12's iptables-nft-restore takes time growing
much faster than one transaction's size. nftables' cold load as ONE transaction took
0.5 s at 1,000 and 11.1 s at 10,000 services on this kernel: no worse than chunks
here (the issue's 56 s was an earlier layout of the table, per-service verdict maps),
so the chunks are a bound on each transaction's size rather than a speed-up.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sitegen  # noqa: E402

from svcops.site.hostdata import nodes_from_hosts  # noqa: E402
from svcops.site.load import load_site  # noqa: E402
from svcops.site.model import Allocations  # noqa: E402
from svcops.render.nftables_sync import LOADER, chunked, transactions  # noqa: E402
from svcops.render.nftables_live import LIST_COMMAND  # noqa: E402
from svcops.compile.pipeline import compile_site  # noqa: E402
from svcops.render.iptables import CHUNK_CHAINS, parse_iptables_save, restore_transactions  # noqa: E402
from svcops.render.nftables import LIVE_COMMANDS, full_payload, parse_nft_list  # noqa: E402
from svcops.render.iptables_sync import in_sync  # noqa: E402
from svcops.render.iptables_record import (  # noqa: E402
    RECORD_DIR,
    canary_agrees,
    partial_plan,
    record_files,
    record_of,
    with_state,
)
from svcops.render.nftables_record import (  # noqa: E402
    canary_command,
    fast_buckets,
    fast_plan,
    fingerprint_of,
    parse_canary,
)
from svcops.render.nftables_record import record_files as nft_record_files  # noqa: E402
from svcops.render.record import changed_buckets, parse_index  # noqa: E402
from svcops.render.iptables_step import restore_plan, apply_script  # noqa: E402
from svcops.render.txn import script_step, txn_dir  # noqa: E402
from svcops.facts.iptables import SvcopsIptablesCanary  # noqa: E402

NODE = "node1"
TOKEN = "bench"  # the benchmark's transaction
OTHER = "node2"  # whose record makes the shared buckets first (the fast path's benchmark)


class Netns:
    def __init__(self) -> None:
        self.name = f"svbench-{os.getpid()}-{uuid.uuid4().hex[:6]}"

    def __enter__(self) -> "Netns":
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=True)

    def run(self, argv: list[str], stdin: str | None = None, timeout: float | None = None) -> str:
        # `ip netns exec` execs the command: a timeout kills the command itself.
        r = subprocess.run(["ip", "netns", "exec", self.name, *argv], input=stdin, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr[:2000]}")
        return r.stdout


def compiled(site, nodes, lock, mode):
    c, diags = compile_site(site, nodes, lock, mode=mode)
    if c is None:
        raise SystemExit("\n".join(map(str, diags)))
    return c


class Stopped(Exception):
    """An apply ran past --limit seconds and was stopped."""


def apply_iptables(ns: Netns, rules, limit: float) -> tuple[float, int, int]:
    """(seconds, payload bytes, transactions) of one iptables-mode apply."""
    t = time.perf_counter()
    live = parse_iptables_save(ns.run(["sh", "-c", "iptables-save -t filter && iptables-save -t nat"]))
    if in_sync(rules, live):
        return time.perf_counter() - t, 0, 0
    txs = restore_transactions(rules, live)
    payload = "".join(txs)
    try:
        ns.run(["iptables-restore", "-w", "5", "--noflush"], payload, timeout=limit)
    except subprocess.TimeoutExpired:
        raise Stopped(f"iptables-restore of {len(payload) / 1e6:.0f} MB stopped after {limit:.0f} s") from None
    return time.perf_counter() - t, len(payload), len(txs)


class Record:
    """iptables mode's record folder for one benchmark node (a temporary folder standing
    for /etc/svcops/iptables.d), an armed transaction folder standing for the apply's
    (/run/svcops/txn.TOKEN), and the facts' and the step's commands pointed at them."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "iptables.d"
        self.run = tmp / "run"
        self.seq = 0
        (Path(txn_dir(TOKEN, str(self.run))) / "undo").mkdir(parents=True)
        (Path(txn_dir(TOKEN, str(self.run))) / "armed").touch()

    def command(self, fact, **kw) -> str:
        return fact().command(**kw).replace(RECORD_DIR, str(self.dir))

    def step(self, restore, files: dict, previous=None) -> tuple[str, str]:
        """(command, standard input) of the operation's one step: the restore and the
        record's files (`svcops.render.iptables_step`, `svcops.render.txn.script_step`)."""
        self.seq += 1
        change, undo = apply_script(txn_dir(TOKEN, str(self.run)), restore, files, str(self.dir), previous=previous)
        return script_step(TOKEN, self.seq, "iptables", change, undo, 600, str(self.run))


def apply_iptables_cold(ns: Netns, rules, rec: Record, limit: float) -> float:
    """The full path on a clean node: iptables-save, the whole restore with the canary
    and the whole record written, in one step."""
    t = time.perf_counter()
    live = parse_iptables_save(ns.run(["sh", "-c", "iptables-save -t filter && iptables-save -t nat"]))
    record = record_of(rules)
    command, stdin = rec.step(restore_plan(with_state(rules, record.index()), live, CHUNK_CHAINS), record_files(record, None))
    ns.run(["sh", "-c", command], stdin, timeout=limit)
    return time.perf_counter() - t


def apply_iptables_fast(ns: Netns, rules, rec: Record) -> tuple[float, dict[str, float], int]:
    """(seconds, parts, payload bytes) of the operation's fast path: the render's
    record and index, the canary read with the changed buckets (one round trip: the
    node compares its index with the render's digests and hashes the files), the
    partial restore and its rollback planned, then one step on the node: the restore
    and the changed record files (one round trip over SSH; here one `ip netns exec`
    each)."""
    parts: dict[str, float] = {}
    t0 = time.perf_counter()
    record = record_of(rules)
    want = record.index()
    t1 = time.perf_counter()
    parts["record+index"] = t1 - t0
    out = ns.run(["sh", "-c", rec.command(SvcopsIptablesCanary, want=tuple(want.digests.items()))])
    canary = SvcopsIptablesCanary().process(out.splitlines())
    t2 = time.perf_counter()
    parts["canary and changed buckets"] = t2 - t1
    assert canary_agrees(canary, rules), "the canary disagrees"
    changed = changed_buckets(canary.index, want)
    if not changed:
        return t2 - t0, parts, 0
    assert canary.buckets is not None and set(changed) <= set(canary.buckets)
    t3 = time.perf_counter()
    plan = partial_plan(rules, record, canary, canary.buckets)
    assert plan is not None, "a bucket file is not the one the index names"
    restore = restore_plan(plan.rules, plan.live, CHUNK_CHAINS)
    command, stdin = rec.step(restore, plan.files, plan.previous)
    t4 = time.perf_counter()
    parts["plan"] = t4 - t3
    ns.run(["sh", "-c", command], stdin)
    parts["step"] = time.perf_counter() - t4
    # The step without its restore (a stand-in that does nothing), the same files again:
    # the rest of the step's cost on the node.
    command, stdin = rec.step(restore, plan.files, plan.previous)
    t5 = time.perf_counter()
    ns.run(["sh", "-c", f"PATH={rec.run}/noop:$PATH; {command}"], stdin)
    parts["of which not the restore"] = time.perf_counter() - t5
    return t4 - t0 + parts["step"], parts, len(restore.payload)


_FLOOR = "*nat\n:SVCOPS-BENCH-FLOOR - [0:0]\n-A SVCOPS-BENCH-FLOOR -j RETURN\nCOMMIT\n"


def restore_floor(ns: Netns) -> float:
    """`iptables-restore --noflush` of one small chain (the floor of any restore at this
    size: iptables-nft-restore reads the table's cache first); the chain is removed after."""
    t = time.perf_counter()
    ns.run(["iptables-restore", "-w", "5", "--noflush"], _FLOOR)
    took = time.perf_counter() - t
    ns.run(["sh", "-c", "iptables -t nat -F SVCOPS-BENCH-FLOOR && iptables -t nat -X SVCOPS-BENCH-FLOOR"])
    return took


def iptables_fast(ns: Netns, rules, rules2, other2, tmp: Path, n: int, limit: float, results: dict, rounds: int = 7) -> None:
    """The fast path (issue 11) beside its floor: a cold apply writing the record, then
    `rounds` one-service changes through the canary (the service changed and back, in
    turn), each with the floor measured just before and just after it (the machine is
    shared: each change is set against the floor of its own moment), then an in-sync
    apply. Prints the median round (by its ratio) and the range of the ratios.

    The record's buckets that every node shares are made once per compile, for all
    nodes (`svcops.render.iptables_record.record_of`): they are made first, from
    another node's rules (`other2`), and timed apart; the change is the node's own."""
    rec = Record(tmp)
    noop = rec.run / "noop"
    noop.mkdir()
    (noop / "iptables-restore").write_text("#!/bin/sh\n")
    (noop / "iptables-restore").chmod(0o755)
    cold = apply_iptables_cold(ns, rules, rec, limit)
    t = time.perf_counter()
    record_of(other2).index()
    shared = time.perf_counter() - t
    runs = []  # (change / floor, change, floor, parts, payload bytes)
    for i in range(rounds):
        before = restore_floor(ns)
        change, parts, size = apply_iptables_fast(ns, rules2 if i % 2 == 0 else rules, rec)
        floor = (before + restore_floor(ns)) / 2
        runs.append((change / floor, change, floor, parts, size))
    again, _, _ = apply_iptables_fast(ns, rules2 if rounds % 2 else rules, rec)
    runs.sort(key=lambda r: r[0])
    ratio, change, floor, parts, size = runs[len(runs) // 2]
    results[(n, "iptables fast", "change")] = change
    results[(n, "iptables fast", "floor")] = floor
    print(
        f"  {n:>6} services  iptables fast path: cold {cold:6.2f} s; one-service change {change:5.3f} s ({size / 1e3:.1f} kB), "
        f"floor (restore of one small chain) {floor:5.3f} s: change / floor {ratio:.2f}x "
        f"(median of {rounds} rounds; {runs[0][0]:.2f}-{runs[-1][0]:.2f}x); in sync {again:5.3f} s"
    )
    print(
        "          parts of that change: " + ", ".join(f"{k} {v:.3f} s" for k, v in parts.items())
        + f"; once per compile for every node: the shared buckets {shared:.2f} s"
    )


def read_nft(ns: Netns, full: bool) -> tuple[object, float, float, float, float]:
    """(live table, seconds reading it, of which the children's user and system CPU
    seconds, seconds parsing it) the way the fact does: full, `nft list table ip svcops`
    (every chain's rules); not full, the cheap LIVE_COMMANDS (digests only, as before
    the drift check)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    commands = (LIST_COMMAND,) if full else LIVE_COMMANDS
    out = "".join(subprocess.run(["ip", "netns", "exec", ns.name, *c], capture_output=True, text=True).stdout for c in commands)
    read = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    live = parse_nft_list(out, full=full)
    return live, read, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, time.perf_counter() - t


def apply_nftables(ns: Netns, rules, tmp: Path, full: bool = True) -> tuple[float, int, int]:
    """(seconds, payload bytes, transactions) of one nftables-mode apply (full: the
    whole table read and compared, as svcops does; else digests only, as it did)."""
    t = time.perf_counter()
    live = read_nft(ns, full)[0]
    txs = transactions(rules, live)
    if not txs:
        return time.perf_counter() - t, 0, 0
    path = tmp / "apply.nft"
    text = chunked(txs)
    path.write_text(text)
    ns.run(["sh", "-c", f"{LOADER}\nsvcops_nft_load {path}"])
    return time.perf_counter() - t, len(text), len(txs)


def apply_nftables_fast(ns: Netns, rules, record: Path, tmp: Path, check_only: bool = False) -> tuple[float, int, int, dict]:
    """(seconds, payload bytes, transactions, parts) of one nftables-mode apply through
    the fast path (issue 11), as `svcops.operations.nftables.rules` does it on a node
    whose record is `record` (a folder): the canary and the index read, the changed
    buckets read (digests computed node-side), the plan, the transactions loaded, the
    record's changed files written. Falls back to nothing: the record must be trusted."""
    parts: dict[str, float] = {}
    t0 = time.perf_counter()
    out = ns.run(["sh", "-c", f"nft list set ip svcops state; echo @@; cat {record}/index"])
    canary_text, _, index_lines = out.partition("@@\n")
    have = parse_index(index_lines.splitlines(), "nftables")
    assert have is not None and parse_canary(canary_text.splitlines()) == have.fingerprint, "record not trusted"
    t1 = time.perf_counter()
    parts["canary+index"] = t1 - t0
    names = fast_buckets(have, rules)
    old = {}
    for b in names:
        f = record / b
        old[b] = (hashlib.sha256(f.read_bytes()).hexdigest()[:32], f.read_text()) if f.exists() else ("", "")
    t2 = time.perf_counter()
    parts["buckets read"] = t2 - t1
    plan = fast_plan(rules, have, old)
    assert plan is not None
    t3 = time.perf_counter()
    parts["plan"] = t3 - t2
    text = chunked(plan.transactions)
    (tmp / "apply.nft").write_text(text)
    if check_only:
        # nft's own cost for this transaction: checked, not committed (it fetches the
        # same caches: every chain and set of the ruleset).
        (tmp / "check.nft").write_text("".join(plan.transactions))
        ns.run(["nft", "-c", "-f", str(tmp / "check.nft")])
        parts["nft -c"] = time.perf_counter() - t3
        return parts["nft -c"], len(text), len(plan.transactions), parts
    ns.run(["sh", "-c", f"{LOADER}\nsvcops_nft_load {tmp / 'apply.nft'}"])
    t4 = time.perf_counter()
    parts["nft load"] = t4 - t3
    for b, t in plan.files.items():
        f = record / b
        if t is None:
            f.unlink(missing_ok=True)
        else:
            f.write_text(t)
    parts["record written"] = time.perf_counter() - t4
    return time.perf_counter() - t0, len(text), len(plan.transactions), parts


def write_record(ns: Netns, rules, record: Path) -> None:
    """The record of `rules` into `record`, and the canary into the table."""
    record.mkdir(exist_ok=True)
    for b, t in nft_record_files(rules).items():
        if t is not None:
            (record / b).write_text(t)
    ns.run(["nft", "-f", "-"], canary_command(fingerprint_of(rules)))


def nft_read_costs(ns: Netns, rules, n: int, results: dict) -> None:
    """The fact read and an in-sync apply, digests only (before the drift check) and
    whole (after), on a table holding `rules`; prints them with their ratios."""
    for full in (False, True):
        live, read, user, system, parse = read_nft(ns, full)
        t = time.perf_counter()
        assert transactions(rules, live) == []
        decide = time.perf_counter() - t
        what = "whole (after)" if full else "digests (before)"
        results[(n, "read", full)] = read + parse
        results[(n, "in sync", full)] = read + parse + decide
        print(
            f"  {n:>6} services  nftables read {what:<17} {read:7.2f} s (nft: user {user:.2f} s, system {system:.2f} s)"
            f"  parse {parse:5.2f} s  decide {decide:5.2f} s  in-sync apply {read + parse + decide:7.2f} s"
        )
    for what in ("read", "in sync"):
        print(f"  {n:>6} services  nftables {what}: after / before {results[(n, what, True)] / results[(n, what, False)]:.1f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--modes", default="iptables,nftables")
    ap.add_argument("--single", action="store_true", help="also time nftables' cold load as one transaction")
    ap.add_argument("--limit", type=float, default=300, help="stop an iptables-restore after this many seconds (default 300)")
    ap.add_argument("--fast-only", action="store_true", help="iptables: only the fast path (record and canary) beside its floor")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    modes = a.modes.split(",")
    results: dict[tuple[int, str, str], float] = {}
    print(f"apply on one node (network namespace, kernel {os.uname().release}), {a.endpoints} endpoints per service")
    for n in (int(x) for x in a.services.split(",")):
        with tempfile.TemporaryDirectory(prefix="svbench-") as tmp_dir:
            tmp = Path(tmp_dir)
            sitegen.write_site(tmp / "site", n)
            site, diags = load_site(tmp / "site")
            assert site is not None, diags
            nodes, _ = nodes_from_hosts(sitegen.hosts(n, a.endpoints, a.nodes), "bench")
            lock = Allocations({}, {}, {}, {})
            # One service changed: ClientIP affinity on the 4th (a ClusterIP service).
            services = list(site.services)
            services[3] = replace(services[3], session_affinity="ClientIP")
            changed_site = replace(site, services=tuple(services))
            for mode in modes:
                c = compiled(site, nodes, lock, mode)
                lock = c.allocations
                c2 = compiled(changed_site, nodes, lock, mode)
                with Netns() as ns:
                    if mode == "iptables":
                        rules, rules2 = c.outputs[NODE].iptables, c2.outputs[NODE].iptables
                        if a.fast_only:
                            iptables_fast(ns, rules, rules2, c2.outputs[OTHER].iptables, tmp, n, a.limit, results)
                            continue
                        try:
                            cold, size, ntx = apply_iptables(ns, rules, a.limit)
                            change, csize, ctx = apply_iptables(ns, rules2, a.limit)
                            again, _, _ = apply_iptables(ns, rules2, a.limit)
                        except Stopped as e:
                            print(f"  {n:>6} services  {mode:<9} {e}")
                            continue
                        with Netns() as ns2:
                            iptables_fast(ns2, rules, rules2, c2.outputs[OTHER].iptables, tmp, n, a.limit, results)
                    else:
                        rules, rules2 = c.outputs[NODE].nftables, c2.outputs[NODE].nftables
                        cold, size, ntx = apply_nftables(ns, rules, tmp)
                        if a.fast_only:
                            change = again = float("nan")
                            csize = ctx = 0
                            write_record(ns, rules, tmp / "record")
                        else:
                            change, csize, ctx = apply_nftables(ns, rules2, tmp)
                            again, _, _ = apply_nftables(ns, rules2, tmp)
                            nft_read_costs(ns, rules2, n, results)
                            write_record(ns, rules2, tmp / "record")
                            apply_nftables_fast(ns, rules, tmp / "record", tmp)
                        # The fast path: the node's record trusted; the change there and back.
                        fast, fsize, ftx, parts = apply_nftables_fast(ns, rules2, tmp / "record", tmp)
                        floor = min(apply_nftables_fast(ns, rules, tmp / "record", tmp, check_only=True)[0] for _ in range(3))
                        fast_back, _, _, _ = apply_nftables_fast(ns, rules, tmp / "record", tmp)
                        results[(n, mode, "fast change")] = fast
                        shown = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in parts.items())
                        print(
                            f"  {n:>6} services  nftables  one-service change through the record {fast:6.3f} s "
                            f"({fsize / 1e3:.1f} kB, {ftx} transaction; {shown}); back {fast_back:.3f} s; "
                            f"nft -c of such a transaction alone {floor:.3f} s: {fast / floor:.2f}x"
                        )
                    extra = f" ({ntx} transactions cold, {ctx} for the change)"
                results[(n, mode, "cold")] = cold
                results[(n, mode, "change")] = change
                results[(n, mode, "in sync")] = again
                print(
                    f"  {n:>6} services  {mode:<9} cold {cold:7.2f} s ({size / 1e6:.1f} MB)   "
                    f"one-service change {change:6.2f} s ({csize / 1e3:.1f} kB)   in sync {again:5.2f} s{extra}"
                )
                if mode == "nftables" and a.single:
                    with Netns() as ns:
                        payload = full_payload(rules)
                        t = time.perf_counter()
                        ns.run(["nft", "-f", "-"], payload)
                        single = time.perf_counter() - t
                    results[(n, mode, "single")] = single
                    print(f"  {n:>6} services  nftables  cold as ONE transaction {single:7.2f} s")
    if "iptables" in modes and "nftables" in modes:
        print("ratios nftables / iptables:")
        for n in (int(x) for x in a.services.split(",")):
            parts = []
            for what in ("cold", "change", "in sync"):
                i, f = results.get((n, "iptables", what)), results.get((n, "nftables", what))
                if i and f:
                    parts.append(f"{what} {f / i:.2f}x")
            print(f"  {n:>6} services: " + ", ".join(parts))
    if a.single:
        for n in (int(x) for x in a.services.split(",")):
            s, c = results.get((n, "nftables", "single")), results.get((n, "nftables", "cold"))
            if s and c:
                print(f"  {n:>6} services: nftables cold, one transaction / chunked: {s / c:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
