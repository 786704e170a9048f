"""The static-address renderer: a node's address in Debian's ifupdown format.

svcops writes one file to ``/etc/network/interfaces.d/`` (sourced by Debian's default
``/etc/network/interfaces``) with one stanza for the node's interface:

    # Written by svcops for node1: its static address on eth0 (nodeNetwork 10.0.0.0/24).
    # Do not edit: svcops rewrites this file; change svcops.yaml or the inventory instead.
    auto eth0
    iface eth0 inet static
        address 10.0.0.11/24
        gateway 10.0.0.1
        dns-nameservers 10.0.0.1

(see interfaces(5); ``dns-nameservers`` is read by resolvconf). The prefix length is
the node network's. A site without ``nodeNetwork``, or a node without an address,
gets no file at all ("").

ifupdown runs what this file says as root at boot (an ``up`` line is a command), and
it reads words and lines: a name with a newline or a space would be a stanza or an
option of its own. So every value is written in a form that cannot be anything else:
addresses as netaddr prints them, the interface and the node's name only when they are
names svcops accepts (`INTERFACE_NAME`, `HOST_NAME`); validation refuses any other,
and if one got here anyway this raises ValueError instead of writing it.
"""

from __future__ import annotations

import re

import netaddr

from svcops.site.model import HOST_NAME, INTERFACE_NAME, Cluster, Node

__all__ = ["render_interfaces"]


def _name(what: str, value: str, rule: re.Pattern) -> str:
    if not (isinstance(value, str) and rule.fullmatch(value)):
        raise ValueError(f"{what} {value!r} cannot go into an ifupdown file (the host-data checks refuse it)")
    return value


def _ip(value: str) -> str:
    """An IPv4 address as netaddr prints it (strict: "10.0.0.1\\n" is not one)."""
    return str(netaddr.IPAddress(value, 4, flags=netaddr.INET_PTON))


def render_interfaces(node: Node, cluster: Cluster, address: str | None) -> str:
    """The interfaces.d file of `node` with its static `address`; "" when there is none."""
    network = cluster.node_network
    if network is None or not address:
        return ""
    cidr = netaddr.IPNetwork(network.cidr)
    ip = _ip(address.split("/", 1)[0])
    iface = _name("interface", node.interface, INTERFACE_NAME)
    name = _name("node name", node.name, HOST_NAME)
    lines = [
        f"# Written by svcops for {name}: its static address on {iface} (nodeNetwork {cidr.cidr}).",
        "# Do not edit: svcops rewrites this file; change svcops.yaml or the inventory instead.",
        f"auto {iface}",
        f"iface {iface} inet static",
        f"    address {ip}/{cidr.prefixlen}",
    ]
    if network.gateway and _ip(network.gateway) != ip:
        lines.append(f"    gateway {_ip(network.gateway)}")
    if network.dns_servers:
        lines.append(f"    dns-nameservers {' '.join(_ip(s) for s in network.dns_servers)}")
    return "\n".join(lines) + "\n"
