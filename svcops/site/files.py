"""Reading a site's files and folders without ever blocking, and saying what is wrong.

A site folder is a git checkout, but what sits in it is whatever the file system
holds: a FIFO named ``svcops.lock`` (an open for reading would wait for a writer
forever), a device, a folder where a file belongs, a symlink loop or a dangling
symlink, a file the user may not read. Each is a one-line error naming the path and
what it is, never a hang or a traceback::

    data, diags = read_file(root / "svcops.lock", "svcops.lock")
    # svcops.lock: is a FIFO (named pipe), not a regular file

A file is checked twice: `os.stat` first (a device is never even opened: opening
some has side effects), then `os.fstat` of what was opened, with ``O_NONBLOCK``, so
that a file swapped for a FIFO in between is refused too, not waited on. Symlinks
to regular files are followed, as git checks them out.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from svcops.site.diagnostics import Diagnostic, error

__all__ = ["read_file", "list_folder", "folder_problem", "kind_of"]

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


_KINDS = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind_of(mode: int) -> str:
    """What a file of this mode is, in words: "a FIFO (named pipe)", "a folder"..."""
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def _why(e: OSError, path: Path, cannot: str = "cannot read") -> str:
    """An OSError from reading `path`, as the words of a diagnostic."""
    if e.errno == errno.ELOOP:
        return "is a symlink loop (too many levels of symbolic links)"
    if e.errno == errno.ENOENT and path.is_symlink():
        return f"is a symlink to {os.readlink(path)}, which does not exist"
    if e.errno == errno.EACCES or e.errno == errno.EPERM:
        return f"{cannot}: permission denied"
    if e.errno == errno.ENOTDIR:
        return f"{cannot}: a part of its path is not a folder"
    return f"{cannot}: {e.strerror or e}"


def read_file(path: str | os.PathLike[str], name: str, missing_ok: bool = True) -> tuple[bytes | None, list[Diagnostic]]:
    """The bytes of a regular file, or None with the error that names `name`.

    A missing file is (None, []) when `missing_ok` (svcops.yaml and svcops.lock may be
    absent); a dangling symlink is never "missing": it is an error.
    """
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, [error(name, None, "", f"is {kind_of(st.st_mode)}, not a regular file")]
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        if e.errno == errno.ENOENT and missing_ok and not path.is_symlink():
            return None, []
        return None, [error(name, None, "", _why(e, path))]
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped since the stat above
            return None, [error(name, None, "", f"is {kind_of(st.st_mode)}, not a regular file")]
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), []
    except OSError as e:
        return None, [error(name, None, "", _why(e, path))]
    finally:
        os.close(fd)


def folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` is no folder svcops can list, or None: "not found", "is a regular
    file, not a folder", "cannot be opened: permission denied"..."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ENOENT and not path.is_symlink():
            return "not found"
        return _why(e, path, "cannot be opened")
    if not stat.S_ISDIR(st.st_mode):
        return f"is {kind_of(st.st_mode)}, not a folder"
    try:  # the permission to list it (a folder's "r"); closed at once, gevent or not
        with os.scandir(path):
            pass
    except OSError as e:
        return _why(e, path, "cannot be opened")
    return None


def list_folder(path: str | os.PathLike[str], name: str) -> tuple[list[str] | None, list[Diagnostic]]:
    """The names in a folder, sorted; (None, []) when it does not exist, else its error."""
    path = Path(path)
    if not os.path.lexists(path):
        return None, []
    why = folder_problem(path)
    if why is None:
        try:
            return sorted(os.listdir(path)), []
        except OSError as e:
            why = _why(e, path, "cannot be listed")
    return None, [error(name, None, "", why)]
