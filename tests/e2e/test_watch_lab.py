"""`svcops watch` in the lab: backends that die, nodes that vanish, a flapping backend, the
watch itself killed, and a plain apply during an outage, with real probes (each node
probing its own backend), real pushes and real traffic.

Each node runs a second backend on port 8080 (the lab's demo backend, started by this
module, stopped by PID), the workload ``api-nodeK`` with an httpGet readinessProbe
(period 1 s, failureThreshold 1), behind the ClusterIP service ``default/api``. The
request loops run on node1 (the ClusterIP is a node's business), at about 20 requests
a second, each bounded by --max-time, and time-stamped by the node's clock (the
machine's: the lab shares its kernel).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import labkit
import pytest
from labkit import NODES, ROOT, SVCOPS, make_site, mode_fixture, run, sh, svcops_rules

proxy_mode = mode_fixture()  # every test once per proxy mode

BACKEND = ROOT / "svcops" / "lab" / "backend.py"
ADDRESS = labkit.ADDRESS
API = """apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  selector: {app: api}
  ports: [{name: http, port: 8080, targetPort: http}]
"""

INVENTORY = '''\
import json, os, runpy
_lab = runpy.run_path({lab!r})
_cfg = json.load(open({cfg!r}))
nodes = []
for _name, _data in _lab["nodes"]:
    _data = dict(_data)
    _data["svcops_site"] = _cfg["site"]
    _probe = dict(_cfg["probe"], **_cfg.get("node_probe", {{}}).get(_name, {{}}))
    _data["svcops_workloads"] = list(_data.get("svcops_workloads", [])) + [
        {{"name": "api-" + _name, "labels": {{"app": "api"}}, "ports": [{{"name": "http", "port": 8080}}],
          "readinessProbe": _probe}}]
    nodes.append((_name, _data))
'''
PROBE = {"httpGet": {"port": "http", "path": "/"}, "periodSeconds": 1, "failureThreshold": 1, "successThreshold": 1}


# Where the backend's script is on a node: the node's own /tmp (a lab node sees none
# of the machine's /tmp, where a checkout may live), sent there through stdin.
NODE_BACKEND = "/tmp/svcops-api-backend.py"


def start_backend(node: str) -> int:
    sent = labkit.lab_exec(node, "sh", "-c", f"cat > {NODE_BACKEND}", input=BACKEND.read_text())
    assert sent.returncode == 0, sent.stderr
    out = sh(node, f"setsid python3 -I -S {NODE_BACKEND} --address {ADDRESS[node]} --port 8080 >/dev/null 2>&1 < /dev/null & echo $!")
    return int(out.strip())


def stop_backend(node: str, pid: int) -> None:
    sh(node, f"kill {pid} 2>/dev/null; true")


class Watch:
    """`svcops watch` running, its lines collected with the time each arrived."""

    def __init__(self, inventory: Path, site: Path, *extra: str):
        self.proc = subprocess.Popen(
            [SVCOPS, "watch", "-i", str(inventory), str(site), "--grace", "2", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.lines: list[tuple[float, str]] = []
        self._new: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            item = (time.time(), line.rstrip("\n"))
            self.lines.append(item)
            self._new.put(item)
        self._new.put(None)

    def wait_for(self, pattern: str, timeout: float = 20.0, after: float = 0.0) -> float:
        """The arrival time of the first line matching `pattern` that came after `after`."""
        rx = re.compile(pattern)
        for t, line in list(self.lines):
            if t >= after and rx.search(line):
                return t
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                item = self._new.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                break
            if item[0] >= after and rx.search(item[1]):
                return item[0]
        raise AssertionError(f"no line /{pattern}/ within {timeout} s:\n" + self.text())

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


class Loop:
    """A bounded request loop on node1 to URL: (node time, backend or None) per request."""

    def __init__(self, url: str, count: int = 200, max_time: float = 0.4):
        script = (
            f'for i in $(seq {count}); do t=$(date +%s.%N); '
            f'a=$(curl -s --max-time {max_time} {url}) || a=FAIL; echo "$t $a"; sleep 0.04; done'
        )
        self.proc = subprocess.Popen(
            [SVCOPS, "lab", "exec", "node1", "--", "sh", "-c", script],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip

    def results(self, timeout: float = 120) -> list[tuple[float, str | None]]:
        out, _ = self.proc.communicate(timeout=timeout)
        got = []
        for line in out.splitlines():
            t, _, answer = line.partition(" ")
            m = re.search(r"backend=(\S+)", answer)
            got.append((float(t), m.group(1) if m else None))
        return got


@pytest.fixture(scope="module")
def world(proxy_mode, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"watch-{proxy_mode}")
    site = make_site(tmp, {"api.yaml": API})
    cfg = tmp / "cfg.json"
    cfg.write_text(__import__("json").dumps({"site": str(site), "probe": PROBE}))
    inventory = tmp / "inventory.py"
    inventory.write_text(INVENTORY.format(lab=str(ROOT / "inventory" / "lab.py"), cfg=str(cfg)))
    pids = {n: start_backend(n) for n in NODES}
    try:
        r = run([SVCOPS, "apply", "-i", str(inventory), "-y", str(site)], timeout=300, check=True)
        assert "changed" in r.stdout
        lock = (site / "svcops.lock").read_text()
        ip = re.search(r"default/api:\s*(\S+)", lock).group(1)
        w = {"site": site, "inventory": inventory, "cfg": cfg, "pids": pids, "url": f"http://{ip}:8080/", "tmp": tmp}
        w["metrics"] = f"127.0.0.1:{19750 + (proxy_mode == 'nftables')}"
        w["watch"] = Watch(inventory, site, "--metrics", w["metrics"])
        w["watch"].wait_for(r"push to 3 nodes")
        yield w
        w["watch"].stop()
    finally:
        for n, pid in pids.items():
            stop_backend(n, pid)


def answers(results, since=0.0, until=float("inf")):
    return [(t, b) for t, b in results if since <= t < until]


def test_01_a_killed_backend_is_out_within_2s_and_back_within_2s_of_its_first_passing_probe(world):
    watch = world["watch"]
    loop = Loop(world["url"], count=220)
    time.sleep(2)
    killed = time.time()
    stop_backend("node2", world["pids"]["node2"])
    watch.wait_for(r"node2/api-node2: not ready", after=killed - 0.1)
    status = _status(world)
    assert status["readiness"].startswith("the watch (pid"), status
    assert _api_endpoints(status)["node2"] == (False, False, "connection refused")
    assert _api_endpoints(status)["node1"] == (True, True, None)
    metrics = _metrics(world)
    assert 'svcops_watch_workload_ready{node="node2",workload="api-node2"} 0.0' in metrics
    assert 'svcops_watch_endpoints{service="default/api"} 2.0' in metrics
    time.sleep(2)
    restarted = time.time()
    world["pids"]["node2"] = start_backend("node2")
    passed = watch.wait_for(r"node2/api-node2: ready", after=restarted)
    got = loop.results()
    before = answers(got, until=killed)
    assert {b for _, b in before} == set(ADDRESS.values()), before  # spread over all three
    failures = [t for t, b in answers(got, since=killed) if b is None]
    last_failure = max(failures, default=killed)
    assert last_failure - killed <= 2.0, f"failures until {last_failure - killed:.2f} s after the kill"
    back = [t for t, b in answers(got, since=restarted) if b == ADDRESS["node2"]]
    assert back, "node2's backend never answered again:\n" + watch.text()
    assert back[0] - passed <= 2.0, f"answering {back[0] - passed:.2f} s after its first passing probe"
    print(f"\n{labkit.MODE['proxyMode']}: last failure {last_failure - killed:.2f} s after the kill "
          f"({len(failures)} failed); back {back[0] - passed:.2f} s after its first passing probe")


def _status(world) -> dict:
    import json

    r = run([SVCOPS, "status", "-i", str(world["inventory"]), "--json", str(world["site"])], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def _api_endpoints(status: dict) -> dict:
    """node -> (ready, in the rules, why) of default/api's endpoints."""
    (svc,) = [s for s in status["services"] if s["name"] == "api"]
    return {e["node"]: (e["ready"], e["inRules"], e["why"]) for e in svc["ports"][0]["endpoints"]}


def _metrics(world) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{world['metrics']}/metrics", timeout=5) as f:
        return f.read().decode()


def test_02_a_lost_node_is_out_of_every_other_node_within_3s_and_back_when_it_returns(world):
    watch = world["watch"]
    loop = Loop(world["url"], count=260, max_time=0.3)
    time.sleep(1.5)
    cut = time.time()
    subprocess.run(["ip", "-n", "svl-net", "link", "set", "node3", "down"], check=True)
    try:
        watch.wait_for(r"node3: lost", after=cut)
        watch.wait_for(r"push to 2 nodes.*lost: node3", after=cut)
        time.sleep(3)
    finally:
        back_at = time.time()
        subprocess.run(["ip", "-n", "svl-net", "link", "set", "node3", "up"], check=True)
    watch.wait_for(r"node3: back", after=back_at, timeout=40)
    got = loop.results()
    failures = [t for t, b in answers(got, since=cut) if b is None]
    last_failure = max(failures, default=cut)
    assert last_failure - cut <= 3.0, (
        f"failures until {last_failure - cut:.2f} s after node3's link went down: "
        + ", ".join(f"{t - cut:.2f}" for t in failures) + "\n" + watch.text()
    )
    assert ADDRESS["node3"] in {b for _, b in answers(got, since=back_at)} or _answers_from("node3", world), watch.text()
    print(f"\n{labkit.MODE['proxyMode']}: last failure {last_failure - cut:.2f} s after the link went down ({len(failures)} failed)")


def _answers_from(node: str, world) -> bool:
    """Whether a bounded burst from node1 reaches `node`'s backend now."""
    lines = labkit.curl("node1", world["url"], count=15, max_time=1)
    return ADDRESS[node] in labkit.backends(lines)


def test_03_a_flapping_backend_follows_the_thresholds_without_a_push_storm(world):
    import json

    watch = world["watch"]
    cfg = json.loads(world["cfg"].read_text())
    cfg["node_probe"] = {"node3": {"failureThreshold": 3, "successThreshold": 3}}
    changed = time.time()
    world["cfg"].write_text(json.dumps(cfg))
    os.utime(world["inventory"])  # the inventory reads the file: it changed
    watch.wait_for(r"changed: applying it", after=changed)
    watch.wait_for(r"push \(site reloaded\)", after=changed)
    stop_backend("node3", world["pids"]["node3"])
    start = time.time()
    # Up 0.5 s, down 0.5 s, 12 times (bounded), on node3 itself.
    flap = (
        f"for i in $(seq 12); do python3 -I -S {NODE_BACKEND} --address {ADDRESS['node3']} --port 8080 >/dev/null 2>&1 < /dev/null & p=$!; "
        "sleep 0.5; kill $p; wait $p 2>/dev/null; sleep 0.5; done"
    )
    sh("node3", flap, timeout=60)
    end = time.time()
    world["pids"]["node3"] = start_backend("node3")
    # Whether the flapping took it out depends on where the probes fell in each cycle;
    # either way it ends ready: no transition, or a last one to ready.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        last = [line for t, line in watch.lines if t >= start and "node3/api-node3:" in line][-1:]
        settled = time.monotonic() > deadline - 11  # 3 probes of successThreshold 3, and a margin
        if settled and (not last or "node3/api-node3: ready" in last[0]):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("node3 never ready again:\n" + watch.text())
    during = [line for t, line in watch.lines if start <= t <= end + 0.5]
    transitions = [line for line in during if "node3/api-node3:" in line]
    pushes = [line for line in during if " push " in line]
    # 3 results in a row to change either way: at most one transition per 3 probes
    # (about 15 in 15 s), a push for each at most.
    assert len(transitions) <= 5, "\n".join(during)
    assert len(pushes) <= len(transitions) + 1, "\n".join(during)
    print(f"\n{labkit.MODE['proxyMode']}: flapping for {end - start:.1f} s: {len(transitions)} transitions, {len(pushes)} pushes")


def test_04_the_watch_killed_leaves_the_rules_and_the_traffic_and_restarted_it_converges(world):
    watch = world["watch"]
    stop_backend("node2", world["pids"]["node2"])
    watch.wait_for(r"node2/api-node2: not ready", after=time.time() - 5)
    time.sleep(1)
    rules = {n: svcops_rules(n) for n in NODES}
    assert watch.stop(signal.SIGKILL) == -signal.SIGKILL
    time.sleep(3)
    assert {n: svcops_rules(n) for n in NODES} == rules  # fail static: nothing moved
    lines = labkit.curl("node1", world["url"], count=20, max_time=1)
    assert labkit.backends(lines) and sum(labkit.backends(lines).values()) == 20, lines  # every request answered
    assert ADDRESS["node2"] not in labkit.backends(lines)
    # Nothing of the watch is left on the nodes: each agent left when its input ended.
    end = time.monotonic() + 10
    while time.monotonic() < end and any(_agents(n) for n in NODES):
        time.sleep(0.5)
    assert not any(_agents(n) for n in NODES)
    restarted = time.time()
    world["watch"] = watch = Watch(world["inventory"], world["site"])
    watch.wait_for(r"push to 3 nodes: 0 changed, 0 failed", after=restarted)  # it converges: already right
    world["pids"]["node2"] = start_backend("node2")
    watch.wait_for(r"node2/api-node2: ready", after=restarted)
    watch.wait_for(r"push to 3 nodes: 3 changed", after=restarted)
    assert ADDRESS["node2"] in labkit.backends(labkit.curl("node1", world["url"], count=15, max_time=1))


def _leftovers(node: str) -> str:
    """What a transaction left in /run/svcops on `node` (its lock and undo logs aside)."""
    return sh(node, "ls /run/svcops 2>/dev/null | grep -v -e '^node.lock$' -e '^undo-.*log$' || true").strip()


def test_04b_the_watch_killed_mid_push_leaves_each_node_wholly_old_or_wholly_new(world):
    # A watch with -v: pyinfra's line per node and operation says when a node's rules
    # step has run (armed, not committed): the kill lands there.
    world["watch"].stop()
    restarted = time.time()
    world["watch"] = watch = Watch(world["inventory"], world["site"], "-v")
    watch.wait_for(r"push to 3 nodes: 0 changed", after=restarted)
    old = {n: svcops_rules(n) for n in NODES}
    stop_backend("node2", world["pids"]["node2"])
    seen = watch.wait_for(r"node2/api-node2: not ready", after=time.time() - 5)
    watch.wait_for(r"svcops \| (nftables table|iptables rules): changed", after=seen)
    assert watch.stop(signal.SIGKILL) == -signal.SIGKILL
    told = [line for t, line in watch.lines if t >= seen]
    # The nodes whose rules step had run and whose commit had not: armed when killed.
    armed = [
        n for n in NODES
        if any(f"[{n}] svcops | " in ln and "changed" in ln for ln in told) and not any(f"[{n}] svcops | commit: committed" in ln for ln in told)
    ]  # fmt: skip
    # Each node's guard saw its input end: it undid what it had armed, and left.
    end = time.monotonic() + 15
    while time.monotonic() < end and any(_leftovers(n) or _agents(n) for n in NODES):
        time.sleep(0.5)
    assert not any(_leftovers(n) for n in NODES), {n: _leftovers(n) for n in NODES}
    after_kill = {n: svcops_rules(n) for n in NODES}
    restarted = time.time()
    world["watch"] = watch = Watch(world["inventory"], world["site"])
    watch.wait_for(r"push to 3 nodes: [1-3] changed, 0 failed", after=restarted)  # the undone ones at least
    new = {n: svcops_rules(n) for n in NODES}
    assert all(new[n] != old[n] for n in NODES)  # node2's endpoint is out everywhere now
    outcome = {n: "old" if after_kill[n] == old[n] else "new" if after_kill[n] == new[n] else "TORN" for n in NODES}
    assert "TORN" not in outcome.values(), outcome
    assert armed and all(outcome[n] == "old" for n in armed), (outcome, armed)  # undone by its guard
    assert ADDRESS["node2"] not in labkit.backends(labkit.curl("node1", world["url"], count=15, max_time=1))
    world["pids"]["node2"] = start_backend("node2")
    watch.wait_for(r"node2/api-node2: ready", after=restarted)
    watch.wait_for(r"push to 3 nodes: 3 changed", after=restarted)
    print(f"\n{labkit.MODE['proxyMode']}: killed with {armed} armed: {outcome}")


def _agents(node: str) -> int:
    out = sh(node, "ps -eo args | grep -c \"[s]vcops's probe agent\" || true")
    return int(out.strip() or 0)


def test_05_a_plain_apply_during_an_outage_does_not_bring_the_dead_endpoint_back(world):
    watch = world["watch"]
    stop_backend("node2", world["pids"]["node2"])
    watch.wait_for(r"node2/api-node2: not ready", after=time.time() - 5)
    time.sleep(1)
    try:
        r = run([SVCOPS, "apply", "-i", str(world["inventory"]), "-y", str(world["site"])], timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "1 workload not ready" in r.stderr and "not-ready endpoints stay out" in r.stderr, r.stderr
        lines = labkit.curl("node1", world["url"], count=20, max_time=1)
        assert sum(labkit.backends(lines).values()) == 20 and ADDRESS["node2"] not in labkit.backends(lines), lines
        # svcops check agrees: what the watch pushed is what the site means now.
        c = run([SVCOPS, "check", "-i", str(world["inventory"]), str(world["site"])], timeout=300)
        assert c.returncode == 0, c.stdout + c.stderr
    finally:
        restarted = time.time()
        world["pids"]["node2"] = start_backend("node2")
        watch.wait_for(r"node2/api-node2: ready", after=restarted)


def test_06_one_watch_per_site_and_sighup_applies_the_site(world):
    r = run([SVCOPS, "watch", "-i", str(world["inventory"]), str(world["site"])], timeout=60)
    assert r.returncode == 1 and "a watch already runs for this site" in r.stderr, r.stderr
    watch = world["watch"]
    hup = time.time()
    watch.proc.send_signal(signal.SIGHUP)
    watch.wait_for(r"SIGHUP: applying", after=hup)
    watch.wait_for(r"push \(site reloaded\) to 3 nodes: 0 changed, 0 failed", after=hup)


def test_07_without_a_watch_status_probes_once(world):
    world["watch"].stop()
    stop_backend("node3", world["pids"]["node3"])
    try:
        status = _status(world)
        assert status["readiness"].startswith("probed now (3 probes"), status
        eps = _api_endpoints(status)
        assert eps["node3"][0] is False and eps["node3"][2] == "connection refused", eps
        assert eps["node1"][0] is eps["node2"][0] is True, eps
        # Nothing of the one-shot probes stays on the nodes.
        assert not any(_agents(n) for n in NODES)
    finally:
        world["pids"]["node3"] = start_backend("node3")
