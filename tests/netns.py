"""Throwaway network namespaces for tests that need a real kernel (iptables, nft, ipset).

Each namespace is the test's own, made and deleted here; nothing touches the machine's
own tables.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from contextlib import contextmanager
from typing import Iterator

import pytest

_seq = itertools.count()


def have(*tools: str) -> bool:
    """Root, `ip`, and every tool named."""
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("ip", *tools))


def requires(*tools: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not have(*tools), reason=f"needs root, ip and {', '.join(tools)}")


@contextmanager
def netns() -> Iterator[str]:
    name = f"svt-{os.getpid()}-{next(_seq)}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def ns_run(ns: str, *argv: str, stdin: str | None = None) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(argv)} failed: {r.stderr[:3000]}"
    return r.stdout


def iptables_saved(ns: str) -> str:
    """`iptables-save` in the namespace, without its comment lines (dates, versions)."""
    return "".join(ln + "\n" for ln in ns_run(ns, "iptables-save").splitlines() if not ln.startswith("#"))
