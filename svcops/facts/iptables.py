"""svcops's part of the node's iptables (tables filter and nat).

    SvcopsIptables          the whole of it (iptables-save: seconds at 10,000 services),
                            as `svcops.render.iptables.LiveTables`; a node without
                            iptables at all reads as `NO_IPTABLES`
    SvcopsIptablesCanary    the canary chain SVCOPS-STATE of both tables, the jumps of
                            the built-in chains and the record's index (milliseconds):
                            `svcops.render.iptables_record.Canary`
    SvcopsIptablesBuckets   some of the record's bucket files, by name
    SvcopsIptablesRecord    the sha256 of every file in the record's folder
"""

from __future__ import annotations

from pyinfra.api import FactBase

import shlex

from svcops.render.iptables import BUILTIN_CHAINS, LiveTables, parse_iptables_save
from svcops.render.iptables_record import INDEX_FILE, MODE, RECORD_DIR, STATE, Canary, parse_canary
from svcops.render.record import parse_index

__all__ = ["SvcopsIptables", "NO_IPTABLES", "SvcopsIptablesCanary", "SvcopsIptablesBuckets", "SvcopsIptablesRecord"]

# SvcopsIptables on a node without iptables at all (a pure nftables node): nothing of
# svcops's can be there, which is fine unless the mode needs iptables.
NO_IPTABLES = LiveTables({})


_NO_IPTABLES_MARK = "# svcops: iptables-save not found"


class SvcopsIptables(FactBase):
    """
    svcops's part of the node's iptables (tables filter and nat), as a
    ``LiveTables``: every ``SVCOPS-`` chain with its rules, the jumps from built-in
    chains into them, and the svcops chains some foreign chain still jumps to. Other
    rules are read but not kept.

    .. code:: python

        live = host.get_fact(SvcopsIptables)
        live.table("filter").jumps   # ('-A INPUT -m conntrack --ctstate NEW ... -j SVCOPS-FIREWALL', ...)
    """

    def command(self) -> str:
        return (
            f"if ! command -v iptables-save >/dev/null; then echo '{_NO_IPTABLES_MARK}'; exit 0; fi; "
            "iptables-save -t filter && iptables-save -t nat"
        )

    @staticmethod
    def default() -> LiveTables | None:
        # None, not an empty LiveTables: a node whose iptables-save failed must not look
        # like a clean node (its jumps would be inserted a second time).
        return None

    def process(self, output: list[str]) -> LiveTables:
        if output and output[0] == _NO_IPTABLES_MARK:
            return NO_IPTABLES
        return parse_iptables_save("\n".join(output))


# The built-in chains svcops jumps from (`svcops.render.iptables.JUMPS`).
_BUILTIN = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "OUTPUT", "POSTROUTING")}
assert {c for cs in _BUILTIN.values() for c in cs} <= BUILTIN_CHAINS
_INDEX_MARK = "@@svcops-index"


class SvcopsIptablesCanary(FactBase):
    """
    What an apply reads first, in milliseconds at any size: the canary chain
    ``SVCOPS-STATE`` of tables filter and nat (its rule carries the fingerprint of the
    record svcops last applied), the svcops jumps of the built-in chains, and the
    record's index (`svcops.render.iptables_record`). A
    `svcops.render.iptables_record.Canary`; `NO_IPTABLES` without iptables.
    """

    def command(self) -> str:
        parts = [f"if ! command -v iptables >/dev/null; then echo '{_NO_IPTABLES_MARK}'; exit 0; fi"]
        for table, builtin in _BUILTIN.items():
            # One `iptables -S CHAIN` lists that chain alone (16 ms at 10,000 services);
            # a chain that is not there prints nothing.
            lists = "; ".join(f"iptables -w 5 -t {table} -S {c} 2>/dev/null" for c in (STATE, *builtin))
            parts.append(f"echo '*{table}'; {lists}; echo COMMIT")
        parts.append(f"echo '{_INDEX_MARK}'; cat {INDEX_FILE} 2>/dev/null; true")
        return "; ".join(parts)

    @staticmethod
    def default() -> Canary | None:
        return None

    def process(self, output: list[str]) -> Canary | LiveTables:
        if output and output[0] == _NO_IPTABLES_MARK:
            return NO_IPTABLES
        i = output.index(_INDEX_MARK) if _INDEX_MARK in output else len(output)
        return parse_canary("\n".join(output[:i]), parse_index(output[i + 1 :], MODE))


_BUCKET_MARK = "@@svcops-bucket"


class SvcopsIptablesBuckets(FactBase):
    """
    The texts of some of the record's bucket files: name -> text ("" for a bucket that
    has no file).

    .. code:: python

        host.get_fact(SvcopsIptablesBuckets, buckets=("3f", "s1"))
    """

    def command(self, buckets) -> str:
        return "".join(
            f"echo '{_BUCKET_MARK} {b}'; cat {shlex.quote(f'{RECORD_DIR}/{b}')} 2>/dev/null; " for b in buckets
        ) + "true"

    @staticmethod
    def default() -> dict | None:
        return None

    def process(self, output: list[str]) -> dict[str, str]:
        out: dict[str, list[str]] = {}
        lines: list[str] = []
        for line in output:
            if line.startswith(_BUCKET_MARK + " "):
                lines = out.setdefault(line.split(" ", 1)[1], [])
            else:
                lines.append(line + "\n")
        return {b: "".join(ls) for b, ls in out.items()}


class SvcopsIptablesRecord(FactBase):
    """
    The record's folder as it is: file name -> the first 32 hex digits of its sha256
    (`svcops.render.record.digest_text`'s), for the full read (``--verify``, or a
    canary that disagrees), which rewrites every file that differs.
    """

    def command(self) -> str:
        return f"cd {RECORD_DIR} 2>/dev/null && for f in *; do [ -f \"$f\" ] && echo \"$(sha256sum < \"$f\" | cut -c1-32) $f\"; done; true"

    @staticmethod
    def default() -> dict:
        return {}

    def process(self, output: list[str]) -> dict[str, str]:
        out = {}
        for line in output:
            digest, _, name = line.partition(" ")
            if name:
                out[name] = digest
        return out
