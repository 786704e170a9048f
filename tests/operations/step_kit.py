"""What the one-step tests of the rules operations share (test_op_iptables_step.py,
test_op_nftables_step.py): a node in a folder (stand-in tools first on PATH, a record
folder), and the guard's undo."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def stand_in_node(tmp_path: Path, monkeypatch, tool: str, script: str, record_name: str, old: dict[str, str]) -> Path:
    """PATH leading to a stand-in `tool` (shell `script`) and to an ``rm`` that fails
    while ``tmp_path/fail-rm`` exists (the last thing a step does: remove a file); a
    record folder ``tmp_path/etc/<record_name>`` holding `old`, returned."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / tool).write_text("#!/bin/sh\n" + script)
    (bin_ / tool).chmod(0o755)
    (bin_ / "rm").write_text(f'#!/bin/sh\n[ ! -e {tmp_path / "fail-rm"} ] || exit 1\nexec {shutil.which("rm")} "$@"\n')
    (bin_ / "rm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    record = tmp_path / "etc" / record_name
    record.mkdir(parents=True)
    for n, t in old.items():
        (record / n).write_text(t)
    return record


def undone(g) -> None:
    """The controller aborts: the guard runs every undo."""
    g.say("abort")
    assert g.word() == "rolled-back"


def files(d: Path) -> dict[str, str]:
    """name -> text of what the folder holds ("<folder>" for a folder)."""
    return {p.name: "<folder>" if p.is_dir() else p.read_text() for p in sorted(d.iterdir())}


def logged(log: Path) -> str:
    """What a stand-in logged (nothing: "")."""
    return log.read_text() if log.exists() else ""
