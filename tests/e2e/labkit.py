"""The end-to-end helpers and fixture: one 3-node lab per test module, brought down at the end
(even when tests fail), and helpers that act as a user would: `svcops apply`, curl from
the client or a node, ssh, iptables-save.

Traffic stays inside the lab's namespaces (192.168.36.0/24 and the service addresses
routed there); every loop is bounded in count and each request in time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SVCOPS = str(Path(sys.executable).with_name("svcops"))
PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
INVENTORY = "inventory/lab.py"
LAB_DIR = os.environ.get("SVCOPS_LAB_DIR") or "/run/svcops-lab"
NODES = ("node1", "node2", "node3")
ADDRESS = {"node1": "192.168.36.11", "node2": "192.168.36.12", "node3": "192.168.36.13"}
CLIENT = "192.168.36.2"
WALKTHROUGH = ROOT / "examples" / "walkthrough"

_ANSWER = re.compile(r"backend=(\S+) client=(\S+)")


def _can_run_lab() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables-restore", "sshd", "curl", "nsenter"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"needs {tool}"
    return None


def run(argv: list[str], timeout: float = 180, check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
    # stdin only without input: gevent's subprocess.run (patched in by tests that import
    # svcops.apply earlier in the session) refuses both, even stdin=None.
    feed = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **feed)
    if check:
        assert r.returncode == 0, f"{' '.join(argv)} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


# Module scope: the lab goes down when the module ends, so tests/lab/test_lab.py (which
# refuses to touch a lab it did not make) runs on its own lab afterwards.
@pytest.fixture(scope="module")
def lab():
    why = _can_run_lab()
    if why:
        pytest.skip(f"the lab {why}")
    up = run([SVCOPS, "lab", "up", "--nodes", "3"], timeout=120)
    try:
        assert up.returncode == 0, f"lab up failed:\n{up.stdout}\n{up.stderr}"
        yield
    finally:
        run([SVCOPS, "lab", "down"], timeout=120)


def lab_exec(host: str, *argv: str, timeout: float = 120, input: str | None = None) -> subprocess.CompletedProcess:
    return run([SVCOPS, "lab", "exec", host, "--", *argv], timeout=timeout, input=input)


def sh(host: str, script: str, timeout: float = 120, check: bool = True) -> str:
    r = lab_exec(host, "sh", "-c", script, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{host}: {script} exited {r.returncode}: {r.stderr}"
    return r.stdout


def curl(host: str, url: str, count: int = 1, max_time: float = 2) -> list[str]:
    """`count` requests (each at most `max_time` s) from `host`; one output line each."""
    assert 1 <= count <= 200
    out = sh(
        host,
        f'for i in $(seq {count}); do curl -s --max-time {max_time} {url}; echo " rc=$?"; done',
        timeout=count * (max_time + 1) + 30,
    )
    return out.splitlines()


def backends(lines: list[str]) -> Counter:
    """backend address -> how many answers it gave."""
    return Counter(m.group(1) for line in lines if (m := _ANSWER.search(line)))


def clients(lines: list[str]) -> set[str]:
    return {m.group(2) for line in lines if (m := _ANSWER.search(line))}


def curl_rc(host: str, url: str, max_time: float = 2) -> int:
    """curl's exit status: 0 answered, 7 refused, 28 timed out."""
    line = curl(host, url, 1, max_time)[-1]
    return int(line.rsplit("rc=", 1)[1])


# The proxy mode make_site writes into svcops.yaml (tests/e2e/test_apply_lab.py runs its
# scenarios once per mode: its module-scoped `proxy_mode` fixture sets this).
MODE = {"proxyMode": "iptables"}


def set_proxy_mode(site: Path, mode: str) -> None:
    """Write `proxyMode: mode` into the site's svcops.yaml."""
    path = site / "svcops.yaml"
    text = re.sub(r"(?m)^proxyMode:.*\n", "", path.read_text())
    path.write_text(text + f"proxyMode: {mode}\n")


def make_site(
    tmp: Path,
    services: dict[str, str],
    with_walkthrough: bool = True,
    lock_from_walkthrough: bool = True,
    mode: str | None = None,
) -> Path:
    """A site folder: the walkthrough's svcops.yaml (and its services unless told not to)
    plus `services` (file name -> YAML text), in `mode` (default: MODE's)."""
    site = tmp / "site"
    if site.exists():
        shutil.rmtree(site)
    (site / "services").mkdir(parents=True)
    shutil.copy(WALKTHROUGH / "svcops.yaml", site / "svcops.yaml")
    set_proxy_mode(site, mode or MODE["proxyMode"])
    if lock_from_walkthrough:
        shutil.copy(WALKTHROUGH / "svcops.lock", site / "svcops.lock")
    if with_walkthrough:
        for f in (WALKTHROUGH / "services").glob("*.yaml"):
            shutil.copy(f, site / "services" / f.name)
    for name, text in services.items():
        (site / "services" / name).write_text(text)
    return site


def apply(site: Path | str, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([SVCOPS, "apply", "-i", INVENTORY, "-y", *extra, str(site)], timeout=300, check=check)


def results(r: subprocess.CompletedProcess) -> dict[str, str]:
    """node -> its status in `svcops apply`'s results ("changed", "unchanged", "failed", ...)."""
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s+(node\d+): (\w+)", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def iptables_save(host: str, counters: bool = False) -> str:
    text = sh(host, "iptables-save -c" if counters else "iptables-save")
    return "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("#"))


def foreign_lines(save: str) -> list[str]:
    """Every line of iptables-save output that is not svcops's (nor a comment)."""
    return [ln for ln in save.splitlines() if "SVCOPS-" not in ln and not ln.startswith("#")]


def ssh_ok(host: str) -> bool:
    r = run(
        ["ssh", "-F", f"{LAB_DIR}/ssh_config", "-o", "ConnectTimeout=5", host, "true"],
        timeout=30,
    )
    return r.returncode == 0


def nft_table(host: str) -> str:
    """`nft list table ip svcops` ("" when there is none), without the ageing of
    affinity entries ("expires ..."), which changes by itself."""
    r = lab_exec(host, "nft", "list", "table", "ip", "svcops")
    return re.sub(r" expires [0-9a-z]+", "", r.stdout) if r.returncode == 0 else ""


def nft_ruleset_without_svcops(host: str) -> str:
    """Every nftables table but svcops's and iptables-nft's (iptables_save shows those),
    as `nft list ruleset` prints them (without packet counts, which traffic moves)."""
    out, keep = [], True
    skip = {"table ip svcops", "table ip filter", "table ip nat", "table ip mangle", "table ip raw", "table ip security"}
    text = re.sub(r"counter packets \d+ bytes \d+", "counter", sh(host, "nft list ruleset"))
    for line in text.splitlines():
        if line.startswith("table "):
            keep = line.rstrip(" {") not in skip
        if keep:
            out.append(line)
    return "\n".join(out)


def svcops_rules(host: str) -> str:
    """svcops's rules on `host` in the current mode: its iptables chains and jumps, or
    its nftables table."""
    if MODE["proxyMode"] == "nftables":
        return nft_table(host)
    return "\n".join(ln for ln in iptables_save(host).splitlines() if "SVCOPS-" in ln)


def mode_fixture():
    """A module-scoped fixture running the module once per proxy mode (iptables, then
    nftables on the same lab: its first nftables apply is itself a switch): the mode of
    every site `make_site` writes. ``proxy_mode = mode_fixture()`` in the module."""

    @pytest.fixture(scope="module", params=["iptables", "nftables"])
    def proxy_mode(request, lab):
        MODE["proxyMode"] = request.param
        try:
            yield request.param
        finally:
            MODE["proxyMode"] = "iptables"

    return proxy_mode
