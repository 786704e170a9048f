"""Service DNS on a node, as a pyinfra fact and operations (the shell around `svcops.dns`).

    from pyinfra import host
    from svcops.deploy import compiled_site
    from svcops.dns_ops import dns_server, site_zone

    plan = compiled_site("sites/prod")
    dns_server(name="svcops | service dns", zone=site_zone(plan.compiled))

`site_zone` renders the cluster domain's zone once per compiled site (it is the same
on every node); `dns_server` adds each node's own part (its previous nameservers,
read from its resolv.conf) and does, in this order, only what differs:

1. install ``pdns-recursor`` if the node lacks it (``apt-get``); on a systemd machine
   the package enables its default instance (127.0.0.1:53): svcops disables that one,
   but only when svcops installed the package in this run;
2. write ``/etc/powerdns/recursor-svcops.conf``, ``/etc/powerdns/svcops/<domain>.zone``
   and ``/etc/powerdns/svcops/forward-zones``, each only when its sha256 differs, each
   to a temporary file renamed over the old one (a reader sees the old file or the
   new, never half of one);
3. the settings changed (or the server is not running): start or restart
   ``pdns-recursor@svcops`` (``systemctl enable`` + ``restart`` under systemd; without
   systemd, as in the lab, the daemon itself, unprivileged, as the unit runs it);
   only records changed: ``rec_control reload-zones``, whose output is checked
   (it exits 0 even when the reload failed, and the server then keeps its old data:
   the operation fails and says so);
4. wait (bounded: 5 s) until the server answers the cluster domain's SOA over UDP, as
   any client would ask it;
5. only then point ``/etc/resolv.conf`` at it (temp file + rename; a symlink, as
   systemd-resolved makes it, is replaced by a file). The previous file is kept inside
   the new one, and its nameservers are where every other name is forwarded.

No window in which known names fail: the resolver switches to the server only once
it answers; a records change is a reload, during which the server keeps answering
(old data until the new data is swapped in). A restart (the settings changed: only
when the cluster domain changes) leaves a gap of about a tenth of a second.

`dns_absent` takes svcops's DNS off a node again: the previous resolv.conf back first,
then the server stopped and its files removed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shlex
import struct
import threading
from dataclasses import dataclass, field
from typing import Mapping

from pyinfra import host
from pyinfra.api import FactBase, StringCommand, operation

from . import dns
from .factcache import marks_changes, node_fact
from .dns import CONFIG_FILE, DATA_DIR, DEFAULT_LISTEN, FORWARD_FILE, INSTANCE, PACKAGE, RESOLV_CONF, SERVICE_UNIT, SOCKET_DIR, Zone

__all__ = [
    "DnsState",
    "SvcopsDns",
    "parse_dns_state",
    "site_zone",
    "DnsPlan",
    "dns_plan",
    "ready_script",
    "dns_server",
    "dns_absent",
]


# --- the fact ------------------------------------------------------------------------------


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
        """Whether anything of svcops's DNS is on the node (what `dns_absent` takes off)."""
        return bool(self.files or self.running or dns.is_rendered_resolv_conf(self.resolv))


def _rec_control() -> str:
    return f"rec_control --config-dir={dns.CONFIG_DIR} --config-name={INSTANCE} --timeout=2"


def _state_command() -> str:
    return (
        'c() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }; '
        'if c pdns_recursor && c rec_control; then echo "installed yes"; fi; '
        '[ -d /run/systemd/system ] && echo "systemd yes"; '
        f"if [ -f {CONFIG_FILE} ] && PATH=$PATH:/usr/sbin {_rec_control()} ping 2>/dev/null | grep -q '^pong'; "
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


# --- the zone, once per site -----------------------------------------------------------------

_ZONES: dict[int, tuple[object, Zone]] = {}
_ZONES_LOCK = threading.Lock()


def site_zone(compiled) -> Zone:
    """The cluster domain's zone for a compiled site (`svcops.pipeline.Compiled`),
    rendered once per site and shared by every node's operation."""
    from .endpoints import headless_endpoints

    key = id(compiled)
    with _ZONES_LOCK:
        hit = _ZONES.get(key)
        if hit is not None and hit[0] is compiled:
            return hit[1]
    headless = headless_endpoints(compiled.site, compiled.nodes, compiled.allocations)
    zone = dns.render_zone(compiled.site.cluster, compiled.site.services, headless, compiled.allocations)
    with _ZONES_LOCK:
        if len(_ZONES) >= 8:  # a few sites per process at most; keep the newest
            _ZONES.pop(next(iter(_ZONES)))
        _ZONES[key] = (compiled, zone)  # the site is kept alive, so its id stays its own
    return zone


# --- the plan: what a node needs, pure -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class DnsPlan:
    """What `dns_server` does on one node (pure: from its `DnsState` and the zone).

    install:  install the package first
    write:    path -> text of the DNS files whose sha256 differs
    action:   "start" (not running, or the settings changed), "reload" (only records
              or forwards changed) or "none"
    remove:   zone files of a previous cluster domain (removed after the restart)
    resolv:   the new /etc/resolv.conf, or None when it is already right
    error:    why nothing can be done (no upstream nameserver), else ""
    """

    install: bool = False
    write: Mapping[str, str] = field(default_factory=dict)
    action: str = "none"
    remove: tuple[str, ...] = ()
    resolv: str | None = None
    error: str = ""

    @property
    def empty(self) -> bool:
        return not (self.install or self.write or self.remove or self.resolv is not None or self.error) and self.action == "none"

    def summary(self) -> list[str]:
        """One line a step, as `svcops apply --dry` shows them."""
        if self.error:
            return [f"dns: {self.error} (apply fails)"]
        out = [f"dns: install {PACKAGE}"] if self.install else []
        out += [f"dns: file {p}" for p in sorted(self.write)]
        out += {"start": ["dns: (re)start the server"], "reload": ["dns: reload the zone"]}.get(self.action, [])
        out += [f"dns: - {p}" for p in self.remove]
        if self.resolv is not None:
            out.append(f"dns: {RESOLV_CONF} to the cluster's server")
        return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def dns_plan(state: DnsState, zone: Zone, listen: str = DEFAULT_LISTEN) -> DnsPlan:
    """What to do on a node in `state` so that it serves `zone` on `listen`.

    The upstreams are the nameservers of the node's resolv.conf (through svcops's own
    rendering of it, to the one it replaced).
    """
    upstreams = dns.parse_upstreams(state.resolv, listen)
    try:
        files = dns.dns_files(zone, upstreams, listen)
    except ValueError as e:
        return DnsPlan(error=str(e))
    zone_file = dns.zone_path(zone.domain)
    write = {}
    for path, text in files.files.items():
        digest = zone.digest if path == zone_file else _sha(text)
        if state.files.get(path) != digest:
            write[path] = text
    remove = tuple(sorted(p for p in state.files if p.endswith(".zone") and p != zone_file))
    action = dns.dns_action(write)
    if action == "restart" and state.running and dns.CONFIG_FILE in write:
        # A new cluster domain only: reload-zones re-reads auth-zones, no restart.
        old_domains = [p.rsplit("/", 1)[1][: -len(".zone")] for p in remove]
        if dns.only_auth_zones_differ(write[dns.CONFIG_FILE], state.files.get(dns.CONFIG_FILE), old_domains):
            action = "reload"
    if action == "restart" or not state.running or not state.installed:
        action = "start"
    resolv = dns.render_resolv_conf(state.resolv, listen, zone.domain, [state.domain] if state.domain else [])
    if not state.resolv_link and resolv == state.resolv:
        resolv = None
    return DnsPlan(not state.installed, write, action, remove, resolv)


# --- node-side scripts -------------------------------------------------------------------------


def _query(name: str, qtype: int = 6) -> str:
    """A DNS query (id 0x5356, recursion desired) as printf escapes."""
    packet = (
        struct.pack(">HHHHHH", 0x5356, 0x0100, 1, 0, 0, 0)
        + b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split("."))
        + b"\0"
        + struct.pack(">HH", qtype, 1)
    )
    return "".join(f"\\x{b:02x}" for b in packet)


def ready_script(listen: str, domain: str, seconds: int = 5) -> str:
    """A bash script that waits (about `seconds` at most) until the server on `listen`
    answers the SOA of `domain` over UDP with NOERROR and an answer; exit 1 if it never
    does. bash (Debian's essential shell) sends the query through /dev/udp: no DNS tool
    needs to be installed."""
    return (
        f"q='{_query(domain)}'\n"
        f"for i in $(seq {seconds * 10}); do\n"
        f"    set -- $(exec 3<>/dev/udp/{listen}/53 && printf \"$q\" >&3 && timeout 0.5 head -c 12 <&3 2>/dev/null | od -An -tx1)\n"
        # id 5356, QR set, rcode 0 (NOERROR), at least one answer
        '    if [ "$1$2" = 5356 ] && [ $((0x$3 & 0x80)) != 0 ] && [ $((0x$4 & 15)) = 0 ] && [ $((0x$7$8)) -ge 1 ]; then exit 0; fi\n'
        f"    [ $SECONDS -ge {seconds} ] && break\n"
        "    sleep 0.1\n"
        "done\n"
        f"echo 'svcops: the DNS server on {listen} does not answer for {domain}' >&2\n"
        "exit 1\n"
    )


def _install_script(systemd: bool) -> str:
    disable = (
        # The package starts its default instance (127.0.0.1:53); svcops runs its own.
        f"systemctl disable --now {PACKAGE}.service >/dev/null 2>&1 || true\n" if systemd else ""
    )
    return (
        "export DEBIAN_FRONTEND=noninteractive\n"
        f"apt-get install -y -q {PACKAGE} >/dev/null || {{ apt-get update -q >/dev/null && apt-get install -y -q {PACKAGE} >/dev/null; }} || "
        f"{{ echo 'svcops: could not install {PACKAGE}' >&2; exit 1; }}\n" + disable
    )


def _start_script(systemd: bool) -> str:
    if systemd:
        return f"systemctl enable --quiet {SERVICE_UNIT} && {shlex.join(dns.start_command(True))}\n"
    rc = _rec_control()
    start = shlex.join(dns.start_command(False))
    return (
        "PATH=$PATH:/usr/sbin\n"
        # A running instance: stop it (bounded), then start with the new settings.
        f"if {rc} ping >/dev/null 2>&1; then {rc} quit-nicely >/dev/null 2>&1\n"
        f"    for i in $(seq 50); do {rc} ping >/dev/null 2>&1 || break; sleep 0.1; done\n"
        "fi\n"
        f"mkdir -p {SOCKET_DIR} && chown pdns:pdns {SOCKET_DIR} && chmod 755 {SOCKET_DIR}\n"
        # The old process may hold the port for a moment after its control socket went.
        f"for i in $(seq 30); do {start} 2>/dev/null && exit 0; sleep 0.1; done\n"
        f"{start}\n"
    )


def _reload_script() -> str:
    rc = shlex.join(dns.reload_command())
    return (
        "PATH=$PATH:/usr/sbin\n"
        f"out=$({rc} 2>&1)\n"
        # rec_control exits 0 when the reload failed: its word is what counts.
        'if [ "$out" != ok ]; then echo "svcops: reload-zones: $out (the server keeps its previous records)" >&2; exit 1; fi\n'
    )


def _write(path: str, text: str) -> StringCommand:
    """Write `text` to `path` atomically (temporary file beside it, then rename)."""
    d = shlex.quote(path.rsplit("/", 1)[0] or "/")
    p = shlex.quote(path)
    tmp = shlex.quote(path + ".svcops-tmp")
    if not text:
        return StringCommand(f"mkdir -p -m 755 {d} && : > {tmp} && chmod 644 {tmp} && mv -f {tmp} {p}")
    return StringCommand(f"mkdir -p -m 755 {d} && cat > {tmp} && chmod 644 {tmp} && mv -f {tmp} {p}", _stdin=text)


def _bash(script: str) -> StringCommand:
    return StringCommand("bash -s", _stdin=script)


# --- the operations ----------------------------------------------------------------------------

_FAIL_STATE = "echo " + shlex.quote("svcops: could not read the node's DNS state; nothing changed") + " >&2; exit 1"


@operation()
@marks_changes
def dns_server(zone: Zone | None, listen: str = DEFAULT_LISTEN):
    """
    Serve the cluster domain on the node with pdns-recursor, and send the node's names
    to it (see the module's docstring for the steps).

    + zone: the cluster domain's records (`site_zone(compiled)`, the same for every node)
    + listen: the loopback address the server listens on (default 127.0.0.153)

    Everything else goes where it went before: the nameservers of the node's previous
    resolv.conf. A node already in sync gets no command.
    """
    if zone is None:
        host.noop("no DNS zone given")
        return
    state = node_fact(host, SvcopsDns)
    if state is None:
        yield StringCommand(_FAIL_STATE)
        return
    plan = dns_plan(state, zone, listen)
    if plan.error:
        yield StringCommand(f"echo {shlex.quote('svcops: ' + plan.error + '; nothing changed')} >&2; exit 1")
        return
    if plan.empty:
        host.noop(f"the DNS server on {listen} serves {zone.domain} and resolv.conf points at it")
        return
    if plan.install:
        yield _bash(_install_script(state.systemd))
    for path, text in plan.write.items():
        yield _write(path, text)
    if plan.action == "start":
        yield _bash(_start_script(state.systemd))
    elif plan.action == "reload":
        yield _bash(_reload_script())
    if plan.remove:
        yield StringCommand("rm -f " + " ".join(shlex.quote(p) for p in plan.remove))
    if plan.resolv is not None:
        yield _bash(ready_script(listen, zone.domain))
        yield _write(RESOLV_CONF, plan.resolv)


@operation()
@marks_changes
def dns_absent():
    """
    Take svcops's DNS off the node: the resolv.conf it had before svcops first (so no
    name goes to a server about to stop), then the server stopped (and its unit
    disabled under systemd) and svcops's DNS files removed. The package stays.
    """
    state = node_fact(host, SvcopsDns)
    if state is None:
        yield StringCommand(_FAIL_STATE)
        return
    if dns.is_rendered_resolv_conf(state.resolv):
        yield _write(RESOLV_CONF, dns.restore_resolv_conf(state.resolv))
    if state.running:
        if state.systemd:
            yield StringCommand(f"systemctl disable --now --quiet {SERVICE_UNIT}")
        else:
            yield StringCommand(f"PATH=$PATH:/usr/sbin {_rec_control()} quit-nicely >/dev/null")
    if state.files:
        yield StringCommand("rm -f " + " ".join(shlex.quote(p) for p in sorted(state.files)))
    if not state.present:
        host.noop("svcops's DNS is not on this node")
