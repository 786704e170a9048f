"""One writer per site: `svcops plan` (and the deploy's compile) hold the site folder
for their whole run; a second one waits a bounded time, then fails naming the holder.

The holder here is a plain Python process holding `site_lock`, as `svcops apply` does
for its whole run; the contender is `svcops plan`, run as a user runs it."""

from __future__ import annotations

import os
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sitefs import INVENTORY, SVCOPS, add_service, copy_site, in_mount_namespace, needs_root, snapshot, svcops

from svcops.site.sitelock import SiteLocked, SiteLockError, lock_holder, site_lock

# Holds the site (argv[1]) until its stdin closes, or for argv[2] seconds.
HOLDER = (
    "import sys, time; from svcops.site.sitelock import site_lock\n"
    "with site_lock(sys.argv[1], timeout=0):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(float(sys.argv[2])) if sys.argv[2:] else sys.stdin.readline()\n"
)


class Holder:
    """A process that holds the site until released (or killed); bounded in time."""

    def __init__(self, site: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(site)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert _readline(self.proc.stdout, 30) == "held\n"

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


def _readline(stream, timeout: float) -> str:
    """One line from a pipe, waiting at most `timeout` seconds ("" if none came)."""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return stream.readline()


def test_a_second_plan_waits_then_fails_naming_the_holder(tmp_path):
    site = copy_site(tmp_path)
    add_service(site, "extra")  # this plan would write the lock
    before = snapshot(site)
    with Holder(site) as holder:
        start = time.monotonic()
        r = svcops("plan", "-i", INVENTORY, "--lock-timeout", "1", str(site), timeout=60)
        waited = time.monotonic() - start
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith(f"svcops: site {site} is locked by pid {holder.proc.pid} ("), lines
    assert lines[0].endswith("; waiting up to 1 s")
    last = lines[-1]
    assert last.startswith(f"svcops plan: site {site} is locked by pid {holder.proc.pid} (")
    assert f"{os.path.basename(sys.executable)} -c 'import sys, time; " in last and str(site) in last  # its command line
    assert " started " in last and last.endswith("; waited 1 s"), last
    assert waited >= 1.0  # it did wait for the holder
    assert r.stdout == ""
    assert snapshot(site) == before


def test_the_second_plan_goes_on_once_the_holder_is_done(tmp_path):
    site = copy_site(tmp_path)
    add_service(site, "extra")
    with Holder(site) as holder:
        plan = subprocess.Popen(
            [SVCOPS, "plan", "-i", INVENTORY, "--lock-timeout", "60", str(site)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        try:
            waiting = _readline(plan.stderr, 30)
            assert "is locked by pid" in waiting and "waiting up to 60 s" in waiting, waiting
            assert plan.poll() is None  # still waiting
            holder.release()
            out, err = plan.communicate(timeout=60)
        finally:
            if plan.poll() is None:
                plan.kill()
                plan.wait(timeout=30)
    assert plan.returncode == 0, err
    assert "default/extra" in (site / "svcops.lock").read_text()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    site = copy_site(tmp_path)
    add_service(site, "extra")
    with Holder(site) as holder:
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait(timeout=30)
        # No waiting at all: the kernel dropped the lock with the process.
        r = svcops("plan", "-i", INVENTORY, "--lock-timeout", "0", str(site))
    assert r.returncode == 0, r.stderr
    assert "default/extra" in (site / "svcops.lock").read_text()


@needs_root
def test_a_read_only_site_folder_still_locks(tmp_path):
    site = copy_site(tmp_path)
    q = shlex.quote
    ready = tmp_path / "held"
    script = (
        f"mount --bind {q(str(site))} {q(str(site))}; mount -o remount,bind,ro {q(str(site))}; "
        f"{q(sys.executable)} -c {q(HOLDER)} {q(str(site))} 30 > {q(str(ready))} 2>/dev/null & "
        f"for i in $(seq 300); do grep -q held {q(str(ready))} && break; sleep 0.1; done; "
        f"set +e; {SVCOPS} plan -i {q(INVENTORY)} --lock-timeout 0.5 {q(str(site))}; echo rc=$?; "
        f"kill $!"
    )
    r = in_mount_namespace(script)
    assert ready.read_text() == "held\n"  # the holder locked the read-only folder
    assert r.stdout.splitlines()[-1] == "rc=1", r.stderr
    assert f"svcops plan: site {site} is locked by pid " in r.stderr and r.stderr.rstrip().endswith("; waited 0.5 s")


def test_the_lock_is_reentrant_in_one_process_and_released_at_the_end(tmp_path):
    with site_lock(tmp_path, timeout=0):
        with site_lock(tmp_path, timeout=0):  # apply holds it; its compile takes it again
            pass
        r = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], input="", capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "SiteLocked" in r.stderr  # still held after the inner block
        assert f"is locked by pid {os.getpid()} (" in r.stderr
    r = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path)], input="", capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "held\n")


def test_a_site_that_cannot_be_locked_says_why(tmp_path):
    with pytest.raises(SiteLockError, match=r"^site .*/nowhere: cannot lock the folder: not found$"):
        with site_lock(tmp_path / "nowhere"):
            pass
    (tmp_path / "file").write_text("")
    with pytest.raises(SiteLockError, match=r"cannot lock the folder: not a folder$"):
        with site_lock(tmp_path / "file"):
            pass


def test_the_deploy_compile_holds_the_site_too(tmp_path):
    """`svcops apply` and `pyinfra ... deploys/services.py` compile through
    compile_from_hosts, which records allocations: it waits for the site as plan does."""
    from svcops.deploy import SiteError, compile_from_hosts

    site = copy_site(tmp_path)
    hosts = [("node1", {"ssh_hostname": "192.168.36.11", "svcops_address": "192.168.36.11"})]
    with Holder(site) as holder:
        with pytest.raises(SiteError) as e:
            compile_from_hosts(str(site), hosts, "inventory", lock_timeout=0.2)
    assert str(e.value).startswith(f"svcops: site {site} is locked by pid {holder.proc.pid} (")
    assert str(e.value).endswith("; waited 0.2 s (nothing was pushed)")
    assert compile_from_hosts(str(site), hosts, "inventory", lock_timeout=0).compiled is not None


def test_lock_holder_finds_this_process_in_proc_locks(tmp_path):
    with site_lock(tmp_path, timeout=0):
        who = lock_holder(os.stat(tmp_path))
    assert who is not None and who.startswith(f"pid {os.getpid()} (") and ", started " in who
    assert lock_holder(os.stat(tmp_path)) is None  # released
    assert SiteLocked.__mro__[1] is SiteLockError


def test_the_holder_is_described_as_ps_would_show_svcops(tmp_path):
    """From /proc as the kernel writes it (here a copy): the FLOCK line on the site's
    inode, the holder's command line (its interpreter dropped) and start time."""
    site = tmp_path / "site"
    site.mkdir()
    st = os.stat(site)
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    (proc / "locks").write_text(
        f"1: POSIX  ADVISORY  WRITE 99 {dev}:{st.st_ino} 0 EOF\n"  # a byte-range lock: not ours
        f"2: FLOCK  ADVISORY  WRITE 4242 {dev}:{st.st_ino} 0 EOF\n"
        f"2: -> FLOCK  ADVISORY  WRITE 77 {dev}:{st.st_ino} 0 EOF\n"  # a waiter
    )
    argv = ["/srv/svcops/.venv/bin/python3", "/srv/svcops/.venv/bin/svcops", "apply", "-i", "inventory/lab.py", "-y"]
    (proc / "4242" / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    ticks = os.sysconf("SC_CLK_TCK")
    boot = int(time.time()) - 3600
    (proc / "stat").write_text(f"cpu  1 2 3 4\nbtime {boot}\nprocesses 9\n")
    fields = ["S"] + ["0"] * 18 + [str(1800 * ticks)] + ["0"] * 30  # field 22: starttime, 1800 s after boot
    (proc / "4242" / "stat").write_text("4242 (svc ops) x) " + " ".join(fields) + "\n")
    started = time.strftime("%H:%M:%S", time.localtime(boot + 1800))
    if time.strftime("%Y-%m-%d", time.localtime(boot + 1800)) != time.strftime("%Y-%m-%d"):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(boot + 1800))
    assert lock_holder(st, str(proc)) == f"pid 4242 (svcops apply -i inventory/lab.py -y), started {started}"
    (proc / "4242" / "cmdline").unlink()
    assert lock_holder(st, str(proc)) == "pid 4242 (gone: a child of it still holds the folder open?)"


def test_the_site_is_free_as_soon_as_the_block_ends_under_gevent(tmp_path):
    """svcops apply runs monkey-patched by gevent, whose os.close defers closing a
    folder to its hub: the lock is released by an unlock of its own, not by the close."""
    script = (
        "import gevent, gevent.monkey; gevent.monkey.patch_all()\n"
        "gevent.get_hub()\n"  # as in svcops apply, once pyinfra has connected
        "import os, sys\n"
        "from svcops.site.sitelock import lock_holder, site_lock\n"
        "with site_lock(sys.argv[1], timeout=0):\n"
        "    print(lock_holder(os.stat(sys.argv[1])) is not None)\n"
        "print(lock_holder(os.stat(sys.argv[1])))\n"  # at once: the hub has not run yet
    )
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == ["True", "None"], r.stdout + r.stderr


def test_an_apply_waits_for_the_site_then_fails_naming_the_holder_and_pushes_nothing(tmp_path):
    # The lock is taken before any node is contacted: inventory/example.py's hosts are
    # never reached (they do not exist), the holder is named, the lock is untouched.
    site = copy_site(tmp_path)
    add_service(site, "extra")
    before = snapshot(site)
    with Holder(site) as holder:
        r = svcops("apply", "-i", INVENTORY, "-y", "--lock-timeout", "1", str(site), timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith(f"svcops apply: site {site} is locked by pid {holder.proc.pid} ("), last
    assert last.endswith("; waited 1 s; nothing was pushed"), last
    assert "Connected" not in r.stdout + r.stderr
    assert snapshot(site) == before
