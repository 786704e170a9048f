"""pyinfra facts about svcops's footprint on a node.

pyinfra does not cache facts: every ``host.get_fact`` runs its command again. So
svcops has a few broad facts, one command each, and the operations read all they need
from them (and through `svcops.factcache`, which reads them all in one round trip and
shares them between consecutive operations that change nothing):

    SvcopsIptables   svcops's chains, their rules and its jumps in tables filter and
                     nat: one ``iptables-save -t filter; iptables-save -t nat``
    SvcopsNodeState  sha256 of every file svcops persists, the boot unit's symlink,
                     net.ipv4.ip_forward, and the node's IPv4 addresses (with labels)
    SvcopsNftables   svcops's nftables table (chains, sets, map elements with their
                     digests; `svcops.render.nftables.LIVE_COMMANDS`, not the slow
                     `nft list table`) and the fingerprint of its boot file
    SvcopsIpvs       whether the node can do IPVS (module ip_vs, dummy interfaces,
                     ipvsadm, ipset), svcops's dummy interface and its addresses,
                     svcops's ipsets and ``ipvsadm-save -n``; it never loads a module

Use them in your own deploy like any pyinfra fact::

    from pyinfra import host
    from svcops.facts import SvcopsIptables

    live = host.get_fact(SvcopsIptables)        # a svcops.render.iptables.LiveTables
    print(sorted(live.table("nat").chains))     # ['SVCOPS-MARK-MASQ', 'SVCOPS-NODEPORTS', ...]

On the command line: ``pyinfra inventory/lab.py fact svcops.facts.SvcopsNodeState``.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Mapping

from pyinfra.api import FactBase

from .node_files import ANNOUNCE_FILE, MANAGED_FILES, NFT_FILE, UNIT_LINK
from .render.iptables import LiveTables, parse_iptables_save
from .ipvs_apply import IpvsLive
from .render.ipvs import DUMMY_INTERFACE
from .render.nftables import LIVE_COMMANDS, NftLive, parse_nft_list

__all__ = [
    "SvcopsIptables",
    "SvcopsNodeState",
    "SvcopsNftables",
    "SvcopsIpvs",
    "NodeState",
    "NftState",
    "IpvsState",
    "Address",
    "parse_node_state",
    "parse_nft_state",
    "parse_ipvs_state",
    "NO_IPTABLES",
]

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


@dataclass(frozen=True, slots=True)
class Address:
    """One IPv4 address on the node: "192.168.36.11", 24, "eth0", label "eth0"."""

    address: str
    prefixlen: int
    interface: str
    label: str


@dataclass(frozen=True, slots=True)
class NodeState:
    """What `SvcopsNodeState` reports.

    files:      path -> sha256 of each file svcops manages that exists
    unit_link:  where the boot unit's wants-symlink points ("" when absent)
    ip_forward: the value of net.ipv4.ip_forward ("1", "0", or "" when unreadable)
    addresses:  every IPv4 address of the node
    announced:  the load-balancer addresses svcops recorded as announced by this node
    """

    files: Mapping[str, str] = field(default_factory=dict)
    unit_link: str = ""
    ip_forward: str = ""
    addresses: tuple[Address, ...] = ()
    announced: tuple[str, ...] = ()  # the addresses /etc/svcops/announce records

    def has_address(self, address: str, interface: str | None = None) -> bool:
        return any(a.address == address and (interface is None or a.interface == interface) for a in self.addresses)


def _state_command() -> str:
    files = " ".join(shlex.quote(f) for f in MANAGED_FILES)
    return (
        f"for f in {files}; do "
        '[ -f "$f" ] && echo "file $(sha256sum < "$f" | cut -d" " -f1) $f"; '
        "done; "
        f'echo "link $(readlink {shlex.quote(UNIT_LINK)} 2>/dev/null)"; '
        'echo "ip_forward $(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)"; '
        f"[ -f {ANNOUNCE_FILE} ] && sed 's/^/announced /' {ANNOUNCE_FILE}; "
        'echo "addresses $(ip -j -4 addr show)"'
    )


def parse_node_state(lines: list[str]) -> NodeState:
    """Parse `SvcopsNodeState`'s output (pure)."""
    files: dict[str, str] = {}
    link = forward = ""
    addresses: list[Address] = []
    announced: list[str] = []
    for line in lines:
        key, _, rest = line.partition(" ")
        if key == "file":
            digest, _, path = rest.partition(" ")
            files[path] = digest
        elif key == "link":
            link = rest.strip()
        elif key == "ip_forward":
            forward = rest.strip()
        elif key == "announced" and rest.strip():
            announced.append(rest.split()[0])
        elif key == "addresses" and rest.strip():
            for link_info in json.loads(rest):
                for a in link_info.get("addr_info", ()):
                    if a.get("family") == "inet":
                        addresses.append(
                            Address(a["local"], int(a["prefixlen"]), link_info["ifname"], a.get("label", link_info["ifname"]))
                        )
    return NodeState(files, link, forward, tuple(addresses), tuple(announced))


class SvcopsNodeState(FactBase):
    """
    The node's svcops state apart from iptables, as a ``NodeState``: sha256 of the
    files svcops persists (boot rules, restore script, systemd unit, sysctl file,
    static-address file, announced addresses), the boot unit's symlink,
    ``net.ipv4.ip_forward``, and every IPv4 address with its label (svcops labels the
    load-balancer addresses it adds "<interface>:svc").
    """

    def command(self) -> str:
        return _state_command()

    @staticmethod
    def default() -> NodeState | None:
        return None  # the command failed: the operations refuse to guess

    def process(self, output: list[str]) -> NodeState:
        return parse_node_state(output)


# --- nftables ----------------------------------------------------------------------------


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
    from .nft_apply import STATE_PREFIX

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


# --- IPVS ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpvsState:
    """What `SvcopsIpvs` reports.

    missing:  what the node lacks for IPVS mode ("kernel module ip_vs ...", "ipvsadm ...")
    live:     svcops's IPVS footprint (`svcops.ipvs_apply.IpvsLive`)
    """

    missing: tuple[str, ...] = ()
    live: IpvsLive = field(default_factory=IpvsLive)

    @property
    def present(self) -> bool:
        """Whether anything of svcops's IPVS mode is on the node."""
        from .render.ipvs import parse_ipvsadm_save

        live = self.live
        return live.link or bool(live.sets) or bool(live.before) or bool(parse_ipvsadm_save(live.ipvsadm))


_IPVS_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_dh", "ip_vs_sed", "ip_vs_nq", "nf_conntrack", "dummy")


def _ipvs_command() -> str:
    from .render.ipvs import SYSCTLS, SYSCTLS_BEFORE

    d = shlex.quote(DUMMY_INTERFACE)
    keys = " ".join(SYSCTLS)
    # A module counts when loaded or built in (/sys/module) or when modprobe would find
    # it (-n: dry run; a fact never loads a module).
    return (
        'm() { [ -d "/sys/module/$1" ] || modprobe -n -q "$1" 2>/dev/null; }; '
        'c() { command -v "$1" >/dev/null 2>&1; }; '
        'm ip_vs || echo "missing kernel module ip_vs (IP Virtual Server)"; '
        'm dummy || echo "missing kernel module dummy (dummy interfaces)"; '
        'c ipvsadm || echo "missing ipvsadm (Debian package ipvsadm)"; '
        'c ipset || echo "missing ipset (Debian package ipset)"; '
        'c modprobe || echo "missing modprobe (Debian package kmod)"; '
        f'for k in {" ".join(_IPVS_MODULES)}; do [ -d "/sys/module/$k" ] && echo "module $k"; done; '
        f'for k in {keys}; do v=$(sysctl -n "$k" 2>/dev/null) && echo "sysctl $k $v"; done; '
        f"[ -r {shlex.quote(SYSCTLS_BEFORE)} ] && sed 's/^/before /' {shlex.quote(SYSCTLS_BEFORE)}; "
        f"if ip link show {d} >/dev/null 2>&1; then echo link; "
        f"ip -4 -o addr show dev {d} | awk '{{print \"addr \" $4}}'; fi; "
        "if [ -d /sys/module/ip_set ] && c ipset; then ipset save | grep -E '^(create|add) SVCOPS-' | sed 's/^/ipset /'; fi; "
        "if [ -e /proc/net/ip_vs ] && c ipvsadm; then ipvsadm-save -n | sed 's/^/vs /'; fi; true"
    )


def parse_ipvs_state(lines: list[str]) -> IpvsState:
    """Parse `SvcopsIpvs`'s output (pure)."""
    from .ipvs_apply import parse_ipset_save

    missing: list[str] = []
    link = False
    addresses: list[str] = []
    ipset: list[str] = []
    vs: list[str] = []
    sysctls: dict[str, str] = {}
    modules: set[str] = set()
    before: dict[str, str] = {}
    for line in lines:
        key, _, rest = line.partition(" ")
        if key == "before":
            k, _, v = rest.partition("=")
            if k.strip() and v.strip():
                before[k.strip()] = v.strip()
        elif key == "missing":
            missing.append(rest.strip())
        elif key == "module":
            modules.add(rest.strip())
        elif key == "sysctl":
            k, _, v = rest.partition(" ")
            sysctls[k] = v.strip()
        elif key == "link":
            link = True
        elif key == "addr":
            addresses.append(rest.strip().split("/", 1)[0])
        elif key == "ipset":
            ipset.append(rest)
        elif key == "vs":
            vs.append(rest)
    sets, members = parse_ipset_save("\n".join(ipset))
    live = IpvsLive(link, tuple(addresses), sets, members, "".join(v + "\n" for v in vs), sysctls, frozenset(modules), before)
    return IpvsState(tuple(missing), live)


class SvcopsIpvs(FactBase):
    """
    svcops's IPVS footprint as an ``IpvsState``: what the node lacks for IPVS mode
    (module ip_vs or dummy, ipvsadm, ipset), the modules loaded, the IPVS sysctls (and
    the node's own values of the ARP ones, kept in /etc/svcops/ipvs-sysctls.before), the
    dummy interface ``svcops-ipvs0`` and its addresses, the ``SVCOPS-`` ipsets with
    their members (``ipset save``) and ``ipvsadm-save -n``. Reading it loads no kernel
    module.
    """

    def command(self) -> str:
        return _ipvs_command()

    @staticmethod
    def default() -> IpvsState | None:
        return None

    def process(self, output: list[str]) -> IpvsState:
        return parse_ipvs_state(output)
