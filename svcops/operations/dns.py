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
2. write ``/etc/powerdns/recursor-svcops.conf``, ``/etc/powerdns/svcops/<domain>.zone``,
   ``/etc/powerdns/svcops/forward-zones`` and the supervision file (the unit's drop-in
   under systemd, the supervisor script otherwise), each only when its sha256 differs,
   each to a temporary file renamed over the old one (a reader sees the old file or
   the new, never half of one);
3. the settings changed, or the server does not answer, or nothing supervises it:
   start or restart ``pdns-recursor@svcops``, supervised (``systemctl enable`` +
   ``restart`` under systemd, with svcops's drop-in and a ``daemon-reload`` when it
   changed; without systemd, as in the lab, `svcops.render.dns.SUPERVISOR` started
   detached, which runs the daemon as the unit would, unprivileged). A server that is
   there but does not answer (hung, SIGSTOPped) is killed first, by PID, and only
   svcops's instance: the unit's processes, or the PID file's process when its command
   line is ``--config-name=svcops`` in the node's network namespace. The step ends
   once the server answers (or fails after 5 s);
   only records changed: ``rec_control reload-zones``, whose output is checked
   (it exits 0 even when the reload failed, and the server then keeps its old data:
   the operation fails and says so);
4. wait (bounded: 5 s) until the server answers the cluster domain's SOA over UDP, as
   any client would ask it;
5. only then point ``/etc/resolv.conf`` at it (temp file + rename; a symlink, as
   systemd-resolved makes it, is replaced by a file). The previous file is kept inside
   the new one, and its nameservers are where every other name is forwarded, and the
   next nameservers after svcops's (see `svcops.render.dns`: a dead or hung server
   must not take the node's names down).

Every node-side command that talks to the server, systemd or apt has a hard deadline
(coreutils ``timeout``; rec_control's own ``--timeout`` does not cover a hung server):
on a node whose server is SIGSTOPped, the apply reads it as not answering within 4 s
and leaves it answering (the whole apply took 6.9 s on the lab).

No window in which known names fail: the resolver switches to the server only once
it answers; a records change is a reload, during which the server keeps answering
(old data until the new data is swapped in). A restart (another listen address, a new
supervisor script) leaves a short gap: the old process ends before the new one binds
the port, and meanwhile glibc goes on to the next nameserver.

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
from svcops.facts.dns import OURS_SH, DnsState, SvcopsDns
from svcops.operations import txn
from svcops.operations.util import error, fail
from svcops.render import dns, textpatch
from svcops.render.dns import (
    DEFAULT_LISTEN,
    DROPIN,
    INSTANCE,
    PACKAGE,
    PID_FILE,
    RESOLV_CONF,
    SERVICE_UNIT,
    SUPERVISOR,
    SUPERVISOR_PID,
    Zone,
    deadline,
    rec_control,
)
from svcops.render.textpatch import TextEdit
from svcops.render.node_files import sha256_text

__all__ = ["server", "absent", "DnsPlan", "dns_plan", "ready_script"]


# --- the plan: what a node needs, pure -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class DnsPlan:
    """What `server` does on one node (pure: from its `DnsState` and the zone).

    install:  install the package first
    write:    path -> text of the DNS files whose sha256 differs
    daemon_reload: the systemd drop-in was written or goes: ``systemctl daemon-reload``
    action:   "start" (not running, hung, unsupervised, or the settings or the
              supervisor changed), "reload" (only records or forwards changed) or
              "none"
    hung:     the PID of svcops's server when it is there but does not answer (the
              start kills it), else 0
    edits:    path -> how to make the new text of `write`'s file from the node's
              (`svcops.render.textpatch`: a records change sends the zone's changed
              lines only, when the node's index names its zone file)
    remove:   svcops's files the node no longer needs (a previous cluster domain's
              zone; removed after the restart)
    resolv:   the new /etc/resolv.conf, or None when it is already right
    error:    why nothing can be done (no upstream nameserver), else ""
    """

    install: bool = False
    write: Mapping[str, str] = field(default_factory=dict)
    action: str = "none"
    remove: tuple[str, ...] = ()
    resolv: str | None = None
    error: str = ""
    daemon_reload: bool = False
    hung: int = 0
    edits: Mapping[str, TextEdit] = field(default_factory=dict)  # path -> a patch of the node's file (the zone)

    @property
    def empty(self) -> bool:
        return not (self.install or self.write or self.remove or self.resolv is not None or self.error) and self.action == "none"

    def summary(self) -> list[str]:
        """One line a step, as `svcops apply --dry` shows them."""
        if self.error:
            return [f"dns: {self.error} (apply fails)"]
        out = [f"dns: install {PACKAGE}"] if self.install else []
        out += [f"dns: file {p}" + (f" (a patch: {len(self.edits[p].added.splitlines())} lines sent)" if p in self.edits else "") for p in sorted(self.write)]
        if self.hung:
            out.append(f"dns: the server (pid {self.hung}) does not answer: kill it and start it again")
        else:
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
        files = dns.dns_files(zone, upstreams, listen, systemd=state.systemd)
    except ValueError as e:
        return DnsPlan(error=str(e))
    zone_file = dns.zone_path(zone.domain)
    write = {}
    for path, text in files.files.items():
        digest = zone.digest if path == zone_file else sha256_text(text)
        if state.files.get(path) != digest:
            write[path] = text
    remove = tuple(sorted(p for p in state.files if p not in files.files))
    action = dns.dns_action(write)
    if action == "restart" and state.running and dns.CONFIG_FILE in write and dns.SUPERVISOR not in write:
        # A new cluster domain only: reload-zones re-reads auth-zones, no restart.
        old_domains = [p.rsplit("/", 1)[1][: -len(".zone")] for p in remove if p.endswith(".zone")]
        if dns.only_auth_zones_differ(write[dns.CONFIG_FILE], state.files.get(dns.CONFIG_FILE), old_domains):
            action = "reload"
    if action == "restart" or not state.running or not state.installed or not state.supervised:
        action = "start"
    resolv = dns.render_resolv_conf(state.resolv, listen, zone.domain, [state.domain] if state.domain else [])
    if not state.resolv_link and resolv == state.resolv:
        resolv = None
    daemon_reload = DROPIN in write or DROPIN in remove
    edits = {}
    if zone_file in write:
        edit = textpatch.plan_edit(state.indexes.get(dns.zone_index_path(zone.domain), ""), state.files.get(zone_file), zone.text, zone.digest)
        if edit is not None:
            edits[zone_file] = edit
    return DnsPlan(not state.installed, write, action, remove, resolv, "", daemon_reload, state.pid if state.hung else 0, edits)


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
        "SECONDS=0\n"
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
        f"{deadline(30, 5)} systemctl disable --now {PACKAGE}.service >/dev/null 2>&1 || true\n" if systemd else ""
    )
    # Bounded too, generously: a download through a slow mirror is not a hang.
    apt = f"{deadline(600, 30)} apt-get"
    return (
        "export DEBIAN_FRONTEND=noninteractive\n"
        f"{apt} install -y -q {PACKAGE} >/dev/null || {{ {apt} update -q >/dev/null && {apt} install -y -q {PACKAGE} >/dev/null; }} || "
        f"{{ echo 'svcops: could not install {PACKAGE}' >&2; exit 1; }}\n" + disable
    )


def _stop_script(systemd: bool) -> str:
    """Stop svcops's server, and only it, bounded: under systemd its unit (a hung server
    killed first: the stop would wait for it); else the supervisor and the daemon (TERM,
    then KILL what is left after 2 s: a stopped process never handles TERM)."""
    rc = rec_control()
    if systemd:
        return (
            "PATH=$PATH:/usr/sbin\n"
            f"if ! {rc} ping >/dev/null 2>&1; then {deadline(10)} systemctl kill --signal=SIGKILL {SERVICE_UNIT} >/dev/null 2>&1; fi\n"
            f"{deadline(30, 5)} systemctl disable --now --quiet {SERVICE_UNIT}\n"
        )
    daemon = f"--config-name={INSTANCE}"
    return (
        "PATH=$PATH:/usr/sbin\n"
        + OURS_SH
        + f's=$(cat {SUPERVISOR_PID} 2>/dev/null); ours "$s" {SUPERVISOR} || s=\n'
        f'p=$(cat {PID_FILE} 2>/dev/null); ours "$p" {daemon} || p=\n'
        f'alive() {{ ours "$s" {SUPERVISOR} || ours "$p" {daemon}; }}\n'
        # The supervisor ends its server on TERM (and would otherwise start it again).
        'for x in $s $p; do kill -TERM "$x" 2>/dev/null; done\n'
        "for i in $(seq 20); do alive || exit 0; sleep 0.1; done\n"
        'for x in $s $p; do kill -KILL "$x" 2>/dev/null; done\n'
        "for i in $(seq 20); do alive || exit 0; sleep 0.1; done\n"
        "echo 'svcops: the DNS server did not stop' >&2\n"
        "exit 1\n"
    )


def _start_script(systemd: bool, listen: str, domain: str) -> str:
    """(Re)start svcops's server, supervised, and wait until it answers: the step's end
    is a server that answers, or a failure that says it does not."""
    if systemd:
        rc = rec_control()
        start = (
            "PATH=$PATH:/usr/sbin\n"
            # A hung server: killed first (this unit's processes only), or the restart waits for it.
            f"if ! {rc} ping >/dev/null 2>&1; then {deadline(10)} systemctl kill --signal=SIGKILL {SERVICE_UNIT} >/dev/null 2>&1; fi\n"
            f"{deadline(30, 5)} systemctl enable --quiet {SERVICE_UNIT} && {shlex.join(dns.start_command(True))} || exit 1\n"
        )
    else:
        start = (
            # In a subshell: the stop script exits when done.
            f"( {_stop_script(False)} ) || exit 1\n"
            f"{shlex.join(dns.start_command(False))} </dev/null >/dev/null 2>&1 || exit 1\n"
        )
    return start + ready_script(listen, domain)


def _reload_script() -> str:
    rc = shlex.join(dns.reload_command())
    return (
        "PATH=$PATH:/usr/sbin\n"
        f"out=$({rc} 2>&1)\n"
        # rec_control exits 0 when the reload failed: its word is what counts.
        'if [ "$out" != ok ]; then echo "svcops: reload-zones: $out (the server keeps its previous records)" >&2; exit 1; fi\n'
    )


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
    yield from txn.undo_first("dns-server", _server_back(state, plan, listen, _served_domain(state, zone.domain)))
    # Every file in one step (the zone patched when the node's index allows it), and a
    # records change's reload in that same step: one round trip a node.
    reload_with_files = plan.action == "reload" and bool(plan.write) and not plan.daemon_reload
    then = f"bash -c {shlex.quote(_reload_script())}" if reload_with_files else None
    yield from txn.replace_files(dict(plan.write), what="dns-files", edits=plan.edits, then=then)
    if plan.daemon_reload:
        reload = f"{deadline(30, 5)} systemctl daemon-reload"
        yield from txn.step("dns-daemon-reload", reload, reload + "\n")
    if plan.action == "start":
        yield from txn.step("dns-start", "bash -s", None, _start_script(state.systemd, listen, zone.domain))
    elif plan.action == "reload" and not reload_with_files:
        yield from txn.step("dns-reload", "bash -s", None, _reload_script())
    if plan.remove:
        yield from txn.remove_files(plan.remove)
    if plan.resolv is not None:
        yield StringCommand("bash -s", _stdin=ready_script(listen, zone.domain))
        yield from txn.replace_file(RESOLV_CONF, plan.resolv, dir_mode="755")


def _served_domain(state: DnsState, fallback: str) -> str:
    """The cluster domain the node's server serves now (from its zone file's name)."""
    zones = sorted(p.rsplit("/", 1)[1][: -len(".zone")] for p in state.files if p.endswith(".zone"))
    return zones[0] if zones else fallback


def _server_back(state: DnsState, plan: DnsPlan, listen: str, domain: str) -> str:
    """The undo of `server`'s changes to the running server, once its files are back."""
    if not (state.installed and state.running):
        return _stop_script(state.systemd)
    if plan.action == "start":
        return _start_script(state.systemd, listen, domain)
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
    if state.running or state.pid or state.supervised:
        # Undone: the server started again on its own files (put back first: undone newest first).
        again = _start_script(state.systemd, DEFAULT_LISTEN, _served_domain(state, "cluster.local")) if state.running else None
        yield from txn.step("dns-stop", "bash -s", again, _stop_script(state.systemd))
    if state.files:
        yield from txn.remove_files(sorted(state.files))
        if DROPIN in state.files:
            reload = f"{deadline(30, 5)} systemctl daemon-reload"
            yield from txn.step("dns-daemon-reload", reload, reload + "\n")
    if not state.present:
        host.noop("svcops's DNS is not on this node")
