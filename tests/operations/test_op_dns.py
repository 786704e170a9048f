"""The DNS operations (`svcops.operations.dns`): what `dns_plan` decides from the node's state,
and the node-side scripts run for real against a pdns-recursor in a namespace.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import render_fixtures as F
from paths import DNSQUERY
from waiting import wait_for

from svcops.compile.endpoints import headless_endpoints
from svcops.facts.dns import DnsState, SvcopsDns, _state_command, parse_dns_state
from svcops.operations import dns as dns_ops
from svcops.operations.dns import _reload_script, dns_plan, ready_script
from svcops.render import dns
from svcops.site.model import Cluster, ServicePort

HTTP = ServicePort("http", "TCP", 80, "http")


LISTEN = dns.DEFAULT_LISTEN


PREVIOUS = "nameserver 127.0.0.2\nsearch example.test\n"


def zone(services=None, cluster=F.CLUSTER) -> dns.Zone:
    services = services if services is not None else (F.service("web", HTTP), F.service("db", HTTP, cluster_ip="None"))
    site = F.site(services)
    allocs = F.allocations(services)
    return dns.render_zone(cluster, services, headless_endpoints(site, F.nodes(), allocs), allocs)


def done_state(z: dns.Zone, resolv: str = PREVIOUS, systemd: bool = False, **kw) -> DnsState:
    """A node on which `z` is served (supervised) and resolv.conf was rendered from `resolv`."""
    files = dns.dns_files(z, dns.parse_upstreams(resolv, LISTEN), LISTEN, systemd=systemd)
    digests = {p: hashlib.sha256(t.encode()).hexdigest() for p, t in files.files.items()}
    rendered = dns.render_resolv_conf(resolv, LISTEN, z.domain)
    indexes = {dns.zone_index_path(z.domain): z.index}
    base = dict(installed=True, systemd=systemd, running=True, pid=4242, supervised=True, files=digests, resolv=rendered, indexes=indexes)
    base.update(kw)
    return DnsState(**base)


def test_fresh_node_gets_every_file_a_start_and_then_resolv_conf():
    z = zone()
    plan = dns_plan(DnsState(installed=True, resolv=PREVIOUS), z)
    assert set(plan.write) == {dns.CONFIG_FILE, dns.FORWARD_FILE, dns.zone_path("cluster.local"), dns.zone_index_path("cluster.local"), dns.SUPERVISOR}
    assert plan.write[dns.zone_path("cluster.local")] == z.text and not plan.edits  # nothing to patch: sent whole
    assert "+.=127.0.0.2\n" in plan.write[dns.FORWARD_FILE]
    assert plan.action == "start" and not plan.install
    assert plan.resolv == dns.render_resolv_conf(PREVIOUS, LISTEN, "cluster.local")


def test_a_node_without_the_package_installs_it_first():
    plan = dns_plan(DnsState(installed=False, resolv=PREVIOUS), zone())
    assert plan.install and plan.action == "start"


def test_a_node_in_sync_gets_nothing():
    z = zone()
    assert dns_plan(done_state(z), z).empty


def test_changed_records_are_a_reload_and_leave_resolv_conf_alone():
    old, new = zone(), zone((F.service("web", HTTP), F.service("api", HTTP)))
    plan = dns_plan(done_state(old), new)
    assert plan.write == {dns.zone_path("cluster.local"): new.text, dns.zone_index_path("cluster.local"): new.index}
    assert plan.action == "reload"
    assert plan.resolv is None


def test_a_big_zone_is_patched_when_the_nodes_index_names_its_zone_file():
    """10,000 services: one port changed sends its chunk of lines, not the 1 MB zone;
    a node whose zone is not the one its index describes (edited by hand, or an
    older svcops's without an index) gets the zone whole."""
    many = tuple(F.service(f"s{i}", HTTP) for i in range(2000))
    old = zone(many)
    changed = zone(many[:700] + (F.service("s700", ServicePort("http", "TCP", 81, "http")),) + many[701:])
    assert changed.text != old.text
    plan = dns_plan(done_state(old), changed)
    edit = plan.edits[dns.zone_path("cluster.local")]
    assert 0 < len(edit.added) < len(changed.text) / 20 and edit.digest == changed.digest
    assert any(line.endswith("(a patch: %d lines sent)" % len(edit.added.splitlines())) for line in plan.summary())
    state = done_state(old)
    hand_edited = replace(state, files={**state.files, dns.zone_path("cluster.local"): "0" * 64})
    assert not dns_plan(hand_edited, changed).edits
    no_index = replace(state, indexes={})
    assert not dns_plan(no_index, changed).edits and dns.zone_index_path("cluster.local") in dns_plan(no_index, changed).write


def test_a_stopped_server_is_started_even_when_its_files_are_right():
    z = zone()
    plan = dns_plan(done_state(z, running=False), z)
    assert plan.action == "start" and not plan.write and plan.resolv is None


def test_a_hung_server_is_killed_and_started_again_even_when_its_files_are_right():
    z = zone()
    plan = dns_plan(done_state(z, running=False, pid=4242), z)
    assert plan.action == "start" and plan.hung == 4242 and not plan.write
    assert "dns: the server (pid 4242) does not answer: kill it and start it again" in plan.summary()


def test_an_unsupervised_server_is_restarted_under_its_supervisor():
    z = zone()
    # As an older svcops left it: the daemon on its own (--daemon=yes), no supervisor.
    plan = dns_plan(done_state(z, supervised=False), z)
    assert plan.action == "start" and not plan.hung


def test_under_systemd_the_drop_in_is_written_with_a_daemon_reload_and_no_restart():
    z = zone()
    state = done_state(z, systemd=True)
    assert dns_plan(state, z).empty
    old = {p: d for p, d in state.files.items() if p != dns.DROPIN}
    plan = dns_plan(replace(state, files=old), z)
    assert set(plan.write) == {dns.DROPIN} and plan.daemon_reload and plan.action == "none"


def test_a_new_cluster_domain_is_a_reload_and_removes_the_old_zone():
    old = zone()
    new = zone(cluster=Cluster(cluster_domain="corp.example"))
    plan = dns_plan(done_state(old), new)
    # Only the settings' auth-zones line differs: reload-zones re-reads it, no restart.
    assert plan.action == "reload"
    assert plan.remove == (dns.zone_path("cluster.local"), dns.zone_index_path("cluster.local"))
    assert dns.zone_path("corp.example") in plan.write and dns.CONFIG_FILE in plan.write
    assert "search svc.corp.example corp.example example.test\n" in plan.resolv


def test_any_other_settings_change_still_restarts():
    z = zone()
    state = done_state(z)
    # The node's settings file as an older svcops wrote it (another text, same domain).
    state = replace(state, files={**state.files, dns.CONFIG_FILE: "0" * 64})
    assert dns_plan(state, zone(cluster=Cluster(cluster_domain="corp.example"))).action == "start"
    assert dns_plan(state, z).action == "start"


def test_resolv_conf_changed_by_dhcp_changes_the_forwarders_and_is_rendered_again():
    z = zone()
    state = done_state(z)
    dhcp = "nameserver 127.0.0.9\n"  # DHCP wrote a new file over svcops's
    plan = dns_plan(replace(state, resolv=dhcp), z)
    assert plan.write == {dns.FORWARD_FILE: plan.write[dns.FORWARD_FILE]} and "+.=127.0.0.9\n" in plan.write[dns.FORWARD_FILE]
    assert plan.action == "reload"
    assert dns.restore_resolv_conf(plan.resolv) == dhcp


def test_a_symlinked_resolv_conf_is_replaced_by_a_file():
    z = zone()
    stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
    rendered = done_state(z, stub)
    # Same text but still a symlink (systemd-resolved would rewrite its target).
    plan = dns_plan(replace(rendered, resolv_link="../run/systemd/resolve/stub-resolv.conf"), z)
    assert plan.resolv == rendered.resolv
    assert "+.=127.0.0.53\n" in dns.dns_files(z, dns.parse_upstreams(stub), LISTEN).files[dns.FORWARD_FILE]


def test_without_a_search_line_the_host_names_domain_is_kept_in_the_search_list():
    plan = dns_plan(DnsState(installed=True, resolv="nameserver 127.0.0.2\n", domain="corp.test"), zone())
    assert "search svc.cluster.local cluster.local corp.test\n" in plan.resolv


def test_no_upstream_but_itself_is_an_error_and_nothing_is_done():
    plan = dns_plan(DnsState(installed=True, resolv=f"nameserver {LISTEN}\n"), zone())
    assert "no upstream nameserver" in plan.error
    assert not plan.write and plan.resolv is None


QUERY = DNSQUERY


OUTSIDE = "127.0.0.2"


def _can_run() -> bool:
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("ip", "unshare", "nsenter", "pdns_recursor", "rec_control", "bash"))


class FakeNode:
    """A network namespace (lo + a veth end with an address) and a mount namespace with
    /etc as an overlay of the machine's (writes land in a temp folder) and /run a
    tmpfs, held by a `sleep`; commands run inside with nsenter."""

    def __init__(self, tmp: Path) -> None:
        self.ns = f"svcops-dnsops-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        for d in ("upper", "work"):
            (tmp / d).mkdir()
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.holder: subprocess.Popen | None = None
        self.outside: subprocess.Popen | None = None
        try:
            for cmd in (
                ["link", "set", "lo", "up"],
                ["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"],
                ["addr", "add", "10.0.0.11/24", "dev", "eth0"],
                ["link", "set", "eth0", "up"],
            ):
                subprocess.run(["ip", "-n", self.ns, *cmd], check=True)
            script = (
                f"mount -t overlay svcops-test -o lowerdir=/etc,upperdir={tmp}/upper,workdir={tmp}/work /etc && "
                "mount -t tmpfs tmpfs /run && echo ready && exec sleep 600"
            )
            self.holder = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert self.holder.stdout.readline().strip() == "ready"
            self.outside = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, QUERY, "serve", OUTSIDE, "ext.example.test=203.0.113.9"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert self.outside.stdout.readline().strip() == "ready"
        except BaseException:
            self.close()
            raise

    def run(self, script: str, stdin: str | None = None, shell: str = "sh", timeout: float = 60) -> subprocess.CompletedProcess:
        argv = ["nsenter", f"--target={self.holder.pid}", "--mount", "--net", shell, "-c", script]
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)

    def bash(self, script: str) -> subprocess.CompletedProcess:
        """As the operation sends a script: `bash -s` with the script on stdin."""
        return self.run("exec bash -s", stdin=script)

    def write(self, path: str, text: str) -> None:
        r = self.run(f"mkdir -p $(dirname {path}) && cat > {path}.svcops-tmp && mv -f {path}.svcops-tmp {path}", stdin=text)
        assert r.returncode == 0, r.stderr

    def ask(self, name: str) -> tuple:
        r = self.run(f"exec {sys.executable} {QUERY} ask {LISTEN} {name} A 1")
        return eval(r.stdout)  # noqa: S307  (our own repr)

    def state(self, timeout: float = 60) -> DnsState:
        r = self.run(_state_command(), timeout=timeout)
        assert r.returncode == 0, r.stderr
        return parse_dns_state(r.stdout.splitlines())

    def close(self) -> None:
        # Everything in the namespace was started here (the daemon included): end it by PID.
        pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout.split()
        for p in (self.outside, self.holder):
            if p is not None:
                p.kill()
                p.wait()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@pytest.fixture
def fake_node(tmp_path):
    if not _can_run():
        pytest.skip("needs root, ip, unshare, nsenter, bash and pdns-recursor")
    node = FakeNode(tmp_path)
    try:
        yield node
    finally:
        node.close()


class FakeHost:
    """Enough of a pyinfra host for an operation's generator: facts are read from the
    fake node, no-ops are recorded."""

    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.noops: list[str] = []

    def get_fact(self, fact):
        assert fact is SvcopsDns
        return self.node.state()

    def noop(self, message: str) -> None:
        self.noops.append(message)


def run_operation(node: FakeNode, op, monkeypatch, **kwargs) -> list[tuple[str, subprocess.CompletedProcess]]:
    """Run a pyinfra operation's commands on the fake node in order, as pyinfra would
    (``sh -c`` with the command's stdin), stopping at the first that fails. Returns
    (command and its stdin, result) of each command run."""
    fake = FakeHost(node)
    monkeypatch.setattr(dns_ops, "host", fake)
    done = []
    for command in op._inner(**kwargs):
        text = command.get_raw_value()
        stdin = command.connector_arguments.get("_stdin")
        r = node.run(text, stdin=stdin)
        done.append((text + "\n" + (stdin or ""), r))
        if r.returncode != 0:
            break
    return done


# The start step's own line (the supervisor's comment names the command without the redirect).
START = f"{' '.join(dns.start_command(False))} </dev/null"


def ran(steps, word: str) -> bool:
    return any(word in text for text, _ in steps)


def ok(steps) -> bool:
    return all(r.returncode == 0 for _, r in steps)


@pytest.mark.root
def test_the_operation_starts_checks_reloads_restarts_and_removes_a_real_server(fake_node, monkeypatch):
    node = fake_node
    previous = f"nameserver {OUTSIDE}\nsearch example.test\n"
    node.write(dns.RESOLV_CONF, previous)
    before = node.state()
    assert before.installed and not before.running
    # Nothing listens yet: the readiness check says so, within its bound.
    t = time.monotonic()
    r = node.bash(ready_script(LISTEN, "cluster.local", seconds=1))
    assert r.returncode == 1 and "does not answer" in r.stderr
    assert time.monotonic() - t < 10

    first = zone()
    steps = run_operation(node, dns_ops.server, monkeypatch, zone=first)
    assert ok(steps), steps[-1]
    # The order that leaves no window: files, server, answers, and only then resolv.conf.
    texts = [t for t, _ in steps]
    assert [i for i, t in enumerate(texts) if START in t] == [len(texts) - 3]
    assert "/dev/udp" in texts[-2] and f"> {dns.RESOLV_CONF}.svcops-tmp" in texts[-1]
    web = F.allocations((F.service("web", HTTP),)).cluster_ips["default/web"]
    getent = node.run("getent hosts web.default.svc.cluster.local; getent hosts web.default; getent ahostsv4 ext.example.test")
    assert getent.stdout.split()[0] == web
    assert web in getent.stdout.split()[2:3]
    assert "203.0.113.9" in getent.stdout  # the outside world, through the forwarder
    assert node.state().running
    pid = node.run(f"cat {dns.SOCKET_DIR}/pdns_recursor-svcops.pid").stdout
    assert run_operation(node, dns_ops.server, monkeypatch, zone=first) == []  # a second run does nothing

    # Records change: a reload, checked by its output; the same process keeps serving.
    second = zone((F.service("web", HTTP), F.service("api", HTTP)))
    steps = run_operation(node, dns_ops.server, monkeypatch, zone=second)
    assert ok(steps) and ran(steps, "reload-zones") and not ran(steps, START), steps
    assert not ran(steps, f"{dns.RESOLV_CONF}.svcops-tmp")
    assert node.ask("api.default.svc.cluster.local")[0] == 0
    assert node.run(f"cat {dns.SOCKET_DIR}/pdns_recursor-svcops.pid").stdout == pid

    # A broken zone: rec_control exits 0, the operation fails, the old records stay.
    node.write(dns.zone_path("cluster.local"), second.text + "broken line without a type\n")
    r = node.bash(_reload_script())
    assert r.returncode == 1 and "keeps its previous records" in r.stderr
    assert node.ask("api.default.svc.cluster.local")[0] == 0

    # Another cluster domain: only auth-zones changes in the settings, which reload-zones
    # re-reads; the same process serves the new domain, the old one is no longer ours.
    third = zone(cluster=Cluster(cluster_domain="corp.example"))
    steps = run_operation(node, dns_ops.server, monkeypatch, zone=third)
    assert ok(steps), steps[-1]
    assert ran(steps, "reload-zones") and not ran(steps, START), steps
    assert node.run(f"cat {dns.SOCKET_DIR}/pdns_recursor-svcops.pid").stdout == pid
    assert node.ask("web.default.svc.corp.example")[1][0][2] == web
    assert node.ask("web.default.svc.cluster.local")[0] != 0  # no longer ours: forwarded, NXDOMAIN
    st = node.state()
    assert st.running and dns.zone_path("cluster.local") not in st.files
    assert "search svc.corp.example corp.example example.test\n" in st.resolv
    assert run_operation(node, dns_ops.server, monkeypatch, zone=third) == []

    # Any other settings change (here the listen address) restarts the server.
    steps = run_operation(node, dns_ops.server, monkeypatch, zone=third, listen="127.0.0.154")
    assert ok(steps) and ran(steps, START), steps
    assert node.run(f"cat {dns.SOCKET_DIR}/pdns_recursor-svcops.pid").stdout != pid
    asked = node.run(f"exec {sys.executable} {QUERY} ask 127.0.0.154 web.default.svc.corp.example A 1")
    assert web in asked.stdout
    assert "nameserver 127.0.0.154\n" in node.state().resolv

    # Taken off: the previous resolv.conf back, the server gone, its files removed.
    steps = run_operation(node, dns_ops.absent, monkeypatch)
    assert ok(steps), steps
    st = node.state()
    assert st.resolv == previous and not st.running and not st.files
    assert node.run("getent ahostsv4 ext.example.test").stdout.split()[:1] == ["203.0.113.9"]
    assert run_operation(node, dns_ops.absent, monkeypatch) == []


def server_pid(node: FakeNode) -> int:
    out = node.run(f"cat {dns.PID_FILE} 2>/dev/null").stdout.strip()
    return int(out) if out.isdigit() else 0


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, which has no command line, is not)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


@pytest.mark.root
def test_a_killed_server_is_started_again_by_its_supervisor(fake_node, monkeypatch):
    node = fake_node
    node.write(dns.RESOLV_CONF, f"nameserver {OUTSIDE}\n")
    assert ok(run_operation(node, dns_ops.server, monkeypatch, zone=zone()))
    first = server_pid(node)
    st = node.state()
    assert st.running and st.supervised and st.pid == first
    node.run(f"kill -KILL {first}")
    # The supervisor starts it again 1 s after it died (bounded here: 10 s).
    assert wait_for(lambda: server_pid(node) not in (0, first) and node.ask("web.default.svc.cluster.local")[0] == 0, 10)
    assert not alive(first)
    # A clean exit too (systemd's Restart=on-failure would leave that one dead).
    second = server_pid(node)
    node.run(f"kill -TERM {second}")
    assert wait_for(lambda: server_pid(node) not in (0, second) and node.ask("web.default.svc.cluster.local")[0] == 0, 10)
    assert run_operation(node, dns_ops.server, monkeypatch, zone=zone()) == []


@pytest.mark.root
def test_a_hung_server_reads_as_not_answering_and_the_operation_replaces_it(fake_node, monkeypatch):
    node = fake_node
    previous = f"nameserver {OUTSIDE}\n"
    node.write(dns.RESOLV_CONF, previous)
    z = zone()
    assert ok(run_operation(node, dns_ops.server, monkeypatch, zone=z))
    hung = server_pid(node)
    node.run(f"kill -STOP {hung}")
    try:
        # Read within its deadline (ping: 3 s, then KILL 1 s later; the bound here is the
        # subprocess timeout): the server is there, and does not answer.
        for _ in range(2):  # the second ping is the one that blocked rec_control for good
            st = node.state(timeout=8)
            assert not st.running and st.pid == hung and st.hung
        steps = run_operation(node, dns_ops.server, monkeypatch, zone=z)
        assert ok(steps) and ran(steps, START), steps[-1]
        assert not alive(hung)
        fresh = server_pid(node)
        assert fresh not in (0, hung) and node.ask("web.default.svc.cluster.local")[0] == 0
        st = node.state()
        assert st.running and st.supervised and not st.hung
        # Hung again, and DNS taken off: the stop does not wait on it either.
        node.run(f"kill -STOP {fresh}")
        steps = run_operation(node, dns_ops.absent, monkeypatch)
        assert ok(steps), steps[-1]
        assert not alive(fresh)
        st = node.state()
        assert st.resolv == previous and not st.pid and not st.supervised and not st.files
    finally:
        for pid in (hung, server_pid(node)):
            if pid and alive(pid):
                os.kill(pid, 9)


@pytest.mark.root
def test_the_stop_ends_only_svcops_s_own_instance(fake_node):
    """PID files that name someone else (a stale PID reused by another program, or a
    process with svcops's command line in another network namespace, as the lab's
    nodes share the machine's PIDs) are left alone."""
    node = fake_node
    # Inside the node: a program that is not svcops's server.
    other = int(node.run("sleep 600 </dev/null >/dev/null 2>&1 & echo $!").stdout.split()[-1])
    # Outside it (this test's namespace): svcops's command line, but not the node's.
    lookalike = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", dns.SUPERVISOR, f"--config-name={dns.INSTANCE}"])
    try:
        node.run(f"mkdir -p {dns.SOCKET_DIR} && echo {other} > {dns.PID_FILE} && echo {lookalike.pid} > {dns.SUPERVISOR_PID}")
        st = node.state()
        assert st.pid == 0 and not st.supervised
        r = node.bash(dns_ops._stop_script(False))
        assert r.returncode == 0, r.stderr
        assert alive(other) and lookalike.poll() is None
    finally:
        lookalike.kill()
        lookalike.wait()
        os.kill(other, 9)


def test_every_node_side_command_that_can_hang_has_a_hard_deadline():
    """rec_control, systemctl and apt-get, wherever the operations and the fact run
    them, come after coreutils' `timeout -k`: a hung server, systemd job or mirror ends
    the command, not the apply."""
    import re

    scripts = {
        "fact": _state_command(),
        "reload": _reload_script(),
        **{f"install systemd={s}": dns_ops._install_script(s) for s in (True, False)},
        **{f"start systemd={s}": dns_ops._start_script(s, LISTEN, "cluster.local") for s in (True, False)},
        **{f"stop systemd={s}": dns_ops._stop_script(s) for s in (True, False)},
    }
    found = 0
    for name, text in scripts.items():
        for m in re.finditer(r"(?<!command -v )\b(rec_control|systemctl|apt-get) ", text):
            found += 1
            assert re.search(r"timeout -k \d+ \d+ $", text[: m.start()]), (name, text[max(0, m.start() - 60) : m.end() + 20])
    assert found >= 12
