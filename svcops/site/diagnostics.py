"""Diagnostics: every problem svcops finds, with the file, line and field it is about.

Loading and validation never stop at the first problem: they collect
`Diagnostic`s and the CLI prints them all, as ``file:line: field: message``.
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
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        tag = "warning: " if self.severity == "warning" else ""
        field = f"{self.field}: " if self.field else ""
        return f"{where}: {tag}{field}{self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"


def error(file: str, line: int | None, field: str, message: str) -> Diagnostic:
    return Diagnostic(file, line, field, message, "error")


def warning(file: str, line: int | None, field: str, message: str) -> Diagnostic:
    return Diagnostic(file, line, field, message, "warning")


def has_errors(diags: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diags)


def sort_key(d: Diagnostic) -> tuple[str, int, str, str]:
    """Stable order for printing: by file, then line."""
    return (d.file, d.line or 0, d.field, d.message)
