"""svcops's nftables table ``ip svcops`` on a node: `SvcopsNftables`.

Read whole (``nft list table ip svcops``: every chain with its rules, the sets, the
maps with their elements), parsed into the core's `NftLive` with its content, plus
the fingerprint on the first line of the boot file (`svcops.render.nftables_sync`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyinfra.api import FactBase

from svcops.render.nftables import STATE_SET
from svcops.render.nftables_live import LIST_COMMAND, TABLE, NftLive, parse_nft_list
from svcops.render.nftables_record import MODE, parse_canary
from svcops.render.nftables_sync import STATE_PREFIX
from svcops.render.node_files import NFT_FILE, NFT_RECORD_DIR
from svcops.render.plain import plain
from svcops.render.record import RecordIndex, parse_index

__all__ = [
    "SvcopsNftables",
    "NftState",
    "parse_nft_state",
    "SvcopsNftCanary",
    "NftCanary",
    "parse_nft_canary",
    "SvcopsNftBuckets",
    "parse_nft_buckets",
    "buckets_command",
    "bucket_files_command",
]

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
        # No table is no error (a clean node); a listing that fails is. (`nft list tables`
        # would dump every table's rules first: 16 s beside a 10,000-service table.)
        f"if o=$(nft list sets table {TABLE} 2>&1 >/dev/null); then {listing} || exit 1; "
        "elif printf '%s' \"$o\" | grep -q 'No such file or directory'; then :; "
        "else printf '%s\\n' \"$o\" >&2; exit 1; fi"
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


# --- the fast path: canary, index and buckets (svcops.render.nftables_record) ---------


@dataclass(frozen=True, slots=True)
class NftCanary:
    """What `SvcopsNftCanary` reports.

    available:  nft is installed
    canary:     the fingerprint the table's ``state`` set carries (None: no table, set or element)
    index:      the record's index on the node (None: none, or not consistent)
    boot_state: the first line of the boot file of svcops versions before the record ("" if none)
    """

    available: bool = True
    canary: str | None = None
    index: RecordIndex | None = None
    boot_state: str = ""

    @property
    def trusted(self) -> bool:
        """The record is what the table holds (as far as a canary can tell)."""
        return self.canary is not None and self.index is not None and self.canary == self.index.fingerprint

    def to_json(self) -> dict:
        return plain(self)


_CANARY = "@@svcops-nft canary"
_INDEX = "@@svcops-nft index"


def parse_nft_canary(lines: list[str]) -> NftCanary:
    """Parse `SvcopsNftCanary`'s output (pure)."""
    if lines and lines[0].strip() == _NFT_MISSING:
        return NftCanary(available=False)
    boot, part = "", None
    canary: list[str] = []
    index: list[str] = []
    for line in lines:
        if line.startswith(_NFT_BOOT):
            first = line[len(_NFT_BOOT) :].strip()
            if first.startswith(STATE_PREFIX.strip()):
                boot = first[len(STATE_PREFIX.strip()) :].strip()
        elif line.strip() in (_CANARY, _INDEX):
            part = line.strip()
        elif part == _CANARY:
            canary.append(line)
        elif part == _INDEX:
            index.append(line)
    return NftCanary(True, parse_canary(canary), parse_index(index, MODE), boot)


class SvcopsNftCanary(FactBase):
    """
    The cheap view of svcops's nftables table, as an ``NftCanary``: the canary (the
    ``state`` set, ~20 ms at 10,000 services) and the record's index
    (``/etc/svcops/nft.d/index``). When they agree, an apply reads only the buckets it
    needs (`SvcopsNftBuckets`); otherwise the whole table (`SvcopsNftables`).

    .. code:: python

        c = host.get_fact(SvcopsNftCanary)
        c.trusted, c.index.fingerprint if c.index else None
    """

    def command(self) -> str:
        return (
            f"if ! command -v nft >/dev/null; then echo '{_NFT_MISSING}'; exit 0; fi; "
            f"echo \"{_NFT_BOOT}$(head -n 1 {NFT_FILE} 2>/dev/null)\"; "
            f"echo '{_CANARY}'; nft list set {TABLE} {STATE_SET} 2>/dev/null; "
            f"echo '{_INDEX}'; cat {NFT_RECORD_DIR}/index 2>/dev/null; true"
        )

    @staticmethod
    def default() -> NftCanary | None:
        return None

    def process(self, output: list[str]) -> NftCanary:
        return parse_nft_canary(output)


_BUCKET = "@@svcops-nft bucket "


def buckets_command(folder: str, buckets) -> str:
    """Shell printing each bucket file of a record `folder` after a line naming it and
    its sha256 (computed on the node; no digest: no such file). Any mode's record."""
    return bucket_files_command(folder, " ".join(b for b in buckets if len(b) == 2 and b.isalnum()))


def bucket_files_command(folder: str, words: str) -> str:
    """`buckets_command` for the buckets that the shell words `words` name (names, or
    a command that prints them: each is checked to be a bucket's name first)."""
    return (
        f"for b in {words}; do case $b in [0-9a-z][0-9a-z]) ;; *) continue;; esac; f={folder}/$b; "
        f"if [ -f \"$f\" ]; then echo \"{_BUCKET}$b $(sha256sum < \"$f\")\"; cat \"$f\"; "
        f"else echo \"{_BUCKET}$b\"; fi; done; true"
    )


def parse_nft_buckets(lines: list[str]) -> dict[str, tuple[str, str]]:
    """bucket -> (the sha256 the node computed of its file, its first 32 hex digits as
    `svcops.render.record.digest_text`'s, "" if missing; its text)."""
    out: dict[str, tuple[str, list[str]]] = {}
    cur: list[str] | None = None
    for line in lines:
        if line.startswith(_BUCKET):
            parts = line[len(_BUCKET) :].split()
            cur = []
            out[parts[0]] = (parts[1][:32] if len(parts) > 1 else "", cur)
        elif cur is not None:
            cur.append(line)
    return {b: (d, "".join(x + "\n" for x in t)) for b, (d, t) in out.items()}


class SvcopsNftBuckets(FactBase):
    """
    Some bucket files of the nftables record: bucket -> (its sha256 as the node
    computed it, its text). The digest is computed on the node, so that what the
    transport does to whitespace cannot make a good file look edited.

    .. code:: python

        host.get_fact(SvcopsNftBuckets, buckets=("3f", "a0"))
    """

    def command(self, buckets=()) -> str:
        return buckets_command(NFT_RECORD_DIR, buckets)

    @staticmethod
    def default() -> dict:
        return {}

    def process(self, output: list[str]) -> dict[str, tuple[str, str]]:
        return parse_nft_buckets(output)
