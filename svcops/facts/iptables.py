"""svcops's part of the node's iptables (tables filter and nat).

    SvcopsIptables          the whole of it (iptables-save: seconds at 10,000 services),
                            as `svcops.render.iptables.LiveTables`; a node without
                            iptables at all reads as `NO_IPTABLES`
    SvcopsIptablesCanary    the canary chain SVCOPS-STATE of both tables, the jumps of
                            the built-in chains and the record's index (milliseconds):
                            `svcops.render.iptables_record.Canary`
    SvcopsIptablesBuckets   some of the record's bucket files, by name, with their digests
    SvcopsIptablesRecord    the sha256 of every file in the record's folder
"""

from __future__ import annotations

from pyinfra.api import FactBase

from svcops.facts.nftables import buckets_command, parse_nft_buckets
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


class SvcopsIptablesBuckets(FactBase):
    """
    Some of the record's bucket files: name -> (the sha256 of the file as the node
    computed it, "" when there is no such file; its text), as the other modes read
    theirs (`svcops.facts.nftables.buckets_command`): the digest is taken on the
    node, so that what the transport does to whitespace cannot make a good file look
    edited, nor an edited one look good.

    .. code:: python

        host.get_fact(SvcopsIptablesBuckets, buckets=("3f", "s1"))
    """

    def command(self, buckets=()) -> str:
        return buckets_command(RECORD_DIR, buckets)

    @staticmethod
    def default() -> dict | None:
        return None

    def process(self, output: list[str]) -> dict[str, tuple[str, str]]:
        return parse_nft_buckets(output)


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
