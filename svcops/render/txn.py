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
from dataclasses import dataclass
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
    "stdin_first",
    "stdin_size",
    "commit_command",
    "undo_path",
    "undo_then",
    "MAX_INLINE_UNDO",
    "backup_and_write",
    "backup_and_remove",
    "replace_files_script",
    "script_step",
    "literal_write",
    "FilesScript",
    "files_script",
    "record_step_end",
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
    exec 8<"$t" && flock 8
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
# Uploads a cut connection left half-read (`stdin_first`): their steps can never run.
rm -f "$D"/in.*
mkdir -p "$T/undo" && : > "$T/armed" || {{ say "error cannot make $T"; exit 1; }}
say locked
# The undo's output is kept when there was any (an undo script failed or complained).
finish() {{ [ -s "$T/undo.log" ] && mv -f "$T/undo.log" "$D/undo-$token.log"; rm -rf "$T"; rm -f "$D/holder" "$D/in.$token".*; exit 0; }}
# 1 (nothing undone) after a commit through a fresh login: the node is new, and says so.
undone() {{ case $1 in 0) say rolled-back;; 1) if [ -e "$T/committed" ]; then say committed; else say nothing; fi;; *) say undo-failed;; esac; }}
# While it undoes, the guard cannot answer pings: a beat says it is alive (and ends
# with the guard: it never outlives it, and holds none of its locks).
# (KILL: the guard's ignored signals are the beat's too; its sleep holds no channel.)
beating() {{ ( exec 8>&- 9>&-; while sleep 1 </dev/null >/dev/null 2>&1 && kill -0 $$ 2>/dev/null; do echo pong 2>/dev/null || exit 0; done ) & bp=$!; }}
undo_beating() {{ beating; undo_txn "$1"; r=$?; kill -KILL "$bp" 2>/dev/null; wait "$bp" 2>/dev/null; return $r; }}
quiet=0
while :; do
    if read -r -t 1 cmd; then
        quiet=0
        case $cmd in
            ping) say pong;;
            commit) if mv "$T/armed" "$T/committed" 2>/dev/null; then say committed; else say not-armed; fi;;
            abort) undo_beating "$T"; undone $?;;
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


def _armed_check(t: str) -> str:
    return (
        f'[ -e {t}/armed ] || {{ echo "svcops: this apply was stopped on the node (rolled back or committed); '
        f'nothing more is changed" >&2; exit 1; }}'
    )


def _locked(t: str, deadline: int, shell: str) -> str:
    # The step lock is the folder itself: a step that starts after the guard removed
    # the folder (or while it does) finds nothing to open, never re-creates anything
    # in it (a lock file would: flock makes it). -o: the lock stays with flock itself,
    # never with a daemon the change starts.
    return f"flock -o {t}/. timeout -k 5 {int(deadline)} {shell}"


def step_command(token: str, change: str, deadline: int, run_dir: str = RUN_DIR) -> str:
    """`change` (a shell command) as one step of the transaction: under the step lock,
    only while the transaction is armed, bounded by `deadline` seconds on the node."""
    t = txn_dir(token, run_dir)
    body = _armed_check(t) + "\n" + change
    return _locked(t, deadline, f"sh -c {shlex.quote(body)}")


def stdin_size(stdin: str) -> int:
    """How many bytes a command gets for `stdin`: pyinfra ends it with a newline (and
    sends nothing for an empty one)."""
    return len(stdin.encode()) + (0 if not stdin or stdin.endswith("\n") else 1)


def stdin_first(token: str, command: str, size: int | None, run_dir: str = RUN_DIR) -> str:
    """`command` (a step's, `step_command`) with its standard input read whole first,
    into a file of the run folder, and only then run from that file: a step never holds
    the step lock while it waits on the connection, so a connection cut mid-upload
    cannot hold up the guard's undo until the step's deadline (the read waits alone,
    holding nothing). `size`: the bytes that must arrive (`stdin_size`); an upload cut
    short runs nothing. None: the command checks its input itself (a script parsed
    whole before it runs). The guard removes what a cut read leaves."""
    f = shlex.quote(f"{run_dir}/in.{token}.") + "$$"
    short = '{ rm -f "$f"; echo "svcops: the upload to the node was cut short; nothing changed" >&2; exit 1; }'
    check = f' && [ "$(($(wc -c < "$f")))" -eq {int(size)} ]' if size is not None else ""
    return f'f={f}; {{ cat > "$f"{check}; }} || {short}\n{command} < "$f"; rc=$?; rm -f "$f"; exit $rc'


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


# back KEY PATH: the file kept under $B/KEY put back at PATH (atomically), or PATH
# removed when it was absent ($B/KEY.absent; its folder may be gone: not a failure).
_BACK = (
    'back() { if [ -e "$B/$1" ] || [ -L "$B/$1" ]; then cp -a "$B/$1" "$2.svcops-undo" && mv -f "$2.svcops-undo" "$2"; '
    'elif [ -e "$B/$1.absent" ]; then rm -f "$2" 2>/dev/null || [ ! -e "$2" ]; fi; }'
)


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
        _BACK,
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


def script_step(token: str, seq: int, what: str, change: str, undo: str | None, deadline: int, run_dir: str = RUN_DIR) -> tuple[str, str]:
    """(command, standard input) of a step sent whole in one round trip: its standard
    input is a shell script holding the step's undo (`undo`, written to `undo_path`
    first) and then `change`, which the command runs under the step lock
    (`step_command`). Nothing of it runs before all of it has arrived: the script is
    one ``{ ... }`` group, which the shell parses whole first (a cut upload is a
    syntax error, not half a change). Once the undo is written, the transaction can
    give everything back, whatever part of `change` fails; `change` exits non-zero
    on its first failure."""
    t = txn_dir(token, run_dir)
    parts = ["{\n", _armed_check(t) + "\n"]
    if undo:
        parts.append(literal_write(undo_path(token, seq, what, run_dir), undo) + " || exit 1\n")
    parts.append(change if change.endswith("\n") else change + "\n")
    parts.append("}\n")
    return _locked(t, deadline, "sh -s"), "".join(parts)


def literal_write(path: str, text: str) -> str:
    """Shell writing `text` to `path` (a shell word) with the shell's own ``printf``:
    no process is started, and the text travels inside the script (single-quoted: any
    byte but NUL stands for itself)."""
    return f"printf %s {shlex.quote(text)} > {path}"


@dataclass(frozen=True, slots=True)
class FilesScript:
    """One step's shell replacing files, in three parts: `prepare` checks that every
    file can be written and keeps the previous ones (or the fact that there was none),
    changing nothing yet; `put` writes the new texts and removes the files to remove;
    `undo` gives every previous file back (it sets ``rc=1`` on a failure: the caller
    starts with ``rc=0`` and exits with it). Each line of `prepare` and `put` exits
    non-zero on failure."""

    prepare: str
    put: str
    undo: str


def files_script(
    backup: str, files: list[tuple[str, str | None]], known: Mapping[str, str | None] | None = None
) -> FilesScript:
    """The `FilesScript` for `files`, (path, new text or None to remove it) in the
    order they are written (the file that vouches for the others, an index, last),
    new files with mode 644. `known`: path -> its previous text (None: there was no
    such file), exactly as it is on the node, for the files whose previous text the
    caller has read (and checked) already: the undo writes those back itself. The
    others are kept with ``cp`` under the folder `backup` (of the transaction: the
    undo reads them there).

    Few processes: none for the texts (written by the shell itself, `literal_write`),
    none for a file whose previous text is `known`; otherwise one ``mkdir`` and one
    ``cp`` per folder; one ``rm`` for the files removed. What can make the change fail
    is checked before anything is written: a folder that cannot be made, a folder
    where a file goes.

    Each file is written in place, not renamed into place: meant for files whose
    readers check them (a record: each file's digest is in its index, the index's
    fingerprint in the canary), which a write cut short cannot fool."""
    known = known or {}
    folders: dict[str, list[tuple[str, str | None]]] = {}
    for path, text in files:
        d, _, name = path.rpartition("/")
        folders.setdefault(d or "/", []).append((name, text))
    checks, keep, put, undo = ["umask 022"], [], [], [f"B={shlex.quote(backup)}", _BACK]
    gone: list[str] = []
    for i, (d, entries) in enumerate(folders.items()):
        qd = shlex.quote(d)
        if any(t is not None for _, t in entries):
            checks.append(f"[ -d {qd} ] || mkdir -p {qd} || exit 1")
        unknown = []
        for name, text in entries:
            path = shlex.quote(f"{d}/{name}")
            if text is not None:
                checks.append(f"[ ! -d {path} ] || {{ echo svcops: {path} is a folder >&2; exit 1; }}")
                put.append(literal_write(path, text) + " || exit 1")
            else:
                gone.append(path)
            full = f"{d}/{name}"
            if full not in known:
                unknown.append(name)
                undo.append(f"back {shlex.quote(f'{i}/{name}')} {path} || rc=1")
            elif known[full] is None:
                undo.append(f"rm -f {path} || rc=1")
            else:
                undo.append(literal_write(path, known[full]) + " || rc=1")
        if unknown:
            # The files there now are kept in one cp; the others are marked absent.
            names = " ".join(shlex.quote(n) for n in unknown)
            keep.append(
                f'mkdir -p "$B/{i}" || exit 1; set --; for f in {names}; do p={qd}/"$f"; '
                f'if [ -e "$p" ] || [ -L "$p" ]; then set -- "$@" "$p"; else : > "$B/{i}/$f.absent" || exit 1; fi; done; '
                f'[ $# -eq 0 ] || cp -a -- "$@" "$B/{i}/" || exit 1'
            )
    if gone:
        put.append(f"rm -f {' '.join(gone)} || exit 1")
    prepare = [f"B={shlex.quote(backup)}", *checks, *keep] if keep else checks
    return FilesScript("\n".join(prepare) + "\n", "\n".join(put) + "\n" if put else "", "\n".join(undo) + "\n")


def record_step_end(
    change: list[str], undo: list[str], files: FilesScript | None, remove_dir: str | None
) -> tuple[str, str]:
    """The end of a rules step that writes its record (`svcops.render.iptables_step`,
    `svcops.render.nftables_step`): the record's new files put last (after the rules),
    the folder removed when asked (another proxy mode), then (change, undo) as text."""
    if files is not None and files.put:
        change.append(files.put.rstrip("\n"))
    if remove_dir:
        change.append(f"rmdir {shlex.quote(remove_dir)} 2>/dev/null || true")
    undo.append('exit "$rc"')
    return "\n".join(change) + "\n", "\n".join(undo) + "\n"
