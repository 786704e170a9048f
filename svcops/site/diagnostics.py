"""Diagnostics: every problem svcops finds, with the file, line and field it is about.

Loading and validation never stop at the first problem: they collect
`Diagnostic`s and the CLI prints them all, as ``file:line: field: message``.

A diagnostic is one line, whatever it quotes: a value with a newline, a terminal
escape or a bidirectional control (a hostile name) is shown with that character
escaped (``\n``, ``\x1b``, ``\u202e``), so it can neither forge another diagnostic
nor turn the text around on the screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    file: str
    line: int | None
    field: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        file = one_line(self.file)
        where = f"{file}:{self.line}" if self.line is not None else file
        tag = "warning: " if self.severity == "warning" else ""
        field = f"{one_line(self.field)}: " if self.field else ""
        return f"{where}: {tag}{field}{one_line(self.message)}"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


def one_line(text: str) -> str:
    """`text` with every character that is not printable (line breaks, controls, format
    characters such as U+202E, unassigned code points) escaped as Python writes it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def error(file: str, line: int | None, field: str, message: str) -> Diagnostic:
    return Diagnostic(file, line, field, message, "error")


def warning(file: str, line: int | None, field: str, message: str) -> Diagnostic:
    return Diagnostic(file, line, field, message, "warning")


def has_errors(diags: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diags)


def sort_key(d: Diagnostic) -> tuple[str, int, str, str]:
    """Stable order for printing: by file, then line."""
    return (d.file, d.line or 0, d.field, d.message)
