"""Frozen values as plain JSON data: what ``pyinfra INVENTORY fact svcops.facts...`` prints.

pyinfra's CLI encodes a fact's value with ``json``, calling the value's ``to_json()``
when it has one; svcops's fact values (`LiveTables`, `NodeState`, ...) are frozen
dataclasses holding mappings, tuples and frozensets, which ``json`` cannot encode.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, Mapping

__all__ = ["plain"]


def plain(value: Any) -> Any:
    """`value` with every dataclass as a dict of its fields, every mapping as a dict,
    every tuple as a list and every set as a sorted list."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted((plain(v) for v in value), key=str)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
