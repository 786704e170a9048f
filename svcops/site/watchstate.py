"""The running watch's readiness (`svcops watch`), where the other svcops commands of the controller find it.

A watch keeps two files per site (named by the site folder's absolute path) in the
controller's runtime folder (`state_dir`: ``/run/svcops-watch`` as root, else
``$XDG_RUNTIME_DIR/svcops-watch``; ``SVCOPS_WATCH_DIR`` overrides):

    SITE.lock    flock-ed by the watch for as long as it runs (the kernel lets go
                 when it ends, however it ends: SIGKILL too)
    SITE.json    its readiness ({"pid", "since", "updated", "notReady", "lost", "why"}),
                 replaced whole (rename) on every change

`running_watch` answers `svcops apply`, `plan`, `check` and `status`: the readiness
of the watch running for that site now, or None. A file whose lock nobody holds is
what a stopped watch left: it is not used (`stale` says since when).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from typing import Iterable, Mapping

from svcops.site.model import Readiness

__all__ = ["state_dir", "WatchLock", "WatchState", "running_watch", "stale_watch", "WatchRunning"]


class WatchRunning(Exception):
    """Another watch holds the site."""


def state_dir() -> Path:
    forced = os.environ.get("SVCOPS_WATCH_DIR")
    if forced:
        return Path(forced)
    if os.geteuid() == 0:
        return Path("/run/svcops-watch")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/svcops-watch-{os.getuid()}") / "svcops-watch"


def _stem(site_root: str) -> Path:
    real = os.path.realpath(site_root)
    name = os.path.basename(real.rstrip("/")) or "site"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40]
    return state_dir() / f"{safe}-{hashlib.sha256(real.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class WatchState:
    pid: int
    since: float
    updated: float
    readiness: Readiness

    def summary(self) -> str:
        r = self.readiness
        parts = [f"{len(r.not_ready)} workload{'s' if len(r.not_ready) != 1 else ''} not ready"]
        if r.lost:
            parts.append(f"node{'s' if len(r.lost) != 1 else ''} lost: {', '.join(sorted(r.lost))}")
        return f"the watch (pid {self.pid}) says: " + "; ".join(parts)


class WatchLock:
    """The running watch's hold on its site, and where it writes its readiness."""

    def __init__(self, site_root: str):
        stem = _stem(site_root)
        stem.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.json_path = stem.with_suffix(".json")
        self.fd = os.open(stem.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            other = _read(self.json_path)
            who = f" (pid {other.pid})" if other else ""
            raise WatchRunning(f"a watch already runs for this site{who}") from None
        self.since = time.time()

    def write(self, readiness: Readiness) -> None:
        doc = {"pid": os.getpid(), "since": self.since, "updated": time.time(), **readiness_json(readiness)}
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.json_path)

    def close(self) -> None:
        os.close(self.fd)


def readiness_json(r: Readiness) -> dict:
    """`Readiness` as the state file keeps it."""
    return {"notReady": sorted(r.not_ready), "lost": sorted(r.lost), "why": dict(sorted(r.why.items()))}


def readiness_from_json(doc: Mapping) -> Readiness:
    def strings(v: Iterable) -> frozenset[str]:
        return frozenset(x for x in v if isinstance(x, str))

    why = doc.get("why") or {}
    return Readiness(
        strings(doc.get("notReady") or ()),
        strings(doc.get("lost") or ()),
        {k: v for k, v in why.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(why, Mapping) else {},
    )


def _read(path: Path) -> WatchState | None:
    try:
        doc = json.loads(path.read_text())
        return WatchState(int(doc["pid"]), float(doc["since"]), float(doc["updated"]), readiness_from_json(doc))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _held(lock_path: Path) -> bool:
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def running_watch(site_root: str) -> WatchState | None:
    """The readiness of the watch running for `site_root` now, or None."""
    stem = _stem(site_root)
    if not _held(stem.with_suffix(".lock")):
        return None
    return _read(stem.with_suffix(".json"))


def stale_watch(site_root: str) -> WatchState | None:
    """What a watch that is not running any more left for `site_root`, or None."""
    stem = _stem(site_root)
    if _held(stem.with_suffix(".lock")):
        return None
    return _read(stem.with_suffix(".json"))
