"""The controller's commit through a fresh login (`svcops.operations.txn`), against a real
guard (bash, a local process in a folder of its own): when the login fails the node is
undone through the guard; when the commit was sent and only its answer was lost, the
apply says what it knows: committed after all (the guard says so), or unknown (the
guard is gone too), never "rolled back"."""

from __future__ import annotations

import shutil
import subprocess

import gevent
import pytest

from svcops.operations import txn

pytestmark = pytest.mark.skipif(not shutil.which("flock") or not shutil.which("bash"), reason="needs bash and flock")


class Host:
    """What the transaction needs of a pyinfra host: a name, no SSH connector, a log."""

    name = "n1"
    connector = None

    def __init__(self):
        self.logged: list[str] = []

    def log_styled(self, text, **_):
        self.logged.append(text)


def opened(tmp_path, node_timeout: float = 2) -> tuple[Host, txn.NodeGuard]:
    h = Host()
    g = txn.NodeGuard("n1", "c0ffee", rollback_after=30, node_timeout=node_timeout, deadline=20, run_dir=str(tmp_path / "run"))
    assert g.open(h, 5) is None
    return h, g


def changed(g: txn.NodeGuard, tmp_path) -> None:
    """One step's worth: the transaction has something to undo (a mark file's removal)."""
    (tmp_path / "mark").write_text("new")
    undo = tmp_path / "run" / f"txn.{g.token}" / "undo" / "0001-mark"
    undo.write_text(f"rm -f {tmp_path / 'mark'}\n")
    g.changed = True


def commit_then_lose_the_answer(command: str):
    subprocess.run(["sh", "-c", command], check=True)
    return False, "no exit status within 2 s (the connection went silent)", True


def test_a_commit_whose_answer_was_lost_is_known_committed_through_the_guard(tmp_path):
    h, g = opened(tmp_path)
    changed(g, tmp_path)
    assert txn._commit_through(h, g, commit_then_lose_the_answer) is None
    assert g.status == "committed" and (tmp_path / "mark").exists()  # new, and not undone
    assert any("committed after all" in line for line in h.logged)
    g.close()


def test_a_lost_answer_with_the_guard_gone_too_is_said_to_be_unknown(tmp_path):
    h, g = opened(tmp_path, node_timeout=1)
    changed(g, tmp_path)

    def cut(command: str):
        subprocess.run(["sh", "-c", command], check=True)
        g._link._proc.kill()  # the guard's link goes with it: no answer to the abort
        return False, "no exit status within 2 s", True

    why = txn._commit_through(h, g, cut)
    assert g.status == "unreachable" and g.commit_unsure
    assert "wholly new if the commit reached it" in why
    assert (tmp_path / "mark").exists()
    g.close()


def test_a_login_that_failed_before_sending_undoes_the_node(tmp_path):
    h, g = opened(tmp_path)
    changed(g, tmp_path)
    why = txn._commit_through(h, g, lambda command: (False, "TimeoutError: timed out", False))
    assert g.status == "rolled-back" and not g.commit_unsure
    assert "previous state: rolled-back" in why
    assert not (tmp_path / "mark").exists()  # the undo ran on the node
    g.close()


def test_an_abort_waits_for_a_slow_undo_while_the_guard_beats_and_gives_up_on_silence(tmp_path):
    # An undo of 4 s with node_timeout 2: the guard's beat keeps the abort waiting.
    h, g = opened(tmp_path, node_timeout=2)
    changed(g, tmp_path)
    (tmp_path / "run" / f"txn.{g.token}" / "undo" / "0002-slow").write_text("sleep 4\n")
    g._greenlets.append(gevent.spawn(g._beat, h))
    assert g.abort("test") == "rolled-back"
    assert not (tmp_path / "mark").exists()
    g.close()
    # A guard that falls silent (stopped, not killed: its link stays open) is given up
    # within about node_timeout, not after the step deadline (20 s here).
    h, g = opened(tmp_path, node_timeout=2)
    changed(g, tmp_path)
    g._greenlets.append(gevent.spawn(g._beat, h))
    g._link._proc.send_signal(19)  # SIGSTOP
    try:
        with gevent.Timeout(10):
            assert g.abort("test") == "unreachable"
    finally:
        g._link._proc.send_signal(18)  # SIGCONT
        g._link._proc.kill()
    g.close()
