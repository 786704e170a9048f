"""svcops's nftables table ``ip svcops`` on a node: `SvcopsNftables`.

Read whole (``nft list table ip svcops``: every chain with its rules, the sets, the
maps with their elements), parsed into the core's `NftLive` with its content, plus
the fingerprint on the first line of the boot file (`svcops.render.nftables_sync`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyinfra.api import FactBase

from svcops.render.nftables_live import LIST_COMMAND, TABLE, NftLive, parse_nft_list
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
    listing = " ".join(LIST_COMMAND)
    return (
        f"if ! command -v nft >/dev/null; then echo '{_NFT_MISSING}'; exit 0; fi; "
        f"echo \"{_NFT_BOOT}$(head -n 1 {NFT_FILE} 2>/dev/null)\"; "
        # No table is no error (a clean node); a listing that fails is.
        "t=$(nft list tables ip) || exit 1; "
        f"if printf '%s\\n' \"$t\" | grep -qx 'table {TABLE}'; then {listing} || exit 1; fi"
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
    return NftState(True, parse_nft_list(rest, full=True), boot)


class SvcopsNftables(FactBase):
    """
    svcops's nftables table ``ip svcops`` as an ``NftState``: its chains with their
    rules, its affinity sets and its maps with their elements, whose comments carry each
    service port's digest, all from one ``nft list table ip svcops``, and the
    fingerprint of the boot file ``/etc/svcops/rules.nft``. No other table is read.

    The whole listing is what lets an apply see a chain edited by hand; it costs
    1-2 s on a 1,000-service table and about a minute on a 10,000-service one on this
    kernel (the kernel's rule dump grows with the square of the table), where the
    digests alone (`svcops.render.nftables_live.LIVE_COMMANDS`) take 0.25 s and 3-4 s.

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
