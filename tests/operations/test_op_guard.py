"""The node guard (`svcops.render.txn`), run for real with bash in a folder of its own:
it holds the node, undoes its apply unless committed (on abort, end of input, or
silence), waits for a step in progress before undoing, refuses steps once it is over,
repairs what a killed guard left, and cancels older svcops's dead-man switches.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from svcops.render.txn import (
    BUSY_EXIT,
    MAX_INLINE_UNDO,
    commit_command,
    guard_script,
    stdin_first,
    stdin_size,
    step_command,
    txn_dir,
    undo_path,
    undo_then,
)

pytestmark = pytest.mark.skipif(not shutil.which("flock") or not shutil.which("bash"), reason="needs bash and flock")


class Guard:
    """One guard process, spoken to as the controller does."""

    def __init__(self, run: Path, token: str, wait: int = 5, silence: int = 30, holder: str = "tester pid 1"):
        self.run, self.token = run, token
        self.p = subprocess.Popen(
            ["bash", "-c", guard_script(str(run)), "svcops-guard", token, str(wait), str(silence), "20", holder],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip

    def word(self, seconds: float = 10, pong: bool = False) -> str | None:
        """The guard's next word; its beats (``pong``) skipped unless `pong`."""
        end = time.monotonic() + seconds
        while True:
            ready, _, _ = select.select([self.p.stdout], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return None
            word = self.p.stdout.readline().strip()
            if word != "pong" or pong:
                return word

    def say(self, word: str) -> None:
        self.p.stdin.write(word + "\n")
        self.p.stdin.flush()

    @property
    def dir(self) -> Path:
        return Path(txn_dir(self.token, str(self.run)))

    def undo(self, seq: int, script: str) -> None:
        Path(undo_path(self.token, seq, f"s{seq}", str(self.run))).write_text(script)

    def step(self, change: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", "-c", step_command(self.token, change, 20, str(self.run))], capture_output=True, text=True, timeout=30)

    def end(self) -> int:
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        return self.p.wait(30)


@pytest.fixture
def run(tmp_path):
    return tmp_path / "run"


def test_it_holds_the_node_and_a_second_one_is_told_who_holds_it(run):
    a = Guard(run, "aaaa", holder="alice@ops pid 7 (svcops apply)")
    assert a.word() == "locked"
    b = Guard(run, "bbbb", wait=1)
    assert b.word() == "busy alice@ops pid 7 (svcops apply)"
    assert b.p.wait(10) == BUSY_EXIT
    a.say("done")
    assert a.p.wait(10) == 0
    c = Guard(run, "cccc", wait=1)
    assert c.word() == "locked"  # the lock went with the first guard
    c.end()


def test_end_of_input_undoes_every_step_newest_first(run, tmp_path):
    log = tmp_path / "log"
    g = Guard(run, "t1")
    assert g.word() == "locked"
    for i in (1, 2, 3):
        g.undo(i, f"echo undo{i} >> {log}\n")
        assert g.step(f"echo step{i} >> {log}").returncode == 0
    g.end()  # the controller went away without committing
    assert log.read_text().split() == ["step1", "step2", "step3", "undo3", "undo2", "undo1"]
    assert not g.dir.exists()
    assert not (run / "holder").exists()


def test_a_commit_through_another_connection_means_nothing_is_undone(run, tmp_path):
    log = tmp_path / "log"
    g = Guard(run, "t2")
    assert g.word() == "locked"
    g.undo(1, f"echo undo >> {log}\n")
    assert g.step(f"echo step >> {log}").returncode == 0
    assert subprocess.run(["sh", "-c", commit_command("t2", str(run))]).returncode == 0
    g.end()
    assert log.read_text().split() == ["step"]
    # A commit after the guard undid the apply fails (the node went back).
    assert subprocess.run(["sh", "-c", commit_command("t2", str(run))], capture_output=True).returncode != 0


def test_abort_answers_and_later_steps_are_refused(run, tmp_path):
    log = tmp_path / "log"
    g = Guard(run, "t3")
    assert g.word() == "locked"
    g.undo(1, f"echo undo >> {log}\n")
    assert g.step(f"echo step >> {log}").returncode == 0
    g.say("abort")
    assert g.word() == "rolled-back"
    r = g.step(f"echo late >> {log}")
    assert r.returncode != 0 and "stopped" in r.stderr
    g.say("abort")
    assert g.word() == "nothing"  # undone once only
    g.say("done")
    assert g.p.wait(10) == 0
    assert log.read_text().split() == ["step", "undo"]


def test_silence_undoes_the_apply_by_itself(run, tmp_path):
    log = tmp_path / "log"
    g = Guard(run, "t4", silence=2)
    assert g.word() == "locked"
    g.undo(1, f"echo undo >> {log}\n")
    assert g.step(f"echo step >> {log}").returncode == 0
    g.say("ping")
    assert g.word(pong=True) == "pong"
    # No word for two seconds: the guard takes the controller for gone.
    assert g.p.wait(15) == 0
    assert log.read_text().split() == ["step", "undo"]


def test_the_undo_waits_for_a_step_in_progress(run, tmp_path):
    log = tmp_path / "log"
    g = Guard(run, "t5")
    assert g.word() == "locked"
    g.undo(1, f"echo undo >> {log}\n")
    slow = subprocess.Popen(["sh", "-c", step_command("t5", f"sleep 1; echo step >> {log}", 20, str(run))])
    time.sleep(0.3)
    g.say("abort")
    assert g.word() == "rolled-back"
    assert slow.wait(10) == 0
    assert log.read_text().split() == ["step", "undo"]  # never the undo before the step's end
    g.end()


def test_a_failed_undo_is_said_and_its_output_kept(run):
    g = Guard(run, "t6")
    assert g.word() == "locked"
    g.undo(1, "echo 'cannot put it back' >&2; exit 1\n")
    assert g.step("true").returncode == 0
    g.say("abort")
    assert g.word() == "undo-failed"
    g.say("done")
    g.p.wait(10)
    assert "cannot put it back" in (run / "undo-t6.log").read_text()


def test_what_a_killed_guard_left_is_undone_before_the_next_apply(run, tmp_path):
    log = tmp_path / "log"
    g = Guard(run, "t7")
    assert g.word() == "locked"
    g.undo(1, f"echo undo-old >> {log}\n")
    assert g.step(f"echo step-old >> {log}").returncode == 0
    g.p.kill()  # the guard itself is killed: nothing undoes its apply...
    g.p.wait(10)
    nxt = Guard(run, "t8")
    # ...until the next apply's guard, which repairs it before it says it holds the node.
    assert nxt.word() == "repaired txn.t7 rolled-back"
    assert nxt.word() == "locked"
    assert log.read_text().split() == ["step-old", "undo-old"]
    assert not Path(txn_dir("t7", str(run))).exists()
    nxt.end()


def test_an_older_svcops_dead_man_switch_is_cancelled_and_never_fires(run, tmp_path):
    run.mkdir(parents=True)
    fired = tmp_path / "fired"
    # Older svcops: a detached timer that undoes its apply unless armed.TOKEN is gone.
    (run / "armed.old1").write_text("")
    timer = subprocess.Popen(
        ["setsid", "sh", "-c", f"echo $$ > {run}/pid.old1; sleep 2; mv {run}/armed.old1 {run}/fired.old1 && touch {fired}"],
    )
    time.sleep(0.3)
    g = Guard(run, "t9")
    assert g.word() == "locked"
    timer.wait(10)
    assert not fired.exists()
    assert (run / "cancelled.old1").exists()
    g.end()


def test_a_step_outside_an_armed_transaction_runs_nothing(run, tmp_path):
    run.mkdir(parents=True)
    os.makedirs(txn_dir("gone", str(run)))
    r = subprocess.run(["sh", "-c", step_command("gone", f"touch {tmp_path}/ran", 20, str(run))], capture_output=True, text=True)
    assert r.returncode != 0
    assert not (tmp_path / "ran").exists()


def test_a_step_that_comes_while_the_guard_removes_the_folder_leaves_nothing_in_it(run, tmp_path):
    """The guard undid the apply and is removing its folder (``rm -rf``: the files
    gone, the folder not yet) when a step sent before the Ctrl-C arrives: the step
    runs nothing and creates nothing there (a lock file made by flock would keep the
    folder, and the next apply would find it), nor does it re-make a folder gone."""
    run.mkdir(parents=True)
    t = Path(txn_dir("late", str(run)))
    t.mkdir()  # no armed, no undo folder, no lock file: the guard's rm -rf half done
    undos = [(undo_path("late", 1, "a", str(run)), "true\n")]
    r = subprocess.run(["sh", "-c", step_command("late", undo_then(undos, f"touch {tmp_path}/ran"), 20, str(run))], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "stopped" in r.stderr
    assert list(t.iterdir()) == [] and not (tmp_path / "ran").exists()
    t.rmdir()
    r = subprocess.run(["sh", "-c", step_command("late", "true", 20, str(run))], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and sorted(p.name for p in run.iterdir()) == []


def test_a_step_carries_its_undo_and_the_guard_runs_it(run, tmp_path):
    """`undo_then`: the undo scripts written by the step's own command (here-documents,
    nothing in them expanded, a line that looks like the delimiter included), before
    the change; an undo that cannot be written stops the change."""
    log = tmp_path / "log"
    g = Guard(run, "t9")
    assert g.word() == "locked"
    tricky = f"echo 'first $HOME' >> {log}\necho SVCOPS_UNDO >> {log}"  # no final newline
    undos = [(undo_path("t9", 1, "a", str(run)), tricky), (undo_path("t9", 2, "b", str(run)), f"echo second >> {log}\n")]
    command = step_command("t9", undo_then(undos, f"echo change >> {log}"), 20, str(run))
    assert subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30).returncode == 0
    assert log.read_text() == "change\n"
    blocked = step_command("t9", undo_then([(str(tmp_path / "no" / "such" / "folder"), "true\n")], f"echo never >> {log}"), 20, str(run))
    assert subprocess.run(["sh", "-c", blocked], capture_output=True, text=True, timeout=30).returncode != 0
    assert g.end() == 0  # end of input: undone, newest first
    assert log.read_text() == "change\nsecond\nfirst $HOME\nSVCOPS_UNDO\n"
    assert undo_then([("/x", "y" * (MAX_INLINE_UNDO + 1))], "true") is None


def test_while_it_undoes_the_guard_beats_and_the_beat_ends_with_it(run, tmp_path):
    """An undo that takes a while (here 3 s) keeps the guard answering: a beat (pong)
    each second, so the controller can tell a busy guard from a cut connection; the
    beat stops with the undo, and never outlives a guard killed meanwhile."""
    g = Guard(run, "tb")
    assert g.word() == "locked"
    g.undo(1, "sleep 3\n")
    assert g.step("true").returncode == 0
    g.say("abort")
    words: list[str | None] = []
    while len(words) < 6 and "rolled-back" not in words:
        words.append(g.word(10, pong=True))
    assert words[:2] == ["pong", "pong"] and words[-1] == "rolled-back", words
    assert g.word(2.5, pong=True) in (None, "rolled-back")  # no beat once the undo is over
    g.say("done")
    assert g.p.wait(10) == 0
    k = Guard(run, "tk")
    assert k.word() == "locked"
    k.undo(1, "sleep 30\n")
    assert k.step("true").returncode == 0
    k.say("abort")
    assert k.word(5, pong=True) == "pong"
    k.p.kill()
    k.p.wait(10)
    # The beat writes to the guard's output: that output ends (every writer gone) once
    # the beat has seen its guard die, within about a second.
    end = time.monotonic() + 5
    while time.monotonic() < end:
        ready, _, _ = select.select([k.p.stdout], [], [], 0.5)
        if ready and k.p.stdout.readline() == "":
            break
    else:
        raise AssertionError("the beat outlived its guard")
    assert time.monotonic() < end


def test_a_commit_that_reached_the_node_is_said_on_abort(run, tmp_path):
    """The commit went through a fresh login and its answer was lost: the controller's
    abort is told ``committed`` (the node is new), never ``nothing``."""
    log = tmp_path / "log"
    g = Guard(run, "tc")
    assert g.word() == "locked"
    g.undo(1, f"echo undo >> {log}\n")
    assert g.step(f"echo step >> {log}").returncode == 0
    assert subprocess.run(["sh", "-c", commit_command("tc", str(run))]).returncode == 0
    g.say("abort")
    assert g.word() == "committed"
    g.say("done")
    assert g.p.wait(10) == 0
    assert log.read_text().split() == ["step"]


def _stdin_step(run: Path, token: str, change: str, text: str) -> list[str]:
    return ["sh", "-c", stdin_first(token, step_command(token, change, 20, str(run)), stdin_size(text), str(run))]


def test_an_upload_cut_off_midway_holds_nothing_and_runs_nothing(run, tmp_path):
    """A step whose standard input stops arriving (the connection cut mid-upload) waits
    holding no lock: the guard undoes the apply at once when its controller goes, and
    removes the half-read upload; when that input finally ends, the step runs nothing."""
    log = tmp_path / "log"
    g = Guard(run, "tu")
    assert g.word() == "locked"
    g.undo(1, f"echo undo >> {log}\n")
    assert g.step(f"echo step >> {log}").returncode == 0
    text = "line one\nline two\n"
    stuck = subprocess.Popen(_stdin_step(run, "tu", f"cat >> {log}", text), stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stuck.stdin.write("line one\n")  # half of it, and the rest never comes
    stuck.stdin.flush()
    time.sleep(0.3)
    assert g.end() == 0  # at once: nothing holds the step lock
    assert log.read_text().split() == ["step", "undo"]
    assert sorted(p.name for p in run.iterdir()) == ["node.lock"]  # nor the upload left behind
    stuck.stdin.write("line two\n")
    stuck.stdin.close()
    assert stuck.wait(10) != 0
    assert log.read_text().split() == ["step", "undo"]


def test_an_upload_that_ends_short_runs_nothing_and_a_whole_one_runs(run, tmp_path):
    out = tmp_path / "out"
    g = Guard(run, "ts")
    assert g.word() == "locked"
    text = "alpha\nbeta"  # pyinfra adds the final newline
    short = subprocess.run(_stdin_step(run, "ts", f"cat > {out}", text), input="alpha\n", capture_output=True, text=True, timeout=30)
    assert short.returncode != 0 and "cut short" in short.stderr
    assert not out.exists()
    whole = subprocess.run(_stdin_step(run, "ts", f"cat > {out}", text), input=text + "\n", capture_output=True, text=True, timeout=30)
    assert whole.returncode == 0, whole.stderr
    assert out.read_text() == "alpha\nbeta\n"
    assert [p.name for p in run.iterdir() if p.name.startswith("in.")] == []
    g.say("done")
    assert g.p.wait(10) == 0
