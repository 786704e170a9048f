"""One apply, one transaction per node: the node-side texts of svcops's node guard.

Every svcops apply holds each node it changes through a *guard*: a small bash process
on the node (`guard_script`), started over its own SSH channel before anything is read
or changed, that lives as long as the apply's connection:

1. it takes the node's lock (``flock`` on `LOCK_FILE`, waiting a bounded time; a second
   apply is told who holds it: `HOLDER_FILE`), so one apply at a time changes a node;
2. it repairs what an earlier apply left: a transaction folder still *armed* belongs to
   an apply whose guard was killed, and is undone (wholly old again) before anything
   else; dead-man switches of older svcops versions are cancelled, so they can never
   fire on top of this apply;
3. it keeps the transaction folder `txn_dir(token)`: each step that changes the node
   first writes how to undo itself there (``undo/NNNN``), then runs under the step lock
   (`step_command`: it refuses to run once the transaction is no longer armed);
4. it ends in exactly one of two ways. *Committed*: the controller proved that a fresh
   SSH login still works and renamed ``armed`` to ``committed`` (an atomic rename).
   *Undone*: on ``abort``, on end of input (the controller died, was killed, or
   disconnected before committing), or after `silence` seconds without a word from the
   controller (the connection is cut, or the controller hangs), the guard takes the
   step lock (a step in progress finishes first), renames ``armed`` to ``fired`` and
   runs every undo script, newest first: the node is as it was before the apply.

Exactly one of commit and undo wins (the rename); the undo can only ever undo its own
apply, because the node lock is held until it has finished. The guard speaks one word
a line (`guard words`: ``locked``, ``busy HOLDER``, ``pong``, ``rolled-back``,
``nothing``, ``undo-failed``, ``committed``, ``not-armed``); the controller sends
``ping`` (about once a second: the heartbeat), ``commit``, ``abort`` and ``done``.

Pure: text in, text out. The shell half is `svcops.operations.txn`.
"""

from __future__ import annotations

import shlex
from typing import Mapping

from svcops.render.textpatch import TextEdit, edit_script

__all__ = [
    "RUN_DIR",
    "LOCK_FILE",
    "HOLDER_FILE",
    "BUSY_EXIT",
    "txn_dir",
    "guard_script",
    "step_command",
    "commit_command",
    "undo_path",
    "undo_then",
    "MAX_INLINE_UNDO",
    "backup_and_write",
    "backup_and_remove",
    "replace_files_script",
]

RUN_DIR = "/run/svcops"  # tmpfs: a pending transaction is gone at reboot, as it should be
LOCK_FILE = f"{RUN_DIR}/node.lock"
HOLDER_FILE = f"{RUN_DIR}/holder"
BUSY_EXIT = 75  # EX_TEMPFAIL: another apply holds the node


def txn_dir(token: str, run_dir: str = RUN_DIR) -> str:
    """The folder of one apply's transaction on a node."""
    return f"{run_dir}/txn.{token}"


def undo_path(token: str, seq: int, what: str, run_dir: str = RUN_DIR) -> str:
    """Where step `seq` of the transaction keeps its undo script (run newest first)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in what)[:40]
    return f"{txn_dir(token, run_dir)}/undo/{seq:04d}-{safe}"


def guard_script(run_dir: str = RUN_DIR) -> str:
    """The node guard (see the module's docstring); bash, run as
    ``bash -c SCRIPT svcops-guard TOKEN WAIT SILENCE DEADLINE HOLDER``:

    WAIT      seconds to wait for the node lock
    SILENCE   seconds without a word from the controller after which it undoes
    DEADLINE  seconds an undo script may run
    HOLDER    who this apply is, for the next one that has to wait
    """
    d = shlex.quote(run_dir)
    return f"""\
token=$1 wait=$2 silence=$3 deadline=$4 holder=$5
D={d}
T=$D/txn.$token
# The controller going away shows as the end of input (handled below), never as a signal.
trap '' HUP PIPE INT TERM
say() {{ echo "$*" 2>/dev/null; }}
mkdir -p "$D" && chmod 700 "$D" || {{ say "error cannot make $D"; exit 1; }}
exec 9>>"$D/node.lock" || {{ say "error cannot open $D/node.lock"; exit 1; }}
if ! flock -w "$wait" 9; then say "busy $(head -c 300 "$D/holder" 2>/dev/null || echo unknown)"; exit {BUSY_EXIT}; fi
printf '%s\\n' "$holder" > "$D/holder"
# undo_txn FOLDER: undo that transaction if it is still armed (0 undone, 1 nothing to
# undo, 2 an undo script failed). The step lock first: a step in progress ends before.
undo_txn() {{
    t=$1 rc=1
    exec 8>>"$t/step" && flock 8
    if mv "$t/armed" "$t/fired" 2>/dev/null; then
        rc=0
        for f in $(ls -r "$t/undo" 2>/dev/null); do
            timeout -k 5 "$deadline" sh "$t/undo/$f" >>"$t/undo.log" 2>&1 8>&- 9>&- </dev/null || rc=2
        done
    fi
    exec 8>&-
    return $rc
}}
# What earlier applies left: an armed transaction whose guard is gone is undone now.
for t in "$D"/txn.*; do
    [ -d "$t" ] || continue
    undo_txn "$t"
    case $? in 0) say "repaired ${{t##*/}} rolled-back";; 2) say "repaired ${{t##*/}} undo-failed";; esac
    [ -s "$t/undo.log" ] && mv -f "$t/undo.log" "$D/undo-${{t##*/txn.}}.log"
    rm -rf "$t"
done
# Dead-man switches of older svcops versions: cancelled, so they never fire on this apply.
for a in "$D"/armed.*; do
    [ -e "$a" ] || continue
    k=${{a##*/armed.}}
    p=$(cat "$D/pid.$k" 2>/dev/null)
    mv -f "$a" "$D/cancelled.$k"
    [ -n "$p" ] && kill -- -"$p" 2>/dev/null
done
mkdir -p "$T/undo" && : > "$T/armed" || {{ say "error cannot make $T"; exit 1; }}
say locked
# The undo's output is kept when there was any (an undo script failed or complained).
finish() {{ [ -s "$T/undo.log" ] && mv -f "$T/undo.log" "$D/undo-$token.log"; rm -rf "$T"; rm -f "$D/holder"; exit 0; }}
undone() {{ case $1 in 0) say rolled-back;; 1) say nothing;; *) say undo-failed;; esac; }}
quiet=0
while :; do
    if read -r -t 1 cmd; then
        quiet=0
        case $cmd in
            ping) say pong;;
            commit) if mv "$T/armed" "$T/committed" 2>/dev/null; then say committed; else say not-armed; fi;;
            abort) undo_txn "$T"; undone $?;;
            done) finish;;
        esac
    elif [ $? -gt 128 ]; then
        # No word for a second: after SILENCE of them the controller is taken for gone.
        quiet=$((quiet + 1))
        [ "$quiet" -lt "$silence" ] && continue
        undo_txn "$T"
        finish
    else
        # End of input: the controller disconnected (or died) before committing.
        undo_txn "$T"
        finish
    fi
done
"""


def step_command(token: str, change: str, deadline: int, run_dir: str = RUN_DIR) -> str:
    """`change` (a shell command) as one step of the transaction: under the step lock,
    only while the transaction is armed, bounded by `deadline` seconds on the node."""
    t = txn_dir(token, run_dir)
    body = (
        f'[ -e {t}/armed ] || {{ echo "svcops: this apply was stopped on the node (rolled back or committed); '
        f'nothing more is changed" >&2; exit 1; }}\n{change}'
    )
    # -o: the lock stays with flock itself, never with a daemon the change starts.
    return f"flock -o {t}/step timeout -k 5 {int(deadline)} sh -c {shlex.quote(body)}"


# An undo script travels in its step's own command when it is at most this long (a
# command line's argument is at most 128 KiB on Linux); a longer one is uploaded first.
MAX_INLINE_UNDO = 32 * 1024


def undo_then(undos: list[tuple[str, str]], command: str) -> str | None:
    """`command` preceded by writing each (path, script) of `undos`, in one shell
    command: a step and its undo in one round trip instead of two, the undo still
    written before the change runs (and the change not run when it cannot be). Each
    script is a quoted here-document (nothing in it is expanded). None when the
    scripts are too long for a command line: upload them on their own."""
    if sum(len(u) for _, u in undos) > MAX_INLINE_UNDO:
        return None
    out = []
    for path, undo in undos:
        end = "SVCOPS_UNDO"
        while end in undo:
            end += "_"
        body = undo if undo.endswith("\n") else undo + "\n"
        out.append(f"cat > {shlex.quote(path)} <<'{end}' || exit 1\n{body}{end}\n")
    return "".join(out) + command


def commit_command(token: str, run_dir: str = RUN_DIR) -> str:
    """Run through a *fresh* SSH connection: commit (the rename fails when the guard
    already undid the apply)."""
    t = txn_dir(token, run_dir)
    return f"mv {t}/armed {t}/committed || {{ echo 'svcops: the node already rolled this apply back' >&2; exit 3; }}"


def backup_and_write(token: str, key: str, path: str, write: str) -> tuple[str, str]:
    """(change, undo) for a step that replaces `path` by running `write`: the change
    keeps the previous file (or the fact that there was none) in the transaction's
    folder first, under `key` (unique in the transaction); the undo puts it back (or
    removes the new one)."""
    b = f"{txn_dir(token)}/files/{key}"
    p = shlex.quote(path)
    tmp = shlex.quote(path + ".svcops-undo")
    change = f"mkdir -p {txn_dir(token)}/files && {{ if [ -e {p} ] || [ -L {p} ]; then cp -a {p} {b}; else : > {b}.absent; fi; }} && {write}"
    undo = (
        f"if [ -e {b} ] || [ -L {b} ]; then cp -a {b} {tmp} && mv -f {tmp} {p}; "
        f"elif [ -e {b}.absent ]; then rm -f {p}; fi\n"
    )
    return change, undo


def backup_and_remove(token: str, key: str, paths: list[str]) -> tuple[str, str]:
    """(change, undo) for a step that removes `paths`, keeping them for the undo."""
    changes, undos = [], []
    for i, path in enumerate(paths):
        c, u = backup_and_write(token, f"{key}.{i}", path, f"rm -f {shlex.quote(path)}")
        changes.append(c)
        undos.append(u)
    return " && ".join(changes), "".join(undos)


def replace_files_script(
    token: str,
    key: str,
    files: list[tuple[str, int | None, str]],
    run_dir: str = RUN_DIR,
    edits: Mapping[int, TextEdit] | None = None,
) -> tuple[str, str]:
    """(change, undo) for one step replacing many files at once: `files` holds, in the
    order of the change's standard input, (path, bytes of its new text or None to
    remove it, mode). The change keeps every previous file (or the fact that there was
    none) in the transaction's folder, keeps its standard input and cuts it into the new
    texts (``tail -c`` and ``truncate`` of that file, from its end), then moves each
    into place; the undo puts every previous file back. `edits`: file (its position in
    `files`) -> a `svcops.render.textpatch.TextEdit`: what was sent for it is the
    edit's new lines, and its text is made from the previous file and them (its digest
    checked)."""
    b = f"{txn_dir(token, run_dir)}/files/{key}"
    change = [
        f"B={b}; mkdir -p $B || exit 1",
        'keep() { if [ -e "$2" ] || [ -L "$2" ]; then cp -a "$2" "$B/$1"; else : > "$B/$1.absent"; fi; }',
        # (Few processes a file: a one-service change writes two or three.)
        'put() { { [ -d "${2%/*}" ] || mkdir -p "${2%/*}"; } && mv -f "$B/$1.new" "$2"; }',
    ]
    undo = [
        f"B={b} rc=0",
        # A file that was absent is absent again (its folder may be gone: not a failure).
        'back() { if [ -e "$B/$1" ] || [ -L "$B/$1" ]; then cp -a "$B/$1" "$2.svcops-undo" && mv -f "$2.svcops-undo" "$2"; '
        'elif [ -e "$B/$1.absent" ]; then rm -f "$2" 2>/dev/null || [ ! -e "$2" ]; fi; }',
    ]
    for i, (path, _, _) in enumerate(files):
        change.append(f"keep {i} {shlex.quote(path)} || exit 1")
        undo.append(f"back {i} {shlex.quote(path)} || rc=1")
    # The standard input kept first, then each text cut off its end, last text first (a
    # `head -c` straight from a pipe may read past its count: busybox's does). Cut off,
    # not copied: the folder never holds the upload twice (a 10,000-service record is
    # 20 MB, a lab node's /run 64 MB), and each byte is read once. What is left at the
    # end is the first text.
    sized = [(i, size) for i, (_, size, _) in enumerate(files) if size is not None]
    total = sum(size for _, size in sized)
    change.append(f"cat > $B/stdin && truncate -s {total} $B/stdin || exit 1")
    offset = total
    for i, size in reversed(sized[1:]):
        offset -= size
        if size:
            change.append(f"tail -c {size} $B/stdin > $B/{i}.new && truncate -s {offset} $B/stdin || exit 1")
        else:
            change.append(f": > $B/{i}.new || exit 1")
    change.append(f"mv -f $B/stdin $B/{sized[0][0]}.new || exit 1" if sized else "rm -f $B/stdin")
    for i, edit in (edits or {}).items():
        change.append(f"{edit_script(edit, f'$B/{i}', f'$B/{i}.new', f'$B/{i}.edit')} && mv -f $B/{i}.edit $B/{i}.new || exit 1")
    modes: dict[str, list[str]] = {}
    for i, (_, size, mode) in enumerate(files):
        if size is not None:
            modes.setdefault(mode, []).append(f"$B/{i}.new")
    change.extend(f"chmod {mode} {' '.join(names)} || exit 1" for mode, names in modes.items())
    for i, (path, size, mode) in enumerate(files):
        p = shlex.quote(path)
        change.append(f"rm -f {p} || exit 1" if size is None else f"put {i} {p} || exit 1")
    return "\n".join(change) + "\n", "\n".join(undo) + '\nexit "$rc"\n'
