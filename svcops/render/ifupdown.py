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
"""

from __future__ import annotations

import netaddr

from svcops.site.model import Cluster, Node

__all__ = ["render_interfaces"]


def render_interfaces(node: Node, cluster: Cluster, address: str | None) -> str:
    """The interfaces.d file of `node` with its static `address`; "" when there is none."""
    network = cluster.node_network
    if network is None or not address:
        return ""
    prefix = netaddr.IPNetwork(network.cidr).prefixlen
    ip = str(netaddr.IPAddress(address.split("/", 1)[0]))
    iface = node.interface
    lines = [
        f"# Written by svcops for {node.name}: its static address on {iface} (nodeNetwork {network.cidr}).",
        "# Do not edit: svcops rewrites this file; change svcops.yaml or the inventory instead.",
        f"auto {iface}",
        f"iface {iface} inet static",
        f"    address {ip}/{prefix}",
    ]
    if network.gateway and network.gateway != ip:
        lines.append(f"    gateway {network.gateway}")
    if network.dns_servers:
        lines.append(f"    dns-nameservers {' '.join(network.dns_servers)}")
    return "\n".join(lines) + "\n"
