"""End to end: service DNS and UDP conntrack cleanup on a real 3-node lab (issue 5's
scenarios), through `svcops apply`, checked as a user would on the nodes: getent, curl
by name, DNS queries, and UDP datagrams.

The outside world is a stand-in DNS server on the lab's client (tests/dnsquery.py's
`serve`, started here): before svcops is applied, every node's /etc/resolv.conf names
it, so it is the nodes' previous nameserver, where svcops forwards every name outside
the cluster domain. No query leaves the lab.

Processes this module starts on lab hosts (the stand-in, UDP echo backends, a UDP
client, a query loop) are recorded by PID and ended by PID; the lab itself goes down
when the module ends.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from labkit import ADDRESS, CLIENT, NODES, apply, backends, curl, lab_exec, make_site, results, sh
from waiting import wait_for

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab")]

PYTHON = "/usr/bin/python3"  # the machine's: the venv's interpreter does not run inside nodes
DNSQUERY = Path(__file__).resolve().parents[1] / "dnsquery.py"
SEARCH = "lab.test"
OUTSIDE_NAME = "outside.example.test"  # what the ExternalName points at, served by the client
OTHER_NAME = f"other.{SEARCH}"  # a name of the nodes' own domain, served by the client too
OTHER_IP = "192.168.36.99"  # an answer only: nothing is sent there
WEB_IP = "10.1.53.10"
ECHO_IP = "10.1.53.20"
ECHO_PORT = 7000
ALL = set(ADDRESS.values())
CLIENT_HOST = "client"  # the lab's client: the stand-in outside DNS server runs there

SERVICES = f"""\
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {WEB_IP}
  selector: {{app: web}}
  ports: [{{name: http, port: 8000, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-headless, namespace: default}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: ext, namespace: default}}
spec:
  type: ExternalName
  externalName: {OUTSIDE_NAME}
"""


def echo_service(endpoints: list[str]) -> str:
    """A UDP ClusterIP service with hand-written endpoints (the echo backends)."""
    addresses = ", ".join(f"{{ip: {ip}}}" for ip in endpoints)
    return f"""\
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: default}}
spec:
  clusterIP: {ECHO_IP}
  ports: [{{name: echo, port: {ECHO_PORT}, protocol: UDP, targetPort: {ECHO_PORT}}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: echo, namespace: default}}
subsets:
  - addresses: [{addresses}]
    ports: [{{name: echo, port: {ECHO_PORT}, protocol: UDP}}]
"""


# A UDP echo backend and a UDP client, stdlib only (they run with the nodes' python3).
UDP_TOOL = r'''
import socket, sys, time

def serve(address, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, int(port)))
    while True:
        data, peer = s.recvfrom(512)
        s.sendto(data + b" " + address.encode(), peer)

def client(address, port, seconds, limit, log):
    """A datagram every 100 ms from ONE source port, for at most `seconds` and `limit`
    datagrams; logs "<monotonic> sent <n>" and "<monotonic> got <n> <backend>"."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    out = open(log, "a", buffering=1)
    out.write(f"port {s.getsockname()[1]}\n")
    end = time.monotonic() + float(seconds)
    n = 0
    while time.monotonic() < end and n < int(limit):
        sent = time.monotonic()
        s.sendto(str(n).encode(), (address, int(port)))
        out.write(f"{sent} sent {n}\n")
        n += 1
        while True:
            left = sent + 0.1 - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, _ = s.recvfrom(512)
            except (socket.timeout, OSError):
                break
            out.write(f"{time.monotonic()} got {data.decode()}\n")

if __name__ == "__main__":
    {"serve": serve, "client": client}[sys.argv[1]](*sys.argv[2:])
'''


class Started:
    """Background processes on lab hosts, by (host, PID)."""

    def __init__(self) -> None:
        self.pids: list[tuple[str, int]] = []

    def start(self, host: str, command: str, log: str) -> int:
        out = sh(host, f"setsid {command} </dev/null >{log} 2>&1 & echo $!")
        pid = int(out.split()[-1])
        self.pids.append((host, pid))
        return pid

    def stop(self, host: str, pid: int) -> None:
        lab_exec(host, "kill", str(pid))
        self.pids.remove((host, pid))

    def stop_all(self) -> None:
        for host, pid in reversed(self.pids):
            lab_exec(host, "kill", str(pid))
        self.pids.clear()


def upload(host: str, path: str, text: str) -> None:
    r = lab_exec(host, "sh", "-c", f"cat > {path}", input=text)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def world(lab, tmp_path_factory):
    """The stand-in outside DNS server on the client, the nodes' previous resolv.conf
    naming it, and the site applied (DNS, the web services, the UDP echo service)."""
    procs = Started()
    try:
        upload(CLIENT_HOST, "/tmp/dnsquery.py", DNSQUERY.read_text())
        procs.start(
            CLIENT_HOST,
            f"{PYTHON} /tmp/dnsquery.py serve {CLIENT} {OUTSIDE_NAME}={CLIENT} {OTHER_NAME}={OTHER_IP}",
            "/tmp/outside-dns.log",
        )
        assert wait_for(lambda: "ready" in sh(CLIENT_HOST, "cat /tmp/outside-dns.log"), 10)
        before = {}
        for node in NODES:
            sh(node, f"printf 'nameserver {CLIENT}\\nsearch {SEARCH}\\n' > /etc/resolv.conf")
            upload(node, "/tmp/udp_tool.py", UDP_TOOL)
            upload(node, "/tmp/dnsquery.py", DNSQUERY.read_text())
            before[node] = {name: getent(node, "hosts", name) for name in (OTHER_NAME, "other")}
        assert before["node1"][OTHER_NAME].split()[:1] == [OTHER_IP], before
        tmp = tmp_path_factory.mktemp("dnslab")
        site = make_site(tmp, {"dns.yaml": SERVICES, "echo.yaml": echo_service(sorted(ALL))})
        r = apply(site)
        assert set(results(r).values()) == {"changed"}, r.stdout + r.stderr
        yield {"site": site, "before": before, "procs": procs}
    finally:
        procs.stop_all()



def getent(host: str, database: str, name: str) -> str:
    return lab_exec(host, "getent", database, name, timeout=30).stdout


def addresses(getent_output: str) -> set[str]:
    return {line.split()[0] for line in getent_output.splitlines() if line.strip()}


def pdns_pid(host: str) -> str:
    return sh(host, "cat /run/pdns-recursor-svcops/pdns_recursor-svcops.pid 2>/dev/null; true").strip()


def pdns_alive(host: str) -> bool:
    """Whether svcops's recursor runs on `host`: the process its PID file names is that
    recursor, in the node's network namespace (the lab's nodes share the machine's PIDs,
    and with pid_max 32768 a dead server's PID soon belongs to another process)."""
    pid = pdns_pid(host)
    if not pid.isdigit():
        return False
    check = (
        f"[ /proc/{pid}/ns/net -ef /proc/self/ns/net ] && "
        f"tr '\\0' ' ' < /proc/{pid}/cmdline | grep -q -- '--config-name=svcops'"
    )
    return lab_exec(host, "sh", "-c", check).returncode == 0


# --- DNS ---------------------------------------------------------------------------------


def test_01_a_service_name_gives_its_cluster_ip_on_every_node(world):
    for node in NODES:
        assert getent(node, "hosts", "web.default.svc.cluster.local").split()[:1] == [WEB_IP], node
        # The short forms, through the search list.
        assert getent(node, "hosts", "web.default.svc").split()[:1] == [WEB_IP], node
        assert getent(node, "hosts", "web.default").split()[:1] == [WEB_IP], node


def test_02_curl_by_name_reaches_every_backend(world):
    lines = curl("node1", "http://web.default.svc:8000/", 30)
    got = backends(lines)
    assert sum(got.values()) == 30, lines[:3]
    assert set(got) == ALL, got


def test_03_a_headless_name_gives_every_endpoint(world):
    assert addresses(getent("node2", "ahostsv4", "web-headless.default.svc.cluster.local")) == ALL


def test_04_external_name_resolves_through_a_cname_to_the_outside_name(world):
    out = getent("node3", "hosts", "ext.default.svc.cluster.local").split()
    # glibc: the address, the canonical name (the CNAME's target), then the alias asked for.
    assert out[:3] == [CLIENT, OUTSIDE_NAME, "ext.default.svc.cluster.local"], out
    assert getent("node3", "hosts", "ext.default.svc").split()[:1] == [CLIENT]


def test_05_names_outside_the_cluster_domain_resolve_as_before(world):
    for node in NODES:
        for name, was in world["before"][node].items():
            assert was and getent(node, "hosts", name) == was, (node, name)
        assert lab_exec(node, "getent", "hosts", "nope.default.svc.cluster.local").returncode == 2
    resolv = sh("node1", "cat /etc/resolv.conf")
    assert "nameserver 127.0.0.153\n" in resolv and f"#was: nameserver {CLIENT}\n" in resolv


def test_06_a_records_change_is_a_reload_with_no_failed_lookup_and_a_second_apply_is_a_no_op(world):
    site = world["site"]
    pids = {n: pdns_pid(n) for n in NODES}
    assert all(pids.values()), pids
    again = apply(site)
    assert set(results(again).values()) == {"unchanged"}, again.stdout
    # A query loop on node1 (bounded: 15 s, 30,000 queries) while the records change.
    procs: Started = world["procs"]
    loop = procs.start(
        "node1",
        f"{PYTHON} /tmp/dnsquery.py loop 127.0.0.153 15 30000 web.default.svc.cluster.local {OTHER_NAME}",
        "/tmp/dns-loop.log",
    )
    try:
        assert wait_for(lambda: sh("node1", "wc -l < /tmp/dns-loop.log").strip() not in ("", "0", "1"), 10)
        more = SERVICES + "---\napiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\nspec:\n  clusterIP: 10.1.53.30\n  selector: {app: web}\n  ports: [{port: 9000, targetPort: http}]\n"
        (site / "services" / "dns.yaml").write_text(more)
        t = time.monotonic()
        r = apply(site)
        took = time.monotonic() - t
        assert set(results(r).values()) == {"changed"}, r.stdout
        print(f"\nDNS change applied to {len(NODES)} nodes in {took:.2f} s")
        # Right after the apply, every node knows the new name.
        for node in NODES:
            assert getent(node, "hosts", "api.default.svc.cluster.local").split()[:1] == ["10.1.53.30"], node
        time.sleep(0.3)
    finally:
        procs.stop("node1", loop)
    lines = sh("node1", "cat /tmp/dns-loop.log").splitlines()[1:]
    assert len(lines) > 100, lines[:5]
    bad = [ln for ln in lines if not (ln.endswith(f" 0 {WEB_IP}") or ln.endswith(f" 0 {OTHER_IP}"))]
    assert not bad, bad[:5]
    # Reloaded, not restarted: the servers are the same processes.
    assert {n: pdns_pid(n) for n in NODES} == pids


# --- UDP conntrack -----------------------------------------------------------------------


def parse_client_log(text: str) -> tuple[list[tuple[float, int]], list[tuple[float, int, str]]]:
    sent, got = [], []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "sent":
            sent.append((float(parts[0]), int(parts[2])))
        elif len(parts) == 4 and parts[1] == "got":
            got.append((float(parts[0]), int(parts[2]), parts[3]))
    return sent, got


def test_07_udp_flows_to_a_removed_endpoint_move_to_a_live_one_within_a_second(world):
    procs: Started = world["procs"]
    site = world["site"]
    for node in NODES:
        procs.start(node, f"{PYTHON} /tmp/udp_tool.py serve {ADDRESS[node]} {ECHO_PORT}", f"/tmp/echo-{node}.log")
    log = "/tmp/udp-client.log"
    sh("node1", f"rm -f {log}")
    # From a node: the cluster IP is reachable there. Bounded: 60 s, 600 datagrams.
    client = procs.start("node1", f"{PYTHON} /tmp/udp_tool.py client {ECHO_IP} {ECHO_PORT} 60 600 {log}", "/dev/null")
    try:
        got = wait_for(lambda: len(parse_client_log(sh("node1", f"cat {log}"))[1]) >= 10, 15)
        assert got, sh("node1", f"cat {log}")[-500:]
        _, answers = parse_client_log(sh("node1", f"cat {log}"))
        sticky = {b for _, _, b in answers}
        assert len(sticky) == 1, f"one source port, one flow, one backend: {sticky}"
        gone = sticky.pop()
        # The endpoint the client sticks to leaves the site (its process keeps running:
        # only a stale conntrack entry could still send datagrams to it).
        (site / "services" / "echo.yaml").write_text(echo_service(sorted(ALL - {gone})))
        began = time.monotonic()
        r = apply(site)
        ended = time.monotonic()
        assert set(results(r).values()) == {"changed"}, r.stdout + r.stderr

        def live_answer():
            _, ans = parse_client_log(sh("node1", f"cat {log}"))
            return [(t, n, b) for t, n, b in ans if t > began and b != gone]

        first = wait_for(live_answer, 3)
        assert first, sh("node1", f"tail -n 20 {log}")
        sent, answers = parse_client_log(sh("node1", f"cat {log}"))
    finally:
        procs.stop("node1", client)
    t_first = first[0][0]
    print(
        f"\nUDP endpoint removed: first answer from a live backend {t_first - began:.2f} s after the apply began, "
        f"{t_first - ended:+.2f} s after it returned (apply {ended - began:.2f} s)"
    )
    assert t_first - ended <= 1.0
    assert first[0][2] in ALL - {gone}
    # No datagram sent after the apply was answered by the removed endpoint.
    sent_after = {n for t, n in sent if t > ended}
    assert sent_after, "the client stopped too early"
    assert not [a for a in answers if a[1] in sent_after and a[2] == gone]


def test_08_service_dns_off_gives_resolv_conf_back_and_on_again_serves_the_names(world):
    site = world["site"]
    cfg = site / "svcops.yaml"
    on = cfg.read_text()
    cfg.write_text(on + "serviceDNS: false\n")
    try:
        dry = apply(site, "--dry")
        assert "dns: - svcops's DNS server (serviceDNS: false)" in dry.stdout, dry.stdout
        r = apply(site)
        assert set(results(r).values()) == {"changed"}, r.stdout + r.stderr
        for node in NODES:
            # The node's own resolv.conf again, the server gone, names outside as before.
            assert sh(node, "cat /etc/resolv.conf") == f"nameserver {CLIENT}\nsearch {SEARCH}\n", node
            assert not pdns_alive(node), node
            assert lab_exec(node, "getent", "hosts", "web.default.svc.cluster.local").returncode == 2
            for name, was in world["before"][node].items():
                assert getent(node, "hosts", name) == was, (node, name)
        assert set(results(apply(site)).values()) == {"unchanged"}
    finally:
        cfg.write_text(on)
    r = apply(site)
    assert set(results(r).values()) == {"changed"}, r.stdout + r.stderr
    for node in NODES:
        assert getent(node, "hosts", "web.default.svc").split()[:1] == [WEB_IP], node
