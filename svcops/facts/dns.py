"""The node's DNS as svcops sees it: `SvcopsDns`.

Whether pdns-recursor is installed, whether svcops's instance answers, which process
it is and whether it is supervised, whether systemd runs the machine, the sha256 of
svcops's DNS files, ``/etc/resolv.conf`` exactly (and its target when it is a symlink)
and the host name's domain. `svcops.operations.dns` decides from it (`dns_plan`).

Bounded: the command that talks to the server (``rec_control ping``) is ended
after `PING_DEADLINE` s (rec_control's own timeout does not cover a hung server), so a
hung server reads as "not answering" within 4 s; nothing else asks the node's
resolver (the domain comes from the kernel's host name, as glibc takes it, not from
``hostname -d``, which looks the name up).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Mapping

from pyinfra.api import FactBase

from svcops.render import dns
from svcops.render.dns import (
    CONFIG_FILE,
    DATA_DIR,
    DROPIN,
    FORWARD_FILE,
    INSTANCE,
    PID_FILE,
    RESOLV_CONF,
    SERVICE_UNIT,
    SUPERVISOR,
    SUPERVISOR_PID,
    deadline,
    rec_control,
)
from svcops.facts.node import digests_command
from svcops.render.plain import plain

__all__ = ["SvcopsDns", "DnsState", "parse_dns_state", "OURS_SH"]


@dataclass(frozen=True, slots=True)
class DnsState:
    """What `SvcopsDns` reports about a node's DNS.

    installed:   pdns_recursor and rec_control are there
    systemd:     systemd runs the machine (/run/systemd/system exists)
    running:     svcops's instance answers its control socket (``rec_control ping``,
                 within `svcops.render.dns.PING_DEADLINE` s)
    pid:         the process of svcops's instance, answering or not (0: none): the
                 unit's main PID under systemd, else the PID file's when that process
                 is ``pdns_recursor --config-name=svcops`` in the node's network
                 namespace
    supervised:  something restarts it when it exits: the unit is active (systemd),
                 or svcops's supervisor script runs (`svcops.render.dns.SUPERVISOR`)
    files:       path -> sha256 of svcops's DNS files that exist (settings, zones,
                 forwards, the supervision file)
    resolv:      /etc/resolv.conf, exactly ("" when there is none)
    resolv_link: where /etc/resolv.conf points when it is a symlink ("" otherwise)
    domain:      the host name's domain (what follows the first dot of the kernel's
                 host name): glibc's search list when resolv.conf has none
    indexes:     path -> text of each zone's index (`svcops.render.textpatch`)
    """

    installed: bool = False
    systemd: bool = False
    running: bool = False
    files: Mapping[str, str] = field(default_factory=dict)
    resolv: str = ""
    resolv_link: str = ""
    domain: str = ""
    pid: int = 0
    supervised: bool = False
    indexes: Mapping[str, str] = field(default_factory=dict)  # path -> text of each zone's index

    @property
    def hung(self) -> bool:
        """svcops's instance is there but does not answer (stopped, or stuck)."""
        return bool(self.pid) and not self.running

    @property
    def present(self) -> bool:
        """Whether anything of svcops's DNS is on the node (what `svcops.operations.dns.absent` takes off)."""
        return bool(self.files or self.running or self.pid or self.supervised or dns.is_rendered_resolv_conf(self.resolv))

    def to_json(self) -> dict:
        """Plain data, for ``pyinfra INVENTORY fact ...`` (see `svcops.render.plain`)."""
        return plain(self)


# `ours PID ARG`: process PID runs with the argument ARG, in this network namespace (the
# lab's nodes share the machine's PIDs; a stale PID file may name another node's server,
# or the package's own instance, which lacks --config-name=svcops). A zombie has no
# command line: not ours.
OURS_SH = (
    # -ef: the same namespace (device and inode), compared without a process.
    'ours() { [ -n "$1" ] && [ /proc/"$1"/ns/net -ef /proc/self/ns/net ] '
    '&& tr "\\0" "\\n" < /proc/"$1"/cmdline 2>/dev/null | grep -qxF -- "$2"; }\n'
)


def _state_command() -> str:
    return (
        "PATH=$PATH:/usr/sbin\n"
        + OURS_SH
        + 'if command -v pdns_recursor >/dev/null && command -v rec_control >/dev/null; then echo "installed yes"; fi\n'
        f"if [ -f {CONFIG_FILE} ] && {rec_control()} ping 2>/dev/null | grep -q '^pong'; then echo 'running yes'; fi\n"
        "if [ -d /run/systemd/system ]; then\n"
        "    echo 'systemd yes'\n"
        f"    {deadline(5)} systemctl show -p MainPID -p ActiveState {SERVICE_UNIT} 2>/dev/null | sed 's/^/unit /'\n"
        "else\n"
        # read, not cat: a builtin (a fact's time on a node is mostly its processes). Not
        # for /proc/sys: dash's read gets the first byte of such a file only.
        f'    p=; {{ read -r p < {PID_FILE}; }} 2>/dev/null; if ours "$p" --config-name={INSTANCE}; then echo "pid $p"; fi\n'
        f'    s=; {{ read -r s < {SUPERVISOR_PID}; }} 2>/dev/null; if ours "$s" {SUPERVISOR}; then echo "supervised yes"; fi\n'
        "fi\n"
        + digests_command(f"{CONFIG_FILE} {FORWARD_FILE} {SUPERVISOR} {DROPIN} {DATA_DIR}/*.zone {DATA_DIR}/*.zone.index")
        + "\n"
        # The zones' indexes (svcops.render.textpatch), a few kilobytes: what a patch starts from.
        + f'for f in {DATA_DIR}/*.zone.index; do [ -f "$f" ] && sed "s|^|zindex $f |" "$f"; done\n'
        # glibc's fallback search domain: the kernel's host name after its first dot. The
        # line is always there: pyinfra takes a fact that prints nothing for its default.
        'h=$(uname -n); case "$h" in *.*) echo "domain ${h#*.}";; *) echo "domain ";; esac\n'
        f'[ -L {RESOLV_CONF} ] && echo "link $(readlink {RESOLV_CONF})"\n'
        # base64: the file exactly as it is (blank lines, trailing spaces, no final newline).
        f'[ -f {RESOLV_CONF} ] && echo "resolv $(base64 -w0 < {RESOLV_CONF})"\n'
        "true\n"
    )


def parse_dns_state(lines: list[str]) -> DnsState:
    """Parse `SvcopsDns`'s output (pure)."""
    installed = systemd = running = supervised = False
    files: dict[str, str] = {}
    resolv = link = domain = ""
    pid = 0
    indexes: dict[str, list[str]] = {}
    for line in lines:
        key, _, rest = line.partition(" ")
        if key == "zindex":
            path, _, text = rest.partition(" ")
            indexes.setdefault(path, []).append(text + "\n")
            continue
        if key == "installed":
            installed = True
        elif key == "systemd":
            systemd = True
        elif key == "running":
            running = True
        elif key == "supervised":
            supervised = True
        elif key == "pid" and rest.strip().isdigit():
            pid = int(rest)
        elif key == "unit":
            prop, _, value = rest.strip().partition("=")
            if prop == "MainPID" and value.isdigit():
                pid = int(value)
            elif prop == "ActiveState":
                supervised = value in ("active", "activating", "reloading")
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
    return DnsState(installed, systemd, running, files, resolv, link, domain, pid, supervised, {p: "".join(t) for p, t in indexes.items()})


class SvcopsDns(FactBase):
    """
    The node's DNS as svcops sees it, as a ``DnsState``: whether pdns-recursor is
    installed, whether svcops's instance answers (within 4 s), its PID and whether it
    is supervised, whether systemd runs the machine, the sha256 of svcops's DNS files,
    ``/etc/resolv.conf`` (exactly; and its target if it is a symlink) and the host
    name's domain.

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
