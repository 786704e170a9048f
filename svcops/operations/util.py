"""Small command builders the operations share."""

from __future__ import annotations

import shlex

from pyinfra.api import StringCommand

__all__ = ["error", "fail", "write_file", "write_file_command"]


def error(message: str) -> StringCommand:
    """A command that fails the operation, saying `message` on stderr."""
    return StringCommand(f"echo {shlex.quote(message)} >&2; exit 1")


def fail(what: str) -> StringCommand:
    """The failure of an operation that could not read `what` (a fact): it changes nothing."""
    return error(f"svcops: could not read {what}; nothing changed")


def write_file_command(path: str, text: str, mode: str = "644", dir_mode: str | None = None) -> tuple[str, str | None]:
    """(shell command, its stdin) writing `text` to `path` atomically (a temporary file
    beside it, then a rename), byte for byte; the folder is made when missing (with
    `dir_mode` when given)."""
    d = shlex.quote(path.rsplit("/", 1)[0] or "/")
    p = shlex.quote(path)
    tmp = shlex.quote(path + ".svcops-tmp")
    mkdir = f"mkdir -p -m {dir_mode} {d}" if dir_mode else f"mkdir -p {d}"
    if not text:
        # pyinfra writes a newline for an empty stdin: an empty file is made without one.
        return f"{mkdir} && : > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {p}", None
    # pyinfra ends stdin with a newline: a text without one loses it again (head -c -1).
    copy = "cat" if text.endswith("\n") else "head -c -1"
    return f"{mkdir} && {copy} > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {p}", text


def write_file(path: str, text: str, mode: str = "644", dir_mode: str | None = None) -> StringCommand:
    """Write `text` to `path` atomically (see `write_file_command`)."""
    command, stdin = write_file_command(path, text, mode, dir_mode)
    return StringCommand(command, _stdin=stdin) if stdin is not None else StringCommand(command)
