"""Service DNS (svcops.render.dns): golden files, what each record means, resolv.conf, and a real
pdns-recursor on loopback.

Golden files: tests/golden/dns/ hold the exact files a node gets for the site below.
After an intended change, regenerate them and review the diff:

    SVCOPS_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/render/test_render_dns.py

Tests marked `root` run the real server (Debian's pdns-recursor, with the rendered
files at their real paths through a private mount namespace) inside a throwaway
network namespace, next to a stand-in for the outside world's DNS (a tiny
authoritative server on another loopback address), and ask them as a node's programs
would: DNS queries, and glibc's `getent` through the rendered resolv.conf. Nothing
leaves the namespace; they are skipped without root or without pdns-recursor.
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import render_fixtures as F
from golden import check_golden
from hypothesis import given, settings
from hypothesis import strategies as st
from paths import DNSQUERY
from paths import GOLDEN as GOLDEN_DIR

from svcops.compile.endpoints import headless_endpoints
from svcops.render import dns
from svcops.site.model import Cluster, ServicePort

GOLDEN = GOLDEN_DIR / "dns"

# The site: every kind of service DNS knows (nodes and workloads: render_fixtures).
HTTP = ServicePort("http", "TCP", 80, "http")
METRICS = ServicePort("metrics", "TCP", 9100, "metrics")
SERVICES = (
    F.service("web", HTTP, METRICS),  # ClusterIP, two named ports: two SRV
    F.service("db", HTTP, cluster_ip="None"),  # headless: web-1 (80) and web-2 (8080)
    F.service("peers", cluster_ip="None"),  # headless without ports: A records only
    F.service("legacy", ServicePort("db", "TCP", 5432, 5432), cluster_ip="None", selector=None),  # manual
    F.service("ext", ServicePort("https", "TCP", 443, 443), type="ExternalName", external_name="ext.example.test", selector=None),
    F.service(
        "dns",
        ServicePort("dns", "UDP", 53, "dns"),
        ServicePort("dns-tcp", "TCP", 53, "dns-tcp"),
        selector={"app": "dns"},
    ),
    F.service("plain", ServicePort("", "TCP", 8000, 80)),  # unnamed port: no SRV
    F.service("empty", HTTP, cluster_ip="None", selector={"app": "missing"}),  # headless, no endpoints
)
PREVIOUS_RESOLV = "# from DHCP\nnameserver 127.0.0.2\nsearch example.test\noptions edns0 timeout:2\n"
LISTEN = "127.0.0.153"


def site_files(services=SERVICES, upstreams=("127.0.0.2",), listen=LISTEN, cluster=F.CLUSTER, systemd=False) -> dns.DnsFiles:
    site = F.site(services, (F._MANUAL,))
    allocs = F.allocations(services)
    headless = headless_endpoints(site, F.nodes(), allocs)
    return dns.render_dns(cluster, services, headless, allocs, list(upstreams), listen, systemd)


def zone_records(text: str) -> set[tuple[str, str, str]]:
    """(owner, type, data) of every record line of a zone file."""
    out = set()
    for line in text.splitlines():
        if not line or line[0] in ";$@#":
            continue
        owner, _in, rtype, data = line.split(None, 3)
        out.add((owner, rtype, data))
    return out


# --- golden files ---------------------------------------------------------------------

GOLDEN_FILES = {
    "cluster.local.zone": lambda: site_files().files[dns.zone_path("cluster.local")],
    "recursor-svcops.conf": lambda: site_files().files[dns.CONFIG_FILE],
    "forward-zones": lambda: site_files(upstreams=("10.0.0.1", "2001:db8::53")).files[dns.FORWARD_FILE],
    "resolv.conf": lambda: dns.render_resolv_conf(PREVIOUS_RESOLV, LISTEN, "cluster.local"),
    "supervise": lambda: site_files().files[dns.SUPERVISOR],
    "svcops.conf": lambda: site_files(systemd=True).files[dns.DROPIN],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_FILES))
def test_golden_file(name):
    path = GOLDEN / name
    text = GOLDEN_FILES[name]()
    check_golden(path, text)


def test_every_golden_file_is_checked():
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(GOLDEN_FILES)


# --- what the records mean --------------------------------------------------------------


def test_cluster_ip_service_is_an_a_record_to_its_allocated_address():
    allocs = F.allocations(SERVICES)
    recs = zone_records(site_files().files[dns.zone_path("cluster.local")])
    assert ("web.default.svc", "A", allocs.cluster_ips["default/web"]) in recs
    assert [r for r in recs if r[0] == "web.default.svc"] == [("web.default.svc", "A", allocs.cluster_ips["default/web"])]


def test_named_ports_get_srv_records_to_the_service_name_and_unnamed_ones_none():
    recs = zone_records(site_files().files[dns.zone_path("cluster.local")])
    srv = {(o, d) for o, t, d in recs if t == "SRV"}
    assert ("_http._tcp.web.default.svc", "0 100 80 web.default.svc.cluster.local.") in srv
    assert ("_metrics._tcp.web.default.svc", "0 100 9100 web.default.svc.cluster.local.") in srv
    assert ("_dns._udp.dns.default.svc", "0 100 53 dns.default.svc.cluster.local.") in srv
    assert not [o for o, _ in srv if o.endswith(".plain.default.svc")]


def test_headless_service_has_every_endpoint_and_per_endpoint_names():
    recs = zone_records(site_files().files[dns.zone_path("cluster.local")])
    assert {d for o, t, d in recs if o == "db.default.svc" and t == "A"} == {"10.0.0.11", "10.244.2.7"}
    # SRV per endpoint, with the endpoint's own port (web-2 serves http on 8080).
    assert {d for o, t, d in recs if o == "_http._tcp.db.default.svc"} == {
        "0 50 80 10-0-0-11.db.default.svc.cluster.local.",
        "0 50 8080 10-244-2-7.db.default.svc.cluster.local.",
    }
    assert ("10-244-2-7.db.default.svc", "A", "10.244.2.7") in recs
    # Without ports: the selected workloads' addresses; by hand: the Endpoints' ones.
    assert {d for o, t, d in recs if o == "peers.default.svc"} == {"10.0.0.11", "10.244.2.7"}
    assert {d for o, t, d in recs if o == "legacy.default.svc"} == {"10.0.0.12", "203.0.113.50"}
    # No endpoints: no name at all (NXDOMAIN), as Kubernetes answers.
    assert not [r for r in recs if "empty.default.svc" in r[0]]


def test_external_name_is_a_cname_to_the_outside_name():
    recs = zone_records(site_files().files[dns.zone_path("cluster.local")])
    assert [r for r in recs if r[0] == "ext.default.svc"] == [("ext.default.svc", "CNAME", "ext.example.test.")]
    assert ("_https._tcp.ext.default.svc", "SRV", "0 100 443 ext.example.test.") in recs


def test_cluster_domain_is_the_zone_origin():
    files = site_files(cluster=Cluster(cluster_domain="corp.example"))
    zone = files.files[dns.zone_path("corp.example")]
    assert "$ORIGIN corp.example.\n" in zone
    assert "auth-zones=corp.example=/etc/powerdns/svcops/corp.example.zone\n" in files.files[dns.CONFIG_FILE]


def test_digest_changes_only_when_a_record_does():
    a, b = site_files(), site_files()
    assert a.digest == b.digest
    fewer = site_files(services=SERVICES[:-2])
    assert fewer.digest != a.digest
    # Another upstream changes the node's files, not the zone (shared by every node).
    other_upstream = site_files(upstreams=("127.0.0.3",))
    assert other_upstream.digest != a.digest
    assert other_upstream.files[dns.zone_path("cluster.local")] == a.files[dns.zone_path("cluster.local")]


def test_dns_action_restarts_only_for_settings_and_reloads_for_records():
    zone = dns.zone_path("cluster.local")
    assert dns.dns_action([]) == "none"
    assert dns.dns_action([zone]) == "reload"
    assert dns.dns_action([dns.FORWARD_FILE]) == "reload"
    assert dns.dns_action([zone, dns.CONFIG_FILE]) == "restart"
    assert dns.dns_action([dns.RESOLV_CONF]) == "none"


def test_listen_address_is_never_its_own_upstream():
    files = site_files(upstreams=(LISTEN, "127.0.0.2"))
    assert files.upstreams == ("127.0.0.2",)
    with pytest.raises(ValueError, match="no upstream nameserver"):
        site_files(upstreams=(LISTEN,))


def test_reload_output_is_checked_not_just_the_exit_status():
    assert dns.reload_succeeded("ok\n")
    assert not dns.reload_succeeded("reloading failed, see log\n")


# --- resolv.conf ---------------------------------------------------------------------


def test_resolv_conf_points_at_the_server_then_the_previous_nameservers_and_searches_the_cluster_domain():
    text = dns.render_resolv_conf(PREVIOUS_RESOLV, LISTEN, "cluster.local")
    active = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert active == [
        f"nameserver {LISTEN}",
        "nameserver 127.0.0.2",  # when svcops's server is down or hung, other names still resolve
        "search svc.cluster.local cluster.local example.test",
        "options edns0 timeout:1 attempts:2",  # the previous timeout:2 gives way to svcops's
    ]


def test_resolv_conf_options_keep_the_previous_ones_but_svcops_decides_timeout_attempts_and_order():
    prev = "nameserver 10.0.0.1\noptions rotate timeout:5 ndots:3\noptions attempts:5 edns0 trust-ad\nsortlist 10.0.0.0/8\n"
    text = dns.render_resolv_conf(prev, LISTEN, "cluster.local")
    options = [ln for ln in text.splitlines() if ln.startswith("options")]
    # One line, the previous options in their order; rotate would start queries at the
    # next nameserver (cluster names NXDOMAIN there), so it goes.
    assert options == ["options ndots:3 edns0 trust-ad timeout:1 attempts:2"]
    assert "sortlist 10.0.0.0/8\n" in text
    assert dns.restore_resolv_conf(text) == prev


def test_resolv_conf_lists_at_most_three_nameservers_as_glibc_reads_them():
    prev = "nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n"
    text = dns.render_resolv_conf(prev, LISTEN, "cluster.local")
    assert [ln for ln in text.splitlines() if ln.startswith("nameserver")] == [
        f"nameserver {LISTEN}",
        "nameserver 10.0.0.1",
        "nameserver 10.0.0.2",
    ]
    # The server still forwards to all three.
    assert "+.=10.0.0.1;10.0.0.2;10.0.0.3\n" in site_files(upstreams=dns.parse_upstreams(text)).files[dns.FORWARD_FILE]
    # None before: glibc's default, the local one, named.
    assert "nameserver 127.0.0.1\n" in dns.render_resolv_conf("search a.test\n", LISTEN, "cluster.local")


def test_resolv_conf_keeps_the_previous_file_to_restore_and_to_forward_to():
    text = dns.render_resolv_conf(PREVIOUS_RESOLV, LISTEN, "cluster.local")
    assert dns.restore_resolv_conf(text) == PREVIOUS_RESOLV
    assert dns.parse_upstreams(text) == ["127.0.0.2"]
    assert dns.parse_upstreams(PREVIOUS_RESOLV) == ["127.0.0.2"]
    assert dns.restore_resolv_conf(PREVIOUS_RESOLV) == PREVIOUS_RESOLV


def test_resolv_conf_restores_byte_for_byte():
    for prev in ("nameserver 10.0.0.1", "nameserver 10.0.0.1\r\nsearch a.test\r\n", "\n\n#x \n\x0c\n", "nameserver 10.0.0.1\n\n"):
        text = dns.render_resolv_conf(prev, LISTEN, "cluster.local")
        assert dns.restore_resolv_conf(text) == prev, repr(prev)
        assert dns.render_resolv_conf(text, LISTEN, "cluster.local") == text


def test_resolv_conf_rendering_is_idempotent():
    once = dns.render_resolv_conf(PREVIOUS_RESOLV, LISTEN, "cluster.local")
    assert dns.render_resolv_conf(once, LISTEN, "cluster.local") == once


def test_resolv_conf_as_glibc_reads_it():
    # The last of search/domain wins; at most three nameservers; none means 127.0.0.1.
    prev = "domain a.test\nsearch b.test c.test\nnameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n"
    assert dns.parse_upstreams(prev) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert "search svc.cluster.local cluster.local b.test c.test\n" in dns.render_resolv_conf(prev, LISTEN, "cluster.local")
    assert "search svc.cluster.local cluster.local a.test\n" in dns.render_resolv_conf("domain a.test\n", LISTEN, "cluster.local")
    assert dns.parse_upstreams("") == ["127.0.0.1"]
    assert dns.parse_upstreams("nameserver 10.0.0.1 # the router\n; nameserver 10.0.0.9\n") == ["10.0.0.1"]
    assert "search svc.cluster.local cluster.local corp.test\n" in dns.render_resolv_conf(
        "nameserver 10.0.0.1\n", LISTEN, "cluster.local", default_search=["corp.test"]
    )


_words = st.text(alphabet="abcdefghij0123456789.-:", min_size=1, max_size=12)
_lines = st.one_of(
    st.builds(lambda w: f"nameserver {w}", _words),
    st.builds(lambda w: f"nameserver 10.0.0.{w}", st.integers(0, 255)),
    st.builds(lambda ws: "search " + " ".join(ws), st.lists(_words, min_size=1, max_size=4)),
    st.builds(lambda w: f"domain {w}", _words),
    st.builds(lambda ws: "options " + " ".join(ws), st.lists(st.one_of(_words, st.sampled_from(["rotate", "timeout:3", "attempts:4"])), min_size=1, max_size=3)),
    st.builds(lambda w: f"# {w}", _words),
    st.just(""),
    st.just(" \r"),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_lines, max_size=8), st.booleans())
def test_any_resolv_conf_round_trips(lines, final_newline):
    prev = "\n".join(lines) + ("\n" if final_newline and lines else "")
    once = dns.render_resolv_conf(prev, LISTEN, "cluster.local")
    assert dns.render_resolv_conf(once, LISTEN, "cluster.local") == once
    assert dns.restore_resolv_conf(once) == prev
    assert dns.parse_upstreams(once) == dns.parse_upstreams(prev)
    active = [ln for ln in once.split("\n") if ln and not ln.startswith("#")]
    # svcops's server first, its options last: whatever the previous file said.
    assert active[0] == f"nameserver {LISTEN}" and active[-1].endswith(" timeout:1 attempts:2")
    assert "rotate" not in active[-1].split()


# --- supervision, deadlines -------------------------------------------------------------


def test_the_supervision_file_follows_the_init_system_and_a_change_of_it_restarts_only_without_systemd():
    assert dns.SUPERVISOR in site_files().files and dns.DROPIN not in site_files().files
    assert dns.DROPIN in site_files(systemd=True).files and dns.SUPERVISOR not in site_files(systemd=True).files
    assert dns.dns_action([dns.SUPERVISOR]) == "restart"
    assert dns.dns_action([dns.DROPIN]) == "none"  # a daemon-reload: Restart= needs no restart


def test_the_drop_in_restarts_whatever_the_exit_and_bounds_a_stop():
    keys = dict(ln.split("=", 1) for ln in dns.dropin_text().splitlines() if "=" in ln and not ln.startswith("#"))
    assert keys == {"Restart": "always", "RestartSec": "1", "TimeoutStopSec": "5"}


@pytest.mark.skipif(not (shutil.which("systemd-analyze") and Path("/lib/systemd/system/pdns-recursor@.service").exists()),
                    reason="needs systemd-analyze and Debian's pdns-recursor unit")  # fmt: skip
def test_systemd_reads_the_drop_in_without_a_complaint(tmp_path):
    units = tmp_path / "units"
    dropin = units / Path(dns.DROPIN).relative_to("/etc/systemd/system")
    dropin.parent.mkdir(parents=True)
    shutil.copy("/lib/systemd/system/pdns-recursor@.service", units)
    dropin.write_text(dns.dropin_text())
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}
    r = subprocess.run(["systemd-analyze", "verify", dns.SERVICE_UNIT], capture_output=True, text=True, timeout=60, env=env, cwd=units)
    assert r.returncode == 0 and "svcops.conf" not in r.stderr, r.stderr
    # The check can fail: a misspelt key is reported.
    dropin.write_text(dns.dropin_text().replace("RestartSec", "RestartSecs"))
    r = subprocess.run(["systemd-analyze", "verify", dns.SERVICE_UNIT], capture_output=True, text=True, timeout=60, env=env, cwd=units)
    assert "svcops.conf" in r.stderr and "RestartSecs" in r.stderr


def test_every_command_that_talks_to_the_server_has_a_hard_deadline():
    assert dns.rec_control().startswith(f"timeout -k 1 {dns.PING_DEADLINE} rec_control ")
    assert dns.reload_command()[:4] == ["timeout", "-k", "1", "10"]
    assert dns.start_command(True)[:4] == ["timeout", "-k", "5", "30"]
    # Without systemd the start returns at once: the supervisor runs detached.
    assert dns.start_command(False) == ["setsid", "-f", "bash", dns.SUPERVISOR]


# --- the real server -------------------------------------------------------------------

OUTSIDE = "127.0.0.2"  # the stand-in for the outside world's DNS
QUERY = DNSQUERY


def _have_server() -> bool:
    return os.geteuid() == 0 and all(shutil.which(b) for b in ("ip", "unshare", "nsenter", "pdns_recursor", "rec_control"))


needs_server = pytest.mark.skipif(not _have_server(), reason="needs root, ip, unshare, nsenter and pdns-recursor")


def write_atomically(path: Path, text: str) -> None:
    """As the operations write a node's files: a temp file beside it, then rename."""
    tmp = path.with_name(f".{path.name}.svcops-tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Node:
    """A node's DNS in a throwaway network namespace: the stand-in outside server on
    127.0.0.2, and pdns-recursor with the rendered files at their real paths
    (/etc/powerdns bind-mounted from a temp folder, /run a private tmpfs)."""

    def __init__(self, tmp: Path, *records: str) -> None:
        self.ns = f"svcops-dnstest-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.etc = tmp / "powerdns"
        self.procs: list[subprocess.Popen] = []
        self.server: subprocess.Popen | None = None
        made = subprocess.run(["ip", "netns", "add", self.ns], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
        try:
            subprocess.run(["ip", "-n", self.ns, "link", "set", "lo", "up"], check=True)
            # A node has an address besides loopback, and getaddrinfo's AI_ADDRCONFIG
            # (getent ahosts) asks nothing without one. A veth pair inside the namespace:
            # nothing it carries leaves.
            subprocess.run(["ip", "-n", self.ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], check=True)
            subprocess.run(["ip", "-n", self.ns, "addr", "add", "10.0.0.11/24", "dev", "eth0"], check=True)
            subprocess.run(["ip", "-n", self.ns, "link", "set", "eth0", "up"], check=True)
            outside = self.spawn(
                [sys.executable, QUERY, "serve", OUTSIDE, "ext.example.test=203.0.113.9", "other.example.test=203.0.113.10", *records],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert outside.stdout.readline().strip() == "ready"
        except BaseException:
            self.close()
            raise

    def spawn(self, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **kw)
        self.procs.append(p)
        return p

    def write(self, files: dns.DnsFiles) -> None:
        for path, text in files.files.items():
            local = self.etc / Path(path).relative_to(dns.CONFIG_DIR)
            local.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(local, text)

    def start(self, listen: str = LISTEN) -> None:
        # ip netns exec, unshare and sh all exec: the Popen's pid is the server's.
        script = (
            f"mount --bind {self.etc} {dns.CONFIG_DIR} && mount -t tmpfs tmpfs /run && "
            f"mkdir -p {dns.SOCKET_DIR} && exec pdns_recursor --config-dir={dns.CONFIG_DIR} "
            f"--config-name={dns.INSTANCE} --daemon=no --disable-syslog"
        )
        self.server = self.spawn(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(50):  # bounded: ~10 s
            if self.ask(listen, "web.default.svc.cluster.local", timeout=0.2) is not None:
                return
            assert self.server.poll() is None, "pdns-recursor exited"
            time.sleep(0.1)
        raise AssertionError("pdns-recursor did not answer")

    def ask(self, server: str, name: str, rtype: str = "A", timeout: float = 2.0):
        """(rcode, answers) of one query from inside the namespace; None on a timeout."""
        r = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, QUERY, "ask", server, name, rtype, str(timeout)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return ast.literal_eval(r.stdout)

    def reload(self) -> str:
        """`dns.reload_command()`, run where the server runs (its mounts: /run, /etc/powerdns)."""
        r = subprocess.run(
            ["nsenter", f"--target={self.server.pid}", "--mount", "--net", *dns.reload_command()],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        return r.stdout

    def getent(self, resolv_conf: str, *argv: str, timeout: float = 30) -> str:
        """glibc's resolver with `resolv_conf` as /etc/resolv.conf (in a private mount);
        `timeout`: how long it may take before the test fails (TimeoutExpired)."""
        path = self.tmp / "resolv.conf"
        path.write_text(resolv_conf)
        r = subprocess.run(
            ["ip", "netns", "exec", self.ns, "unshare", "-m", "--propagation", "private", "sh", "-c",
             f'mount --bind {path} /etc/resolv.conf && exec getent "$@"', "getent", *argv],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        return r.stdout

    def close(self) -> None:
        for p in reversed(self.procs):
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    if not _have_server():
        pytest.skip("needs root, ip, unshare, nsenter and pdns-recursor")
    n = Node(tmp_path_factory.mktemp("dnsnode"))
    try:
        n.write(site_files(upstreams=(OUTSIDE,)))
        n.start()
        yield n
    finally:
        n.close()


@pytest.mark.root
@needs_server
def test_server_answers_a_cluster_ip_service(node):
    rcode, answers = node.ask(LISTEN, "web.default.svc.cluster.local")
    assert rcode == 0
    assert answers == [("web.default.svc.cluster.local.", "A", F.allocations(SERVICES).cluster_ips["default/web"])]


@pytest.mark.root
@needs_server
def test_server_answers_every_endpoint_of_a_headless_service(node):
    rcode, answers = node.ask(LISTEN, "db.default.svc.cluster.local")
    assert rcode == 0 and sorted(a[2] for a in answers) == ["10.0.0.11", "10.244.2.7"]
    _, srv = node.ask(LISTEN, "_http._tcp.db.default.svc.cluster.local", "SRV")
    assert sorted(a[2] for a in srv) == [
        "0 50 80 10-0-0-11.db.default.svc.cluster.local.",
        "0 50 8080 10-244-2-7.db.default.svc.cluster.local.",
    ]
    assert node.ask(LISTEN, "10-244-2-7.db.default.svc.cluster.local")[1] == [
        ("10-244-2-7.db.default.svc.cluster.local.", "A", "10.244.2.7")
    ]


@pytest.mark.root
@needs_server
def test_server_follows_an_external_name_to_the_outside_address(node):
    assert node.ask(LISTEN, "ext.default.svc.cluster.local") == (
        0,
        [("ext.default.svc.cluster.local.", "CNAME", "ext.example.test."), ("ext.example.test.", "A", "203.0.113.9")],
    )


@pytest.mark.root
@needs_server
def test_server_answers_srv_for_named_ports_tcp_and_udp(node):
    assert node.ask(LISTEN, "_metrics._tcp.web.default.svc.cluster.local", "SRV")[1] == [
        ("_metrics._tcp.web.default.svc.cluster.local.", "SRV", "0 100 9100 web.default.svc.cluster.local.")
    ]
    assert node.ask(LISTEN, "_dns._udp.dns.default.svc.cluster.local", "SRV")[1] == [
        ("_dns._udp.dns.default.svc.cluster.local.", "SRV", "0 100 53 dns.default.svc.cluster.local.")
    ]


@pytest.mark.root
@needs_server
def test_server_forwards_names_outside_the_cluster_domain(node):
    assert node.ask(LISTEN, "other.example.test") == (0, [("other.example.test.", "A", "203.0.113.10")])
    assert node.ask(LISTEN, "missing.example.test")[0] == 3  # the outside's own NXDOMAIN


@pytest.mark.root
@needs_server
def test_server_says_nxdomain_for_an_unknown_service(node):
    assert node.ask(LISTEN, "nope.default.svc.cluster.local") == (3, [])
    assert node.ask(LISTEN, "empty.default.svc.cluster.local") == (3, [])


@pytest.mark.root
@needs_server
def test_short_names_resolve_through_the_rendered_search_list(node):
    resolv = dns.render_resolv_conf(f"nameserver {OUTSIDE}\nsearch example.test\n", LISTEN, "cluster.local")
    web_ip = F.allocations(SERVICES).cluster_ips["default/web"]
    for name in ("web.default.svc.cluster.local", "web.default.svc", "web.default"):
        assert node.getent(resolv, "ahostsv4", name).split()[:1] == [web_ip], name
    assert node.getent(resolv, "hosts", "web.default.svc").split()[:1] == [web_ip]
    assert node.getent(resolv, "ahostsv4", "ext.default.svc").split()[:1] == ["203.0.113.9"]
    # The node's other names resolve as before: absolute, and through the old search list.
    assert node.getent(resolv, "ahostsv4", "other.example.test").split()[:1] == ["203.0.113.10"]
    assert node.getent(resolv, "ahostsv4", "other").split()[:1] == ["203.0.113.10"]
    assert node.getent(resolv, "ahostsv4", "nope.default.svc") == ""


@pytest.mark.root
@needs_server
def test_reload_changes_records_with_no_window_where_known_names_fail(node, tmp_path):
    """While a client asks all the time, the records change five times (files written to
    a temp file and renamed, then `rec_control reload-zones`). Every answer for a name
    that is in both versions is right; the changed name answers the old or the new
    value, and only the new one once the reload has returned."""
    web_ip = F.allocations(SERVICES).cluster_ips["default/web"]
    moved = ("10.96.0.200", "10.96.0.201")

    def version(i: int) -> dns.DnsFiles:
        moving = F.service("moving", HTTP, cluster_ip=moved[i % 2])
        return site_files(services=SERVICES + (moving,), upstreams=(OUTSIDE,))

    node.write(version(1))
    assert dns.reload_succeeded(node.reload())
    names = ["web.default.svc.cluster.local", "ext.default.svc.cluster.local", "other.example.test", "moving.default.svc.cluster.local"]
    log = tmp_path / "answers.log"
    with log.open("w") as out:  # a file, not a pipe: a full pipe would stall the client
        asker = node.spawn([sys.executable, QUERY, "loop", LISTEN, "20", "20000", *names], stdout=out, text=True)
    reloads: list[tuple[float, float, str]] = []  # (files written from, reload returned at, the new value)
    try:
        for _ in range(100):  # bounded: the client has started asking
            if log.read_text().startswith("ready"):
                break
            time.sleep(0.05)
        for i in range(2, 7):
            time.sleep(0.2)
            began = time.monotonic()
            node.write(version(i))
            out = node.reload()
            reloads.append((began, time.monotonic(), moved[i % 2]))
            assert dns.reload_succeeded(out), out
        time.sleep(0.2)
    finally:
        asker.kill()
        asker.wait()
    lines = log.read_text().splitlines()[1:]
    expected = {
        "web.default.svc.cluster.local": web_ip,
        "ext.default.svc.cluster.local": "203.0.113.9,ext.example.test.",
        "other.example.test": "203.0.113.10",
    }
    checked_after_reload = 0
    for line in lines:
        when, name, rcode, *value = line.split(" ")
        assert rcode == "0", f"{name} failed during the reloads: {line}"
        value = value[0] if value else ""
        if name in expected:
            assert value == expected[name], line
        else:
            assert value in moved, line
            sent = float(when)
            done = [v for _, end, v in reloads if end < sent]
            changing = any(began <= sent <= end for began, end, _ in reloads)
            if done and not changing:  # between two reloads: the last one's value only
                assert value == done[-1], line
                checked_after_reload += 1
    assert len(lines) > 200 and checked_after_reload > 20  # the loop really ran through the reloads


@pytest.mark.root
@needs_server
def test_glibc_with_the_rendered_resolv_conf_outlives_a_hung_and_a_dead_server(tmp_path):
    """The server SIGSTOPped, then SIGKILLed: glibc, with the rendered resolv.conf (from a
    previous file whose own options would have made it slower), still resolves outside
    names, and cluster names fail rather than hang. Each lookup's bound is its
    subprocess timeout (measured: 2 s stopped, no delay dead; glibc's defaults with
    svcops's server alone took 40 s and failed)."""
    # The outside server knows a name in the cluster domain that svcops's does not.
    n = Node(tmp_path, "nope.default.svc.cluster.local=198.51.100.7")
    try:
        n.write(site_files(upstreams=(OUTSIDE,)))
        n.start()
        resolv = dns.render_resolv_conf(f"nameserver {OUTSIDE}\noptions timeout:5 attempts:3 rotate\n", LISTEN, "cluster.local")
        web_ip = F.allocations(SERVICES).cluster_ips["default/web"]
        assert n.getent(resolv, "ahostsv4", "web.default.svc.cluster.local").split()[:1] == [web_ip]
        # While it answers, svcops's NXDOMAIN is final: glibc does not ask the next server.
        assert n.getent(resolv, "ahostsv4", "nope.default.svc.cluster.local") == ""
        os.kill(n.server.pid, signal.SIGSTOP)
        try:
            assert n.getent(resolv, "ahostsv4", "other.example.test", timeout=8).split()[:1] == ["203.0.113.10"]
            assert n.getent(resolv, "ahostsv4", "web.default.svc.cluster.local", timeout=8) == ""
            # The bound is one a resolv.conf naming svcops's server alone does not meet.
            with pytest.raises(subprocess.TimeoutExpired):
                n.getent(f"nameserver {LISTEN}\n", "ahostsv4", "other.example.test", timeout=8)
        finally:
            os.kill(n.server.pid, signal.SIGKILL)
            n.server.wait()
        assert n.getent(resolv, "ahostsv4", "other.example.test", timeout=8).split()[:1] == ["203.0.113.10"]
        assert n.getent(resolv, "ahostsv4", "web.default.svc.cluster.local", timeout=8) == ""
        # Dead, cluster names go to the next server: what it says is what the node gets.
        assert n.getent(resolv, "ahostsv4", "nope.default.svc.cluster.local", timeout=8).split()[:1] == ["198.51.100.7"]
    finally:
        n.close()
