"""The lab (`svcops lab up|down|status|exec`, inventory/lab.py), checked as a user would.

The end-to-end part needs root and brings one 3-node lab up for the whole module (in a
temporary lab folder, $SVCOPS_LAB_DIR), and takes it down again even when a test fails.
It never touches a lab that is already up on the machine: it skips instead. All traffic
goes to the lab's own addresses (192.168.36.0/24, inside namespaces it made) or to
127.0.0.1, with bounded time-outs.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest
from paths import ROOT

from svcops.lab import plan
from svcops.lab.backend import Handler, Server

INVENTORY = ROOT / "inventory" / "lab.py"
NODES = 3
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def lab_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `svcops lab ARGS` (through the lab's own CLI entry) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "svcops.lab.cli", "lab", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )


# --- without root: the plan, the backend, the checks ----------------------------------


def test_hosts_and_addresses_follow_the_fixed_segment():
    hosts = plan.lab_hosts(5)
    assert [h.name for h in hosts] == ["client", "node1", "node2", "node3", "node4", "node5"]
    segment = plan.SUBNET.rsplit(".", 1)[0]
    for h in hosts[1:]:
        assert h.address == f"{segment}.{10 + h.index}"
        assert plan.host_from_name(h.name) == h
        assert h.netns.startswith(plan.NAME_PREFIX)
    assert hosts[0].address == plan.CLIENT_ADDRESS
    assert len({h.address for h in hosts} | {plan.GATEWAY}) == len(hosts) + 1
    # The last node still lies below the example site's load-balancer pool (.240/28).
    last = plan.lab_hosts(plan.MAX_NODES)[-1]
    assert int(last.address.rsplit(".", 1)[1]) < 240
    assert plan.check_node_count(plan.MAX_NODES + 1) and plan.check_node_count(0)
    assert plan.host_from_name("node0") is None and plan.host_from_name("nodeX") is None


def test_inventory_data_uses_only_keys_pyinfra_ssh_knows():
    from pyinfra.connectors.ssh import connector_data_meta

    data = plan.inventory_data(plan.lab_hosts(1)[1], plan.LabPaths("/x"))
    ssh_keys = {k for k in data if k.startswith("ssh_")}
    assert ssh_keys <= set(connector_data_meta), ssh_keys - set(connector_data_meta)
    assert data["ssh_strict_host_key_checking"] == "yes"
    assert data["svcops_workloads"][0]["labels"] == {"app": "web"}
    assert data["svcops_workloads"][0]["ports"] == [{"name": "http", "port": 80}]


def test_inventory_data_is_valid_svcops_host_data():
    import json

    import jsonschema

    schema = json.loads((ROOT / "schemas" / "hostdata.schema.json").read_text())
    for host in plan.lab_hosts(3)[1:]:
        data = plan.inventory_data(host, plan.LabPaths("/run/svcops-lab"))
        svcops_keys = {k: v for k, v in data.items() if k.startswith("svcops_")}
        jsonschema.validate({**svcops_keys, "svcops_site": "/x/examples/walkthrough"}, schema)
        assert svcops_keys["svcops_labels"]["kubernetes.io/hostname"] == host.name


def test_boot_script_drops_namespace_mounts_before_anything_else_is_mounted():
    host = plan.lab_hosts(1)[1]
    script = plan.boot_script(host, plan.LabPaths("/run/svcops-lab"), backend_script="/b.py")
    lines = script.splitlines()
    first_mount = next(i for i, ln in enumerate(lines) if ln.startswith("mount "))
    assert any("umount -l /run/netns" in ln for ln in lines[:first_mount])
    # The backend source is opened before /tmp and /run are covered by tmpfs.
    opened = next(i for i, ln in enumerate(lines) if ln.startswith("exec 4<"))
    assert opened < next(i for i, ln in enumerate(lines) if " /run" in ln and ln.startswith("mount -t tmpfs"))
    # The node's sshd and backend listen on its own address only.
    assert f"ListenAddress {host.address}:22" in plan.sshd_config(host)
    assert f"--address {host.address}" in script


def test_backend_answers_with_its_address_and_the_client_it_saw():
    server = Server(("127.0.0.1", 0), type("H", (Handler,), {"backend_address": "127.0.0.1"}))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/any/path", timeout=2) as r:
            assert r.status == 200
            assert r.read().decode() == "backend=127.0.0.1 client=127.0.0.1\n"
    finally:
        server.shutdown()
        server.server_close()


def test_not_root_and_missing_tools_are_clear_errors(monkeypatch):
    from svcops.lab import shell

    monkeypatch.setattr(shell.os, "geteuid", lambda: 1000)
    with pytest.raises(shell.LabError, match="needs root"):
        shell.preflight()
    monkeypatch.setattr(shell.os, "geteuid", lambda: 0)
    real_which = shell.shutil.which
    monkeypatch.setattr(shell.shutil, "which", lambda t: None if t in ("nft", "nsenter") else real_which(t))
    with pytest.raises(shell.LabError) as err:
        shell.preflight()
    assert "apt-get install" in str(err.value)
    assert "nftables" in str(err.value) and "util-linux" in str(err.value)


def test_cli_help_and_bad_node_count():
    out = lab_cli("--help")
    assert out.returncode == 0 and "svcops lab up --nodes 20" in out.stdout
    bad = lab_cli("up", "--nodes", "0")
    assert bad.returncode != 0 and "--nodes must be between 1" in bad.stderr


# --- with root: a real 3-node lab -----------------------------------------------------


def _snapshot() -> dict:
    """What a user would compare before and after: the lab's namespaces, links and mounts
    (anything named svl-* or under a lab folder; other tests may add their own meanwhile),
    and the /etc files a node overrides."""
    def etc_digest() -> str:
        h = hashlib.sha256()
        for rel in ("hostname", "hosts", "machine-id"):
            p = Path("/etc", rel)
            h.update(rel.encode() + (p.read_bytes() if p.exists() else b"-"))
        for p in sorted(Path("/etc/ssh").iterdir()):
            h.update(p.name.encode() + (p.read_bytes() if p.is_file() else b"dir"))
        return h.hexdigest()

    def ours(name: str) -> bool:
        return plan.NAME_PREFIX in name or "svcops-lab" in name or os.environ.get(plan.DIR_ENV, "//") in name

    return {
        "netns": sorted(n for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else []) if ours(n)),
        "links": sorted(n for n in os.listdir("/sys/class/net") if ours(n)),
        "mounts": sorted(m for m in Path("/proc/mounts").read_text().splitlines() if ours(m)),
        "etc": etc_digest(),
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A 3-node lab for the module; down at the end whatever happened."""
    if not IS_ROOT:
        pytest.skip("needs root (network namespaces, mounts, sshd)")
    if os.path.exists(f"/run/netns/{plan.LAB_NETNS}") or os.path.exists(f"/sys/class/net/{plan.HOST_LINK}"):
        pytest.skip("a lab is already up on this machine; not touching it")
    lab_dir = tmp_path_factory.mktemp("lab")
    old = os.environ.get(plan.DIR_ENV)
    os.environ[plan.DIR_ENV] = str(lab_dir)
    before = _snapshot()
    try:
        out = lab_cli("up", "--nodes", str(NODES))
        assert out.returncode == 0, out.stderr
        from svcops.lab.state import lab_paths, read_state

        state = read_state(lab_paths())
        yield {"dir": lab_dir, "before": before, "state": state, "up": out}
    finally:
        lab_cli("down")
        if old is None:
            os.environ.pop(plan.DIR_ENV, None)
        else:
            os.environ[plan.DIR_ENV] = old


def _nodes(state: dict) -> list[tuple[str, str]]:
    return [(n, state["hosts"][n]["address"]) for n in state["nodes"]]


def _ssh(state: dict, address: str, command: str, known_hosts: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts or state['known_hosts']}", "-o", "IdentitiesOnly=yes",
            "-o", "ConnectTimeout=5", "-i", state["key"], f"root@{address}", command,
        ],
        capture_output=True, text=True, timeout=30,
    )


@pytest.mark.root
@pytest.mark.slow
def test_every_node_answers_ssh_with_the_lab_key_and_strict_host_keys(lab, tmp_path):
    state = lab["state"]
    assert [n for n, _ in _nodes(state)] == [f"node{k}" for k in range(1, NODES + 1)]
    for name, address in _nodes(state):
        out = _ssh(state, address, "hostname")
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == name
    # Strict for real: a known_hosts without the node's key is refused.
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    refused = _ssh(state, _nodes(state)[0][1], "hostname", known_hosts=str(empty))
    assert refused.returncode != 0 and "verification failed" in refused.stderr.lower()


@pytest.mark.root
@pytest.mark.slow
def test_each_node_has_its_own_hostname_etc_and_a_clean_root(lab):
    state = lab["state"]
    marker = f"svcops-lab-test-{uuid.uuid4().hex[:8]}"
    (n1, a1), (n2, a2) = _nodes(state)[:2]
    wrote = _ssh(state, a1, f"echo {n1} > /etc/{marker} && cat /etc/hostname && hostname")
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout.split() == [n1, n1]
    assert lab_cli("exec", n1, "--", "test", "-f", f"/etc/{marker}").returncode == 0
    assert lab_cli("exec", n2, "--", "test", "-f", f"/etc/{marker}").returncode == 1
    assert not Path("/etc", marker).exists()
    # /root holds no shell start-up files of the machine's; /run and /tmp are the node's own.
    listing = _ssh(state, a2, "ls -A /root; echo --; hostname; findmnt -n -o FSTYPE /tmp; findmnt -n -o FSTYPE /run")
    root_files, rest = listing.stdout.split("--\n")
    assert root_files.split() == []
    assert rest.split() == [n2, "tmpfs", "tmpfs"]


@pytest.mark.root
@pytest.mark.slow
def test_nodes_resolve_through_the_lab_only(lab):
    # The machine's resolv.conf names servers outside the lab; a node must not inherit
    # them (svcops's DNS forwards to the node's nameservers), so it names the client.
    for name, _ in _nodes(lab["state"]):
        out = lab_cli("exec", name, "--", "cat", "/etc/resolv.conf")
        assert out.stdout.split() == ["nameserver", "192.168.36.2"], out.stdout


@pytest.mark.root
@pytest.mark.slow
def test_client_reaches_every_backend_which_sees_the_client_address(lab):
    for name, address in _nodes(lab["state"]):
        out = lab_cli("exec", "client", "--", "curl", "-s", "--max-time", "2", f"http://{address}/")
        assert out.returncode == 0, out.stderr
        assert out.stdout == f"backend={address} client={plan.CLIENT_ADDRESS}\n"


@pytest.mark.root
@pytest.mark.slow
def test_exec_returns_the_commands_status_and_runs_in_the_hosts_namespaces(lab):
    assert lab_cli("exec", "node2", "--", "sh", "-c", "exit 7").returncode == 7
    out = lab_cli("exec", "client", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert f"{plan.CLIENT_ADDRESS}/24" in out.stdout
    missing = lab_cli("exec", "node9", "--", "true")
    assert missing.returncode == 1 and "no host 'node9'" in missing.stderr


@pytest.mark.root
@pytest.mark.slow
def test_inventory_lists_exactly_the_nodes(lab):
    from pyinfra.api import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    with ctx_state.use(State()):  # pyinfra's own loader, as `pyinfra inventory/lab.py ...` runs it
        inventory = make_inventory(str(INVENTORY))
    hosts = {h.name: h for h in inventory}
    assert sorted(hosts) == [f"node{k}" for k in range(1, NODES + 1)]
    known = Path(lab["state"]["known_hosts"]).read_text()
    for name, host in hosts.items():
        data = host.data
        address = lab["state"]["hosts"][name]["address"]
        assert data.ssh_hostname == data.svcops_address == address
        assert data.ssh_user == "root" and data.ssh_strict_host_key_checking == "yes"
        assert Path(data.ssh_key).is_file() and data.ssh_known_hosts_file == lab["state"]["known_hosts"]
        assert re.search(rf"^{re.escape(address)}[, ]", known, re.M)
        assert data.svcops_interface == "eth0"
        assert data.svcops_workloads == [
            {"name": f"web-{name}", "labels": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}
        ]
        assert Path(data.svcops_site).is_absolute() and (Path(data.svcops_site) / "svcops.yaml").is_file()


@pytest.mark.root
@pytest.mark.slow
def test_status_shows_every_node_answering(lab):
    out = lab_cli("status")
    assert out.returncode == 0, out.stdout + out.stderr
    for name, address in _nodes(lab["state"]):
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith(name + " "))
        assert f"backend={address}" in line and line.split()[3:6] == ["yes", "yes", "yes"]


@pytest.mark.root
@pytest.mark.slow
def test_up_again_changes_nothing_and_another_count_converges(lab):
    from svcops.lab.state import lab_paths, read_state, start_time

    def keepers() -> dict:
        st = read_state(lab_paths())
        return {n: tuple(r["pids"]["keeper"]) for n, r in st["hosts"].items()}

    first = keepers()
    again = lab_cli("up", "--nodes", str(NODES))
    assert again.returncode == 0 and "already up" in again.stderr
    assert keepers() == first

    grown = lab_cli("up", "--nodes", str(NODES + 1))
    assert grown.returncode == 0, grown.stderr
    after = keepers()
    assert {n: after[n] for n in first} == first and f"node{NODES + 1}" in after
    extra = after[f"node{NODES + 1}"]

    back = lab_cli("up", "--nodes", str(NODES))
    assert back.returncode == 0, back.stderr
    assert keepers() == first
    assert not os.path.exists(f"/run/netns/svl-node{NODES + 1}") and start_time(extra[0]) != extra[1]


@pytest.mark.root
@pytest.mark.slow
def test_down_from_another_lab_folder_leaves_this_lab_alone(lab, tmp_path):
    other = subprocess.run(
        [sys.executable, "-m", "svcops.lab.cli", "lab", "down"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, plan.DIR_ENV: str(tmp_path / "other")},
    )
    assert other.returncode == 1 and "left alone" in other.stderr
    assert lab_cli("status").returncode == 0


@pytest.mark.root
@pytest.mark.slow
def test_down_leaves_nothing(lab):
    """Runs last in this module: after `lab down` the machine is as before `lab up`."""
    from svcops.lab.state import lab_paths, read_state, start_time

    state = read_state(lab_paths())
    pids = [tuple(p) for r in state["hosts"].values() for p in r["pids"].values() if p]
    assert pids and all(start_time(pid) == st for pid, st in pids)
    out = lab_cli("down")
    assert out.returncode == 0, out.stderr
    after = _snapshot()
    assert after == lab["before"]
    assert not [pid for pid, st in pids if start_time(pid) == st]
    assert not (lab["dir"] / "state.json").exists() and not (lab["dir"] / "hosts").exists()
    assert lab_cli("status").returncode == 1
