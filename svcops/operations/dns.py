"""Service DNS on a node: pyinfra operations around `svcops.render.dns`.

    from pyinfra import host
    from svcops.compile.nodeplan import site_zone
    from svcops.deploy import compiled_site
    from svcops.operations import dns

    plan = compiled_site("sites/prod")
    dns.server(name="svcops | service dns", zone=site_zone(plan.compiled))

`site_zone` renders the cluster domain's zone once per compiled site (it is the same
on every node); `server` adds each node's own part (its previous nameservers, read
from its resolv.conf, `svcops.facts.dns.SvcopsDns`) and does, in this order, only
what differs:

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

`absent` takes svcops's DNS off a node again: the previous resolv.conf back first,
then the server stopped and its files removed.
"""

from __future__ import annotations

import shlex
import struct
from dataclasses import dataclass, field
from typing import Mapping

from pyinfra import host
from pyinfra.api import StringCommand, operation

from svcops.facts.cache import marks_changes, node_fact
from svcops.facts.dns import DnsState, SvcopsDns
from svcops.operations import txn
from svcops.operations.util import error, fail
from svcops.render import dns
from svcops.render.dns import DEFAULT_LISTEN, PACKAGE, RESOLV_CONF, SERVICE_UNIT, SOCKET_DIR, Zone, rec_control
from svcops.render.node_files import sha256_text

__all__ = ["server", "absent", "DnsPlan", "dns_plan", "ready_script"]


# --- the plan: what a node needs, pure -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class DnsPlan:
    """What `server` does on one node (pure: from its `DnsState` and the zone).

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
        digest = zone.digest if path == zone_file else sha256_text(text)
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
        f"echo {shlex.quote(f'svcops: the DNS server on {listen} does not answer for {domain}')} >&2\n"
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
    rc = rec_control()
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


def _bash(script: str) -> StringCommand:
    return StringCommand("bash -s", _stdin=script)


# --- the operations ----------------------------------------------------------------------------



@operation()
@marks_changes
def server(zone: Zone | None, listen: str = DEFAULT_LISTEN):
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
        yield fail("the node's DNS state")
        return
    plan = dns_plan(state, zone, listen)
    if plan.error:
        yield error(f"svcops: {plan.error}; nothing changed")
        return
    if plan.empty:
        host.noop(f"the DNS server on {listen} serves {zone.domain} and resolv.conf points at it")
        return
    if plan.install:
        yield from txn.step("dns-install", "bash -s", None, _install_script(state.systemd))
    # Registered first, so that it runs last when the apply is undone: once the old files
    # are back, the server is given them again (or stopped, if it was not running).
    yield from txn.step("dns-server", ":", _server_back(state, plan))
    for path, text in plan.write.items():
        yield from txn.replace_file(path, text, dir_mode="755")
    if plan.action == "start":
        yield from txn.step("dns-start", "bash -s", None, _start_script(state.systemd))
    elif plan.action == "reload":
        yield from txn.step("dns-reload", "bash -s", None, _reload_script())
    if plan.remove:
        yield from txn.remove_files(plan.remove)
    if plan.resolv is not None:
        yield StringCommand("bash -s", _stdin=ready_script(listen, zone.domain))
        yield from txn.replace_file(RESOLV_CONF, plan.resolv, dir_mode="755")


def _stop_script(systemd: bool) -> str:
    if systemd:
        return f"systemctl disable --now --quiet {SERVICE_UNIT}\n"
    return f"PATH=$PATH:/usr/sbin {rec_control()} quit-nicely >/dev/null 2>&1 || true\n"


def _server_back(state: DnsState, plan: DnsPlan) -> str:
    """The undo of `server`'s changes to the running server, once its files are back."""
    if not (state.installed and state.running):
        return _stop_script(state.systemd)
    if plan.action == "start":
        return _start_script(state.systemd)
    if plan.action == "reload":
        return _reload_script()
    return "true\n"


@operation()
@marks_changes
def absent():
    """
    Take svcops's DNS off the node: the resolv.conf it had before svcops first (so no
    name goes to a server about to stop), then the server stopped (and its unit
    disabled under systemd) and svcops's DNS files removed. The package stays.
    """
    state = node_fact(host, SvcopsDns)
    if state is None:
        yield fail("the node's DNS state")
        return
    if dns.is_rendered_resolv_conf(state.resolv):
        yield from txn.replace_file(RESOLV_CONF, dns.restore_resolv_conf(state.resolv), dir_mode="755")
    if state.running:
        yield from txn.step("dns-stop", _stop_script(state.systemd).strip(), _start_script(state.systemd))
    if state.files:
        yield from txn.remove_files(sorted(state.files))
    if not state.present:
        host.noop("svcops's DNS is not on this node")
