"""End to end: a broken site folder stops `svcops apply -y` before any node is touched
(issue 10's site findings). The nodes first get the walkthrough; then each broken site,
which also adds a service (a good apply would change every node), must make apply exit
1 in a bounded time with one clear line, and leave every node's rules byte-identical.
"""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest
from labkit import INVENTORY, NODES, ROOT, SVCOPS, apply, iptables_save, make_site, results, sh

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab")]

NEW = """\
apiVersion: v1
kind: Service
metadata: {name: added, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 8081, targetPort: http}]
"""


def node_state() -> dict[str, tuple[str, str]]:
    """Each node's live iptables and svcops's record of it (the boot rules)."""
    return {n: (iptables_save(n), sh(n, "cat /etc/svcops/iptables.d/*")) for n in NODES}


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    site = make_site(tmp_path_factory.mktemp("base"), {})
    r = apply(site)
    assert set(results(r).values()) == {"changed"}, r.stdout + r.stderr
    return node_state()


def _apply_fails(argv: list[str], message: str, before: dict) -> None:
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stdout + r.stderr
    assert message in r.stderr.splitlines(), r.stderr
    assert "Traceback" not in r.stderr
    assert node_state() == before


def test_a_fifo_as_the_lock_is_an_error_not_a_hang(tmp_path, applied):
    site = make_site(tmp_path, {"added.yaml": NEW})
    (site / "svcops.lock").unlink()
    os.mkfifo(site / "svcops.lock")
    _apply_fails([SVCOPS, "apply", "-i", INVENTORY, "-y", str(site)], "svcops.lock: is a FIFO (named pipe), not a regular file", applied)


def test_a_lock_cut_at_a_line_boundary_is_an_error_not_new_allocations(tmp_path, applied):
    site = make_site(tmp_path, {"added.yaml": NEW})
    lines = (site / "svcops.lock").read_text().splitlines(keepends=True)
    (site / "svcops.lock").write_text("".join(lines[:12]))
    before = (site / "svcops.lock").read_bytes()
    _apply_fails(
        [SVCOPS, "apply", "-i", INVENTORY, "-y", str(site)],
        "svcops.lock:12: ends without its closing line ('# end of svcops.lock'): it was cut short (restore it from git)",
        applied,
    )
    assert (site / "svcops.lock").read_bytes() == before  # not rewritten


def test_a_read_only_site_with_new_services_is_an_error(tmp_path, applied):
    site = make_site(tmp_path, {"added.yaml": NEW})
    before = (site / "svcops.lock").read_bytes()
    q = shlex.quote(str(site))
    script = f"mount --bind {q} {q}; mount -o remount,bind,ro {q}; exec {SVCOPS} apply -i {INVENTORY} -y {q}"
    _apply_fails(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
        "svcops.lock: cannot write: the site folder is on a read-only file system (svcops.lock is unchanged)",
        applied,
    )
    assert (site / "svcops.lock").read_bytes() == before
    assert sorted(p.name for p in site.iterdir()) == ["services", "svcops.lock", "svcops.yaml"]


def test_last_the_same_site_whole_applies_and_changes_every_node(tmp_path, applied):
    """What the cases above kept from the nodes: the lock restored (from git, here the
    walkthrough's), the new service goes out to every node."""
    r = apply(make_site(tmp_path, {"added.yaml": NEW}))
    assert set(results(r).values()) == {"changed"}, r.stdout + r.stderr
    assert all(now != then for now, then in zip(node_state().values(), applied.values()))
