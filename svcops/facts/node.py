"""The node's svcops state apart from its rules: `SvcopsNodeState`.

The files svcops persists (their sha256), the boot unit's symlink,
``net.ipv4.ip_forward``, the load-balancer addresses svcops recorded, and every IPv4
address of the node with its label. `svcops.operations.node` decides from it.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Mapping

from pyinfra.api import FactBase

from svcops.render.node_files import ANNOUNCE_FILE, MANAGED_FILES, UNIT_LINK
from svcops.render.plain import plain

__all__ = ["SvcopsNodeState", "NodeState", "Address", "parse_node_state", "digests_command"]

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

    def to_json(self) -> dict:
        """Plain data, for ``pyinfra INVENTORY fact ...`` (see `svcops.render.plain`)."""
        return plain(self)


def digests_command(paths: str) -> str:
    """Shell printing ``file SHA256 PATH`` for each of `paths` (shell words, globs
    allowed) that is a regular file: one ``sha256sum`` for all of them (a pipeline a
    file forked three processes each; a fact's time on a node is mostly its forks)."""
    return (
        f'set --; for f in {paths}; do [ -f "$f" ] && set -- "$@" "$f"; done; '
        "[ $# -gt 0 ] && sha256sum -- \"$@\" | sed 's/^\\([0-9a-f]*\\)  /file \\1 /'; "
    )


def _state_command() -> str:
    files = " ".join(shlex.quote(f) for f in MANAGED_FILES)
    return (
        digests_command(files)
        + f'echo "link $(readlink {shlex.quote(UNIT_LINK)} 2>/dev/null)"; '
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
