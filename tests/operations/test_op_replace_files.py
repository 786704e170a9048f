"""Many files in one step (`svcops.render.txn.replace_files_script`, behind
`svcops.operations.txn.replace_files`): one upload cut into each file's text, and an
undo that gives every previous file back."""

from __future__ import annotations

import subprocess

from svcops.render.txn import replace_files_script


def _run(script: str, stdin: str = "") -> None:
    subprocess.run(["sh", "-c", script], input=stdin, text=True, check=True)


def test_one_upload_writes_every_file_and_the_undo_puts_the_old_ones_back(tmp_path):
    d = tmp_path / "etc" / "record"
    d.mkdir(parents=True)
    (d / "a").write_text("old a\n")
    (d / "gone").write_text("removed by the step\n")
    new = {d / "a": "new a\nline 2\n", d / "b": "", d / "sub" / "c": "c without newline", d / "gone": None}
    texts = [t for t in new.values() if t is not None]
    entries = [(str(p), None if t is None else len(t.encode()), "600") for p, t in new.items()]
    change, undo = replace_files_script("tok", "0001", entries, run_dir=str(tmp_path / "run"))
    # pyinfra ends stdin with a newline: it must not land in any file.
    _run(change, "".join(texts) + "\n")
    assert (d / "a").read_text() == "new a\nline 2\n"
    assert (d / "b").read_text() == "" and (d / "sub" / "c").read_text() == "c without newline"
    assert not (d / "gone").exists()
    assert oct((d / "a").stat().st_mode & 0o777) == "0o600"
    # The upload is cut into the files, not kept beside them (a 10,000-service record is
    # 20 MB; a node's /run may hold little more than one copy).
    kept = sorted(p.name for p in (tmp_path / "run").rglob("*") if p.is_file())
    assert kept == ["0", "1.absent", "2.absent", "3"], kept  # the previous a and gone; b and c were absent
    _run(undo)
    assert (d / "a").read_text() == "old a\n" and (d / "gone").read_text() == "removed by the step\n"
    assert not (d / "b").exists() and not (d / "sub" / "c").exists()


def test_a_file_is_patched_from_the_lines_sent_and_the_undo_gives_the_old_one_back(tmp_path):
    import hashlib

    from svcops.render.textpatch import index_text, plan_edit

    old = "".join(f"line {i}\n" for i in range(3000))
    new = old.replace("line 1500\n", "line fifteen hundred\n")
    zone, other = tmp_path / "zone", tmp_path / "index"
    zone.write_text(old)
    sha = lambda t: hashlib.sha256(t.encode()).hexdigest()  # noqa: E731
    edit = plan_edit(index_text(old, sha(old)), sha(old), new, sha(new))
    sent = [edit.added, "the index\n"]
    entries = [(str(zone), len(edit.added), "644"), (str(other), len(sent[1]), "644")]
    change, undo = replace_files_script("tok", "0001", entries, run_dir=str(tmp_path / "run"), edits={0: edit})
    _run(change, "".join(sent) + "\n")
    assert zone.read_text() == new and other.read_text() == "the index\n"
    _run(undo)
    assert zone.read_text() == old and not other.exists()
