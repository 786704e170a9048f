"""svcops's IPVS footprint on a node, and whether the node can do IPVS: `SvcopsIpvs`.

The value's ``live`` part is the core's `svcops.render.ipvs_sync.IpvsLive`, from which
`ipvs_plan` and `ipvs_removal` decide what to run. Reading it never loads a module.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase

from svcops.render.ipvs import DUMMY_INTERFACE, SYSCTLS, SYSCTLS_BEFORE, parse_ipvsadm_save
from svcops.render.ipvs_sync import IpvsLive, parse_ipset_save
from svcops.render.plain import plain

__all__ = ["SvcopsIpvs", "IpvsState", "parse_ipvs_state"]

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
