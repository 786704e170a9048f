"""A big text file on the node changed by sending only the lines that changed.

The cluster's DNS zone is the same 1.2 MB file on every node at 10,000 services; a
one-service change alters one line of it. Sending it whole cost each node's transfer
(23 MB through the controller's SSH connections for 20 nodes, most of the
controller's time in such an apply) for a few dozen bytes of news. So the file is cut
into *chunks* where its content says so (`chunks`: after a line whose CRC ends in
seven zero bits, about every 128 lines; at most `MAX_LINES`), and the node keeps, next
to the file, its *index*: the digest of the whole file and of each chunk, with its
line count (`index_text`). An edit of one line changes one chunk; a line added or
removed changes one chunk too, or splits or joins two; every other chunk keeps its
content and digest wherever it moved.

To change the file, the controller reads the node's index (a few kilobytes) and the
digest of the node's file: when the index names that very file (its digest is the
file's), `plan_edit` says how to make the new text from it: ranges of the old file's
lines, and new lines sent along (`TextEdit`). The node runs `edit_script` (``head``,
``tail``, ``cat``: a few processes) and checks the digest of the result before it is
used, so a file that is not what its index says is never half-patched: the step fails
and the apply is undone. No index, one that does not name the file, or an edit that
would not be much smaller than the text: the whole text is sent, as before, and the
index with it.

Pure: text in, text out.
"""

from __future__ import annotations

import hashlib
import shlex
import zlib
from dataclasses import dataclass

__all__ = ["TextEdit", "chunks", "index_text", "parse_index", "plan_edit", "edit_script", "AVERAGE_LINES", "MAX_LINES"]

AVERAGE_LINES = 128  # a chunk ends after a line whose CRC-32 is 0 modulo this (a power of 2)
MAX_LINES = 1024  # ...or after this many lines, whatever they hold
_HEAD = "svcops-text-index 1"
_DIGEST = 24  # hex digits of a chunk's sha256 kept in the index


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST]


def chunks(text: str) -> list[str]:
    """`text` cut into chunks of whole lines, where its content says (see the module's
    docstring); joined, they are `text` again."""
    out: list[str] = []
    start = n = 0
    pos = 0
    mask = AVERAGE_LINES - 1
    crc = zlib.crc32
    for line in text.splitlines(keepends=True):
        pos += len(line)
        n += 1
        if n >= MAX_LINES or not crc(line.encode()) & mask:
            out.append(text[start:pos])
            start, n = pos, 0
    if start < len(text):
        out.append(text[start:])
    return out


def index_text(text: str, digest: str) -> str:
    """The index of `text` (whose sha256 is `digest`): one line naming the file's digest,
    then one a chunk: its digest and its number of lines."""
    return f"{_HEAD} {digest}\n" + "".join(f"{_digest(c)} {c.count(chr(10))}\n" for c in chunks(text))


def parse_index(text: str) -> tuple[str, list[tuple[str, int]]] | None:
    """(the file's digest, [(chunk digest, lines)]) from an index's text; None when it
    is no index of this version."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith(_HEAD + " "):
        return None
    digest = lines[0][len(_HEAD) + 1 :].strip()
    out = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            return None
        out.append((parts[0], int(parts[1])))
    return digest, out


@dataclass(frozen=True, slots=True)
class TextEdit:
    """How to make the new text from the node's file: `pieces` in order, each
    ("old", first line, lines) of the old file or ("new", first line, lines) of
    `added` (the new lines, sent along); `old_lines`, `added_lines`: their files'
    line counts; `digest`: the new text's sha256, checked on the node."""

    pieces: tuple[tuple[str, int, int], ...]
    added: str
    old_lines: int
    added_lines: int
    digest: str


def plan_edit(old_index: str, node_digest: str | None, new_text: str, new_digest: str, max_pieces: int = 16) -> TextEdit | None:
    """The edit from the node's file (its index's text, its sha256 as the node read it)
    to `new_text`; None when the index does not name that file, or the edit is not
    worth it (more than `max_pieces` pieces, or half the text or more to send)."""
    parsed = parse_index(old_index)
    if parsed is None or node_digest is None or parsed[0] != node_digest:
        return None
    where: dict[str, tuple[int, int]] = {}
    line = 1
    for d, n in parsed[1]:
        where.setdefault(d, (line, n))
        line += n
    old_lines = line - 1
    pieces: list[list] = []
    added: list[str] = []
    added_lines = 0
    for c in chunks(new_text):
        n = c.count("\n")
        if n == 0 or not c.endswith("\n"):
            return None  # a text without a final newline: sent whole
        hit = where.get(_digest(c))
        if hit is not None:
            if pieces and pieces[-1][0] == "old" and pieces[-1][1] + pieces[-1][2] == hit[0]:
                pieces[-1][2] += n
            else:
                pieces.append(["old", hit[0], n])
        else:
            if pieces and pieces[-1][0] == "new":
                pieces[-1][2] += n
            else:
                pieces.append(["new", added_lines + 1, n])
            added.append(c)
            added_lines += n
    text = "".join(added)
    if len(pieces) > max_pieces or 2 * len(text) >= len(new_text):
        return None
    return TextEdit(tuple(tuple(p) for p in pieces), text, old_lines, added_lines, new_digest)  # type: ignore[misc]


def _lines(path: str, first: int, n: int, total: int) -> str:
    """Shell printing lines first..first+n-1 of `path` (a shell word; a file of `total` lines)."""
    if first == 1 and n >= total:
        return f"cat {path}"
    if first == 1:
        return f"head -n {n} {path}"
    if first + n - 1 >= total:
        return f"tail -n +{first} {path}"
    return f"tail -n +{first} {path} | head -n {n}"


def edit_script(edit: TextEdit, old: str, added: str, out: str) -> str:
    """Shell making `out` from the old file at `old` and the new lines at `added`, and
    checking its digest (exit 1, `out` removed, when it is not the text planned). The
    paths are shell words, expanded where it runs (``"$B/3.new"``)."""
    parts = [_lines(old if kind == "old" else added, first, n, edit.old_lines if kind == "old" else edit.added_lines) for kind, first, n in edit.pieces]
    return (
        f"{{ {'; '.join(parts)}; }} > {out} && "
        f'echo "{edit.digest}  "{out} | sha256sum -c - >/dev/null 2>&1 || '
        f"{{ rm -f {out}; echo 'svcops: the patched file is not the text planned (the file on the node is not what its index says)' >&2; exit 1; }}"
    )
