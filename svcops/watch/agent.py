"""svcops's probe agent: the kubelet's readiness prober, run on a node for its workloads.

The watch (`svcops.watch`) starts it on every node over its own SSH connection, as
``python3 -u -c SOURCE`` (this file, which needs nothing but Python's standard
library), and talks to it in JSON lines. It never changes anything on the node.

In, on standard input (one JSON object a line):

    {"probes": {KEY: SPEC, ...}}   the node's probes (replaces the previous set);
                                   SPEC: {"kind": "httpGet"|"tcpSocket"|"exec",
                                   "host", "port", "path", "scheme", "headers": [[n, v]],
                                   "command": [...], "initialDelay", "period", "timeout",
                                   "successThreshold", "failureThreshold"}
    {"once": true, "probes": {...}} probe each once, say so, exit (`svcops status`)
    {"ping": 1}                    the watch is there (the agent exits after 30 s without
                                   a line, or at once at end of input)

Out, on standard output:

    {"e": "hello", "v": 1, "pid": N}
    {"e": "probe", "w": KEY, "ready": true|false, "why": "HTTP 200", "first": true}
        the first result of a workload's probe, then only its transitions: ready after
        successThreshold successes in a row, not ready after failureThreshold failures
    {"e": "synced"}                every probe of the current set has its first result
    {"e": "hb"}                    every 0.5 s: the node is there

Kubernetes' meaning: httpGet succeeds on a status from 200 to 399 (a redirect is not
followed: a 3xx is a success, as the kubelet counts a redirect to another host), with
``User-Agent: svcops-probe/1`` and ``Accept: */*`` unless the probe's headers say
otherwise, and no certificate check for HTTPS (the kubelet does none); tcpSocket on a
connection accepted; exec on exit status 0 (not through a shell; killed at its
timeout, which is a failure). A probe taking longer than timeoutSeconds fails.
initialDelaySeconds counts from when the workload appears to a running agent: at the
agent's start the workloads are taken as already running (a restarted watch must
not take healthy backends out), and each workload's first result counts at once.
"""

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

VERSION = 1
HEARTBEAT = 0.5
SILENCE = 30.0  # seconds without a line from the watch before the agent leaves
BODY = 10240  # bytes of a response read (the kubelet reads at most 10 KiB)

_out = threading.Lock()


def emit(**fields):
    line = json.dumps(fields, separators=(",", ":"), sort_keys=True) + "\n"
    with _out:
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except Exception:
            os._exit(0)  # the watch is gone: nobody to tell


def _why(e):
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return "%s: %s" % (type(e).__name__, e) if str(e) else type(e).__name__


def probe_http(spec):
    timeout = spec["timeout"]
    if spec.get("scheme") == "HTTPS":
        conn = http.client.HTTPSConnection(spec["host"], spec["port"], timeout=timeout, context=ssl._create_unverified_context())
    else:
        conn = http.client.HTTPConnection(spec["host"], spec["port"], timeout=timeout)
    try:
        headers = {"User-Agent": "svcops-probe/%d" % VERSION, "Accept": "*/*"}
        for name, value in spec.get("headers") or ():
            for k in [k for k in headers if k.lower() == name.lower()]:
                del headers[k]
            headers[name] = value
        path = spec.get("path") or "/"
        conn.request("GET", path if path.startswith("/") else "/" + path, headers=headers)
        resp = conn.getresponse()
        resp.read(BODY)
        return 200 <= resp.status < 400, "HTTP %d" % resp.status
    finally:
        conn.close()


def probe_tcp(spec):
    socket.create_connection((spec["host"], spec["port"]), timeout=spec["timeout"]).close()
    return True, "connected"


def probe_exec(spec):
    try:
        rc = subprocess.run(spec["command"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=spec["timeout"]).returncode
    except subprocess.TimeoutExpired:
        return False, "timed out after %d s" % spec["timeout"]
    return rc == 0, "exit status %d" % rc


KINDS = {"httpGet": probe_http, "tcpSocket": probe_tcp, "exec": probe_exec}


def run_probe(spec):
    """(success, why) of one probe, never raising."""
    try:
        return KINDS[spec["kind"]](spec)
    except Exception as e:
        return False, _why(e)


class Worker(threading.Thread):
    """One workload's probe, every period, with its thresholds."""

    def __init__(self, key, spec, delay, agent):
        threading.Thread.__init__(self, daemon=True)
        self.key, self.spec, self.delay, self.agent = key, spec, delay, agent
        self.stopped = threading.Event()
        self.ready = None
        self.run_ok = self.run_fail = 0

    def run(self):
        period = max(1, self.spec["period"])
        due = time.monotonic() + self.delay
        while not self.stopped.wait(max(0.0, due - time.monotonic())):
            ok, why = run_probe(self.spec)
            if self.stopped.is_set():
                return
            self.record(ok, why)
            due += period
            now = time.monotonic()
            if due < now:  # a probe that took longer than its period: no burst to catch up
                due = now + period

    def record(self, ok, why):
        if self.ready is None:
            self.ready = ok
            emit(e="probe", w=self.key, ready=ok, why=why, first=True)
            self.agent.first_result()
            return
        self.run_ok, self.run_fail = (self.run_ok + 1, 0) if ok else (0, self.run_fail + 1)
        if self.ready and self.run_fail >= self.spec["failureThreshold"]:
            self.ready = False
        elif not self.ready and self.run_ok >= self.spec["successThreshold"]:
            self.ready = True
        else:
            return
        self.run_ok = self.run_fail = 0
        emit(e="probe", w=self.key, ready=self.ready, why=why)


class Agent:
    def __init__(self):
        self.workers = {}
        self.lock = threading.Lock()
        self.started = False
        self.synced = False

    def first_result(self):
        with self.lock:
            if not self.synced and all(w.ready is not None for w in self.workers.values()):
                self.synced = True
                emit(e="synced")

    def configure(self, probes):
        with self.lock:
            for key in list(self.workers):
                if key not in probes or self.workers[key].spec != probes[key]:
                    self.workers.pop(key).stopped.set()
            for key, spec in sorted(probes.items()):
                if key not in self.workers:
                    delay = spec.get("initialDelay", 0) if self.started else 0
                    w = self.workers[key] = Worker(key, spec, delay, self)
                    w.start()
            self.started = True
            self.synced = False
        self.first_result()  # an empty set, or one whose workers all have a result


def once(probes):
    results = {}

    def one(key, spec):
        results[key] = run_probe(spec)

    threads = [threading.Thread(target=one, args=(k, s), daemon=True) for k, s in sorted(probes.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key in sorted(results):
        ok, why = results[key]
        emit(e="probe", w=key, ready=ok, why=why, first=True)
    emit(e="synced")


def main():
    emit(e="hello", v=VERSION, pid=os.getpid())
    agent = Agent()
    last = [time.monotonic()]

    def beat():
        while True:
            time.sleep(HEARTBEAT)
            if time.monotonic() - last[0] > SILENCE:
                os._exit(0)  # the watch went silent: leave nothing running behind it
            emit(e="hb")

    threading.Thread(target=beat, daemon=True).start()
    for line in sys.stdin:
        last[0] = time.monotonic()
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            emit(e="error", why="not JSON: %s" % line[:80])
            continue
        if msg.get("once"):
            once(msg.get("probes") or {})
            return
        if "probes" in msg:
            agent.configure(msg["probes"])
    os._exit(0)  # end of input: the watch closed the channel


if __name__ == "__main__":
    main()
