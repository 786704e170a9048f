"""UDP conntrack cleanup on a node: the shell around `svcops.conntrack`.

After a node's new rules are in place, the conntrack entries of UDP flows that still
point at endpoints the rules no longer have are deleted (kube-proxy does the same
after each sync). `iptables_rules` does it right after its restore (and after SSH was
checked), from the very ``iptables-save`` that drove the restore, so the previous
state is the node's own, read once::

    iptables_rules(name="svcops rules", rules=out.iptables,
                   udp_ports=node_udp_ports(compiled, host.name))

`node_udp_ports` gives the node's UDP service ports (what its rules DNAT to); the
site's UDP ports are picked out of the resolved ports once per site.

Proxy modes: iptables mode reads the previous state back from the live chains
(`svcops.conntrack.udp_ports_from_iptables`). nftables and IPVS modes have no reader
yet; their nodes get no cleanup: a stale UDP flow lasts until its client stops
sending for the kernel's ``nf_conntrack_udp_timeout_stream`` (120 s).
"""

from __future__ import annotations

import shlex
import threading
from typing import Mapping

from pyinfra.api import StringCommand

from .conntrack import UdpPort, conntrack_script, stale_conntrack, udp_ports, udp_ports_from_iptables

__all__ = ["node_udp_ports", "cleanup_commands"]

_SITES: dict[int, tuple[object, tuple]] = {}
_LOCK = threading.Lock()


def _site_udp(compiled) -> tuple:
    """The UDP ones among a compiled site's resolved ports, picked out once per site."""
    key = id(compiled)
    with _LOCK:
        hit = _SITES.get(key)
        if hit is not None and hit[0] is compiled:
            return hit[1]
    ports = tuple(rp for rp in compiled.ports if rp.port.protocol == "UDP")
    with _LOCK:
        if len(_SITES) >= 8:
            _SITES.pop(next(iter(_SITES)))
        _SITES[key] = (compiled, ports)  # kept alive, so the id stays its own
    return ports


def node_udp_ports(compiled, node: str) -> dict[str, UdpPort]:
    """The UDP service ports as `node`'s rules have them (`svcops.conntrack.udp_ports`)."""
    return udp_ports(_site_udp(compiled), node)


def cleanup_commands(live, new: Mapping[str, UdpPort] | None) -> list[StringCommand]:
    """The command that deletes stale UDP flows once the rules for `new` are in place,
    given the live tables (`svcops.facts.SvcopsIptables`) read before the restore;
    none when nothing is stale or `new` is None (no cleanup asked for).

    A node without the ``conntrack`` tool gets a warning on stderr, and the apply
    goes on (the flows then time out by themselves)."""
    if new is None or live is None:
        return []
    commands = stale_conntrack(udp_ports_from_iptables(live), new)
    script = conntrack_script(commands)
    if not script:
        return []
    missing = "svcops: conntrack not found (install the conntrack package): stale UDP flows were not deleted"
    return [
        StringCommand(
            f"if command -v conntrack >/dev/null 2>&1 || [ -x /usr/sbin/conntrack ]; then "
            f"PATH=$PATH:/usr/sbin sh -c {shlex.quote(script)}; else echo {shlex.quote(missing)} >&2; fi"
        )
    ]
