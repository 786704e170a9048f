"""A big file patched on the node (`svcops.render.textpatch`): the controller sends the
changed chunks' lines only, and the node makes exactly the new text from its old file,
or fails (removing what it made) when that file is not what its index says."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess

import pytest

from svcops.render.textpatch import AVERAGE_LINES, MAX_LINES, chunks, edit_script, index_text, parse_index, plan_edit

LINES = [f"svc-{i}.ns-{i % 50}.svc IN A 10.96.{i // 256}.{i % 256}\n" for i in range(5000)]
OLD = "".join(LINES)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def edited(change) -> str:
    lines = list(LINES)
    change(lines)
    return "".join(lines)


EDITS = {
    "one line changed": lambda ls: ls.__setitem__(2500, "svc-2500.ns-0.svc IN A 10.96.9.9\n"),
    "a line added": lambda ls: ls.insert(1200, "new.ns-1.svc IN A 10.96.200.1\n"),
    "a line removed": lambda ls: ls.pop(4000),
    "the first line": lambda ls: ls.__setitem__(0, "; another header\n"),
    "the last line": lambda ls: ls.append("last.ns-2.svc IN A 10.96.200.2\n"),
    "three places": lambda ls: (ls.pop(100), ls.insert(2000, "x IN A 10.0.0.1\n"), ls.__setitem__(4500, "y IN A 10.0.0.2\n")),
}

SHELLS = ["sh"] + (["busybox"] if shutil.which("busybox") else [])


def run_patch(tmp_path, shell: str, old_file: str, edit, added: str) -> subprocess.CompletedProcess:
    (tmp_path / "old").write_text(old_file)
    (tmp_path / "added").write_text(added)
    script = edit_script(edit, str(tmp_path / "old"), str(tmp_path / "added"), str(tmp_path / "out"))
    env = dict(os.environ)
    if shell == "busybox":  # busybox's own head, tail, sha256sum and sh
        bb = tmp_path / "bb"
        bb.mkdir()
        for tool in ("sh", "head", "tail", "cat", "sha256sum", "rm", "echo"):
            (bb / tool).symlink_to(shutil.which("busybox"))
        env["PATH"] = str(bb)
        return subprocess.run([str(bb / "sh"), "-c", script], capture_output=True, text=True, env=env, timeout=30)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=30)


def test_chunks_are_whole_lines_cut_by_content_and_join_back_to_the_text():
    parts = chunks(OLD)
    assert "".join(parts) == OLD and all(p.endswith("\n") for p in parts)
    assert len(parts) > len(LINES) / (AVERAGE_LINES * 4) and max(p.count("\n") for p in parts) <= MAX_LINES
    # A line changed changes one chunk's digest; the others keep theirs.
    old_index, new_index = index_text(OLD, sha(OLD)), index_text(edited(EDITS["one line changed"]), "x")
    assert len(set(new_index.splitlines()[1:]) - set(old_index.splitlines()[1:])) == 1


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("what", sorted(EDITS))
def test_the_node_makes_exactly_the_new_text_from_its_file_and_the_lines_sent(tmp_path, shell, what):
    new = edited(EDITS[what])
    edit = plan_edit(index_text(OLD, sha(OLD)), sha(OLD), new, sha(new))
    assert edit is not None and len(edit.added) < len(new) / 5
    r = run_patch(tmp_path, shell, OLD, edit, edit.added)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_text() == new


@pytest.mark.parametrize("shell", SHELLS)
def test_a_file_that_is_not_what_its_index_says_fails_and_leaves_nothing(tmp_path, shell):
    new = edited(EDITS["one line changed"])
    edit = plan_edit(index_text(OLD, sha(OLD)), sha(OLD), new, sha(new))
    other = OLD.replace("svc-10.ns-10", "svc-10.ns-11")  # edited by hand on the node
    r = run_patch(tmp_path, shell, other, edit, edit.added)
    assert r.returncode == 1 and "not the text planned" in r.stderr
    assert not (tmp_path / "out").exists()


def test_no_patch_without_an_index_of_that_very_file_or_when_most_of_it_changed():
    new = edited(EDITS["one line changed"])
    index = index_text(OLD, sha(OLD))
    assert plan_edit(index, sha(OLD) + "x", new, sha(new)) is None  # another file than the index names
    assert plan_edit(index, None, new, sha(new)) is None  # no file
    assert plan_edit("", sha(OLD), new, sha(new)) is None and parse_index("garbage\n") is None
    rng = random.Random(7)
    shuffled = list(LINES)
    rng.shuffle(shuffled)
    assert plan_edit(index, sha(OLD), "".join(shuffled), "d") is None  # nearly every chunk new
    assert plan_edit(index, sha(OLD), new.rstrip("\n"), "d") is None  # no final newline: sent whole
