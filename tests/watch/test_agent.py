"""The probe agent as the watch runs it: a real process, real probes against servers on
127.0.0.1, its JSON lines read back (what the watch reads)."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from svcops.compile.probes import probe_spec
from svcops.site.model import Probe

SOURCE = (Path(__file__).resolve().parents[2] / "svcops" / "watch" / "agent.py").read_text()


class Agent:
    """The agent as a child process, its lines in a queue."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-u", "-c", SOURCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def send(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def next(self, event: str, timeout: float = 10.0) -> dict:
        """The next line of kind `event` (heartbeats and others skipped)."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event!r} line within {timeout} s")
            got = self.lines.get(timeout=left)
            if got is None:
                raise AssertionError(f"the agent ended before a {event!r} line")
            if got["e"] == event:
                return got

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def agent():
    a = Agent()
    assert a.next("hello")["v"] == 1
    yield a
    a.close()


class Backend:
    """An HTTP server on 127.0.0.1 whose answer the test sets; it keeps the headers it got."""

    def __init__(self):
        self.status = 200
        self.seen: list[dict] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
                self.send_response(outer.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend():
    b = Backend()
    yield b
    b.close()


def spec(kind="httpGet", **kw):
    return probe_spec(Probe(kind, **kw), "127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_probe_follows_its_thresholds_both_ways(agent, backend):
    agent.send(probes={"web-1": spec(port=backend.port, path="/healthz", period=1, failure_threshold=2, success_threshold=2)})
    first = agent.next("probe")
    assert first == {"e": "probe", "w": "web-1", "ready": True, "why": "HTTP 200", "first": True}
    agent.next("synced")
    backend.status = 503
    t = time.monotonic()
    down = agent.next("probe")
    assert (down["ready"], down["why"]) == (False, "HTTP 503")
    assert 1.5 < time.monotonic() - t < 4  # two failures, a period apart: not the first one
    backend.status = 302  # a redirect counts as a success, as the kubelet has it
    up = agent.next("probe")
    assert (up["ready"], up["why"]) == (True, "HTTP 302")
    assert backend.seen[-1]["path"] == "/healthz"


def test_http_probe_sends_kubernetes_like_headers_and_the_probes_own(agent, backend):
    agent.send(probes={"w": spec(port=backend.port, headers=(("Host", "web.example"), ("X-Probe", "1")), period=1)})
    agent.next("probe")
    got = backend.seen[0]
    assert got["host"] == "web.example" and got["x-probe"] == "1"
    assert got["user-agent"] == "svcops-probe/1" and got["accept"] == "*/*"


def test_tcp_probe_of_a_closed_port_is_not_ready_at_once_and_ready_when_it_listens(agent):
    port = free_port()
    agent.send(probes={"db": spec("tcpSocket", port=port, period=1, success_threshold=1)})
    first = agent.next("probe")
    assert (first["ready"], first["why"]) == (False, "connection refused")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        up = agent.next("probe")
    assert (up["ready"], up["why"]) == (True, "connected")


def test_a_server_that_never_answers_fails_at_the_timeout(agent):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()  # accepts (the kernel does), never answers
        t = time.monotonic()
        agent.send(probes={"w": spec(port=s.getsockname()[1], timeout=1, period=5)})
        first = agent.next("probe")
        took = time.monotonic() - t
    assert (first["ready"], first["why"]) == (False, "timed out")
    assert 0.9 < took < 3


def test_exec_probe_runs_the_command_itself(agent, tmp_path):
    flag = tmp_path / "ready"
    agent.send(probes={"job": spec("exec", command=("test", "-e", str(flag)), period=1, success_threshold=1, failure_threshold=1)})
    first = agent.next("probe")
    assert (first["ready"], first["why"]) == (False, "exit status 1")
    flag.write_text("")
    assert agent.next("probe")["ready"] is True
    # Not through a shell: a ';' is an argument of `test`, nothing runs after it.
    marker = tmp_path / "ran"
    agent.send(probes={"job": spec("exec", command=("test", "-e", f"{flag}; touch {marker}"), period=1)})
    assert agent.next("probe")["ready"] is False
    assert not marker.exists()


def test_an_exec_probe_that_hangs_is_killed_at_its_timeout(agent):
    t = time.monotonic()
    agent.send(probes={"job": spec("exec", command=("sleep", "30"), timeout=1, period=5)})
    first = agent.next("probe")
    assert (first["ready"], first["why"]) == (False, "timed out after 1 s")
    assert time.monotonic() - t < 3


def test_a_new_set_keeps_unchanged_probes_and_delays_new_workloads(agent, backend):
    agent.send(probes={"a": spec(port=backend.port, period=1)})
    agent.next("probe")
    agent.next("synced")
    t = time.monotonic()
    agent.send(probes={"a": spec(port=backend.port, period=1), "b": spec(port=backend.port, period=1, initial_delay=2)})
    got = agent.next("probe")
    assert got["w"] == "b" and got["first"]  # "a" is not reported again: no transition
    assert time.monotonic() - t > 1.8  # b appeared to a running agent: its initial delay counts
    agent.next("synced")


def test_once_probes_everything_once_and_exits(backend):
    a = Agent()
    try:
        a.send(once=True, probes={"up": spec(port=backend.port), "down": spec("tcpSocket", port=free_port())})
        got = {}
        while True:
            line = a.lines.get(timeout=10)
            if line is None:
                break
            if line["e"] == "probe":
                got[line["w"]] = (line["ready"], line["why"])
        assert got == {"up": (True, "HTTP 200"), "down": (False, "connection refused")}
        assert a.proc.wait(5) == 0
    finally:
        a.close()


def test_the_agent_beats_and_leaves_at_the_end_of_its_input(agent):
    agent.next("hb", timeout=2)
    agent.proc.stdin.close()
    assert agent.proc.wait(5) == 0  # nothing left running on the node once the watch is gone
