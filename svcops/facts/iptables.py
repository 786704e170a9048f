"""svcops's part of the node's iptables (tables filter and nat): `SvcopsIptables`.

The value is the core's own type, `svcops.render.iptables.LiveTables`, parsed by
`svcops.render.iptables.parse_iptables_save`; a node without iptables at all (a pure
nftables node) reads as `NO_IPTABLES`.
"""

from __future__ import annotations

from pyinfra.api import FactBase

from svcops.render.iptables import LiveTables, parse_iptables_save

__all__ = ["SvcopsIptables", "NO_IPTABLES"]

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
