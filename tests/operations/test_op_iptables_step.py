"""iptables mode's restore and record files as one step (`svcops.render.iptables_step`,
sent by `svcops.render.txn.script_step`), run for real under a node guard in a folder
of its own, with a stand-in ``iptables-restore`` that logs what it is given: the
step changes the rules, then the files; whatever fails, and wherever, the guard's
undo leaves the rules and every file as they were; a cut upload runs nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from step_kit import files, logged, stand_in_node, undone
from test_op_guard import Guard, run  # noqa: F401 (run: the guard's folder, a fixture)

from svcops.render.iptables_step import RestorePlan, apply_script
from svcops.render.txn import script_step, txn_dir

pytestmark = pytest.mark.skipif(not shutil.which("flock") or not shutil.which("bash"), reason="needs bash and flock")

RESTORE = RestorePlan(payload="*nat\n-A SVCOPS-X -j RETURN\nCOMMIT\n", rollback="*nat\n:SVCOPS-X - [0:0]\nCOMMIT\n")
# Texts as hostile to the shell as record files can be (service names in comments).
NEW = {"3f": "*nat\n-A X -m comment --comment \"it's $HOME `id` \\\\n %s\"\nCOMMIT\n", "gone": None, "index": "svcops-record 1 new\n"}
OLD = {"3f": "old 3f\n", "gone": "old gone\n", "index": "svcops-record 1 old\n", "kept": "kept\n"}


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A record folder holding OLD, and PATH leading to a stand-in iptables-restore
    that logs each payload it loads (and fails while `fail` exists)."""
    log, fail = tmp_path / "restores", tmp_path / "fail"
    script = f'for f; do :; done\ncat "$f" >> {log}\n[ ! -e {fail} ]\n'
    return stand_in_node(tmp_path, monkeypatch, "iptables-restore", script, "iptables.d", OLD), log, fail


@pytest.fixture
def g(run, node):
    """A guard holding the node, its transaction open (started once PATH leads to the
    stand-ins: its undo must never reach the real iptables-restore)."""
    guard = Guard(run, "t1")
    assert guard.word() == "locked"
    yield guard
    guard.say("done")
    guard.end()


def restores(log: Path) -> str:
    return logged(log)


def send(g: Guard, record: Path, cut: float | None = None, previous=None, new=NEW) -> subprocess.CompletedProcess:
    """The step of RESTORE and `new`, its upload cut at that fraction of it if `cut`."""
    change, undo = apply_script(txn_dir(g.token, str(g.run)), RESTORE, new, str(record), previous=previous)
    command, stdin = script_step(g.token, 1, "iptables", change, undo, 20, str(g.run))
    if cut is not None:
        stdin = stdin[: int(len(stdin) * cut)]
    return subprocess.run(["sh", "-c", command], input=stdin + "\n", capture_output=True, text=True, timeout=30)


def test_the_step_restores_then_writes_the_files_and_the_undo_gives_both_back(g, node):
    record, log, _ = node
    r = send(g, record)
    assert r.returncode == 0, r.stderr
    assert restores(log) == RESTORE.payload
    assert files(record) == {"3f": NEW["3f"], "index": NEW["index"], "kept": "kept\n"}
    assert oct((record / "3f").stat().st_mode & 0o777) == "0o644"
    undone(g)
    assert restores(log) == RESTORE.payload + RESTORE.rollback
    assert files(record) == OLD


def test_files_read_already_are_written_back_by_the_undo_itself(g, node):
    record, log, _ = node
    # What the fast path read and checked: the files it changes ("4a": none there), not "gone".
    r = send(g, record, previous={"3f": OLD["3f"], "index": OLD["index"], "4a": None}, new={**NEW, "4a": "new 4a\n"})
    assert r.returncode == 0, r.stderr
    kept = g.dir / "files" / "iptables"
    assert sorted(p.name for p in kept.rglob("*") if p.is_file()) == ["gone"]  # the one copy kept
    assert files(record) == {"3f": NEW["3f"], "4a": "new 4a\n", "index": NEW["index"], "kept": "kept\n"}
    undone(g)
    assert files(record) == OLD


def test_a_failure_after_the_restore_is_undone_whole(g, node):
    record, log, _ = node
    (record.parent.parent / "fail-rm").write_text("")  # the file to remove cannot be
    r = send(g, record)
    assert r.returncode != 0
    assert restores(log) == RESTORE.payload and (record / "3f").read_text() == NEW["3f"]
    (record.parent.parent / "fail-rm").unlink()
    undone(g)
    assert restores(log) == RESTORE.payload + RESTORE.rollback
    assert files(record) == OLD


def test_a_restore_that_fails_changes_no_file(g, node):
    record, log, fail = node
    fail.write_text("")
    assert send(g, record).returncode != 0
    assert files(record) == OLD
    fail.unlink()
    undone(g)
    assert files(record) == OLD and restores(log) == RESTORE.payload + RESTORE.rollback


@pytest.mark.parametrize("block", ["folder is a file", "index is a folder"])
def test_a_failure_before_the_restore_changes_nothing_and_its_undo_restores_nothing(g, node, block):
    record, log, _ = node
    if block == "folder is a file":
        shutil.rmtree(record)
        record.write_text("a file where the record folder should be\n")
    else:
        (record / "index").unlink()
        (record / "index").mkdir()
    before = record.read_text() if record.is_file() else files(record)
    r = send(g, record)
    assert r.returncode != 0 and r.stderr  # says why
    undone(g)
    assert restores(log) == ""
    assert (record.read_text() if record.is_file() else files(record)) == before


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_a_cut_upload_runs_nothing(g, node, where):
    record, log, _ = node
    r = send(g, record, cut=where)
    assert r.returncode != 0
    assert restores(log) == "" and files(record) == OLD
    assert not (g.dir / "undo").exists() or not list((g.dir / "undo").iterdir())


def test_the_folder_goes_with_the_last_files_and_comes_back_with_them(g, node):
    record, log, _ = node
    change, undo = apply_script(txn_dir(g.token, str(g.run)), None, {n: None for n in OLD}, str(record), remove_dir=True)
    command, stdin = script_step(g.token, 1, "iptables", change, undo, 20, str(g.run))
    assert subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, text=True).returncode == 0
    assert not record.exists() and restores(log) == ""
    undone(g)
    assert files(record) == OLD and restores(log) == ""


def test_a_step_once_the_transaction_is_over_runs_nothing(g, node):
    record, log, _ = node
    g.say("commit")
    assert g.word() == "committed"
    r = send(g, record)
    assert r.returncode != 0 and "stopped" in r.stderr
    assert restores(log) == "" and files(record) == OLD
