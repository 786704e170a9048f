"""svcops's nftables table ``ip svcops`` on a node: `SvcopsNftables`.

Read with the cheap listings of `svcops.render.nftables.LIVE_COMMANDS` (not the slow
``nft list table``), parsed into the core's `NftLive`, plus the fingerprint on the
first line of the boot file (`svcops.render.nftables_sync`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyinfra.api import FactBase

from svcops.render.nftables import LIVE_COMMANDS, NftLive, parse_nft_list
from svcops.render.nftables_sync import STATE_PREFIX
from svcops.render.node_files import NFT_FILE
from svcops.render.plain import plain

__all__ = ["SvcopsNftables", "NftState", "parse_nft_state"]

@dataclass(frozen=True, slots=True)
class NftState:
    """What `SvcopsNftables` reports.

    available:   nft is installed
    live:        svcops's table (NftLive(exists=False) when there is none)
    boot_state:  the fingerprint on the first line of /etc/svcops/rules.nft ("" if none)
    """

    available: bool = True
    live: NftLive = field(default_factory=NftLive)
    boot_state: str = ""

    def to_json(self) -> dict:
        """Plain data, for ``pyinfra INVENTORY fact ...`` (see `svcops.render.plain`)."""
        return plain(self)


_NFT_MISSING = "svcops-nft missing"


_NFT_BOOT = "svcops-nft boot "


def _nft_command() -> str:
    chains, sets, *maps = (" ".join(c) for c in LIVE_COMMANDS)
    return (
        f"if ! command -v nft >/dev/null; then echo '{_NFT_MISSING}'; exit 0; fi; "
        f"echo \"{_NFT_BOOT}$(head -n 1 {NFT_FILE} 2>/dev/null)\"; "
        f"{chains} || exit 1; {sets} || exit 1; "
        # A map (or the table) that is not there is no error: the node is clean.
        + "".join(f"{m} 2>/dev/null; " for m in maps)
        + "true"
    )


def parse_nft_state(lines: list[str]) -> NftState:
    """Parse `SvcopsNftables`'s output (pure)."""
    if lines and lines[0].strip() == _NFT_MISSING:
        return NftState(available=False)
    boot = ""
    rest = lines
    if lines and lines[0].startswith(_NFT_BOOT):
        first = lines[0][len(_NFT_BOOT) :].strip()
        if first.startswith(STATE_PREFIX.strip()):
            boot = first[len(STATE_PREFIX.strip()) :].strip()
        rest = lines[1:]
    return NftState(True, parse_nft_list("\n".join(rest)), boot)


class SvcopsNftables(FactBase):
    """
    svcops's nftables table ``ip svcops`` as an ``NftState``: its chains, affinity
    sets and map elements, whose comments carry each service port's digest (read with
    the cheap listings of `svcops.render.nftables.LIVE_COMMANDS`: about a second on a
    10,000-service table, where ``nft list table`` takes tens), and the fingerprint
    of the boot file ``/etc/svcops/rules.nft``. No other table is kept.

    .. code:: python

        state = host.get_fact(SvcopsNftables)
        state.live.exists, sorted(state.live.units())[:3]
    """

    def command(self) -> str:
        return _nft_command()

    @staticmethod
    def default() -> NftState | None:
        return None  # nft failed: the operations refuse to guess

    def process(self, output: list[str]) -> NftState:
        return parse_nft_state(output)
