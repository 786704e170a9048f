"""The lab's state file (``state.json``) and the processes it records.

The state is what ``lab down``, ``lab status``, ``lab exec`` and ``inventory/lab.py``
read: every host's address, namespace, keeper/sshd/backend PIDs (each with its start
time, so that a PID the kernel has since given to another process is never signalled),
namespace inodes and the mounts made inside it, and each node's pyinfra host data.

It is written before anything is created (the hosts ``lab up`` intends to make) and
again as PIDs become known, so a failed ``lab up`` leaves a state that ``lab down``
can clean up from. Written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from .plan import DEFAULT_DIR, DIR_ENV, LabPaths

STATE_VERSION = 1


def lab_paths() -> LabPaths:
    """The lab's folder: $SVCOPS_LAB_DIR when set (tests), else /run/svcops-lab."""
    return LabPaths(os.path.abspath(os.environ.get(DIR_ENV) or DEFAULT_DIR))


def read_state(paths: LabPaths) -> dict[str, Any] | None:
    """The recorded state, or None when there is none (or it is unreadable)."""
    try:
        with open(paths.state, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def write_state(paths: LabPaths, state: dict[str, Any]) -> None:
    tmp = paths.state + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, paths.state)


# --- processes ------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie has finished; only its parent's wait is missing
        return None
    return int(fields[19])


def alive(record: Any) -> bool:
    """Whether a recorded ``[pid, start_time]`` is still that same running process."""
    if not (isinstance(record, list) and len(record) == 2 and all(isinstance(x, int) for x in record)):
        return False
    return start_time(record[0]) == record[1]


def ns_inode(path: str) -> int | None:
    """The namespace id behind a namespace file (``/run/netns/X`` or ``/proc/P/ns/net``)."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_namespaces(net: Iterable[int], mnt: Iterable[int]) -> list[int]:
    """Every process whose network or mount namespace is one of these (by namespace id).

    This is how ``lab down`` finds what lives inside the lab besides the recorded
    processes: SSH sessions, commands started with ``lab exec``, a daemon a test left.
    """
    net_ids, mnt_ids = set(net), set(mnt)
    own = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            if ns_inode(f"/proc/{entry}/ns/net") in net_ids or ns_inode(f"/proc/{entry}/ns/mnt") in mnt_ids:
                found.append(int(entry))
        except OSError:
            continue
    return found
