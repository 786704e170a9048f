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

from svcops.facts.nftables import bucket_files_command, buckets_command, parse_nft_buckets
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

    + want: the render's buckets and their digests ((bucket, digest), as its index
      names them): the bucket files whose index line differs are read in the same
      round trip (``Canary.buckets``, as `SvcopsIptablesBuckets` reads them), the
      difference taken on the node

    .. code:: python

        host.get_fact(SvcopsIptablesCanary, want=tuple(record.index().digests.items()))
    """

    def command(self, want=()) -> str:
        # One `iptables -S CHAIN` lists that chain alone (1-2 ms at any size: mostly the
        # process starting); a chain that is not there prints nothing.
        filter_, nat = (
            f"echo '*{t}'; " + "; ".join(f"iptables -w 5 -t {t} -S {c} 2>/dev/null" for c in (STATE, *_BUILTIN[t])) + "; echo COMMIT"
            for t in ("filter", "nat")
        )
        record = f"echo '{_INDEX_MARK}'; cat {INDEX_FILE} 2>/dev/null"
        if want:
            record += f"; echo '{_CHANGED_MARK}'; {bucket_files_command(RECORD_DIR, _changed_on_node(want))}"
        # The three parts run at once, each writing into a pipe its reader copies out
        # after its own output: nat, filter, then the record (whose bucket texts hold
        # table sections too: last, after its mark).
        return (
            f"if ! command -v iptables >/dev/null; then echo '{_NO_IPTABLES_MARK}'; exit 0; fi; "
            f"{{ {record}; }} | {{ {{ {filter_}; }} | {{ {nat}; cat; }}; cat; }}; true"
        )

    @staticmethod
    def default() -> Canary | None:
        return None

    def process(self, output: list[str]) -> Canary | LiveTables:
        if output and output[0] == _NO_IPTABLES_MARK:
            return NO_IPTABLES
        i = output.index(_INDEX_MARK) if _INDEX_MARK in output else len(output)
        j = output.index(_CHANGED_MARK) if _CHANGED_MARK in output else None
        index = parse_index(output[i + 1 : j], MODE)
        return parse_canary("\n".join(output[:i]), index, parse_nft_buckets(output[j + 1 :]) if j is not None else None)


_CHANGED_MARK = "@@svcops-changed"


def _changed_on_node(want) -> str:
    """Shell printing the buckets whose line in the node's index differs from `want`
    ((bucket, content digest) pairs), or that only one of them names (one awk)."""
    pairs = " ".join(f"{b}:{d}" for b, d in sorted(want) if len(b) == 2 and b.isalnum() and d.isalnum())
    program = (
        'BEGIN { n = split(w, a, " "); for (i = 1; i <= n; i++) { split(a[i], p, ":"); W[p[1]] = p[2] } } '
        "NR > 1 && NF == 3 { H[$1] = $2 } "
        "END { for (b in W) if (!(b in H) || H[b] != W[b]) print b; for (b in H) if (!(b in W)) print b }"
    )
    return f"$(awk -v w='{pairs}' '{program}' {INDEX_FILE} 2>/dev/null)"


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
