"""End to end: a node's DNS server killed or hung, and the node's upstream silent (issue
10, "no torn nodes"), on a real 3-node lab through `svcops apply`, checked as a user
would on the node: getent through glibc, and the apply's own result.

What svcops builds for it (svcops/render/dns.py, "When the server dies or hangs"): the
node's resolv.conf lists svcops's server and then the previous nameservers with
`options timeout:1 attempts:2`; the server is supervised (in the lab, without systemd,
by svcops's supervisor script), restarted 1 s after it exits; the apply reads a hung
server as not answering within 4 s and replaces it.

The outside world is a stand-in DNS server on the lab's client (tests/dnsquery.py's
`serve`); before svcops, every node's resolv.conf names it, with options svcops must
override and no final newline (the exact file must come back). Each bound below is a
subprocess timeout: the point is that nothing hangs, not a speed. Processes this module
starts are ended by PID (the stand-in), or are svcops's own server (which the lab takes
down with it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from labkit import CLIENT, INVENTORY, NODES, SVCOPS, apply, lab_exec, make_site, results, run, sh
from waiting import wait_for

from svcops.render import dns

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab")]

PYTHON = "/usr/bin/python3"  # the machine's: the venv's interpreter does not run inside nodes
DNSQUERY = Path(__file__).resolve().parents[1] / "dnsquery.py"
OUTSIDE_NAME = "outside.example.test"
CLUSTER_NAME = "my-deploy.default.svc.cluster.local"  # the walkthrough's ClusterIP service
CLUSTER_IP = "10.1.11.83"
NODE = "node1"
# glibc's defaults would take 10 s a query here; the rendered options must win.
PREVIOUS = f"# before svcops\nnameserver {CLIENT}\nsearch lab.test\noptions rotate timeout:5 attempts:3"


def server_pid(host: str) -> int:
    out = sh(host, f"cat {dns.PID_FILE} 2>/dev/null; true").strip()
    return int(out) if out.isdigit() else 0


def alive(host: str, pid: int) -> bool:
    """`pid` runs (not a zombie) in `host`'s view."""
    return bool(pid) and sh(host, f"cat /proc/{pid}/cmdline 2>/dev/null | tr '\\0' ' '; true").strip() != ""


def lookup(name: str, seconds: float, database: str = "ahostsv4") -> str:
    """The first address getent gives for `name` on NODE ("" when none); the test fails
    (TimeoutExpired) when the lookup takes longer than `seconds`."""
    r = lab_exec(NODE, "getent", database, name, timeout=seconds)
    return (r.stdout.split() or [""])[0]


def timed_apply(site: Path, seconds: float):
    """`svcops apply -y`, which must end within `seconds` (else TimeoutExpired)."""
    return run([SVCOPS, "apply", "-i", INVENTORY, "-y", str(site)], timeout=seconds)


@pytest.fixture(scope="module")
def world(lab, tmp_path_factory):
    r = lab_exec("client", "sh", "-c", "cat > /tmp/dnsquery.py", input=DNSQUERY.read_text())
    assert r.returncode == 0, r.stderr
    out = sh("client", f"{PYTHON} /tmp/dnsquery.py serve {CLIENT} {OUTSIDE_NAME}={CLIENT} </dev/null >/tmp/outside.log 2>&1 & echo $!")
    stand_in = int(out.split()[-1])
    try:
        assert wait_for(lambda: "ready" in sh("client", "cat /tmp/outside.log"), 10)
        for node in NODES:
            r = lab_exec(node, "sh", "-c", f"cat > {dns.RESOLV_CONF}", input=PREVIOUS)
            assert r.returncode == 0, r.stderr
        site = make_site(tmp_path_factory.mktemp("dnsfaults"), {})
        r = apply(site)
        assert set(results(r).values()) == {"changed"}, r.stdout + r.stderr
        assert lookup(CLUSTER_NAME, 10) == CLUSTER_IP and lookup(OUTSIDE_NAME, 10) == CLIENT
        yield {"site": site, "stand_in": stand_in}
    finally:
        lab_exec("client", "kill", "-CONT", str(stand_in))
        lab_exec("client", "kill", str(stand_in))


def test_01_resolv_conf_names_svcops_server_first_then_the_previous_one_with_svcops_timeout(world):
    active = [ln for ln in sh(NODE, f"cat {dns.RESOLV_CONF}").splitlines() if ln and not ln.startswith("#")]
    assert active == [
        f"nameserver {dns.DEFAULT_LISTEN}",
        f"nameserver {CLIENT}",
        "search svc.cluster.local cluster.local lab.test",
        "options timeout:1 attempts:2",
    ]


def test_02_a_killed_server_costs_outside_names_nothing_and_its_supervisor_brings_it_back(world):
    first = server_pid(NODE)
    assert alive(NODE, first)
    sh(NODE, f"kill -KILL {first}")
    # Its port answers "unreachable": glibc goes on to the next nameserver at once.
    assert lookup(OUTSIDE_NAME, 3) == CLIENT
    # A cluster name meanwhile: quickly, NXDOMAIN from the outside server (or its answer,
    # when the supervisor was quicker still), not a hang.
    r = lab_exec(NODE, "getent", "ahostsv4", CLUSTER_NAME, timeout=3)
    assert r.returncode == 2 or r.stdout.split()[:1] == [CLUSTER_IP], r
    # The supervisor starts it again 1 s after it died (bounded here: 10 s).
    assert wait_for(lambda: lookup(CLUSTER_NAME, 5) == CLUSTER_IP, 10)
    assert server_pid(NODE) not in (0, first) and not alive(NODE, first)
    # Nothing left for an apply to do.
    assert set(results(apply(world["site"])).values()) == {"unchanged"}


def test_03_a_hung_server_still_lets_outside_names_resolve_and_the_apply_ends_and_replaces_it(world):
    hung = server_pid(NODE)
    sh(NODE, f"kill -STOP {hung}")
    try:
        # One query costs 1 s (timeout:1), then the next nameserver answers.
        assert lookup(OUTSIDE_NAME, 4) == CLIENT
        assert lookup(OUTSIDE_NAME, 10, "hosts") == CLIENT  # AAAA too, through the search list
        assert lab_exec(NODE, "getent", "ahostsv4", CLUSTER_NAME, timeout=10).returncode == 2
        # The dry run reads it as not answering (in bounded time too) and says so.
        dry = run([SVCOPS, "apply", "-i", INVENTORY, "--dry", str(world["site"])], timeout=30)
        assert f"dns: the server (pid {hung}) does not answer: kill it and start it again" in dry.stdout, dry.stdout
        # The apply: the fact reads it as not answering, the operation kills it and starts
        # it again; it must end (it hung for good before: rec_control ping).
        r = timed_apply(world["site"], 30)
        assert r.returncode == 0, r.stdout + r.stderr
        got = results(r)
        assert got[NODE] == "changed" and {got[n] for n in NODES if n != NODE} == {"unchanged"}, r.stdout
    finally:
        if alive(NODE, hung):
            lab_exec(NODE, "kill", "-KILL", str(hung))
    assert not alive(NODE, hung)
    assert lookup(CLUSTER_NAME, 5) == CLUSTER_IP
    assert alive(NODE, server_pid(NODE)) and server_pid(NODE) != hung


def test_04_an_apply_with_the_upstream_silent_still_ends_and_serves_a_new_name(world):
    site = world["site"]
    lab_exec("client", "kill", "-STOP", str(world["stand_in"]))  # silent: no answer, no "unreachable"
    try:
        (site / "services" / "more.yaml").write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: more, namespace: default}\n"
            "spec:\n  clusterIP: 10.1.53.40\n  selector: {app: web}\n  ports: [{port: 9000, targetPort: http}]\n"
        )
        r = timed_apply(site, 60)
        assert r.returncode == 0 and set(results(r).values()) == {"changed"}, r.stdout + r.stderr
        assert lookup("more.default.svc.cluster.local", 5) == "10.1.53.40"
    finally:
        lab_exec("client", "kill", "-CONT", str(world["stand_in"]))


def test_05_service_dns_off_gives_back_the_exact_previous_resolv_conf_and_stops_the_server(world):
    site = world["site"]
    pid = server_pid(NODE)
    cfg = site / "svcops.yaml"
    cfg.write_text(cfg.read_text() + "serviceDNS: false\n")
    r = apply(site)
    assert set(results(r).values()) == {"changed"}, r.stdout + r.stderr
    for node in NODES:
        # Byte for byte: the options svcops overrode, no final newline.
        assert sh(node, f"cat {dns.RESOLV_CONF}") == PREVIOUS, node
    assert not alive(NODE, pid)
    # Gone for good: the supervisor went with it, nothing starts it again.
    assert not wait_for(lambda: server_pid(NODE) and alive(NODE, server_pid(NODE)), 2.5)
    assert lookup(OUTSIDE_NAME, 10) == CLIENT
