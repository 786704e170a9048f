"""Helpers for the site-folder tests: run svcops as a user does (a process, bounded in
time, so a hang is a failure and not a stuck suite), take a snapshot of a site's files,
make read-only or full file systems for it."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from paths import ROOT

SVCOPS = str(Path(sys.executable).with_name("svcops"))
EXAMPLE = ROOT / "examples" / "walkthrough"
INVENTORY = str(ROOT / "inventory" / "example.py")

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (mount namespaces)")


def svcops(*argv: str, timeout: float = 60, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`svcops ARGV` as a process; a TimeoutExpired (the old FIFO hang) fails the test."""
    return subprocess.run([*prefix, SVCOPS, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def in_mount_namespace(script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace (its mounts vanish with it)."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def copy_site(tmp: Path, name: str = "site") -> Path:
    dst = tmp / name
    shutil.copytree(EXAMPLE, dst, symlinks=True)
    return dst


def add_service(site: Path, name: str, port: int = 9000) -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": port, "targetPort": "http"}]},
    }
    (site / "services" / f"{name}.yaml").write_text(yaml.safe_dump(doc))


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: its kind and content (bytes, link target), never
    following a symlink or opening a FIFO."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", path.read_bytes(), st.st_mtime_ns)
            else:
                out[rel] = (stat.S_IFMT(st.st_mode),)
    return out
