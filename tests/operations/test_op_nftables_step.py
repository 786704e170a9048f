"""nftables mode's transactions and record files as one step (`svcops.render.nftables_step`,
sent by `svcops.render.txn.script_step`), run for real under a node guard, with the real
loaders and a stand-in ``nft`` that logs every transaction it loads: the step loads the
table's transactions, then writes the record; whatever fails, and wherever, the guard's
undo gives back every record file first, then the table; a cut upload runs nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from step_kit import files, logged, stand_in_node, undone
from test_op_guard import Guard, run  # noqa: F401 (run: the guard's folder, a fixture)

from svcops.render.nftables_record import BOOT_LOADER
from svcops.render.nftables_step import apply_script
from svcops.render.nftables_sync import LOADER, ROLLBACK_FROM_LISTING, chunked
from svcops.render.txn import script_step, txn_dir

pytestmark = pytest.mark.skipif(not shutil.which("flock") or not shutil.which("bash"), reason="needs bash and flock")

TXS = chunked(["add table ip svcops\nadd chain ip svcops x\n", 'add element ip svcops state { 127.0.0.1 comment "it\'s $HOME `id`" }\n'])
ROLLBACK = chunked(["delete chain ip svcops x\n"])
NEW = {"3f": "# svcops-unit {\"id\": \"it's $HOME\"}\nadd chain ip svcops x\n", "gone": None, "index": "svcops-record 1 new\n"}
OLD = {"3f": "old 3f\n", "gone": "old gone\n", "index": "svcops-record 1 old\n", "kept": "kept\n"}


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A record folder holding OLD, and PATH leading to a stand-in nft that logs what
    each `nft -f` loads (failing while `fail` exists) and lists "the live table"."""
    log, fail = tmp_path / "loads", tmp_path / "fail"
    script = (
        'if [ "$1" = list ]; then echo "table ip svcops { live }"; exit 0; fi\n'
        f'[ "$1" = -f ] || exit 2\n[ ! -e {fail} ] || exit 1\ngrep -v "^# svcops: transaction" "$2" >> {log}\n'
    )
    return stand_in_node(tmp_path, monkeypatch, "nft", script, "nft.d", OLD), log, fail


@pytest.fixture
def g(run, node):
    guard = Guard(run, "t1")
    assert guard.word() == "locked"
    yield guard
    guard.say("done")
    guard.end()


def loads(log: Path) -> str:
    return logged(log)


def send(g: Guard, record: Path, rollback=ROLLBACK, cut: float | None = None) -> subprocess.CompletedProcess:
    paths = {f"{record}/{n}": t for n, t in NEW.items()}
    change, undo = apply_script(txn_dir(g.token, str(g.run)), TXS, LOADER + BOOT_LOADER, rollback, paths)
    command, stdin = script_step(g.token, 1, "nftables", change, undo, 20, str(g.run))
    if cut is not None:
        stdin = stdin[: int(len(stdin) * cut)]
    return subprocess.run(["sh", "-c", command], input=stdin + "\n", capture_output=True, text=True, timeout=30)


def _loaded(text: str) -> str:
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("# svcops: transaction"))


def test_the_step_loads_then_writes_the_record_and_the_undo_gives_both_back(g, node):
    record, log, _ = node
    r = send(g, record)
    assert r.returncode == 0, r.stderr
    assert loads(log) == _loaded(TXS)
    assert files(record) == {"3f": NEW["3f"], "index": NEW["index"], "kept": "kept\n"}
    undone(g)
    assert loads(log) == _loaded(TXS) + _loaded(ROLLBACK)
    assert files(record) == OLD


def test_the_rollback_listed_in_the_step_is_the_table_as_it_was(g, node):
    record, log, _ = node
    assert send(g, record, rollback=ROLLBACK_FROM_LISTING).returncode == 0
    undone(g)
    assert loads(log).endswith("add table ip svcops\ndelete table ip svcops\ntable ip svcops { live }\n")
    assert files(record) == OLD


def test_a_failure_after_the_load_is_undone_whole(g, node):
    record, log, _ = node
    (record.parent.parent / "fail-rm").write_text("")  # the record file to remove cannot be
    r = send(g, record)
    assert r.returncode != 0
    assert loads(log) == _loaded(TXS)
    (record.parent.parent / "fail-rm").unlink()
    undone(g)
    assert loads(log) == _loaded(TXS) + _loaded(ROLLBACK)
    assert files(record) == OLD


def test_a_transaction_that_fails_changes_no_record_file(g, node):
    record, log, fail = node
    fail.write_text("")
    r = send(g, record)
    assert r.returncode != 0 and "nft transaction 1 failed" in r.stderr
    assert files(record) == OLD and loads(log) == ""
    fail.unlink()
    undone(g)
    assert files(record) == OLD


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_a_cut_upload_runs_nothing(g, node, where):
    record, log, _ = node
    assert send(g, record, cut=where).returncode != 0
    assert loads(log) == "" and files(record) == OLD
