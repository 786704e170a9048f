"""svcops's IPVS footprint on a node, and whether the node can do IPVS: `SvcopsIpvs`.

The value's ``live`` part is the core's `svcops.render.ipvs_sync.IpvsLive`, from which
`ipvs_plan` and `ipvs_removal` decide what to run. Reading it never loads a module.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from typing import Mapping

from svcops.facts.nftables import buckets_command, parse_nft_buckets
from svcops.render.ipvs import DUMMY_INTERFACE, SYSCTLS, SYSCTLS_BEFORE, parse_ipvsadm_save
from svcops.render.ipvs_record import CANARY_MARK, CANARY_PREFIX, MODE, STATE_SET, parse_canary, parse_counts
from svcops.render.ipvs_sync import IpvsLive, parse_ipset_save
from svcops.render.node_files import IPVS_RECORD_DIR
from svcops.render.plain import plain
from svcops.render.record import RecordIndex, parse_index

__all__ = ["SvcopsIpvs", "IpvsState", "parse_ipvs_state", "SvcopsIpvsCanary", "IpvsCanary", "parse_ipvs_canary", "SvcopsIpvsBuckets"]

@dataclass(frozen=True, slots=True)
class IpvsState:
    """What `SvcopsIpvs` reports.

    missing:  what the node lacks for IPVS mode ("kernel module ip_vs ...", "ipvsadm ...")
    live:     svcops's IPVS footprint (`svcops.render.ipvs_sync.IpvsLive`)
    """

    missing: tuple[str, ...] = ()
    live: IpvsLive = field(default_factory=IpvsLive)

    @property
    def present(self) -> bool:
        """Whether anything of svcops's IPVS mode is on the node."""
        live = self.live
        return live.link or bool(live.sets) or bool(live.before) or bool(parse_ipvsadm_save(live.ipvsadm))

    def to_json(self) -> dict:
        """Plain data, for ``pyinfra INVENTORY fact ...`` (see `svcops.render.plain`)."""
        return plain(self)


_IPVS_MODULES = ("ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_dh", "ip_vs_sed", "ip_vs_nq", "nf_conntrack", "dummy")


def _ipvs_command() -> str:
    d = shlex.quote(DUMMY_INTERFACE)
    return (
        _cheap_command()
        + f"if ip link show {d} >/dev/null 2>&1; then echo link; "
        f"ip -4 -o addr show dev {d} | awk '{{print \"addr \" $4}}'; fi; "
        "if [ -d /sys/module/ip_set ] && c ipset; then ipset save | grep -E '^(create|add) SVCOPS-' | sed 's/^/ipset /'; fi; "
        "if [ -e /proc/net/ip_vs ] && c ipvsadm; then ipvsadm-save -n | sed 's/^/vs /'; fi; true"
    )


def _proc_sys(key: str) -> str:
    """The /proc/sys file of a sysctl key ("net.ipv4.vs.conntrack")."""
    return "/proc/sys/" + key.replace(".", "/")


def _sysctl_line(rest: str) -> tuple[str, str]:
    """A sysctl as the command prints it: "/proc/sys/net/ipv4/ip_forward:1" (or, from
    earlier versions, "net.ipv4.ip_forward 1") -> ("net.ipv4.ip_forward", "1")."""
    if rest.startswith("/proc/sys/"):
        path, _, value = rest.partition(":")
        return path[len("/proc/sys/"):].replace("/", "."), value.strip()
    k, _, v = rest.partition(" ")
    return k, v.strip()


def _cheap_command() -> str:
    """What the node lacks, its modules, sysctls and kept values: milliseconds."""
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
        # Every value in one grep ("sysctl -n" forked a process a key), as "PATH:VALUE"
        # (`_sysctl_line`); a key the kernel lacks (no ip_vs) is left out.
        + "grep -H . " + " ".join(_proc_sys(k) for k in SYSCTLS) + " 2>/dev/null | sed 's/^/sysctl /'; "
        f"[ -r {shlex.quote(SYSCTLS_BEFORE)} ] && sed 's/^/before /' {shlex.quote(SYSCTLS_BEFORE)}; "
    )


def parse_ipvs_state(lines: list[str]) -> IpvsState:
    """Parse `SvcopsIpvs`'s output (pure)."""
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
            k, v = _sysctl_line(rest)
            sysctls[k] = v
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


# --- the fast path: canary, index and buckets (svcops.render.ipvs_record) ---------------


@dataclass(frozen=True, slots=True)
class IpvsCanary:
    """What `SvcopsIpvsCanary` reports.

    missing, live:  as `IpvsState`, but `live` holds only what is cheap to read: the
                    link, modules, sysctls and kept values (no address, set or server)
    canary:         the fingerprint ``SVCOPS-STATE`` carries (None: no set or entry)
    mark:           the canary's fwmark virtual server is there
    counts:         the dummy interface's address count ("a") and each svcops set's
                    entry count, as the kernel has them
    servers:        IPVS holds some virtual server (whose, a full read says)
    index:          the record's index on the node (None: none, or not consistent)
    """

    missing: tuple[str, ...] = ()
    live: IpvsLive = field(default_factory=IpvsLive)
    canary: str | None = None
    mark: bool = False
    counts: Mapping[str, int] = field(default_factory=dict)
    servers: bool = False
    index: RecordIndex | None = None

    @property
    def trusted(self) -> bool:
        """The record is what the kernel holds (as far as the canary can tell): the
        canary names it, its fwmark server is there, and every count is the record's."""
        if self.canary is None or self.index is None or self.canary != self.index.fingerprint or not self.mark:
            return False
        return parse_counts(self.index.extra) == {k: v for k, v in self.counts.items() if k != STATE_SET}

    @property
    def present(self) -> bool:
        """Whether anything of svcops's IPVS mode may be on the node (a full read says what)."""
        live = self.live
        return live.link or bool(self.counts) or bool(live.before) or self.servers or self.index is not None

    def to_json(self) -> dict:
        return plain(self)


_CANARY = "@@svcops-ipvs canary"
_INDEX = "@@svcops-ipvs index"


def parse_ipvs_canary(lines: list[str]) -> IpvsCanary:
    """Parse `SvcopsIpvsCanary`'s output (pure)."""
    part = None
    head: list[str] = []
    canary: list[str] = []
    index: list[str] = []
    counts: dict[str, int] = {}
    mark = servers = False
    for line in lines:
        if line.strip() in (_CANARY, _INDEX):
            part = line.strip()
        elif part == _INDEX:
            index.append(line)
        elif line.startswith("count "):
            _, name, n = (line.split() + ["", ""])[:3]
            if name.startswith("SVCOPS-") and n.isdigit():
                counts[name] = int(n)
        elif line.startswith("addresses "):
            n = line.split()[1:2]
            if n and n[0].isdigit():
                counts["a"] = int(n[0])
        elif line.strip() == "mark":
            mark = True
        elif line.strip() == "servers":
            servers = True
        elif part == _CANARY:
            canary.append(line)
        else:
            head.append(line)
    state = parse_ipvs_state(head)
    if state.live.link and "a" not in counts:
        counts["a"] = 0
    return IpvsCanary(state.missing, state.live, parse_canary(canary), mark, counts, servers, parse_index(index, MODE))


class SvcopsIpvsCanary(FactBase):
    """
    The cheap view of svcops's IPVS mode, as an ``IpvsCanary``: what `SvcopsIpvs` reads
    but the addresses, the sets' entries and the virtual servers; instead the canary
    (``ipset list SVCOPS-STATE``, ``ipvsadm -L -n -f MARK``), the address count, each
    set's entry count (``ipset list -t``), and the record's index
    (``/etc/svcops/ipvs.d/index``). When they agree, an apply reads only the buckets
    it needs (`SvcopsIpvsBuckets`); otherwise everything (`SvcopsIpvs`).
    """

    def command(self) -> str:
        d = shlex.quote(DUMMY_INTERFACE)
        return (
            _cheap_command()
            + f"if ip link show {d} >/dev/null 2>&1; then echo link; "
            f"echo \"addresses $(ip -4 -o addr show dev {d} | wc -l)\"; fi; "
            "if [ -d /sys/module/ip_set ] && c ipset; then "
            "ipset list -t | awk '/^Name: /{n=$2} /^Number of entries: /{if (n ~ /^SVCOPS-/) print \"count \" n \" \" $4}'; "
            f"echo '{_CANARY}'; ipset list {STATE_SET} 2>/dev/null | grep '{CANARY_PREFIX}'; fi; "
            "if [ -e /proc/net/ip_vs ] && c ipvsadm; then "
            f"ipvsadm -L -n -f {CANARY_MARK} >/dev/null 2>&1 && echo mark; "
            "awk 'NR > 3 { print \"servers\"; exit }' /proc/net/ip_vs; fi; "
            f"echo '{_INDEX}'; cat {IPVS_RECORD_DIR}/index 2>/dev/null; true"
        )

    @staticmethod
    def default() -> IpvsCanary | None:
        return None

    def process(self, output: list[str]) -> IpvsCanary:
        return parse_ipvs_canary(output)


class SvcopsIpvsBuckets(FactBase):
    """
    Some bucket files of the IPVS record: bucket -> (its sha256 as the node computed
    it, its text), as `svcops.facts.nftables.SvcopsNftBuckets` for nftables.

    .. code:: python

        host.get_fact(SvcopsIpvsBuckets, buckets=("3f", "sk"))
    """

    def command(self, buckets=()) -> str:
        return buckets_command(IPVS_RECORD_DIR, buckets)

    @staticmethod
    def default() -> dict:
        return {}

    def process(self, output: list[str]) -> dict[str, tuple[str, str]]:
        return parse_nft_buckets(output)
