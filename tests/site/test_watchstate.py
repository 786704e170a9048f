"""Where a running watch leaves its readiness for apply, plan, check and status
(`svcops.site.watchstate`): held while it runs, ignored once it is gone, however it went."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from svcops.site.model import Readiness
from svcops.site.watchstate import WatchLock, WatchRunning, running_watch, stale_watch

R = Readiness(frozenset({"node2/web-2"}), frozenset({"node3"}), {"node2/web-2": "HTTP 503"})


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setenv("SVCOPS_WATCH_DIR", str(tmp_path / "state"))
    (tmp_path / "site").mkdir()
    return str(tmp_path / "site")


def test_a_running_watch_is_found_with_its_readiness(site):
    lock = WatchLock(site)
    try:
        assert running_watch(site) is None  # nothing written yet: no readiness to use
        lock.write(R)
        w = running_watch(site)
        assert w is not None and w.readiness == R
        assert w.summary().endswith("1 workload not ready; node lost: node3")
        assert stale_watch(site) is None
    finally:
        lock.close()
    assert running_watch(site) is None
    assert stale_watch(site).readiness == R  # what it left, for a word to the user


def test_a_second_watch_for_the_same_site_is_refused(site):
    lock = WatchLock(site)
    try:
        lock.write(R)
        with pytest.raises(WatchRunning, match="a watch already runs for this site"):
            WatchLock(site)
    finally:
        lock.close()
    WatchLock(site).close()  # free again


def test_a_killed_watch_leaves_no_hold(site):
    code = (
        "import sys, time; from svcops.site.watchstate import WatchLock; from svcops.site.model import Readiness\n"
        f"l = WatchLock({site!r}); l.write(Readiness(frozenset({{'a/b'}}))); print('held', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert running_watch(site).readiness.not_ready == {"a/b"}
    finally:
        p.kill()
        p.wait(5)
    assert running_watch(site) is None


def test_sites_do_not_share_a_state(site, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    lock = WatchLock(site)
    try:
        lock.write(R)
        assert running_watch(str(other)) is None
    finally:
        lock.close()
