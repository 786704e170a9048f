"""What is in the site folder, as the file system has it: a FIFO, a device, a folder or
a symlink loop where a file belongs, files svcops may not read, a read-only folder, a
full disk. Each is one clear line naming the path, exit status 1 within seconds, and
nothing changed: no byte of the site, no temporary file left behind."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest
from sitefs import INVENTORY, SVCOPS, add_service, copy_site, in_mount_namespace, needs_root, snapshot, svcops

from svcops.site.files import read_file

FIFO = "is a FIFO (named pipe), not a regular file"

# (what is put where, the message svcops must print, as file: message)
BAD_ENTRIES = {
    "lock-fifo": ("svcops.lock", "fifo", f"svcops.lock: {FIFO}"),
    "config-fifo": ("svcops.yaml", "fifo", f"svcops.yaml: {FIFO}"),
    "manifest-fifo": ("services/extra.yaml", "fifo", f"services/extra.yaml: {FIFO}"),
    "lock-folder": ("svcops.lock", "dir", "svcops.lock: is a folder, not a regular file"),
    "manifest-folder": ("services/extra.yaml", "dir", "services/extra.yaml: is a folder, not a regular file"),
    "lock-symlink-loop": ("svcops.lock", "loop", "svcops.lock: is a symlink loop (too many levels of symbolic links)"),
    "config-dangling": ("svcops.yaml", "dangling", "svcops.yaml: is a symlink to nowhere.yaml, which does not exist"),
    "manifest-dangling": ("services/gone.yaml", "dangling", "services/gone.yaml: is a symlink to nowhere.yaml, which does not exist"),
    # Reading /dev/zero never ends: a device is refused before it is opened.
    "lock-device": ("svcops.lock", "/dev/zero", "svcops.lock: is a character device, not a regular file"),
    "services-a-file": ("services", "file", "services: is a regular file, not a folder"),
}


def make_bad(site, rel: str, what: str) -> None:
    path = site / rel
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    if what == "fifo":
        os.mkfifo(path)
    elif what == "dir":
        path.mkdir()
    elif what == "loop":
        path.symlink_to(path.name)
    elif what == "dangling":
        path.symlink_to("nowhere.yaml")
    elif what == "file":
        path.write_text("not a folder\n")
    else:
        path.symlink_to(what)


# Every case through validate and plan; render and explain read the site the same way
# (one case each, a hang being the failure that matters there).
CASES = [(case, command) for case in sorted(BAD_ENTRIES) for command in ("validate", "plan")]
CASES += [("lock-fifo", "render"), ("config-fifo", "explain")]


@pytest.mark.parametrize("case,command", CASES)
def test_a_bad_entry_in_the_site_is_one_clear_error_and_changes_nothing(tmp_path, case, command):
    rel, what, message = BAD_ENTRIES[case]
    site = copy_site(tmp_path)
    add_service(site, "extra")  # a plan would write the lock, were the site good
    make_bad(site, rel, what)
    before = snapshot(site)
    argv = {
        "validate": ["validate", str(site)],
        "plan": ["plan", "-i", INVENTORY, str(site)],
        "render": ["render", "-i", INVENTORY, "--node", "node1", str(site)],
        "explain": ["explain", "-i", INVENTORY, "--node", "node1", "10.1.11.83:8000", str(site)],
    }[command]
    r = svcops(*argv, timeout=30)
    assert r.returncode == 1, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("svcops: ")]
    assert errors == [message], r.stderr  # that one line, no follow-on noise, no traceback
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert snapshot(site) == before


def test_the_site_folder_itself_must_be_a_folder(tmp_path):
    (tmp_path / "site").write_text("x\n")
    r = svcops("validate", str(tmp_path / "site"))
    assert (r.returncode, r.stderr.splitlines()[0]) == (1, f"{tmp_path / 'site'}: site folder is a regular file, not a folder")
    r = svcops("plan", "-i", INVENTORY, str(tmp_path / "nowhere"))
    assert (r.returncode, r.stderr.splitlines()[0]) == (1, f"{tmp_path / 'nowhere'}: site folder not found")


def test_hidden_and_other_files_in_services_are_still_ignored(tmp_path):
    # Editors' swap files, a README, a FIFO named otherwise: not manifests, not read.
    site = copy_site(tmp_path)
    os.mkfifo(site / "services" / ".extra.yaml.swp")
    os.mkfifo(site / "services" / "notes")
    (site / "services" / "README.md").write_text("# notes\n")
    r = svcops("validate", str(site), timeout=30)
    assert r.returncode == 0, r.stderr


def test_a_symlink_to_a_regular_file_is_read(tmp_path):
    site = copy_site(tmp_path)
    (site / "elsewhere.yaml").write_bytes((site / "services" / "nginx.yaml").read_bytes())
    (site / "services" / "nginx.yaml").unlink()
    (site / "services" / "nginx.yaml").symlink_to("../elsewhere.yaml")
    r = svcops("validate", str(site))
    assert r.returncode == 0, r.stderr
    assert "valid (4 services)" in r.stdout


def test_read_file_refuses_a_file_swapped_for_a_fifo_after_the_stat(tmp_path, monkeypatch):
    """The stat says regular file; by the open it is a FIFO: fstat of what was opened
    (O_NONBLOCK, so the open itself returns at once) refuses it."""
    path = tmp_path / "svcops.lock"
    path.write_text("version: 2\n")
    real_open = os.open

    def swap_then_open(p, flags, *args):
        if os.fspath(p) == str(path):
            path.unlink()
            os.mkfifo(path)
        return real_open(p, flags, *args)

    monkeypatch.setattr(os, "open", swap_then_open)
    data, diags = read_file(path, "svcops.lock")
    assert data is None and [str(d) for d in diags] == [f"svcops.lock: {FIFO}"]


# --- what root may not read ---------------------------------------------------------------

# Root reads everything: take the capabilities that let it (CAP_DAC_OVERRIDE and
# CAP_DAC_READ_SEARCH) out of the command's bounding set, so file modes apply to it.
NO_DAC = ("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search")
needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv (to drop root's file access)"
)


@needs_setpriv
@pytest.mark.parametrize(
    "rel,message",
    [
        ("svcops.lock", "svcops.lock: cannot read: permission denied"),
        ("svcops.yaml", "svcops.yaml: cannot read: permission denied"),
        ("services/nginx.yaml", "services/nginx.yaml: cannot read: permission denied"),
        ("services", "services: cannot be opened: permission denied"),
    ],
)
def test_a_file_or_folder_svcops_may_not_read_is_one_clear_error(tmp_path, rel, message):
    site = copy_site(tmp_path)
    os.chmod(site / rel, 0)
    before = snapshot(site)
    for argv in (["validate", str(site)], ["plan", "-i", INVENTORY, str(site)]):
        r = svcops(*argv, prefix=NO_DAC)
        assert r.returncode == 1, r.stderr
        assert [ln for ln in r.stderr.splitlines() if not ln.startswith("svcops: ")] == [message], r.stderr
    assert snapshot(site) == before


@needs_setpriv
def test_a_site_folder_svcops_may_not_open_is_one_clear_error(tmp_path):
    site = copy_site(tmp_path)
    os.chmod(site, 0o100)  # may be entered, not listed
    r = svcops("plan", "-i", INVENTORY, str(site), prefix=NO_DAC)
    os.chmod(site, 0o755)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == f"{site}: site folder cannot be opened: permission denied"


# --- writing the lock: a read-only folder, a full disk -----------------------------------


def _ro_plan(site, *extra: str) -> str:
    """A script: bind `site` read-only onto itself, run svcops plan, print its status."""
    q = shlex.quote(str(site))
    return (
        f"mount --bind {q} {q}; mount -o remount,bind,ro {q}; "
        f"set +e; {SVCOPS} plan -i {shlex.quote(INVENTORY)} {' '.join(extra)} {q}; echo rc=$?"
    )


@needs_root
def test_plan_on_a_read_only_folder_with_new_allocations_fails_cleanly(tmp_path):
    site = copy_site(tmp_path)
    add_service(site, "extra")
    before = snapshot(site)
    r = in_mount_namespace(_ro_plan(site))
    assert r.stdout.splitlines()[-1] == "rc=1", r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [
        "svcops.lock: cannot write: the site folder is on a read-only file system (svcops.lock is unchanged)",
        "svcops: 1 error; nothing was changed",
    ]
    assert snapshot(site) == before


@needs_root
def test_plan_on_a_read_only_folder_with_nothing_to_record_succeeds(tmp_path):
    # A read-only checkout (CI) plans as long as the lock is up to date, old format included.
    site = copy_site(tmp_path)
    shutil.copy(os.path.join(os.path.dirname(__file__), "v1.svcops.lock"), site / "svcops.lock")
    before = snapshot(site)
    r = in_mount_namespace(_ro_plan(site))
    assert r.stdout.splitlines()[-1] == "rc=0", r.stderr
    assert "no change" in r.stdout
    assert snapshot(site) == before


@needs_root
def test_plan_on_a_full_disk_fails_cleanly_and_leaves_no_temporary(tmp_path):
    """A small tmpfs, filled up: the temporary lock is created, its write fails
    (ENOSPC), it is removed, and the old lock is there, byte for byte."""
    disk = tmp_path / "disk"
    disk.mkdir()
    original = copy_site(tmp_path, "original")
    add_service(original, "extra")
    q = shlex.quote
    script = (
        f"mount -t tmpfs -o size=512k tmpfs {q(str(disk))}; cp -a {q(str(original))} {q(str(disk / 'site'))}; "
        f"dd if=/dev/zero of={q(str(disk / 'fill'))} bs=4k 2>/dev/null || true; "
        f"set +e; {SVCOPS} plan -i {q(INVENTORY)} {q(str(disk / 'site'))}; echo rc=$?; "
        f"cmp {q(str(disk / 'site' / 'svcops.lock'))} {q(str(original / 'svcops.lock'))} && echo lock-unchanged; "
        f"ls -A {q(str(disk / 'site'))}"
    )
    r = in_mount_namespace(script)
    out = r.stdout.splitlines()
    assert "rc=1" in out, r.stderr
    assert r.stderr.splitlines() == [
        "svcops.lock: cannot write: no space left on the device (svcops.lock is unchanged)",
        "svcops: 1 error; nothing was changed",
    ]
    assert "lock-unchanged" in out
    assert out[out.index("lock-unchanged") + 1 :] == ["services", "svcops.lock", "svcops.yaml"]  # no .svcops.lock.*.tmp


# --- a lock cut short, and the lock in git ------------------------------------------------


@pytest.mark.parametrize("keep", [9, 16], ids=["cut-after-clusterIPs", "cut-inside-nodeAddresses"])
def test_a_lock_cut_at_a_line_boundary_is_an_error_and_nothing_is_allocated_again(tmp_path, keep):
    site = copy_site(tmp_path)
    lines = (site / "svcops.lock").read_text().splitlines(keepends=True)
    (site / "svcops.lock").write_text("".join(lines[:keep]))
    before = snapshot(site)
    message = f"svcops.lock:{keep}: ends without its closing line ('# end of svcops.lock'): it was cut short (restore it from git)"
    for argv in (["validate", str(site)], ["plan", "-i", INVENTORY, str(site)]):
        r = svcops(*argv)
        assert r.returncode == 1, (argv, r.stdout, r.stderr)
        assert message in r.stderr.splitlines(), r.stderr
        assert "Traceback" not in r.stderr
    assert snapshot(site) == before  # not rewritten, nothing allocated anew


def _git(repo, *argv: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(repo)}
    r = subprocess.run(["git", *argv], cwd=repo, capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, f"git {' '.join(argv)}: {r.stdout}{r.stderr}"
    return r.stdout


@pytest.mark.skipif(not shutil.which("git"), reason="needs git")
def test_two_branches_that_add_different_services_merge_without_conflict(tmp_path):
    """The closing line is the same on every branch: the lock still merges as a sorted
    list of lines does (no count or checksum to disagree on)."""
    repo = tmp_path / "repo"
    site = copy_site(repo.parent, "repo")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "site")
    for branch, name, port in (("left", "aaa-first", 9001), ("right", "zzz-last", 9002)):
        _git(repo, "checkout", "-q", "-b", branch, "main")
        add_service(site, name, port)
        assert svcops("plan", "-i", INVENTORY, str(site)).returncode == 0
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", name)
    _git(repo, "checkout", "-q", "left")
    _git(repo, "merge", "-q", "--no-edit", "right")  # asserts no conflict
    text = (site / "svcops.lock").read_text()
    assert "default/aaa-first:" in text and "default/zzz-last:" in text
    assert text.endswith("# end of svcops.lock\n")
    r = svcops("plan", "-i", INVENTORY, "--detailed-exitcode", str(site))
    assert r.returncode == 0, r.stdout + r.stderr  # the merged lock holds both; nothing moves
