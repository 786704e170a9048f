#!/usr/bin/env python3
"""IPVS-mode apply time on one node at 1,000 and 10,000 services: cold and for a
one-service change, inside Debian's own kernel booted under qemu software emulation.

    sudo .venv/bin/python benchmarks/ipvs_qemu.py [--services 1000,10000] [--endpoints 10]
                                                  [--scale-services 1000] [--budget 1200]

EMULATED (qemu TCG): the times are far slower than real hardware. This machine's kernel
has no IPVS (nor dummy interfaces), so the node is tests/qemu/harness.py's guest:
Debian's cloud kernel with busybox, ipvsadm, ipset, iptables (nft) and iproute2,
booted with `qemu -accel tcg`, one boot per site size. The guest times every step with
its own clock (/proc/timer_list, ns); the host only reads the figures from the serial
console.

To relate TCG to native speed, this machine also runs natively, in a throwaway network
namespace, with the same binaries on the same input: the apply's steps that need no
IPVS (the addresses, on a veth standing for the dummy interface; ipset restore;
iptables-restore; the ipset and iptables reads), a busybox shell loop (CPU), 200 runs
of /usr/sbin/ip (process start) and `iptables-restore` of the --scale-services
iptables-mode payload. Every guest/native ratio is printed; the steps that cannot run
here (insmod, sysctls, ipvsadm -R, ipvsadm-save) get a native *estimate*: guest time
divided by the highest and the lowest ratio measured.

The steps are those of `svcops.operations.ipvs.rules` (svcops/render/ipvs_sync.py's plan,
computed on the host by svcops's pure functions, as the operation does):

    cold     a clean node: `ipvs_plan(rules, IpvsLive(), LiveTables(), modules)`, i.e.
             modules (insmod here: the guest has no modprobe database; every module the
             apply needs, including those a real node autoloads), sysctls and the dummy
             interface, the virtual addresses (one `ip -batch` for all, as svcops runs
             them), `ipset restore`, `iptables-restore -w 5 --noflush`, `ipvsadm -R`
    read     the live state svcops reads before deciding: the SvcopsIpvs fact's command
             (ipset save, ipvsadm-save -n, the dummy interface's addresses, sysctls,
             modules) and SvcopsIptables's (iptables-save -t filter; -t nat)
    decide   on the host (native, not emulated): parse that state (synthesised from the
             cold render: the same lines the facts print) and `ipvs_plan` for the
             changed site
    change   one service changed (ClientIP affinity turned on for one service, as in
             benchmarks/apply_modes.py): the plan's steps, here one `ipvsadm -R` line
             (-E); "one-service change" = read + decide + change; "in sync" = read + decide

The synthetic site is benchmarks/sitegen.py's (services x endpoints over 20 nodes), the
node measured node1, as in benchmarks/apply_modes.py. The whole run stops by itself
within --budget seconds (default 1200): a boot that runs out of time reports the steps
it finished, for extrapolation.

Needs root (apt-get/apt-get download of what the harness needs, network namespaces).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "qemu"))

import harness  # noqa: E402
import sitegen  # noqa: E402

from svcops.facts.iptables import SvcopsIptables
from svcops.facts.ipvs import _ipvs_command, parse_ipvs_state  # noqa: E402
from svcops.site.hostdata import nodes_from_hosts  # noqa: E402
from svcops.render.ipvs_sync import IpvsLive, applied_state, ipvs_plan  # noqa: E402
from svcops.site.load import load_site  # noqa: E402
from svcops.site.model import Allocations  # noqa: E402
from svcops.render.ipvs import ipvs_modules  # noqa: E402
from svcops.compile.pipeline import compile_site  # noqa: E402
from svcops.render.iptables import LiveTables, parse_iptables_save, restore_payload  # noqa: E402
from svcops.render.ipvs import SETS, SYSCTLS  # noqa: E402
from svcops.render.iptables_sync import expected_tables  # noqa: E402

NODE = "node1"
BANNER = "EMULATED (qemu TCG): times are far slower than real hardware"

# The guest's /init. Every line for the host starts with "SVCOPS ". "T <label> <start
# ns> <end ns> <rc>": one timed step, on the guest's monotonic clock.
INIT = r"""#!/bin/busybox sh
. /prelude.sh

# The clock, without starting a process: ktime_get() in ns.
if [ -r /proc/timer_list ]; then
    clock() { { read -r _; read -r _; read -r _ _ NOW _; } < /proc/timer_list; }
else
    clock() { read -r NOW _ < /proc/uptime; NOW=$(echo "$NOW" | sed 's/\.//')0000000; }
fi
# step LABEL CMD...: run CMD (stderr to /tmp/err), report its time and rc.
step() {
    label=$1; shift
    clock; s=$NOW
    "$@" 2>/tmp/err; rc=$?
    clock
    say "T $label $s $NOW $rc"
    [ $rc -eq 0 ] || head -c 600 /tmp/err | sed "s/^/SVCOPS ERR $label /"
}
say "BOOTED kernel=$(uname -r) mem=$(sed -n 's/MemTotal: *//p' /proc/meminfo)"
P=/payload
step timer true
loadmods() { while read -r m; do insmod "/modules/$m" || return 1; done < /modules/order; }
say "PHASE cold"
step modules loadmods
step prepare sh -e $P/prepare
step addresses /usr/sbin/ip -batch $P/addresses
step ipset sh -c "ipset restore < $P/ipset"
step iptables iptables-restore -w 5 --noflush $P/iptables
step ipvsadm sh -c "ipvsadm -R < $P/ipvsadm"
say "CHECK vs $(ipvsadm -S -n | grep -c '^-A')"
say "CHECK rs $(ipvsadm -S -n | grep -c '^-a')"
say "CHECK addresses $(/usr/sbin/ip -4 -o addr show dev svcops-ipvs0 | wc -l)"
say "CHECK set-entries $(ipset save | grep -c '^add SVCOPS-')"
say "PHASE read"
step read-ipvs sh -c "sh $P/fact-ipvs > /tmp/fact-ipvs"
step read-iptables sh -c "sh $P/fact-iptables > /tmp/fact-iptables"
step read-ipset-only sh -c "ipset save | grep -E '^(create|add) SVCOPS-' > /dev/null"
step read-ipvsadm-only sh -c "ipvsadm-save -n > /dev/null"
say "CHECK fact-ipvs-lines $(wc -l < /tmp/fact-ipvs)"
say "CHECK fact-ipvs-vs $(grep -c '^vs -A' /tmp/fact-ipvs)"
say "CHECK fact-iptables-lines $(wc -l < /tmp/fact-iptables)"
rm -f /tmp/fact-ipvs /tmp/fact-iptables
say "PHASE change"
for s in prepare addresses ipset iptables ipvsadm finish; do
    [ -s $P/change-$s ] || continue
    case $s in
        addresses|finish) step change-$s /usr/sbin/ip -batch $P/change-$s ;;
        ipset) step change-ipset sh -c "ipset restore < $P/change-ipset" ;;
        iptables) step change-iptables iptables-restore -w 5 --noflush $P/change-iptables ;;
        ipvsadm) step change-ipvsadm sh -c "ipvsadm -R < $P/change-ipvsadm" ;;
        *) step change-$s sh -e $P/change-$s ;;
    esac
done
say "CHECK changed $(ipvsadm -S -n | grep -c -F -x -f $P/changed-line)"
# The same kind of change through the record (svcops.render.ipvs_record): the node holds
# the changed site and its record (put in place, untimed, as the apply above would have
# written it) with its canary; the change back to the first site is read and sent as
# the fast path does: the canary, the changed buckets, iptables; the edit; the record.
say "PHASE record"
mkdir -p /etc/svcops && cp -a $P/record /etc/svcops/ipvs.d
sh -e $P/canary-set || say "ERR canary-set failed"
step rec-read-canary sh -c "sh $P/fact-canary > /tmp/fact-canary"
step rec-read-counts sh -c "ipset list -t > /dev/null; /usr/sbin/ip -4 -o addr show dev svcops-ipvs0 | wc -l"
step rec-read-buckets sh -c "sh $P/fact-buckets > /tmp/fact-buckets"
step rec-read-iptables sh -c "sh $P/fact-iptables > /dev/null"
say "CHECK rec-trusted $(grep -c -F -f $P/canary-line /tmp/fact-canary)"
sed 's/^/SVCOPS FACT-CANARY /' /tmp/fact-canary
say "CHECK rec-buckets-read $(grep -c '^@@svcops-nft bucket ' /tmp/fact-buckets)"
step rec-apply sh -e $P/rec-run
step rec-files sh -e $P/rec-files
say "CHECK rec-changed $(ipvsadm -S -n | grep -c -F -x -f $P/rec-changed-line)"
say "CHECK rec-canary $(ipset list SVCOPS-STATE | grep -c -F -f $P/rec-canary-line)"
if [ -f $P/scale.sh ]; then
    say "PHASE scale"
    /usr/sbin/ip netns add scale
    /usr/sbin/ip netns exec scale sh $P/scale.sh $P
    /usr/sbin/ip netns del scale
fi
finish
"""

# The timing helpers of SCALE and NATIVE: "SVCOPS T <label> <start ns> <end ns> <rc>",
# as INIT's step prints them.
_STEP = r"""
P=$1
say() { echo "SVCOPS $*"; }
clock() { { read -r _; read -r _; read -r _ _ NOW _; } < /proc/timer_list; }
step() {
    label=$1; shift
    clock; s=$NOW
    "$@" >/dev/null 2>/tmp/svcops-step-err; rc=$?
    clock
    say "T $label $s $NOW $rc"
    [ $rc -eq 0 ] || head -c 600 /tmp/svcops-step-err | sed "s/^/SVCOPS ERR $label /"
}
"""

# Run in the guest and natively (busybox sh, same binaries, same input, in a fresh
# network namespace).
SCALE = _STEP + r"""
loop() { i=0; while [ $i -lt 200000 ]; do i=$((i + 1)); done; }
spawn() { i=0; while [ $i -lt 200 ]; do i=$((i + 1)); /usr/sbin/ip -V >/dev/null || return 1; done; }
step scale-loop loop
step scale-spawn spawn
step scale-iptables /usr/sbin/iptables-restore -w 5 --noflush $P/scale-iptables
"""


# The steps that need no IPVS, natively in a throwaway network namespace (busybox sh,
# the same payload files): a veth stands for the dummy interface (this machine's
# kernel has no dummy; an address is added the same way to either).
NATIVE = _STEP + r"""
/usr/sbin/ip link add svcops-ipvs0 type veth peer name svcops-peer0 || exit 1
step addresses /usr/sbin/ip -batch $P/addresses
step ipset busybox sh -c "/usr/sbin/ipset restore < $P/ipset"
step iptables /usr/sbin/iptables-restore -w 5 --noflush $P/iptables
step read-iptables busybox sh $P/fact-iptables
step read-ipset-only busybox sh -c "/usr/sbin/ipset save | grep -E '^(create|add) SVCOPS-'"
step rec-read-counts busybox sh -c "/usr/sbin/ipset list -t > /dev/null; /usr/sbin/ip -4 -o addr show dev svcops-ipvs0 | wc -l"
"""


@dataclass
class Run:
    """The figures of one boot (seconds per step label, checks, errors)."""

    services: int
    steps: dict[str, float] = field(default_factory=dict)
    rc: dict[str, int] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    boot: float | None = None
    total: float = 0.0
    done: bool = False
    mem: str = ""
    canary_lines: list[str] = field(default_factory=list)  # SvcopsIpvsCanary's output in the record phase


def compiled(site, nodes, lock, mode):
    c, diags = compile_site(site, nodes, lock, mode=mode)
    if c is None:
        raise SystemExit("\n".join(map(str, diags)))
    return c


def site_for(n: int, endpoints: int, nodes: int, tmp: Path):
    """(site, changed site, nodes) of sitegen's n services; the change: ClientIP
    affinity on the 4th service (a ClusterIP one), as benchmarks/apply_modes.py."""
    sitegen.write_site(tmp / f"site-{n}", n)
    site, diags = load_site(tmp / f"site-{n}")
    assert site is not None, diags
    nodes_, _ = nodes_from_hosts(sitegen.hosts(n, endpoints, nodes), "bench")
    services = list(site.services)
    services[3] = replace(services[3], session_affinity="ClientIP")
    return site, replace(site, services=tuple(services)), nodes_


def fact_lines(rules, modules) -> list[str]:
    """What SvcopsIpvs prints on a node holding `rules` (`applied_state`'s content, in
    the fact's line format): for timing the host's parse."""
    live = applied_state(rules, modules)
    out = [f"module {m}" for m in sorted(live.modules)]
    out += [f"sysctl {k} {v}" for k, v in SYSCTLS.items()]
    out.append("link")
    out += [f"addr {a}/32" for a in live.addresses]
    for s in SETS:
        out.append(f"ipset create {s.name} {live.sets[s.name]}")
        out += [f"ipset add {s.name} {e}" for e in sorted(live.members.get(s.name, ()))]
    out += ["vs " + line for line in live.ipvsadm.splitlines()]
    return out


@dataclass
class Host:
    """What the host computed for one site size (not emulated)."""

    compile_s: float = 0.0
    decide_s: float = 0.0  # parse the live state + ipvs_plan, for the change
    insync_s: float = 0.0  # the same, for the changed site once applied
    sizes: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    change_lines: int = 0
    fast_decide_s: float = 0.0  # the record's path: parse the canary + fast_plan
    fast_buckets: int = 0
    fast_lines: int = 0


def write_payload(n: int, a, tmp: Path, dest: Path) -> Host:
    h = Host()
    t = time.perf_counter()
    site, changed_site, nodes = site_for(n, a.endpoints, a.nodes, tmp)
    c = compiled(site, nodes, Allocations({}, {}, {}, {}), "ipvs")
    c2 = compiled(changed_site, nodes, c.allocations, "ipvs")
    rules, rules2 = c.outputs[NODE].ipvs, c2.outputs[NODE].ipvs
    h.compile_s = time.perf_counter() - t
    mods = ipvs_modules(rules.ipvsadm)

    cold = ipvs_plan(rules, IpvsLive(), LiveTables(), mods)
    assert not cold.finish
    (dest / "prepare").write_text(harness.guest_shell(cold.prepare) + "\n")
    (dest / "addresses").write_text(cold.addresses)
    (dest / "ipset").write_text(cold.ipset)
    (dest / "iptables").write_text(cold.iptables)
    (dest / "ipvsadm").write_text(cold.ipvsadm)
    h.sizes = {"ipset": len(cold.ipset), "iptables": len(cold.iptables), "ipvsadm": len(cold.ipvsadm)}
    h.counts = {
        "vs": sum(1 for ln in cold.ipvsadm.splitlines() if ln.startswith("-A ")),
        "rs": sum(1 for ln in cold.ipvsadm.splitlines() if ln.startswith("-a ")),
        "addresses": cold.addresses.count("\n"),
        "set-entries": sum(len(v) for v in applied_state(rules, mods).members.values()),
    }
    (dest / "fact-ipvs").write_text(harness.guest_shell(_ipvs_command()) + "\n")
    (dest / "fact-iptables").write_text(SvcopsIptables().command() + "\n")

    # The change, decided as the operation decides it: the facts parsed, then the plan.
    lines = fact_lines(rules, mods)
    h.counts["fact-ipvs-lines"] = len(lines)
    h.counts["fact-ipvs-vs"] = h.counts["vs"]
    ipt_text = rules.iptables
    t = time.perf_counter()
    state = parse_ipvs_state(lines)
    plan = ipvs_plan(rules2, state.live, parse_iptables_save(ipt_text), ipvs_modules(rules2.ipvsadm))
    h.decide_s = time.perf_counter() - t
    assert state.live.ipvsadm and plan.ipvsadm, "the change must edit the virtual servers"
    for s in ("prepare", "addresses", "ipset", "iptables", "ipvsadm", "finish"):
        text = getattr(plan, s)
        if s == "prepare":
            text = harness.guest_shell(text) + "\n" if text else ""
        (dest / f"change-{s}").write_text(text)
    h.change_lines = plan.ipvsadm.count("\n")
    # The changed virtual server's line as ipvsadm-save -n prints it.
    edited = [ln[3:] for ln in plan.ipvsadm.splitlines() if ln.startswith("-E ")]
    (dest / "changed-line").write_text("".join(f"-A {e}\n" for e in edited) or "-A none\n")
    h.counts["changed"] = len(edited)
    # In sync: the changed site, applied, read back and decided again: nothing to do.
    lines2 = fact_lines(rules2, ipvs_modules(rules2.ipvsadm))
    t = time.perf_counter()
    state2 = parse_ipvs_state(lines2)
    again = ipvs_plan(rules2, state2.live, expected_tables(rules2.iptables_rules), ipvs_modules(rules2.ipvsadm))
    h.insync_s = time.perf_counter() - t
    assert again.empty, again.summary()
    write_record_payload(h, rules, rules2, dest)
    return h


def write_record_payload(h, rules, rules2, dest: Path) -> None:
    """The record phase: a node holding `rules2` and its record, changed back to
    `rules` through it, decided as `svcops.operations.ipvs.rules` decides (the canary's
    output parsed, the changed buckets read, `fast_plan`)."""
    from svcops.facts.ipvs import SvcopsIpvsBuckets, SvcopsIpvsCanary, parse_ipvs_canary
    from svcops.facts.nftables import parse_nft_buckets
    from svcops.render.ipvs_record import canary_clear_command, canary_set_commands, fast_buckets, fast_plan, fingerprint_of, record_files
    from svcops.render.ipvs_sync import iptables_step, prepare_step
    from svcops.render.record import digest_text

    files = record_files(rules2)
    rec = dest / "record"
    rec.mkdir()
    for b, t in files.items():
        if t is not None:
            (rec / b).write_text(t)
    fp2 = fingerprint_of(rules2)
    (dest / "canary-set").write_text(canary_set_commands(fp2))
    (dest / "canary-line").write_text(f"svcops-state {fp2}\n")
    (dest / "fact-canary").write_text(harness.guest_shell(SvcopsIpvsCanary().command()) + "\n")
    # What the canary fact prints there (to time the host's parse): synthesised.
    mods = ipvs_modules(rules2.ipvsadm)
    lines = [f"module {m}" for m in mods] + [f"sysctl {k} {v}" for k, v in SYSCTLS.items()]
    lines += ["link", f"addresses {len(rules2.addresses)}"]
    lines += [f"count {n} {len(set(es))}" for n, es in rules2.set_entries().items()]
    lines += [f"count {s.name} 0" for s in SETS if s.name not in rules2.set_entries()]
    lines += ["@@svcops-ipvs canary", f'127.0.0.1 comment "svcops-state {fp2}"', "mark", "servers"]
    lines += ["@@svcops-ipvs index", *files["index"].splitlines()]
    ipt = expected_tables(rules2.iptables_rules)
    t = time.perf_counter()
    canary = parse_ipvs_canary(lines)
    assert canary.trusted, "the synthesised canary must agree with the record"
    names = fast_buckets(canary.index, rules)
    (dest / "fact-buckets").write_text(SvcopsIpvsBuckets().command(buckets=tuple(names)) + "\n")
    bucket_lines = []
    for b in names:
        text = files.get(b) or ""
        bucket_lines.append(f"@@svcops-nft bucket {b} {digest_text(text)}" if text else f"@@svcops-nft bucket {b}")
        bucket_lines += text.splitlines()
    fast = fast_plan(rules, canary.index, parse_nft_buckets(bucket_lines), prepare_step(canary.live, ipvs_modules(rules.ipvsadm)), (*iptables_step(rules, ipt), ()))
    h.fast_decide_s = time.perf_counter() - t
    assert fast is not None and fast.plan.ipvsadm and not fast.plan.iptables, fast
    h.fast_buckets = len(names)
    h.fast_lines = fast.plan.ipvsadm.count("\n")
    p = fast.plan
    run = ["set -e\n", canary_clear_command()]
    for part, what in ((p.addresses, "ip -batch"), (p.ipset, "ipset restore <"), (p.ipvsadm, "ipvsadm -R <"), (p.finish, "ip -batch")):
        if part:
            name = f"rec-{len(run)}"
            (dest / name).write_text(part)
            run.append(harness.guest_shell(f"{what} $P/{name}\n").replace("ip -batch", "/usr/sbin/ip -batch"))
    run.append(canary_set_commands(fast.fingerprint))
    (dest / "rec-run").write_text("P=/payload\n" + "".join(run))
    # The record's changed files, each written atomically (as txn.replace_files does).
    writes = []
    for b, t in sorted(fast.files.items()):
        if t is None:
            writes.append(f"rm -f /etc/svcops/ipvs.d/{b}\n")
        else:
            writes.append(f"cat > /etc/svcops/ipvs.d/{b}.new <<'SVCOPS_EOF'\n{t}SVCOPS_EOF\nmv -f /etc/svcops/ipvs.d/{b}.new /etc/svcops/ipvs.d/{b}\n")
    (dest / "rec-files").write_text("".join(writes))
    edited = [ln[3:] for ln in p.ipvsadm.splitlines() if ln.startswith("-E ")]
    (dest / "rec-changed-line").write_text("".join(f"-A {e}\n" for e in edited) or "-A none\n")
    (dest / "rec-canary-line").write_text(f"svcops-state {fast.fingerprint}\n")
    h.counts["rec-changed"] = len(edited)
    h.counts["rec-trusted"] = 1
    h.counts["rec-canary"] = 1
    h.counts["rec-buckets-read"] = len(names)


def scale_payload(k: int, a, tmp: Path, dest: Path) -> int:
    """The iptables-mode payload of a k-service site for a clean node (bytes)."""
    site, _, nodes = site_for(k, a.endpoints, a.nodes, tmp / "scale")
    c = compiled(site, nodes, Allocations({}, {}, {}, {}), "iptables")
    payload = restore_payload(c.outputs[NODE].iptables)
    (dest / "scale-iptables").write_text(payload)
    (dest / "scale.sh").write_text(SCALE)
    return len(payload)


def parse_t(line: str, run: Run) -> None:
    kind, _, rest = line.partition(" ")
    if kind == "T":
        label, s, e, rc = rest.split()
        run.steps[label] = (int(e) - int(s)) / 1e9
        run.rc[label] = int(rc)
    elif kind == "CHECK":
        k, _, v = rest.partition(" ")
        run.checks[k] = v.strip()
    elif kind == "ERR":
        run.errors.append(rest)
    elif kind == "FACT-CANARY":
        run.canary_lines.append(rest)
    elif kind == "BOOTED":
        run.mem = rest


def native(script: Path, dest: Path) -> dict[str, float]:
    """`script` run natively by busybox sh, in a throwaway network namespace (created and
    deleted here): {step: seconds}."""
    ns = f"svbench-ipvs-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, "busybox", "sh", str(script), str(dest)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    run = Run(0)
    for line in r.stdout.splitlines():
        if line.startswith("SVCOPS "):
            parse_t(line[7:], run)
    bad = {k: v for k, v in run.rc.items() if v}
    if bad:
        raise RuntimeError(f"native steps failed: {bad}: {run.errors} {r.stderr[-1000:]}")
    return run.steps


def boot(kernel, n: int, payload: Path, tmp: Path, timeout: float, memory: int, t0: float) -> Run:
    init = tmp / "init.sh"
    init.write_text(INIT)
    initrd = harness.build_initramfs(kernel, payload, tmp / f"initrd-{n}.gz", init=init)
    run = Run(n)
    print(f"[{time.monotonic() - t0:6.0f} s] booting the guest for {n:,} services "
          f"(initramfs {initrd.stat().st_size / 1e6:.1f} MB, timeout {timeout:.0f} s)", flush=True)  # fmt: skip

    def progress(line: str) -> None:
        parse_t(line, run)
        kind, _, rest = line.partition(" ")
        stamp = f"[{time.monotonic() - t0:6.0f} s]   guest {n:>6,}:"
        if kind == "T":
            label = rest.split()[0]
            print(f"{stamp} {label:<18} {run.steps[label]:9.3f} s  rc={run.rc[label]}", flush=True)
        elif kind in ("PHASE", "BOOTED", "CHECK", "ERR", "DONE"):
            print(f"{stamp} {line}", flush=True)

    rep = harness.run_guest(kernel, initrd, timeout, memory=memory, on_line=progress)
    run.boot, run.total, run.done = rep.boot_seconds, rep.total_seconds, rep.done
    if not rep.done:
        print(f"  guest {n:,}: stopped after {rep.total_seconds:.0f} s (no DONE); last output:\n"
              + rep.output[-1500:], flush=True)  # fmt: skip
    return run


COLD = ("modules", "prepare", "addresses", "ipset", "iptables", "ipvsadm")
CHANGE = ("change-prepare", "change-ipset", "change-iptables", "change-ipvsadm", "change-finish")
SCALE_LABELS = {
    "scale-loop": "busybox sh loop, 200,000 iterations (CPU)",
    "scale-spawn": "200 x /usr/sbin/ip -V (process start)",
    "scale-iptables": "iptables-restore, {k:,}-service iptables-mode payload ({mb:.1f} MB)",
}
STEP_LABELS = {
    "modules": "cold   modules (insmod, every .ko)",
    "prepare": "cold   sysctls + dummy link",
    "addresses": "cold   addresses ({addresses:,}, one ip -batch)",
    "ipset": "cold   ipset restore",
    "iptables": "cold   iptables-restore --noflush",
    "ipvsadm": "cold   ipvsadm -R ({vs:,} + {rs:,} lines)",
    "read-ipvs": "read   SvcopsIpvs fact (all of it)",
    "read-ipset-only": "         its ipset save part",
    "read-ipvsadm-only": "         its ipvsadm-save -n part",
    "read-iptables": "read   SvcopsIptables fact",
    "change-prepare": "change prepare",
    "change-ipset": "change ipset restore",
    "change-iptables": "change iptables-restore",
    "change-ipvsadm": "change ipvsadm -R ({lines} line: -E)",
    "change-finish": "change finish",
    "rec-read-canary": "record read SvcopsIpvsCanary (canary, counts, index)",
    "rec-read-counts": "         its ipset list -t + address count part",
    "rec-read-buckets": "record read the changed buckets ({buckets})",
    "rec-read-iptables": "record read SvcopsIptables fact",
    "rec-apply": "record the edit ({fast_lines} ipvsadm line) + canary",
    "rec-files": "record write the changed buckets + index",
}
REC = ("rec-read-canary", "rec-read-buckets", "rec-read-iptables", "rec-apply", "rec-files")


def _s(x: float | None, width: int = 8) -> str:
    if x is None:
        return f"{'-':>{width + 2}}"
    return f"{x:{width}.3f} s" if x < 1 else f"{x:{width}.2f} s"


def ratios(guest_scale, native_scale, runs, natives) -> dict[str, float]:
    """guest/native of every step measured both ways (steps of 1 s or more in the guest)."""
    out = {k: guest_scale[k] / native_scale[k] for k in guest_scale if native_scale.get(k)}
    for r in runs:
        for k, g in r.steps.items():
            n = natives.get(r.services, {}).get(k)
            if n and g >= 1 and not k.startswith("scale-"):
                out[f"{k} @{r.services:,}"] = g / n
    return out


def report(runs, hosts, natives, guest_scale, native_scale, scale_k, scale_bytes, memory) -> None:
    print()
    print(f"IPVS mode, apply on one node -- {BANNER}")
    print(f"guest: Debian's kernel under qemu -accel tcg, 1 vCPU, {memory} MB; native: this machine "
          f"({os.cpu_count()} cores, kernel {os.uname().release}), a throwaway network namespace")  # fmt: skip
    rs = ratios(guest_scale, native_scale, runs, natives)
    if guest_scale and native_scale:
        print("\n  for scale, the same binaries on the same input, in the guest and natively:")
        for k, what in SCALE_LABELS.items():
            g, n = guest_scale.get(k), native_scale.get(k)
            if g and n:
                what = what.format(k=scale_k, mb=scale_bytes / 1e6)
                print(f"    {what:<66} guest {_s(g)}  native {_s(n)}  {g / n:5.1f}x")
    lo = min(rs.values()) if rs else None
    hi = max(rs.values()) if rs else None
    if rs:
        print(f"  guest/native ratios measured: {lo:.1f}x to {hi:.1f}x ("
              + ", ".join(f"{k} {v:.1f}x" for k, v in rs.items()) + ")")
    for r in runs:
        h, s, nat = hosts[r.services], r.steps, natives.get(r.services, {})
        print(f"\n  {r.services:,} services x 10 endpoints (node1: {h.counts['vs']:,} virtual servers, "
              f"{h.counts['rs']:,} real servers, {h.counts['addresses']:,} addresses, {h.counts['set-entries']:,} set entries; "
              f"ipvsadm -R input {h.sizes['ipvsadm'] / 1e6:.1f} MB, ipset {h.sizes['ipset'] / 1e6:.2f} MB)")  # fmt: skip
        print(f"    guest boot to init {r.boot or 0:.0f} s, whole boot {r.total:.0f} s{'' if r.done else ' (STOPPED: incomplete)'}")
        print(f"    {'step':<44} {'guest (TCG)':>12} {'native':>10} {'ratio':>7}")
        for k, what in STEP_LABELS.items():
            if k not in s:
                continue
            what = what.format(addresses=h.counts["addresses"], vs=h.counts["vs"], rs=h.counts["rs"], lines=h.change_lines,
                               buckets=h.fast_buckets, fast_lines=h.fast_lines)  # fmt: skip
            n = nat.get(k)
            ratio = f"{s[k] / n:6.1f}x" if n else ""
            fail = "" if r.rc.get(k, 0) == 0 else f"  FAILED rc={r.rc[k]}"
            print(f"    {what:<44} {_s(s[k])} {_s(n)} {ratio:>7}{fail}")
            if k == "read-iptables":
                print(f"    {'decide (host: parse the state, ipvs_plan)':<44} {'':>12} {_s(h.decide_s)}")
            if k == "rec-read-iptables":
                print(f"    {'decide (host: parse the canary, fast_plan)':<44} {'':>12} {_s(h.fast_decide_s)}")
        if r.canary_lines:
            from svcops.facts.ipvs import parse_ipvs_canary

            c = parse_ipvs_canary(r.canary_lines)
            r.checks["canary-fact-trusted"] = "1" if c.trusted else f"0 (canary {c.canary}, mark {c.mark}, counts {dict(c.counts)})"
            h.counts["canary-fact-trusted"] = 1
        checks = ", ".join(f"{k} {v}/{h.counts[k]}" if k in h.counts else f"{k} {v}" for k, v in r.checks.items())
        print(f"    checks (guest/expected): {checks}")
        for e in r.errors[:5]:
            print(f"    error: {e}")

    def est(measured: float, unmeasured: float) -> str:
        if lo is None:
            return "-"
        a, b = measured + unmeasured / hi, measured + unmeasured / lo
        return f"{a:.2f}-{b:.2f} s" if b < 10 else f"{a:.1f}-{b:.1f} s"

    print(f"\n  {'services':>8}  {'cold':>9}  {'one-service change':>27}  {'in sync':>9}   native estimates: {'cold':>11}  {'change':>11}  {'in sync':>11}")
    for r in runs:
        h, s, nat = hosts[r.services], r.steps, natives.get(r.services, {})
        cold = f"{sum(s[x] for x in COLD):7.1f} s" if all(x in s for x in COLD) else "incomplete"
        have_read = all(x in s for x in ("read-ipvs", "read-iptables", "read-ipset-only"))
        ch = [x for x in CHANGE if x in s]
        if have_read and ch:
            read = s["read-ipvs"] + s["read-iptables"]
            apply = sum(s[x] for x in ch)
            change = f"{read + h.decide_s + apply:7.1f} s (apply {apply:.2f} s)"
            insync = f"{read + h.insync_s:7.1f} s"
        else:
            change = insync = "incomplete"
        e_cold = e_change = e_sync = "-"
        if all(x in s for x in COLD) and all(x in nat for x in ("addresses", "ipset", "iptables")):
            m = nat["addresses"] + nat["ipset"] + nat["iptables"]
            e_cold = est(m, s["modules"] + s["prepare"] + s["ipvsadm"])
        if have_read and ch and all(x in nat for x in ("read-iptables", "read-ipset-only")):
            m = nat["read-iptables"] + nat["read-ipset-only"] + h.decide_s
            u = s["read-ipvs"] - s["read-ipset-only"]
            e_change = est(m, u + sum(s[x] for x in ch))
            e_sync = est(nat["read-iptables"] + nat["read-ipset-only"] + h.insync_s, u)
        print(f"  {r.services:>8,}  {cold:>9}  {change:>27}  {insync:>9}   {'':>18} {e_cold:>11}  {e_change:>11}  {e_sync:>11}")
    print(f"\n  one-service change through the record (canary + changed buckets + iptables read, decided, edit + canary, record written):")
    print(f"  {'services':>8}  {'guest (TCG)':>12}  {'of which read':>13}  {'native estimate':>15}  {'whole-read change, guest':>24}  {'speed-up':>8}")
    for r in runs:
        h, s, nat = hosts[r.services], r.steps, natives.get(r.services, {})
        if not all(x in s for x in REC):
            print(f"  {r.services:>8,}  incomplete")
            continue
        g = sum(s[x] for x in REC) + h.fast_decide_s
        read = s["rec-read-canary"] + s["rec-read-buckets"] + s["rec-read-iptables"]
        e = "-"
        if "rec-read-counts" in nat and "read-iptables" in nat:
            m = nat["rec-read-counts"] + nat["read-iptables"] + h.fast_decide_s
            u = g - h.fast_decide_s - s["rec-read-counts"] - s["rec-read-iptables"]
            e = est(m, u)
        ch = [x for x in CHANGE if x in s]
        whole = s["read-ipvs"] + s["read-iptables"] + h.decide_s + sum(s[x] for x in ch) if "read-ipvs" in s and ch else None
        speed = f"{whole / g:7.1f}x" if whole else "-"
        print(f"  {r.services:>8,}  {g:10.2f} s  {read:11.2f} s  {e:>15}  {_s(whole):>24}  {speed:>8}")
    print("  (native estimate: the ipset/address counts and SvcopsIptables measured natively, the host's decision as")
    print("   measured, the rest (ipvsadm -L -f, cat of the index and buckets, ipvsadm -R, the files) as guest time / ratio.)")
    print("  (emulated columns: cold = modules + sysctls/link + addresses + ipset + iptables + ipvsadm -R in the guest;")
    print("   change and in sync = the live state read in the guest + decided on the host (+ the edit applied in the guest).")
    print("   Native estimates: the steps measured natively as measured, the others (insmod, sysctls, ipvsadm, ipvsadm-save)")
    print("   as guest time divided by the highest and the lowest guest/native ratio measured: a range, not a measurement.)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", default="1000,10000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--scale-services", type=int, default=1000, help="the iptables-mode payload timed in the guest and natively (0: none)")
    ap.add_argument("--memory", type=int, default=1024, help="the guest's memory, MB")
    ap.add_argument("--budget", type=float, default=1200, help="stop everything after this many seconds")
    ap.add_argument("--cache", type=Path, default=harness.DEFAULT_CACHE)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces, the harness's apt-get)", file=sys.stderr)
        return 2
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f} s] {msg}", flush=True)

    try:
        harness.ensure_host_tools()
        kernel = harness.ensure_kernel(a.cache)
    except harness.Unavailable as e:
        print(f"cannot run: {e}", file=sys.stderr)
        return 2
    print(f"IPVS apply benchmark -- {BANNER}; guest kernel {kernel.version}, budget {a.budget:.0f} s", flush=True)
    runs: list[Run] = []
    hosts: dict[int, Host] = {}
    natives: dict[int, dict[str, float]] = {}
    guest_scale: dict[str, float] = {}
    native_scale: dict[str, float] = {}
    scale_bytes = 0
    with tempfile.TemporaryDirectory(prefix="svbench-ipvs-") as tmp_dir:
        tmp = Path(tmp_dir)
        (tmp / "native.sh").write_text(NATIVE)
        for i, n in enumerate(int(x) for x in a.services.split(",")):
            payload = tmp / f"payload-{n}"
            payload.mkdir()
            log(f"rendering {n:,} services (host)")
            hosts[n] = h = write_payload(n, a, tmp, payload)
            log(f"  compiled in {h.compile_s:.1f} s; change decided in {h.decide_s:.2f} s ({h.change_lines} ipvsadm line(s)); "
                f"payloads {', '.join(f'{k} {v / 1e6:.2f} MB' for k, v in h.sizes.items())}")  # fmt: skip
            natives[n] = native(tmp / "native.sh", payload)
            log("  native steps: " + ", ".join(f"{k} {v:.3f} s" for k, v in natives[n].items()))
            if i == 0 and a.scale_services:
                scale_bytes = scale_payload(a.scale_services, a, tmp, payload)
                native_scale = native(payload / "scale.sh", payload)
                log("  native scale: " + ", ".join(f"{k} {v:.3f} s" for k, v in native_scale.items()))
            left = a.budget - (time.monotonic() - t0) - 15
            if left < 60:
                log(f"no time left for {n:,} services")
                break
            runs.append(boot(kernel, n, payload, tmp, left, a.memory, t0))
            if i == 0:
                guest_scale = {k: v for k, v in runs[-1].steps.items() if k.startswith("scale-")}
    report(runs, hosts, natives, guest_scale, native_scale, a.scale_services, scale_bytes, a.memory)
    print(f"\nwhole run {time.monotonic() - t0:.0f} s")
    return 0 if runs and all(r.done and not any(r.rc.values()) for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
