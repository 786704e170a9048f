"""The node's DNS as svcops sees it: `SvcopsDns`.

Whether pdns-recursor is installed and svcops's instance answers, whether systemd
runs the machine, the sha256 of svcops's DNS files, ``/etc/resolv.conf`` exactly (and
its target when it is a symlink) and the host name's domain. `svcops.operations.dns`
decides from it (`dns_plan`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Mapping

from pyinfra.api import FactBase

from svcops.render import dns
from svcops.render.dns import CONFIG_FILE, DATA_DIR, FORWARD_FILE, RESOLV_CONF, rec_control
from svcops.render.plain import plain

__all__ = ["SvcopsDns", "DnsState", "parse_dns_state"]

@dataclass(frozen=True, slots=True)
class DnsState:
    """What `SvcopsDns` reports about a node's DNS.

    installed:   pdns_recursor and rec_control are there
    systemd:     systemd runs the machine (/run/systemd/system exists)
    running:     svcops's instance answers its control socket (``rec_control ping``)
    files:       path -> sha256 of svcops's DNS files that exist (settings, zones, forwards)
    resolv:      /etc/resolv.conf, exactly ("" when there is none)
    resolv_link: where /etc/resolv.conf points when it is a symlink ("" otherwise)
    domain:      the host name's domain (``hostname -d``): glibc's search list when
                 resolv.conf has none
    """

    installed: bool = False
    systemd: bool = False
    running: bool = False
    files: Mapping[str, str] = field(default_factory=dict)
    resolv: str = ""
    resolv_link: str = ""
    domain: str = ""

    @property
    def present(self) -> bool:
        """Whether anything of svcops's DNS is on the node (what `svcops.operations.dns.absent` takes off)."""
        return bool(self.files or self.running or dns.is_rendered_resolv_conf(self.resolv))

    def to_json(self) -> dict:
        """Plain data, for ``pyinfra INVENTORY fact ...`` (see `svcops.render.plain`)."""
        return plain(self)


def _state_command() -> str:
    return (
        'c() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }; '
        'if c pdns_recursor && c rec_control; then echo "installed yes"; fi; '
        '[ -d /run/systemd/system ] && echo "systemd yes"; '
        f"if [ -f {CONFIG_FILE} ] && PATH=$PATH:/usr/sbin {rec_control()} ping 2>/dev/null | grep -q '^pong'; "
        'then echo "running yes"; fi; '
        f"for f in {CONFIG_FILE} {FORWARD_FILE} {DATA_DIR}/*.zone; do "
        '[ -f "$f" ] && echo "file $(sha256sum < "$f" | cut -d" " -f1) $f"; '
        "done; "
        'echo "domain $(hostname -d 2>/dev/null)"; '
        f'[ -L {RESOLV_CONF} ] && echo "link $(readlink {RESOLV_CONF})"; '
        # base64: the file exactly as it is (blank lines, trailing spaces, no final newline).
        f'[ -f {RESOLV_CONF} ] && echo "resolv $(base64 -w0 < {RESOLV_CONF})"; true'
    )


def parse_dns_state(lines: list[str]) -> DnsState:
    """Parse `SvcopsDns`'s output (pure)."""
    installed = systemd = running = False
    files: dict[str, str] = {}
    resolv = link = domain = ""
    for line in lines:
        key, _, rest = line.partition(" ")
        if key == "installed":
            installed = True
        elif key == "systemd":
            systemd = True
        elif key == "running":
            running = True
        elif key == "file":
            digest, _, path = rest.partition(" ")
            files[path] = digest
        elif key == "domain":
            domain = rest.strip().rstrip(".")
        elif key == "link":
            link = rest.strip()
        elif key == "resolv":
            try:
                resolv = base64.b64decode(rest.strip()).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                resolv = ""
    return DnsState(installed, systemd, running, files, resolv, link, domain)


class SvcopsDns(FactBase):
    """
    The node's DNS as svcops sees it, as a ``DnsState``: whether pdns-recursor is
    installed and svcops's instance running, whether systemd runs the machine, the
    sha256 of svcops's DNS files, ``/etc/resolv.conf`` (exactly; and its target if it
    is a symlink) and the host name's domain.

    .. code:: python

        state = host.get_fact(SvcopsDns)
        state.running, dns.parse_upstreams(state.resolv)
    """

    def command(self) -> str:
        return _state_command()

    @staticmethod
    def default() -> DnsState | None:
        return None  # the command failed: the operations refuse to guess

    def process(self, output: list[str]) -> DnsState:
        return parse_dns_state(output)
