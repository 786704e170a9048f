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
(`svcops.conntrack.udp_ports_from_iptables`); nftables mode from the live table
(`udp_ports_from_nft`: the map elements' comments name each service port, the
endpoint chains' names its endpoints). IPVS mode has no reader yet: there a stale UDP
flow lasts until its client stops sending for the kernel's
``nf_conntrack_udp_timeout_stream`` (120 s).
"""

from __future__ import annotations

import shlex
import threading
from typing import Mapping

from pyinfra.api import StringCommand

from .conntrack import UdpPort, conntrack_script, stale_conntrack, udp_ports, udp_ports_from_iptables

__all__ = ["node_udp_ports", "cleanup_commands", "udp_ports_from_nft"]

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


def _port_name(uid: str) -> str:
    """nftables' unit id "ns/name/udp/port" -> kube-proxy's port name "ns/name:port"."""
    ns, name, _proto, port = (uid.split("/", 3) + ["", "", ""])[:4]
    return f"{ns}/{name}:{port}" if port else f"{ns}/{name}"


def udp_ports_from_nft(live) -> dict[str, UdpPort]:
    """name -> UdpPort, read back from a node's live ``table ip svcops``
    (`svcops.render.nft_live.NftLive`, as `svcops.facts.SvcopsNftables` reads it).

    Addresses from the elements keyed "<ip> . udp . <port>" (service-ips and the
    no-endpoint maps), node ports from those keyed "udp . <port>", each element's
    comment naming its service port; endpoints from the endpoint chains' names
    ("endpoint-<hash>-<ns>/<name>/udp/<port>__<ip>/<port>")."""
    from .render.nft_live import unit_of_name

    addresses: dict[str, dict[str, None]] = {}
    node_ports: dict[str, int] = {}
    endpoints: dict[str, set[str]] = {}
    for elements in live.maps.values():
        for key, (_verdict, comment) in elements.items():
            if not comment:
                continue
            uid = comment.rpartition(" ")[0]
            if "/udp/" not in uid:
                continue
            parts = [p.strip() for p in key.split(" . ")]
            if len(parts) == 3 and parts[1] == "udp":
                addresses.setdefault(uid, {})[parts[0]] = None
            elif len(parts) == 2 and parts[0] == "udp" and parts[1].isdigit():
                node_ports[uid] = int(parts[1])
    for chain in live.chains:
        if not chain.startswith("endpoint-") or "__" not in chain:
            continue
        uid = unit_of_name(chain)
        if uid is None or "/udp/" not in uid:
            continue
        ip = chain.rsplit("__", 1)[1].rpartition("/")[0]
        if ip:
            endpoints.setdefault(uid, set()).add(ip)
    uids = sorted(set(addresses) | set(node_ports) | set(endpoints))
    return {
        _port_name(u): UdpPort(_port_name(u), tuple(addresses.get(u, ())), node_ports.get(u), frozenset(endpoints.get(u, ())))
        for u in uids
    }


def cleanup_commands(
    live, new: Mapping[str, UdpPort] | None, previous: Mapping[str, UdpPort] | None = None
) -> list[StringCommand]:
    """The command that deletes stale UDP flows once the rules for `new` are in place,
    given the live state read before the change: the iptables tables
    (`svcops.facts.SvcopsIptables`) or svcops's nftables table (an ``NftLive``), or
    the `previous` UDP ports themselves (IPVS mode: `udp_ports_from_ipvsadm`);
    none when nothing is stale or `new` is None (no cleanup asked for).

    A node without the ``conntrack`` tool gets a warning on stderr, and the apply
    goes on (the flows then time out by themselves)."""
    if new is None or (live is None and previous is None):
        return []
    if previous is None:
        previous = udp_ports_from_nft(live) if hasattr(live, "maps") else udp_ports_from_iptables(live)
    commands = stale_conntrack(previous, new)
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
