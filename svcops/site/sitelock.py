"""One writer per site: an exclusive lock on the site folder for a whole plan or apply.

    with site_lock("examples/walkthrough", timeout=30):
        ...  # read svcops.lock, allocate, write it, push

The lock is an ``flock`` on the site folder itself (opened read-only): no lock file
to commit or ignore, and it works on a read-only checkout. The kernel releases it
when its holder exits, however it exits (SIGKILL included), so a crash never leaves
a stale lock. A second svcops that wants the site polls for at most `timeout`
seconds, then fails with `SiteLocked`, whose message names the holder as
``/proc/locks`` and ``/proc/PID`` describe it::

    site examples/walkthrough is locked by pid 1234 (svcops apply -i inventory/lab.py -y),
    started 12:01:05; waited 30 s

The lock is re-entrant within a process (apply holds it, and the compile inside
takes it again without waiting on itself), and not inherited by child processes
(``O_CLOEXEC``). It is advisory: it keeps svcops runs apart, not other writers.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shlex
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["SiteLocked", "SiteLockError", "site_lock", "lock_holder", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 30.0  # seconds a second plan or apply waits for the site
POLL = 0.1  # seconds between attempts
MAX_COMMAND = 200  # characters of the holder's command line shown


class SiteLockError(Exception):
    """The site folder cannot be locked at all (missing, unreadable, no flock there)."""


class SiteLocked(SiteLockError):
    """Another process held the site for longer than the timeout; the message names it."""


# (st_dev, st_ino) of each site folder this process holds -> [fd, depth].
_HELD: dict[tuple[int, int], list[int]] = {}
_HELD_LOCK = threading.Lock()


@contextmanager
def site_lock(
    root: str | os.PathLike[str],
    timeout: float = DEFAULT_TIMEOUT,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the site folder `root` exclusively for the block; wait at most `timeout` s.

    on_wait, if given, is called once with the holder's description when the site is
    busy, before the wait (so a user sees why nothing happens). Raises SiteLocked on
    timeout, SiteLockError when the folder cannot be locked.
    """
    name = os.fspath(root)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise SiteLockError(f"site {name}: cannot lock the folder: {_reason(e)}") from None
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None:  # this process holds it already
            held[1] += 1
    if held is not None:
        os.close(fd)
        try:
            yield
        finally:
            with _HELD_LOCK:
                held[1] -= 1
        return
    try:
        _acquire(fd, name, st, timeout, on_wait)
    except BaseException:
        os.close(fd)
        raise
    with _HELD_LOCK:
        _HELD[key] = held = [fd, 1]
    try:
        yield
    finally:
        with _HELD_LOCK:
            held[1] -= 1
            last = held[1] == 0
            if last:
                del _HELD[key]
        if last:
            # Unlock first: under gevent's monkey-patching (svcops apply), os.close of
            # anything but a regular file is deferred to the hub, and the site with it.
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _acquire(fd: int, name: str, st: os.stat_result, timeout: float, on_wait) -> None:
    deadline = time.monotonic() + max(0.0, timeout)
    waited = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise SiteLockError(f"site {name}: cannot lock the folder: {_reason(e)}") from None
        now = time.monotonic()
        if now >= deadline:
            holder = lock_holder(st) or "another process"
            raise SiteLocked(f"site {name} is locked by {holder}; waited {_seconds(timeout)}")
        if not waited and on_wait is not None:
            on_wait(f"site {name} is locked by {lock_holder(st) or 'another process'}; waiting up to {_seconds(timeout)}")
        waited = True
        time.sleep(min(POLL, deadline - now))


def _reason(e: OSError) -> str:
    if e.errno == errno.ENOENT:
        return "not found"
    if e.errno == errno.ENOTDIR:
        return "not a folder"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno in (errno.ENOLCK, errno.EBADF, errno.EOPNOTSUPP):
        return f"{e.strerror} (the file system gives no flock on folders: a network file system?)"
    return e.strerror or str(e)


def _seconds(s: float) -> str:
    return f"{s:g} s"


# --- who holds it ---------------------------------------------------------------------


def lock_holder(st: os.stat_result, proc: str = "/proc") -> str | None:
    """The process holding an flock on the file of `st`, in words, or None if unknown:
    ``pid 1234 (svcops apply -i inventory/lab.py -y), started 12:01:05``."""
    pid = _holder_pid(st, proc)
    if pid is None:
        return None
    if pid == 0:  # /proc/locks shows 0 for a process in another PID namespace
        return "a process of another PID namespace"
    command = _command(pid, proc)
    if command is None:
        return f"pid {pid} (gone: a child of it still holds the folder open?)"
    started = _start_time(pid, proc)
    return f"pid {pid} ({command})" + (f", started {started}" if started else "")


def _holder_pid(st: os.stat_result, proc: str) -> int | None:
    """The PID /proc/locks gives for an FLOCK on (device, inode) of `st`.

    A line reads ``1: FLOCK  ADVISORY  WRITE 1234 fe:00:2154841 0 EOF`` (device as
    hex major:minor, inode in decimal); lines with ``->`` are waiters, not holders.
    The device there is the file system's, which stat may not show (btrfs subvolumes
    do not): a line with the inode alone counts only if that process has the folder
    open, as its /proc/PID/fd says.
    """
    want_dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    try:
        text = Path(proc, "locks").read_text()
    except OSError:
        return None
    others = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        dev, _, ino = fields[5].rpartition(":")
        if ino != str(st.st_ino) or not fields[4].isdigit():
            continue
        if dev == want_dev:
            return int(fields[4])
        others.append(int(fields[4]))
    return next((pid for pid in others if _has_open(pid, st, proc)), None)


def _has_open(pid: int, st: os.stat_result, proc: str) -> bool:
    fds = Path(proc, str(pid), "fd")
    try:
        for fd in fds.iterdir():
            try:
                s = os.stat(fd)
            except OSError:
                continue
            if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
                return True
    except OSError:
        pass
    return False


def _command(pid: int, proc: str) -> str | None:
    try:
        raw = Path(proc, str(pid), "cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not argv:
        return "?"
    # ".venv/bin/python .venv/bin/svcops apply ...": the script is the command.
    if len(argv) > 1 and os.path.basename(argv[0]).startswith("python") and not argv[1].startswith("-"):
        argv = argv[1:]
    argv[0] = os.path.basename(argv[0])
    text = shlex.join(argv).replace("\n", "\\n")  # one line, whatever the arguments hold
    return text if len(text) <= MAX_COMMAND else text[: MAX_COMMAND - 3] + "..."


def _start_time(pid: int, proc: str) -> str | None:
    """When `pid` started, local time: "12:01:05", or with the date if not today."""
    try:
        stat = Path(proc, str(pid), "stat").read_text()
        btime = next(int(ln.split()[1]) for ln in Path(proc, "stat").read_text().splitlines() if ln.startswith("btime "))
        # Field 22 (starttime, in clock ticks after boot); comm (field 2) may hold spaces.
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    started = btime + ticks / os.sysconf("SC_CLK_TCK")
    when = time.localtime(started)
    if time.strftime("%Y-%m-%d", when) == time.strftime("%Y-%m-%d"):
        return time.strftime("%H:%M:%S", when)
    return time.strftime("%Y-%m-%d %H:%M:%S", when)
