"""One apply, one transaction per node: ``txn.begin``, ``txn.step``, ``txn.commit``.

    from svcops.operations import iptables, node, txn

    txn.begin(name="svcops | begin")           # lock the node; from here on, all or nothing
    iptables.rules(name="svcops | rules", rules=plan.output.iptables)
    node.files(name="svcops | files", files=plan.files)
    txn.commit(name="svcops | commit")         # a fresh SSH login proves access, then commit

`begin` starts the node guard (`svcops.render.txn`: a bash process on the node, on its
own SSH channel of the apply's connection) and waits until it holds the node's lock.
Every svcops operation after it changes the node in *steps* (`step`): each first leaves
how to undo itself in the transaction, then runs under the step lock. `commit` opens a
fresh SSH connection (so the new rules still let an operator in) and commits through
it. Anything else undoes every step, newest first, on the node itself: the
controller's ``abort`` (a step failed, Ctrl-C), the controller's end (killed, crashed,
disconnected: the guard reads end of input) or its silence (the connection is cut:
no heartbeat for ``rollback_after`` seconds). So a node ends wholly old or wholly new.

The controller side: while the transaction is open a heartbeat goes to the guard every
second (`HEARTBEAT`); a node that does not answer for ``node_timeout`` seconds is
reported unreachable and its connection closed, so nothing waits on it any longer (its
guard undoes the apply by itself). `guard_of` and `NodeGuard.abort` are for `svcops.apply`.

An svcops operation used on its own, outside begin/commit, is its own transaction
(`ensure`/`finish`): it locks the node only once it has decided to change something.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shlex
import socket
import sys
import time
import weakref
from dataclasses import dataclass, field

import gevent
import gevent.event
from gevent.queue import Empty, Queue
from pyinfra import host, logger
from pyinfra.api import StringCommand, operation
from pyinfra.context import ctx_host

from svcops.operations.guard import VERIFY_TIMEOUT, run_on_fresh_connection
from svcops.operations.util import error, write_file_command
from svcops.render.txn import (
    literal_write,
    RUN_DIR,
    backup_and_remove,
    backup_and_write,
    commit_command,
    guard_script,
    replace_files_script,
    script_step as script_step_text,
    stdin_first,
    stdin_size,
    step_command,
    txn_dir,
    undo_path,
    undo_then,
    MAX_INLINE_UNDO,
)

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_NODE_TIMEOUT",
    "DEFAULT_STEP_DEADLINE",
    "DEFAULT_ROLLBACK_AFTER",
    "HEARTBEAT",
    "NodeGuard",
    "begin",
    "commit",
    "step",
    "undo_first",
    "current",
    "ensure",
    "finish",
    "guard_of",
    "STOPPING",
    "files_dir",
    "upload",
    "replace_file",
    "replace_files",
    "remove_files",
    "script_step",
]

DEFAULT_LOCK_TIMEOUT = 30  # seconds a second apply waits for a node another one holds
DEFAULT_NODE_TIMEOUT = 10  # seconds without an answer after which a node is unreachable
DEFAULT_STEP_DEADLINE = 300  # seconds one step (or one undo script) may run on the node
DEFAULT_ROLLBACK_AFTER = 60  # seconds of controller silence after which a node undoes the apply
HEARTBEAT = 1.0  # seconds between two pings to the guard


def _holder() -> str:
    """Who this apply is, one line, for whoever has to wait for it."""
    try:
        user = getpass.getuser()
    except Exception:
        user = "?"
    argv = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:120]
    text = f"{user}@{socket.gethostname()} pid {os.getpid()} since {time.strftime('%H:%M:%S')} ({argv})"
    return "".join(c if c.isprintable() else "?" for c in text)


class _Link:
    """A line channel to the guard: one SSH session channel on the apply's own
    connection, or a local process for ``@local`` hosts."""

    def __init__(self, connector, argv: list[str]):
        from pyinfra.connectors.ssh import SSHConnector

        self._proc = None
        self._chan = None
        self._transport = None
        if isinstance(connector, SSHConnector):
            self._transport = connector.client.get_transport()
            self._chan = self._transport.open_session(timeout=DEFAULT_NODE_TIMEOUT)
            self._chan.exec_command(shlex.join(argv))
        else:
            from gevent import subprocess

            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def send(self, text: str) -> None:
        data = text.encode()
        if self._chan is not None:
            self._chan.sendall(data)
        else:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()

    def recv(self) -> bytes:
        if self._chan is not None:
            return self._chan.recv(4096)
        return self._proc.stdout.read1(4096)

    def lines(self):
        """Each line the other end writes, until it closes (or the connection goes)."""
        buf = b""
        while True:
            try:
                data = self.recv()
            except Exception:
                data = b""
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.decode(errors="replace").strip()

    def close(self) -> None:
        try:
            if self._chan is not None:
                self._chan.close()
            elif self._proc is not None:
                self._proc.stdin.close()
        except Exception:
            pass

    def cut(self) -> None:
        """Give up on the node: close the whole connection, so that every command
        still waiting on it fails at once."""
        if self._transport is not None:
            self._transport.close()
        elif self._proc is not None:
            self._proc.kill()


@dataclass(eq=False)
class NodeGuard:
    """The controller's end of one node's transaction.

    status: opening, open, busy (another apply holds the node), committed,
            rolled-back, undo-failed, unreachable, failed
    changed: a step has run (so there is something to undo)
    """

    name: str
    token: str
    rollback_after: int
    node_timeout: float
    deadline: int
    status: str = "opening"
    changed: bool = False
    detail: str = ""
    seq: int = 0
    last_heard: float = field(default_factory=time.monotonic)
    gone: bool = False  # the guard's channel has ended (or the connection was cut)
    commit_unsure: bool = False  # a commit was sent and its answer lost: old or new, unknown here
    run_dir: str = RUN_DIR  # the node's run folder (another only in tests)
    pending: list = field(default_factory=list)  # undo scripts of `undo_first`, written with the next step
    _link: _Link | None = None
    _words: Queue = field(default_factory=Queue)
    _greenlets: list = field(default_factory=list)

    # --- talking to the guard ---------------------------------------------------------

    def _read(self) -> None:
        for word in self._link.lines():
            self.last_heard = time.monotonic()
            if word != "pong":
                self._words.put(word)
        self.gone = True
        self._words.put(None)

    def _beat(self, host) -> None:
        while self.status == "open":
            gevent.sleep(HEARTBEAT)
            if self.status != "open":
                return
            try:
                self._link.send("ping\n")
            except Exception:
                pass
            silent = time.monotonic() - self.last_heard
            if silent > self.node_timeout:
                self.status = "unreachable"
                self.detail = f"no answer for {silent:.0f} s"
                host.log_styled(
                    f"svcops: the node has not answered for {silent:.0f} s: unreachable; "
                    + (
                        f"it undoes this apply by itself {self.rollback_after} s after it last heard from svcops"
                        if self.changed
                        else "nothing was changed on it"
                    ),
                    fg="red",
                    log_func=logger.error,
                )
                self._link.cut()
                return

    def send(self, word: str) -> bool:
        try:
            self._link.send(word + "\n")
            return True
        except Exception:
            return False

    def expect(self, timeout: float) -> str | None:
        """The guard's next word (None: it went away, or said nothing in `timeout` s)."""
        try:
            return self._words.get(timeout=timeout)
        except Empty:
            return None

    def open(self, host, lock_timeout: float) -> str | None:
        """Start the guard and wait for the node's lock; None when held, else why not."""
        argv = [
            "bash", "-c", guard_script(self.run_dir), "svcops-guard", self.token, str(int(lock_timeout)),
            str(int(self.rollback_after)), str(int(self.deadline)), _holder(),
        ]  # fmt: skip
        try:
            self._link = _Link(getattr(host, "connector", None), argv)
        except Exception as e:
            self.status = "failed"
            return f"could not start svcops's node guard: {type(e).__name__}: {e}"
        self._greenlets.append(gevent.spawn(self._read))
        waited = time.monotonic()
        while True:
            # The guard says "locked" once it holds the node (after repairing leftovers).
            word = self.expect(lock_timeout + self.deadline + 30)
            if word is None:
                self.status = "failed"
                return "the node guard ended before it held the node (is bash and flock there? /run writable?)"
            if word.startswith("repaired "):
                what = word.split()[1:]
                host.log_styled(
                    f"svcops: an earlier apply was interrupted here ({what[0]}): {' '.join(what[1:])} before this one",
                    fg="yellow",
                    log_func=logger.warning,
                )
                continue
            if word == "locked":
                self.status = "open"
                self.last_heard = time.monotonic()
                if STOPPING.is_set():
                    self.abort("interrupted (Ctrl-C)")
                    return "interrupted (Ctrl-C) before any change"
                self._greenlets.append(gevent.spawn(self._beat, host))
                return None
            if word.startswith("busy"):
                self.status = "busy"
                who = word[4:].strip() or "another apply"
                self.detail = f"busy: held by {who}"
                return f"the node is being changed by another apply: {who}; waited {time.monotonic() - waited:.0f} s"
            self.status = "failed"
            return f"the node guard said: {word}"

    def abort(self, why: str = "") -> str:
        """Undo the transaction on the node now; the outcome: rolled-back (or nothing
        to undo), undo-failed, committed (a commit through a fresh login reached the
        node after all), or unreachable (no answer: the node undoes it by itself). The
        guard beats while it undoes: the wait ends as soon as it falls silent for
        `node_timeout` seconds (the heartbeat then gives the node up)."""
        if self.status != "open":
            return self.status
        word = None
        if self.send("abort"):
            # The undo waits for a step in progress, then runs every undo script.
            deadline = time.monotonic() + self.deadline + 30
            while time.monotonic() < deadline and self.status == "open":
                word = self.expect(min(HEARTBEAT, max(0.0, deadline - time.monotonic())))
                if word in ("rolled-back", "nothing", "undo-failed", "committed"):
                    break
                if word is None and self.gone:
                    break
        if word in ("rolled-back", "nothing"):
            self.status, self.detail = "rolled-back", why
        elif word in ("undo-failed", "committed"):
            self.status, self.detail = word, why
        else:
            self.status = "unreachable"
            self.detail = why or "no answer to the abort"
        self.send("done")
        return self.status

    def close(self) -> None:
        self.status = self.status if self.status != "open" else "failed"
        if self._link is not None:
            self._link.close()
        for g in self._greenlets:
            g.kill(block=False)


_GUARDS: "weakref.WeakKeyDictionary[object, NodeGuard]" = weakref.WeakKeyDictionary()


def guard_of(h) -> NodeGuard | None:
    """The transaction of host `h` in this run (open or finished), if any."""
    return _GUARDS.get(h) if h is not None else None


def current(h=None) -> NodeGuard | None:
    """The open transaction of the current host (None outside one)."""
    g = guard_of(h if h is not None else ctx_host.get())
    return g if g is not None and g.status == "open" else None


def _executing() -> bool:
    from pyinfra.context import ctx_state

    state = ctx_state.get()
    return bool(state is not None and state.is_executing)


def _open(h, lock_timeout, rollback_after, node_timeout, deadline) -> str | None:
    g = NodeGuard(h.name, secrets.token_hex(6), int(rollback_after), float(node_timeout), int(deadline))
    _GUARDS[h] = g
    return g.open(h, lock_timeout)


def _commit(h, g: NodeGuard, verify_ssh: bool) -> str | None:
    """Commit `g`; None when committed, else why not (the node was rolled back)."""
    if not g.changed:
        # Nothing was changed: nothing to prove, nothing to undo.
        g.status = "committed"
        g.send("done")
        return None
    from pyinfra.connectors.ssh import SSHConnector

    if verify_ssh and isinstance(getattr(h, "connector", None), SSHConnector):
        # Bounded like every other wait on the node: silent for node_timeout, given up.
        timeout = min(VERIFY_TIMEOUT, max(1.0, g.node_timeout))
        return _commit_through(h, g, lambda command: run_on_fresh_connection(h, command, timeout))
    g.send("commit")
    word = g.expect(g.node_timeout + 5)
    if word == "committed":
        g.status = "committed"
        g.send("done")
        return None
    g.abort("the commit was refused")
    return f"the node refused the commit ({word or 'no answer'})"


def _commit_through(h, g: NodeGuard, login) -> str | None:
    """Commit `g` through `login` (the commit command -> (exited 0, why not, sent), as
    `run_on_fresh_connection`); on failure undo it through the guard, or say truly what
    is not known: a commit sent whose answer was lost may have landed."""
    ok, why, sent = login(commit_command(g.token, g.run_dir))
    if ok:
        g.status = "committed"
        g.send("done")
        return None
    h.log_styled(f"svcops: a fresh SSH connection failed after the change ({why}): rolling back", fg="red", log_func=logger.error)
    outcome = g.abort(f"a fresh SSH login failed ({why})")
    if outcome == "rolled-back":
        h.log_styled("svcops: the node's previous state is restored", fg="yellow", log_func=logger.warning)
    if outcome == "committed":
        # The commit reached the node, only its answer was lost: the node is new.
        h.log_styled("svcops: the node had committed after all (its answer was lost)", fg="yellow", log_func=logger.warning)
        g.status = "committed"
        return None
    if outcome == "unreachable" and sent:
        g.commit_unsure = True
        return (
            f"the commit through a fresh SSH login got no answer ({why}) and the node stopped answering: "
            f"it ends wholly as before by itself within {g.rollback_after} s of silence, "
            "or wholly new if the commit reached it (svcops check tells)"
        )
    return f"a fresh SSH login failed after the change ({why}); the node's previous state: {outcome}"


def ensure(lock_timeout=DEFAULT_LOCK_TIMEOUT, rollback_after=DEFAULT_ROLLBACK_AFTER):
    """For an operation used on its own: open a transaction when none is open (a
    generator: ``implicit = yield from txn.ensure()``; True when it opened one)."""
    h = ctx_host.get()
    g = guard_of(h)
    if g is not None and g.status != "open":
        yield error(f"svcops: this node's apply was stopped ({g.status}); nothing more is changed")
        return False
    if g is not None or not _executing():
        return False
    why = _open(h, lock_timeout, rollback_after, DEFAULT_NODE_TIMEOUT, DEFAULT_STEP_DEADLINE)
    if why:
        yield error(f"svcops: {why}; nothing changed")
    return True


def finish(verify_ssh: bool = True):
    """The end of `ensure`'s transaction (a generator: ``yield from txn.finish(...)``)."""
    h = ctx_host.get()
    g = current(h)
    if g is None:
        return
    why = _commit(h, g, verify_ssh)
    g.close()
    if why:
        yield error(f"svcops: {why}")


def _take_step(g: NodeGuard):
    """Count one more step of `g`'s transaction; or, once it has ended (rolled back,
    unreachable, interrupted), the error to yield instead: nothing more is changed."""
    if g.status != "open":
        return error(f"svcops: this node's apply was stopped ({g.status}); nothing more is changed")
    g.seq += 1
    g.changed = True
    return None


def step(what: str, change: str, undo: str | None = None, stdin: str | None = None):
    """The commands of one change to the node (a generator, for ``yield from``).

    what:   a short name (the undo script is named after it)
    change: a shell command; when it fails it must leave the node as it was
    undo:   a shell script giving back what `change` changed (idempotent: it may run
            after a change that failed, or that never ran); None: nothing to undo
    stdin:  the change's standard input

    Outside a transaction (a plain pyinfra deploy without `begin`), just the change."""
    g = guard_of(ctx_host.get())
    if g is None:
        yield StringCommand(change, _stdin=stdin) if stdin is not None else StringCommand(change)
        return
    stopped = _take_step(g)
    if stopped is not None:
        yield stopped
        return
    undos = [*g.pending, *([(undo_path(g.token, g.seq, what), undo)] if undo else [])]
    g.pending = []
    # The undo written under the step lock, after the armed check: never into the
    # folder of a transaction its guard is undoing or removing.
    body = undo_then(undos, change) if undos else change
    if body is not None and len(shlex.quote(step_command(g.token, body, g.deadline))) > 2 * MAX_INLINE_UNDO:
        body = None  # quoted twice (here and by pyinfra), quotes and all: too long a line
    if body is None:  # long undo scripts: uploaded first, each on its own
        for path, text in undos:
            yield _locked_with_stdin(g, f"cat > {path}", text)
        body = change
    yield StringCommand(step_command(g.token, body, g.deadline)) if stdin is None else _locked_with_stdin(g, body, stdin)


def _locked_with_stdin(g: NodeGuard, change: str, stdin: str) -> StringCommand:
    """`change` as a step of `g` fed `stdin`, read whole before the step lock is taken."""
    return StringCommand(stdin_first(g.token, step_command(g.token, change, g.deadline), stdin_size(stdin)), _stdin=stdin)


def undo_first(what: str, undo: str):
    """Register `undo` as if a step had run here (it runs after the undo of every later
    step), without a change of its own and without a command: it travels with the next
    step's, and is not needed unless one follows. A generator, for ``yield from``."""
    g = guard_of(ctx_host.get())
    if g is None or g.status != "open":
        return
    g.seq += 1
    g.pending.append((undo_path(g.token, g.seq, what), undo))
    yield from ()


@operation()
def begin(
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    node_timeout: float = DEFAULT_NODE_TIMEOUT,
    deadline: int = DEFAULT_STEP_DEADLINE,
):
    """
    Begin the node's transaction: start svcops's node guard and take the node's lock.

    + lock_timeout: seconds to wait while another apply holds the node (then fail,
      naming it)
    + rollback_after: seconds without a word from this controller after which the node
      undoes the apply by itself (the connection was cut)
    + node_timeout: seconds without an answer after which the node is given up as
      unreachable (the others go on)
    + deadline: seconds any one step may take on the node

    The svcops operations that follow change the node in undoable steps, until
    `commit`. An earlier apply that was interrupted on this node is undone first.
    """
    if not _executing():
        return  # pyinfra's change check runs operations before executing: nothing to do yet
    why = _open(ctx_host.get(), lock_timeout, rollback_after, node_timeout, deadline)
    if why:
        yield error(f"svcops: {why}; nothing changed")
        return
    host.noop("the node is held by this apply")


@operation()
def commit(verify_ssh: bool = True):
    """
    Commit the node's transaction. When anything changed, a fresh SSH connection (same
    user, key and host-key policy as pyinfra's) proves that the node still lets an
    operator in, and commits through it; if that login fails, the node is rolled back
    at once through the open connection, and the operation fails.

    + verify_ssh: False commits through the open connection (no fresh login)
    """
    if not _executing():
        return
    h = ctx_host.get()
    g = current(h)
    if g is None:
        yield error("svcops: no open transaction on this node (txn.begin did not run or failed)")
        return
    changed = g.changed
    why = _commit(h, g, verify_ssh)
    g.close()
    if why:
        yield error(f"svcops: {why}")
        return
    host.noop("committed" if changed else "nothing changed")


def files_dir() -> str:
    """Where an operation keeps the files of its change: the current transaction's
    folder, or (outside one) a fresh folder of its own under the run directory."""
    g = current()
    if g is not None:
        return txn_dir(g.token)
    return f"{RUN_DIR}/once.{secrets.token_hex(6)}"


def replace_file(path: str, text: str, mode: str = "644", dir_mode: str | None = None):
    """A step writing `text` to `path` atomically; its undo puts the previous file
    back (or removes the new one). A generator, for ``yield from``."""
    command, stdin = write_file_command(path, text, mode, dir_mode)
    g = current()
    if g is None:
        yield from step(path, command, None, stdin)
        return
    change, undo = backup_and_write(g.token, f"{g.seq + 1:04d}", path, command)
    yield from step(path, change, undo, stdin)


def replace_files(files, mode: str = "644", what: str = "files", edits=None, then: str | None = None):
    """One step writing many files: `files` maps each path to its new text (None:
    remove it). One upload carries every text; the undo puts every previous file back
    (or removes the new ones). `edits`: path -> a `svcops.render.textpatch.TextEdit`
    from the node's file to its new text: only the lines it adds are sent. `then`: a
    command run in the same step once the files are in place (the step fails with it;
    its own undo, if any, registered before). A generator, for ``yield from``."""
    edits = edits or {}
    items = list(files.items())
    if not items:
        return
    sent = [(p, edits[p].added if p in edits and t is not None else t) for p, t in items]
    stdin = "".join(t for _, t in sent if t is not None)
    entries = [(p, None if t is None else len(t.encode()), mode) for p, t in sent]
    at = {i: edits[p] for i, (p, t) in enumerate(items) if p in edits and t is not None}
    g = current()
    token, key = (g.token, f"{g.seq + 1:04d}") if g is not None else (secrets.token_hex(6), "once")
    change, undo = replace_files_script(token, key, entries, edits=at)
    if then:
        change += f"{then} || exit 1\n"
    if g is None:
        # Outside a transaction: no undo, and the files' folder is this step's own.
        change += f"rm -rf {txn_dir(token)}\n"
    # pyinfra ends stdin with a newline: each text is cut out by its byte count.
    yield from step(what, change, undo, stdin or None)


def script_step(what: str, change: str, undo: str | None = None, scratch: str | None = None):
    """One step in one round trip: `change` and `undo` (shell, as for `step`) travel
    together as the command's standard input (`svcops.render.txn.script_step`); the
    undo is in place before any of the change runs, so a change that fails part-way
    is given back whole by the transaction. `change` may write its files (the texts
    it carries: `svcops.render.txn.literal_write`) into `files_dir`, passed as
    `scratch`: outside a transaction that folder is made first and removed after.
    A generator, for ``yield from``."""
    g = guard_of(ctx_host.get())
    if g is None:
        # No undo; the change in a subshell, so that its exit still removes the scratch folder.
        ready = f"{dir_ready(scratch)} && " if scratch else ""
        done = f"rc=$?\nrm -rf {scratch}\nexit $rc\n" if scratch else ""
        yield StringCommand(f"{ready}sh -s", _stdin="(\n" + change + ")\n" + done)
        return
    stopped = _take_step(g)
    if stopped is not None:
        yield stopped
        return
    # Undo scripts registered by `undo_first` go up first, in the same script.
    pending = "".join(literal_write(path, text) + " || exit 1\n" for path, text in g.pending)
    g.pending = []
    command, script = script_step_text(g.token, g.seq, what, pending + change, undo, g.deadline)
    # (The script is one group, parsed whole before it runs: no size check needed.)
    yield StringCommand(stdin_first(g.token, command, None), _stdin=script)


def remove_files(paths):
    """A step removing `paths`; its undo puts them back. A generator."""
    paths = list(paths)
    g = current()
    if g is None:
        yield from step("remove", "rm -f " + " ".join(shlex.quote(p) for p in paths))
        return
    change, undo = backup_and_remove(g.token, f"{g.seq + 1:04d}", paths)
    yield from step("remove", change, undo)


# Set by `svcops apply` on Ctrl-C: no transaction may begin any more (one that gets its
# lock afterwards gives it back at once).
STOPPING = gevent.event.Event()


def upload(d: str, name: str, text: str) -> StringCommand:
    """The command writing `text` to `d`/`name` (`d` from `files_dir`): inside a
    transaction under its step lock and only while it is armed, so that no file lands
    in the folder of a transaction its guard is removing."""
    g = current()
    write = f"cat > {d}/{name}"
    if g is not None and d == txn_dir(g.token):
        return _locked_with_stdin(g, write, text)
    return StringCommand(f"{dir_ready(d)} && {write}", _stdin=text)


def dir_ready(d: str) -> str:
    """Shell that makes sure `d` (from `files_dir`) can take an operation's files: inside
    a transaction only while it is armed (an upload never re-creates the folder of a
    transaction that ended); outside one, the folder is made."""
    g = current()
    if g is not None and d == txn_dir(g.token):
        return f'{{ [ -e {d}/armed ] || {{ echo "svcops: this apply was stopped on the node" >&2; exit 1; }}; }}'
    return f"mkdir -p {d} && chmod 700 {d}"


class Pulse:
    """A heartbeat to a node outside any transaction (`svcops apply --dry` reading
    facts): an echo loop on its own channel; a node silent for `node_timeout` seconds
    has its connection cut, so that nothing waits on it any longer."""

    _ECHO = "while read -r -t 600 w; do echo pong; done"

    def __init__(self, h, node_timeout: float = DEFAULT_NODE_TIMEOUT):
        self.lost = False
        self._last = time.monotonic()
        self._link = _Link(getattr(h, "connector", None), ["bash", "-c", self._ECHO])
        self._greenlets = [gevent.spawn(self._read), gevent.spawn(self._beat, h, node_timeout)]

    def _read(self) -> None:
        for _ in self._link.lines():
            self._last = time.monotonic()

    def _beat(self, h, node_timeout: float) -> None:
        while True:
            gevent.sleep(HEARTBEAT)
            try:
                self._link.send("ping\n")
            except Exception:
                pass
            silent = time.monotonic() - self._last
            if silent > node_timeout:
                self.lost = True
                h.log_styled(f"svcops: the node has not answered for {silent:.0f} s: unreachable", fg="red", log_func=logger.error)
                self._link.cut()
                return

    def stop(self) -> None:
        for g in self._greenlets:
            g.kill(block=False)
        self._link.close()
