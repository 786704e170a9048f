"""One SSH connection and one probe agent per node, their lines as events.

`NodeLink` keeps a node connected for as long as the watch runs: it connects with
pyinfra (the inventory's own host data: user, key, known hosts, strict host-key
checking as `svcops apply` has it), starts the agent (`svcops.watch.agent`) on a
session channel of that connection, sends it the node's probes, and puts every line
it writes on the watch's queue as ``(node, message)``. When the agent or the
connection ends (or the watch `cut`s a silent node), it says ``{"e": "gone"}`` and
connects again, with a growing pause (at most `MAX_BACKOFF` s). The connection is
the one the watch's pushes use (`client`): `svcops.apply` takes it as it is.

Nothing on the node outlives the watch: the agent leaves at the end of its input,
and when it has heard nothing from the watch for 30 s.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any, Callable

import gevent
from gevent.queue import Queue

from svcops.watch import agent as _agent

__all__ = ["NodeLink", "agent_command", "connect_host", "probe_once", "AGENT_SOURCE"]

AGENT_SOURCE = Path(_agent.__file__).read_text()
PING = 5.0  # seconds between the watch's pings (the agent leaves after 30 s without one)
MAX_BACKOFF = 10.0
CONNECT_TIMEOUT = 5


def agent_command() -> str:
    """The agent's command line: python3 when the node has it, else one error line."""
    missing = json.dumps({"e": "error", "why": "python3 is not installed on the node (apt-get install python3-minimal): its probes cannot run"})
    return (
        f"command -v python3 >/dev/null 2>&1 || {{ echo {shlex.quote(missing)}; exit 127; }}; "
        f"exec python3 -u -c {shlex.quote(AGENT_SOURCE)}"
    )


def connect_host(inventory_path: str, name: str, timeout: int = CONNECT_TIMEOUT):
    """A connected paramiko client to inventory host `name`, made by pyinfra from the
    inventory's data, as `svcops apply` connects (raises when it cannot)."""
    from pyinfra.context import ctx_config, ctx_inventory, ctx_state

    from svcops.apply import _make_state
    from svcops.operations.guard import set_nodelay

    state, inventory = _make_state(inventory_path, [name])
    state.config.CONNECT_TIMEOUT = timeout
    h = inventory.get_host(name)
    with ctx_state.use(state), ctx_inventory.use(inventory), ctx_config.use(state.config):
        h.connect(show_errors=False, raise_exceptions=True)
    client = getattr(h.connector, "client", None)
    if client is None:
        raise RuntimeError("svcops watch reaches nodes over SSH only (not @local or other connectors)")
    set_nodelay(h)
    return client


def probe_once(inventory_path: str, probes: dict[str, dict], deadline: float = 15.0) -> dict[str, dict | str]:
    """Each node's probes run once, all nodes at once: node -> {workload: (ready, why)},
    or the reason it could not be asked (unreachable, no python3). `probes`: node ->
    its agent specs. Bounded: `deadline` seconds past the longest probe timeout."""
    longest = max([s["timeout"] for ps in probes.values() for s in ps.values()] or [0])

    def one(name: str):
        if not probes[name]:
            return {}
        try:
            client = connect_host(inventory_path, name)
            chan = client.get_transport().open_session(timeout=CONNECT_TIMEOUT)
            chan.settimeout(longest + deadline)
            chan.exec_command(agent_command())
            chan.sendall((json.dumps({"once": True, "probes": probes[name]}) + "\n").encode())
            buf = b""
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                buf += data
        except Exception as e:
            return f"unreachable: {_why(e)}"
        got: dict[str, tuple[bool, str]] = {}
        for line in buf.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("e") == "probe":
                got[msg["w"]] = (bool(msg["ready"]), str(msg.get("why", "")))
            elif msg.get("e") == "error":
                return str(msg.get("why"))
        return got

    greenlets = {name: gevent.spawn(one, name) for name in probes}
    gevent.joinall(list(greenlets.values()), timeout=longest + deadline + CONNECT_TIMEOUT + 5)
    return {n: (g.value if g.successful() else "no answer in time") for n, g in greenlets.items()}


class NodeLink:
    """The watch's hold on one node (a greenlet: `start`, `stop`)."""

    def __init__(self, name: str, connect: Callable[[str], Any], queue: Queue, probes: dict):
        self.name = name
        self._connect = connect  # name -> a connected paramiko SSHClient (or raises)
        self.queue = queue
        self.probes = probes
        self.client = None  # the live connection, while there is one
        self._chan = None
        self._stopping = False
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        self._stopping = True
        self.cut()
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=5)

    def set_probes(self, probes: dict) -> None:
        """A new set of probes (the inventory changed): sent to the running agent."""
        self.probes = probes
        self._send({"probes": probes})

    def cut(self) -> None:
        """Give up on this connection (the node went silent): close it, connect again."""
        client, self.client = self.client, None
        try:
            if client is not None:
                client.get_transport().close()
        except Exception:
            pass

    def _send(self, msg: dict) -> bool:
        chan = self._chan
        if chan is None:
            return False
        try:
            chan.sendall((json.dumps(msg, separators=(",", ":")) + "\n").encode())
            return True
        except Exception:
            return False

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping:
            started = time.monotonic()
            try:
                self._session()
            except Exception as e:  # a connection that failed or broke: said, then again
                self.queue.put((self.name, {"e": "gone", "why": _why(e)}))
            else:
                self.queue.put((self.name, {"e": "gone", "why": "the agent ended"}))
            self._chan = None
            self.cut()
            if self._stopping:
                return
            if time.monotonic() - started > 30:
                backoff = 0.5  # it was up a while: try again soon
            gevent.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)

    def _session(self) -> None:
        client = self._connect(self.name)
        self.client = client
        transport = client.get_transport()
        chan = transport.open_session(timeout=CONNECT_TIMEOUT)
        chan.exec_command(agent_command())
        self._chan = chan
        self.queue.put((self.name, {"e": "connected"}))
        self._send({"probes": self.probes})
        pinger = gevent.spawn(self._ping)
        try:
            buf = b""
            while True:
                data = chan.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(msg, dict) and isinstance(msg.get("e"), str):
                        self.queue.put((self.name, msg))
        finally:
            pinger.kill(block=False)

    def _ping(self) -> None:
        while self._send({"ping": 1}):
            gevent.sleep(PING)


def _why(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]
