"""Fault drills against the lab (issue 10): an operator's bad day, and what each node ends as.

Every drill moves the fleet from site A (the walkthrough) towards site B (A plus a
ClusterIP and a LoadBalancer service: new rules, boot files, DNS records and a new
address on one node) and interferes: svcops killed (SIGKILL) or interrupted (Ctrl-C)
at several points, a second apply of another site at the same time, a node cut off
after the connection was made, a node held by someone else, a step that fails on one
node. What each node ends as is read from the node itself (`snapshot`: svcops's rules,
every file svcops writes, the DNS files, resolv.conf, the node's addresses) and must be
exactly A's or exactly B's, never a mix; the guard must be gone; and a later apply must
never be undone by an earlier one. Both proxy modes where the rules matter.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time

import labkit
import pytest
from labkit import INVENTORY, NODES, SVCOPS, apply, make_site, mode_fixture, results, sh, ssh_ok

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab")]

EXTRA = {
    "extra.yaml": (
        "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: default}\n"
        "spec:\n  clusterIP: 10.1.200.30\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n"
        "---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: extra-lb, namespace: default}\n"
        "spec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{name: http, port: 8080, targetPort: http}]\n"
    )
}
OTHER = {
    "other.yaml": (
        "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: default}\n"
        "spec:\n  clusterIP: 10.1.200.40\n  selector: {app: web}\n  ports: [{name: http, port: 81, targetPort: http}]\n"
    )
}

# Everything svcops changes on a node, as text: rules, files, DNS, addresses; plus what
# it leaves in its run folder (which must be nothing once an apply is over).
_SNAPSHOT = r"""
if [ "$1" = nftables ]; then nft list table ip svcops 2>/dev/null | sed 's/ expires [0-9a-z]*//';
else iptables-save | grep SVCOPS- ; fi
echo '--- files'
for f in /etc/svcops/* /etc/svcops/nft.d/* /etc/svcops/iptables.d/* /etc/systemd/system/svcops-rules.service /etc/sysctl.d/90-svcops.conf \
         /etc/network/interfaces.d/svcops /etc/powerdns/recursor-svcops.conf /etc/powerdns/svcops/* /etc/resolv.conf; do
    [ -e "$f" ] && echo "$(sha256sum < "$f" | cut -c1-16) $f"
done
readlink /etc/systemd/system/multi-user.target.wants/svcops-rules.service
echo '--- addresses'
ip -4 -o addr show | awk '{print $2, $4}' | sort
"""


def _nft_normal(text: str) -> str:
    """nft prints map elements in the order they went in: sorted, one a line, so that the
    same table built two ways reads the same (rules keep their order inside a chain)."""
    head, _, rest = text.partition("--- files")
    lines = []
    for line in head.splitlines():
        line = line.strip().removeprefix("elements = { ").removesuffix(" }").removesuffix(",")
        if line:
            lines.append(line)
    return "\n".join(sorted(lines)) + "\n--- files" + rest


def snapshot(node: str) -> str:
    text = sh(node, _SNAPSHOT.replace("$1", labkit.MODE["proxyMode"]))
    return _nft_normal(text) if labkit.MODE["proxyMode"] == "nftables" else text


def leftovers(node: str) -> str:
    """svcops's run folder beyond its lock file: a guard or transaction still there."""
    return sh(node, "ls /run/svcops 2>/dev/null | grep -v -e '^node.lock$' -e '^undo-.*log$' || true").strip()


def settle(seconds: float = 20) -> None:
    """Wait (bounded) until no node has a guard or transaction left."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not any(leftovers(n) for n in NODES):
            return
        time.sleep(0.2)
    raise AssertionError({n: leftovers(n) for n in NODES})


proxy_mode = mode_fixture()  # every test once per proxy mode (labkit.make_site's mode)


@pytest.fixture(scope="module")
def sites(proxy_mode, tmp_path_factory):
    """Site A and site B, and each node's snapshot under each; the fleet left on A."""
    tmp = tmp_path_factory.mktemp(f"faults-{proxy_mode}")
    a = make_site(tmp / "a", {})
    b = make_site(tmp / "b", EXTRA)
    c = make_site(tmp / "c", OTHER)
    snaps = {}
    for name, site in (("B", b), ("C", c), ("A", a)):
        apply(site, "--rollback-after", "5")
        snaps[name] = {n: snapshot(n) for n in NODES}
    assert snaps["A"] != snaps["B"] and snaps["A"] != snaps["C"]
    return {"A": a, "B": b, "C": c, "snap": snaps}


@pytest.fixture
def on_a(sites):
    """The fleet on site A before the drill, and no guard anywhere."""
    settle()
    if any(snapshot(n) != sites["snap"]["A"][n] for n in NODES):
        apply(sites["A"], "--rollback-after", "5")
    assert {n: snapshot(n) for n in NODES} == sites["snap"]["A"]
    return sites


def start(site, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [SVCOPS, "apply", "-i", INVENTORY, "-y", "--rollback-after", "5", *extra, str(site)],
        cwd=labkit.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip


def read_until(p: subprocess.Popen, needle: str, seconds: float = 60) -> str:
    """The apply's output up to the first line holding `needle` (bounded in time)."""
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        ready, _, _ = select.select([p.stdout], [], [], 0.5)
        if ready:
            line = p.stdout.readline()
            if not line:
                break
            out.append(line)
            if needle in line:
                return "".join(out)
    p.kill()
    raise AssertionError(f"{needle!r} never appeared:\n{''.join(out)}")


def whole(sites, node: str) -> str:
    """'A' or 'B': which site the node wholly holds (fails on a mix)."""
    snap = snapshot(node)
    for name in ("A", "B", "C"):
        if snap == sites["snap"][name][node]:
            return name
    import difflib

    diffs = {
        name: "".join(difflib.unified_diff(sites["snap"][name][node].splitlines(True), snap.splitlines(True), name, "now", n=1))
        for name in ("A", "B")
    }
    logs = sh(node, "cat /run/svcops/undo-*.log 2>/dev/null; true")
    raise AssertionError(f"{node} is neither wholly old nor wholly new (undo logs: {logs!r}):\n--- against A:\n{diffs['A']}\n--- against B:\n{diffs['B']}")


@pytest.mark.parametrize("point", ["svcops | iptables rules", "svcops | persisted files", "svcops | service dns", "svcops | commit"])
def test_01_killed_anywhere_each_node_is_wholly_old_at_once_and_the_next_apply_is_never_undone(on_a, proxy_mode, point):
    p = start(on_a["B"])
    read_until(p, point if proxy_mode == "iptables" or "iptables" not in point else "svcops | nftables table")
    p.kill()  # SIGKILL: no cleanup of any kind on the controller
    p.wait(10)
    settle()  # every guard saw the end of its connection and finished
    ends = {n: whole(on_a, n) for n in NODES}
    assert set(ends.values()) <= {"A", "B"}
    # The next apply gets every node (no lock left behind) and brings it wholly to B...
    r = apply(on_a["B"], "--rollback-after", "5")
    assert set(results(r).values()) <= {"changed", "unchanged"}, r.stdout
    assert {n: whole(on_a, n) for n in NODES} == {n: "B" for n in NODES}
    # ...and nothing of the killed apply undoes it later (its rollback time is 5 s).
    time.sleep(7)
    assert {n: whole(on_a, n) for n in NODES} == {n: "B" for n in NODES}


@pytest.mark.parametrize("point", ["svcops | iptables rules", "svcops | service dns"])
def test_02_ctrl_c_says_which_nodes_finished_and_which_rolled_back(on_a, proxy_mode, point):
    p = start(on_a["B"])
    read_until(p, point if proxy_mode == "iptables" or "iptables" not in point else "svcops | nftables table")
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert "Traceback" not in out and "greenlet" not in out, out
    assert "svcops apply: interrupted" in out, out
    status = {}
    for line in out.splitlines():
        for n in NODES:
            if line.startswith(f"  {n}: "):
                status[n] = line.split(": ", 1)[1].split()[0]
    assert set(status) == set(NODES), out
    settle()
    for n in NODES:
        expected = "B" if status[n] in ("changed", "unchanged") else "A"
        assert status[n] in ("changed", "unchanged", "rolled-back", "skipped"), out
        assert whole(on_a, n) == expected, (n, status[n], out)


def test_03_two_applies_of_different_sites_at_once_leave_each_node_wholly_one_site(on_a):
    p1, p2 = start(on_a["B"]), start(on_a["C"])
    out1, _ = p1.communicate(timeout=120)
    out2, _ = p2.communicate(timeout=120)
    assert p1.returncode == 0, out1
    assert p2.returncode == 0, out2
    settle()
    ends = {n: whole(on_a, n) for n in NODES}
    assert set(ends.values()) <= {"B", "C"}, ends
    # One of them waited for the other on every node (the lock), and said whom it waited for? No
    # need: both finished; the one that went second on a node reports it changed.
    for out in (out1, out2):
        assert "CHAIN_DEL" not in out and "Device or resource busy" not in out, out


def test_04_a_node_held_by_someone_else_fails_naming_the_holder_and_is_left_as_it_was(on_a):
    pid = sh(
        "node2",
        "mkdir -p /run/svcops && echo 'alice@ops pid 4242 (svcops apply by hand)' > /run/svcops/holder && "
        "setsid flock /run/svcops/node.lock sleep 30 >/dev/null 2>&1 < /dev/null & echo $!",
    ).strip()
    try:
        time.sleep(0.3)
        r = apply(on_a["B"], "--rollback-after", "5", "--lock-timeout", "2", check=False)
        assert r.returncode == 1
        assert results(r) == {"node1": "changed", "node2": "failed", "node3": "changed"}, r.stdout
        assert "alice@ops pid 4242" in r.stdout, r.stdout
        assert whole(on_a, "node2") == "A"
        assert whole(on_a, "node1") == whole(on_a, "node3") == "B"
    finally:
        # setsid made it a group leader: the group is flock and its sleep.
        sh("node2", f"kill -- -{int(pid)} 2>/dev/null; rm -f /run/svcops/holder; true")


def test_05_a_step_that_fails_late_undoes_the_whole_node(on_a, proxy_mode):
    # The record (written by the rules operation after its load or restore) cannot be
    # written on node3: its folder's name is taken by a file. In nftables mode the table
    # is loaded when the step fails; iptables mode's one step checks its files before
    # its restore (tests/operations/test_op_iptables_step.py fails it after).
    d = "/etc/svcops/nft.d" if proxy_mode == "nftables" else "/etc/svcops/iptables.d"
    late = "nftables table" if proxy_mode == "nftables" else "iptables rules"
    block, unblock = f"mv {d} {d}.saved && touch {d}", f"rm -f {d} && mv {d}.saved {d}"
    sh("node3", block)
    try:
        r = apply(on_a["B"], "--rollback-after", "5", check=False)
        settle()
    finally:
        sh("node3", unblock)
    assert r.returncode == 1
    assert results(r) == {"node1": "changed", "node2": "changed", "node3": "failed"}, r.stdout
    assert f"{late} failed; rolled back" in r.stdout, r.stdout
    assert whole(on_a, "node3") == "A"
    assert whole(on_a, "node1") == whole(on_a, "node2") == "B"
    r = apply(on_a["B"], "--rollback-after", "5")
    assert results(r)["node3"] == "changed"
    assert whole(on_a, "node3") == "B"


# Where node1 is cut off: once its guard holds it, after each of its later operations
# (the next one then stalls mid-command or mid-upload), and the instant its commit
# through a fresh login has landed (its answer may be lost).
CUT_POINTS = ["begin", "iptables rules", "persisted files", "service dns", "committed"]


@pytest.mark.parametrize("point", CUT_POINTS)
def test_06_a_node_cut_off_midway_is_reported_truly_and_ends_wholly_old_or_new(on_a, proxy_mode, point):
    # Port 22 dropped both ways on node1: its connections hang, nothing closes them. The
    # shell that cuts is started first and waits for a line (a `svcops lab exec` started
    # then takes longer than the rest of node1's apply), so the cut lands within
    # milliseconds of the point; "committed" polls for the commit's mark instead.
    cut = "iptables -I INPUT -p tcp --dport 22 -j DROP && iptables -I OUTPUT -p tcp --sport 22 -j DROP"
    wait = "i=0; until ls /run/svcops/txn.*/committed >/dev/null 2>&1 || [ $i -gt 6000 ]; do i=$((i+1)); sleep 0.01; done; " if point == "committed" else ""
    cutter = subprocess.Popen(
        [SVCOPS, "lab", "exec", "node1", "--", "sh", "-c", f"echo armed; read go && {wait}{cut} && echo cut"],
        cwd=labkit.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert cutter.stdout.readline().strip() == "armed"
        p = start(on_a["B"], "--node-timeout", "3")
        line = {"iptables rules": "nftables table" if proxy_mode == "nftables" else point, "committed": "begin"}.get(point, point)
        read_until(p, f"[node1] svcops | {line}")
        cutter.stdin.write("go\n")
        cutter.stdin.flush()
        assert cutter.communicate(timeout=90)[0].strip() == "cut"
        started = time.monotonic()
        out, _ = p.communicate(timeout=90)
        took = time.monotonic() - started
        st = {}
        for row in out.splitlines():
            for n in NODES:
                if row.startswith(f"  {n}: "):
                    st[n] = row.split(": ", 1)[1]
        print(f"\nnode1 cut at {point}: {st.get('node1')} (the apply ended {took:.1f} s after the cut)")
        assert st["node2"].startswith("changed") and st["node3"].startswith("changed"), out
        assert took < 30, f"the apply took {took:.0f} s after the cut (--node-timeout 3):\n{out}"
        # node1's guard hears nothing more: within --rollback-after (5 s) it ends.
        end = time.monotonic() + 20
        while time.monotonic() < end and leftovers("node1"):
            time.sleep(0.5)
        assert not leftovers("node1"), sh("node1", "ls -la /run/svcops; ps -eo pid,ppid,etimes,args | grep -e flock -e svcops -e 'sh -'")
    finally:
        if cutter.poll() is None:
            cutter.kill()
            cutter.wait(10)
        sh("node1", "iptables -D INPUT -p tcp --dport 22 -j DROP; iptables -D OUTPUT -p tcp --sport 22 -j DROP; true")
    # What the apply said of node1 is what node1 is: changed means new; unreachable means
    # old, unless it said the commit was sent and its answer lost (then either, whole).
    ends = whole(on_a, "node1")
    if st["node1"].startswith("changed"):
        assert ends == "B", out
    else:
        assert p.returncode == 1 and st["node1"].startswith("unreachable"), out
        assert "has not answered" in out, out
        assert ends == "A" or "the commit was sent" in st["node1"], (ends, out)
    if point == "begin":
        assert ends == "A" and st["node1"].startswith("unreachable"), out
    if point == "committed":
        assert ends == "B", out
    assert whole(on_a, "node2") == whole(on_a, "node3") == "B"
    assert ssh_ok("node1")
    r = apply(on_a["B"], "--rollback-after", "5")
    assert results(r)["node1"] in ("changed", "unchanged")
    assert whole(on_a, "node1") == "B"


def test_07_the_pyinfra_path_killed_midway_leaves_every_node_wholly_old(on_a):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(
        [labkit.PYINFRA, "-y", "--data", f"svcops_site={on_a['B']}", INVENTORY, "deploys/services.py"],
        cwd=labkit.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    read_until(p, "svcops | persisted files")
    p.kill()
    p.wait(10)
    settle()
    assert {n: whole(on_a, n) for n in NODES} == {n: "A" for n in NODES}


def test_08_a_rule_operation_used_on_its_own_is_its_own_transaction(on_a, tmp_path):
    # A user's own deploy.py with svcops's rule operation alone: it takes the node's lock
    # (a held node makes it fail, unchanged) and commits through a fresh login.
    deploy = tmp_path / "deploy.py"
    op = "nftables.rules(name='my rules', rules=out.nftables)" if labkit.MODE["proxyMode"] == "nftables" else "iptables.rules(name='my rules', rules=out.iptables)"
    deploy.write_text(
        "from pyinfra import host\nfrom svcops.deploy import compiled_site\nfrom svcops.operations import iptables, nftables\n"
        f"out = compiled_site().node(host.name).output\n{op}\n"
    )
    pid = sh("node2", "mkdir -p /run/svcops && setsid flock /run/svcops/node.lock sleep 60 >/dev/null 2>&1 < /dev/null & echo $!").strip()
    try:
        r = labkit.run([labkit.PYINFRA, "-y", "--data", f"svcops_site={on_a['B']}", INVENTORY, str(deploy)], timeout=200)
        assert "node is being changed by another apply" in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        sh("node2", f"kill -- -{int(pid)} 2>/dev/null; true")
    settle()
    b_rules = {n: [ln for ln in on_a["snap"]["B"][n].split("--- files")[0].splitlines()] for n in NODES}
    for n in ("node1", "node3"):
        assert snapshot(n).split("--- files")[0].splitlines() == b_rules[n], n
    assert whole(on_a, "node2") == "A"
