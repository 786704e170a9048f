"""`svcops watch`: the loop. Node events -> readiness -> compile -> push what changed.

    svcops watch -i inventory/lab.py examples/walkthrough
    svcops watch -i inventory/lab.py --grace 2 --metrics 127.0.0.1:9753
    svcops watch -i inventory/lab.py --unit > /etc/systemd/system/svcops-watch.service

What it does, in order:
1. loads the inventory and the site (errors: exit 1, nothing pushed), takes the
   site's watch lock (one watch per site: `svcops.site.watchstate`);
2. connects to every node and starts its probe agent (`svcops.watch.nodes`), which
   probes the node's own workloads and reports their first results, then only
   transitions, and a heartbeat;
3. once every node has reported its first results (or was lost: silent for
   `--grace` seconds), pushes the site with that readiness to every node that
   answers, as `svcops apply` does (each node one transaction, wholly old or wholly
   new), over the same connections: a node in sync gets one round trip, a changed
   service only its own rules (the fast path);
4. then, on every transition (a probe passing or failing as its thresholds say, a
   node lost or back), a file of the site or the inventory changed, or SIGHUP:
   pushes again; transitions arriving together go in one push, and while a push
   runs the next one waits for it (no push storm). A node that comes back gets a
   push of its own (it missed those made without it);
5. writes its readiness where `svcops apply`, `plan`, `check` and `status` find it,
   so that a plain apply pushes the same endpoints (never back one that is down);
6. SIGTERM or SIGINT: stops its agents and leaves. The rules stay on the nodes as
   last pushed (fail static), as they do when it loses every node.

Logs one line per transition and per push, on standard output (journald-friendly: no
timestamps under systemd, which adds its own).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = ["WatchOptions", "run", "unit_text"]

TICK = 0.1  # seconds between looks at the clock (node loss) when nothing happens
FILES_EVERY = 1.0  # seconds between looks at the site's and the inventory's files
BATCH = 0.05  # seconds a first event waits for the ones arriving with it
RETRY = (1.0, 30.0)  # a node whose push failed is tried again: first pause, longest


@dataclass
class WatchOptions:
    inventory: str
    site: str | None = None
    grace: float = 2.0
    metrics: str | None = None
    lock_timeout: float = 30.0
    node_timeout: float | None = None
    command_timeout: int | None = None
    verbose: bool = False
    once: bool = False  # exit after the first push (tests, `svcops watch --once`)
    max_seconds: float | None = None  # leave after this long (tests)


def unit_text(argv: list[str], cwd: str) -> str:
    """A systemd unit running `svcops watch` with these arguments, from `cwd`."""
    exe = shlex.quote(os.path.abspath(sys.argv[0])) if sys.argv and os.path.isfile(sys.argv[0]) else "svcops"
    args = " ".join(shlex.quote(a) for a in argv)
    return f"""[Unit]
Description=svcops watch: readiness probes and endpoint pushes ({args})
Documentation=man:svcops(1)
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
WorkingDirectory={cwd}
ExecStart={exe} watch {args}
# SIGHUP: apply the site and the inventory again, as `svcops apply` would.
ExecReload=/bin/kill -HUP $MAINPID
# The rules stay on the nodes when the watch stops (fail static): restarting is safe.
Restart=always
RestartSec=2
TimeoutStopSec=20
KillMode=mixed

[Install]
WantedBy=multi-user.target
"""


class _Log:
    def __init__(self, out: TextIO):
        self.out = out
        self.stamp = "JOURNAL_STREAM" not in os.environ

    def __call__(self, text: str) -> None:
        now = time.time()
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d} " if self.stamp else ""
        print(f"{prefix}svcops watch: {text}", file=self.out, flush=True)


@dataclass
class _Pending:
    since: float | None = None  # when the oldest change not pushed yet happened
    nodes: set[str] = field(default_factory=set)  # nodes that need a push whatever
    site: bool = False  # the files changed: load and compile them anew
    retry_at: dict[str, float] = field(default_factory=dict)
    backoff: dict[str, float] = field(default_factory=dict)

    def mark(self, now: float) -> None:
        if self.since is None:
            self.since = now


def _signature(paths: list[Path]) -> tuple:
    """What changes when a file of the site or the inventory is edited, added or removed."""
    out = []
    for root in paths:
        if root.is_file():
            st = root.stat()
            out.append((str(root), st.st_mtime_ns, st.st_size))
            continue
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                if f.startswith(".") or f == "svcops.lock":
                    continue
                p = os.path.join(dirpath, f)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                out.append((p, st.st_mtime_ns, st.st_size))
    return tuple(out)


def run(opts: WatchOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The `svcops watch` command; returns its exit status (0 stopped, 1 could not start)."""
    out, err = out or sys.stdout, err or sys.stderr
    import logging

    import gevent
    from gevent.queue import Empty, Queue
    from pyinfra import logger

    from svcops import apply as A
    from svcops.compile.nodeplan import plan_site
    from svcops.compile.pipeline import with_readiness
    from svcops.compile.probes import node_probes
    from svcops.compile.readiness import Tracker
    from svcops.deploy import SiteError, compile_from_hosts
    from svcops.site.sitelock import SiteLockError, site_lock
    from svcops.site.watchstate import WatchLock, WatchRunning, stale_watch
    from svcops.watch.metrics import Metrics
    from svcops.watch.nodes import NodeLink, connect_host

    log = _Log(out)
    if not os.path.isfile(opts.inventory):
        print(f"{opts.inventory}: inventory file not found", file=err)
        return 1
    A._setup_output()
    if not opts.verbose:
        logger.setLevel(logging.WARNING)  # one line per push, not pyinfra's per operation

    found = A.hosts_and_site(opts.inventory, opts.site, err)
    if found is None:
        return 1
    hosts, site_root = found

    def load_hosts():
        return A.inventory_hosts(opts.inventory)

    try:
        wlock = WatchLock(site_root)
    except WatchRunning as e:
        print(f"svcops watch: {e}; not started", file=err)
        return 1
    except OSError as e:
        print(f"svcops watch: cannot keep its state: {e}", file=err)
        return 1
    try:
        plan = compile_from_hosts(site_root, hosts, opts.inventory, lock_timeout=opts.lock_timeout, readiness=None)
    except SiteError as e:
        print(str(e).replace("nothing was pushed", "the watch did not start"), file=err)
        wlock.close()
        return 1
    for d in plan.diagnostics:
        print(d, file=err)

    metrics = Metrics()
    if opts.metrics:
        try:
            metrics.serve(opts.metrics)
        except (ValueError, OSError) as e:
            print(f"svcops watch: --metrics: {e}", file=err)
            wlock.close()
            return 1

    start = time.monotonic()
    previous = stale_watch(site_root)
    tracker = Tracker(plan.compiled.nodes, opts.grace, start, previous.readiness if previous else None)
    queue: Queue = Queue()
    apply_opts = A.ApplyOptions(
        opts.inventory, site_root, yes=True, lock_timeout=opts.lock_timeout,
        node_timeout=opts.node_timeout, command_timeout=opts.command_timeout,
    )  # fmt: skip

    def connect(name: str):
        return connect_host(opts.inventory, name)

    def probes_of(p) -> dict[str, dict]:
        return {n.name: node_probes(n, p.compiled.allocations) for n in p.compiled.nodes}

    links: dict[str, NodeLink] = {}

    def sync_links(p) -> None:
        want = probes_of(p)
        for name in list(links):
            if name not in want:
                links.pop(name).stop()
        for name, probes in want.items():
            if name in links:
                if links[name].probes != probes:
                    links[name].set_probes(probes)
            else:
                links[name] = NodeLink(name, connect, queue, probes)
                links[name].start()

    sync_links(plan)
    pending = _Pending(since=start, nodes={n.name for n in plan.compiled.nodes})
    stop = {"why": None}
    reload = {"hup": False}

    def on_stop(why):
        def handler():
            stop["why"] = why

        return handler

    handlers = [
        gevent.signal_handler(signal.SIGTERM, on_stop("SIGTERM")),
        gevent.signal_handler(signal.SIGINT, on_stop("SIGINT")),
        gevent.signal_handler(signal.SIGHUP, lambda: reload.__setitem__("hup", True)),
    ]
    watched = [Path(site_root), Path(opts.inventory)]
    signature = _signature(watched)
    next_files = start + FILES_EVERY
    first_deadline = start + opts.grace + max(
        [pr["timeout"] for ps in probes_of(plan).values() for pr in ps.values()] or [0]
    ) + 1.0
    pushed = None  # the readiness last pushed everywhere
    last_plan = None  # what that push sent (every node's push succeeded)
    connected: set[str] = set()
    log(
        f"watching {len(links)} node{'s' if len(links) != 1 else ''} for {site_root} "
        f"(grace {opts.grace:g} s; {sum(len(v) for v in probes_of(plan).values())} probes)"
    )

    def handle(name: str, msg: dict, now: float) -> list:
        e = msg.get("e")
        if e == "connected":
            connected.add(name)
            return []
        if e == "gone":
            tracker.disconnected(name)
            if name in connected:
                connected.discard(name)
                log(f"{name}: connection ended ({msg.get('why', '')})")
            return []
        if e == "probe":
            w, ready, why = msg.get("w"), msg.get("ready"), msg.get("why", "")
            if not isinstance(w, str) or not isinstance(ready, bool):
                return []
            metrics.ready.labels(name, w).set(1 if ready else 0)
            if not msg.get("first"):
                metrics.transitions.labels(name, w, "true" if ready else "false").inc()
            return tracker.report(name, w, ready, str(why), now)
        if e == "synced":
            return tracker.synced(name, now)
        if e == "error":
            metrics.errors.labels("agent").inc()
            log(f"{name}: {msg.get('why', 'agent error')}")
            return tracker.heard(name, now)
        return tracker.heard(name, now)  # hello, hb

    def compiled_with(r, full: bool):
        if full:
            new_hosts = load_hosts()
            p = compile_from_hosts(site_root, new_hosts, opts.inventory, lock_timeout=opts.lock_timeout, readiness=r)
            for d in p.diagnostics:
                log(str(d))
            return p
        return plan_site(with_readiness(plan.compiled, r))

    def pushable(r, now: float) -> list[str]:
        """The nodes a push can reach now: not lost, connected, not waiting to retry."""
        return [
            n.name for n in plan.compiled.nodes
            if n.name not in r.lost and links.get(n.name) is not None and links[n.name].client is not None
            and pending.retry_at.get(n.name, 0) <= now
        ]  # fmt: skip

    def push(now: float) -> None:
        nonlocal plan, pushed, last_plan
        r = tracker.readiness()
        full = pending.site
        t0 = time.monotonic()
        try:
            with site_lock(site_root, opts.lock_timeout, on_wait=lambda m: log(m)):
                try:
                    p = compiled_with(r, full)
                except (SiteError, Exception) as e:
                    if not full:
                        raise
                    metrics.errors.labels("reload").inc()
                    log(f"the site or the inventory has errors; still pushing the last good one:\n{e}")
                    pending.site = False
                    p = compiled_with(r, False)
                    full = False
                if full:
                    plan = p
                    tracker.set_nodes(p.compiled.nodes, now)
                    sync_links(p)
                    pending.site = False
                else:
                    plan = p
                wlock.write(r)
                # Everyone when what the nodes get changed; else the nodes that asked.
                everyone = full or r != pushed
                targets = [n for n in pushable(r, now) if everyone or n in pending.nodes or n in pending.retry_at]
                # A readiness change to nodes that had every push: only the parts it changes.
                partial = not full and last_plan is not None and not any(n in pending.nodes or n in pending.retry_at for n in targets)
                parts = changed_parts(last_plan, p, targets) if partial else None
                t1 = time.monotonic()
                cpu1 = time.process_time()
                opts_now = dataclasses.replace(apply_opts, parts=parts)
                results = A._run_batch(opts_now, p, targets, links={n: links[n].client for n in targets}) if targets else {}
                cpu2 = time.process_time()
        except SiteLockError as e:
            log(f"push deferred: {e}")
            return
        except Exception as e:  # a bug or the machine (a full disk): said, tried again later
            metrics.errors.labels("push").inc()
            log(f"push failed: {type(e).__name__}: {e}; trying again in {RETRY[0]:g} s")
            pending.retry_at.update({n: now + RETRY[0] for n in pending.nodes or [n.name for n in plan.compiled.nodes]})
            last_plan = None
            return
        took = time.monotonic() - t0
        scope = "" if opts_now.parts is None else f"{'+'.join(sorted(opts_now.parts))} only; "
        split = f"{scope}compile {t1 - t0:.2f} s, nodes {took - (t1 - t0):.2f} s (controller cpu {cpu2 - cpu1:.2f} s)"
        since = pending.since if pending.since is not None else t0
        failed = [n for n, res in results.items() if not res.ok]
        changed = [n for n, res in results.items() if res.status == "changed"]
        for n in results:
            if n in failed:
                b = min(RETRY[1], pending.backoff.get(n, RETRY[0] / 2) * 2)
                pending.backoff[n], pending.retry_at[n] = b, now + b
                metrics.push_errors.labels(n).inc()
            else:
                pending.backoff.pop(n, None)
                pending.retry_at.pop(n, None)
            pending.nodes.discard(n)
        metrics.pushes.labels("failed" if failed else "ok").inc()
        metrics.push_seconds.observe(time.monotonic() - since)
        metrics.set_endpoints(_endpoint_counts(p.compiled.ports))
        for n in p.compiled.nodes:
            metrics.node_up.labels(n.name).set(0 if n.name in r.lost else 1)
        pushed = r
        last_plan = p if not failed else None  # a failed node gets a whole push next
        pending.since = None if not failed else pending.since
        nr = len(r.not_ready)
        what = f"{nr} workload{'s' if nr != 1 else ''} not ready" + (f", lost: {', '.join(sorted(r.lost))}" if r.lost else "")
        detail = "; ".join(f"{n}: {results[n].status} ({', '.join(results[n].details)})" for n in failed)
        log(
            f"push {'(site reloaded) ' if full else ''}to {len(targets)} node{'s' if len(targets) != 1 else ''}: "
            f"{len(changed)} changed, {len(failed)} failed in {took:.2f} s ({what}; {split})" + (f"; {detail}" if detail else "")
        )

    try:
        while stop["why"] is None:
            try:
                name, msg = queue.get(timeout=TICK)
                items = [(name, msg)]
                while True:
                    try:
                        items.append(queue.get_nowait())
                    except Empty:
                        break
            except Empty:
                items = []
            now = time.monotonic()
            changes = []
            for name, msg in items:
                changes += handle(name, msg, now)
            changes += tracker.tick(now)
            for c in changes:
                log(c.line())
                if c.kind == "lost":
                    links[c.node].cut() if c.node in links else None
                    metrics.node_up.labels(c.node).set(0)
                elif c.kind == "back":
                    pending.nodes.add(c.node)
                    metrics.node_up.labels(c.node).set(1)
                pending.mark(now)
            if now >= next_files:
                next_files = now + FILES_EVERY
                sig = _signature(watched)
                if sig != signature:
                    signature = sig
                    log("the site or the inventory changed: applying it")
                    pending.site = True
                    pending.mark(now)
            if reload["hup"]:
                reload["hup"] = False
                log("SIGHUP: applying the site and the inventory")
                pending.site = True
                pending.mark(now)
            if not (tracker.all_synced() or now >= first_deadline):
                continue
            if opts.max_seconds is not None and now - start > opts.max_seconds:
                stop["why"] = "--max-seconds"
                break
            r = tracker.readiness()
            reachable = set(pushable(r, now))
            asked = reachable & (pending.nodes | set(pending.retry_at))
            if not (pending.site or r != pushed or asked):
                continue
            if pending.since is not None and now - pending.since < BATCH and not asked:
                gevent.sleep(BATCH - (now - pending.since))  # let the events that come with it come
                continue
            if pending.since is None:
                pending.mark(now)
            push(now)
            if opts.once:
                stop["why"] = "--once"
    finally:
        for h in handlers:
            h.cancel()
        for link in links.values():
            link.stop()
        wlock.close()
    log(f"stopped ({stop['why']}): the rules stay on the nodes as last pushed")
    return 0


def changed_parts(old, new, nodes) -> frozenset[str]:
    """The parts of `nodes`' configuration (`svcops.deploy.PARTS`) that differ between
    two plans of the same site: the rules always (readiness changed), the others when
    their text does (a headless service's records, a Local policy's announcements)."""
    parts = {"rules"}
    for n in nodes:
        a, b = old.node(n), new.node(n)
        if a.announced != b.announced:
            parts.add("addresses")
        if a.files != b.files:
            parts.add("files")
        if (a.dns_zone.digest if a.dns_zone else None) != (b.dns_zone.digest if b.dns_zone else None):
            parts.add("dns")
    return frozenset(parts)


def _endpoint_counts(ports) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for rp in ports:
        counts[rp.service.key] = counts.get(rp.service.key, 0) + len(rp.endpoints)
    return sorted(counts.items())
