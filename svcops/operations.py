"""pyinfra operations that put svcops's rendered output on a node.

Import them in your own ``deploy.py`` like pyinfra's own operations. Each reads the
node's live state from a svcops fact (`svcops.facts`) and yields commands only for
what differs, so a second run with nothing changed runs nothing::

    from pyinfra import host
    from svcops import operations as svcops
    from svcops.deploy import compiled_site

    out = compiled_site("sites/prod").outputs[host.name]
    svcops.iptables_rules(name="svcops rules", rules=out.iptables)

or all of them at once, for the site named by ``svcops_site`` in the inventory's data
(what ``deploys/services.py`` does)::

    from svcops.deploy import services
    services()

Why one payload and not ``iptables.rule``: pyinfra's own ``iptables.rule`` runs one
``iptables-save`` and one ``iptables`` per rule (1,000 rules took 94 s); svcops uploads
one payload and runs one atomic ``iptables-restore --noflush`` (0.6 s for the same).
"""

from __future__ import annotations

import secrets
import shlex
import socket
from typing import Sequence

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand, operation

from .announce import Announcement, address_label
from .facts import SvcopsIptables, SvcopsNodeState
from .node_files import (
    RUN_DIR,
    NodeFiles,
    deadman_script,
    sha256_text,
)
from .render.iptables import IptablesRules, restore_payload
from .render.rollback import in_sync, rollback_payload

__all__ = [
    "iptables_rules",
    "persisted_files",
    "ip_forward",
    "static_address",
    "lb_addresses",
    "DEFAULT_ROLLBACK_AFTER",
    "VERIFY_TIMEOUT",
]

DEFAULT_ROLLBACK_AFTER = 60  # seconds the dead-man switch waits before undoing an apply
VERIFY_TIMEOUT = 10  # seconds for the fresh connection (TCP connect, banner, auth) after an apply


def _fail(what: str) -> StringCommand:
    """A command that fails the operation with a message: used when a fact could not be read."""
    return StringCommand(f"echo {shlex.quote('svcops: could not read ' + what + '; nothing changed')} >&2; exit 1")


def _write_file(path: str, text: str, mode: str = "644") -> StringCommand:
    """Write `text` to `path` atomically (temporary file, then rename), through stdin."""
    d = shlex.quote(path.rsplit("/", 1)[0] or "/")
    p = shlex.quote(path)
    tmp = shlex.quote(path + ".svcops-tmp")
    if not text:
        # pyinfra writes a newline for an empty stdin: an empty file is made without one.
        return StringCommand(f"mkdir -p {d} && : > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {p}")
    return StringCommand(f"mkdir -p {d} && cat > {tmp} && chmod {mode} {tmp} && mv -f {tmp} {p}", _stdin=text)


# --- iptables ----------------------------------------------------------------------------


@operation()
def iptables_rules(
    rules: IptablesRules,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    verify_ssh: bool = True,
):
    """
    Give the node exactly svcops's ``rules``: one atomic ``iptables-restore --noflush``.

    + rules: the node's ``IptablesRules`` (``compile_site(...).outputs[node].iptables``)
    + rollback_after: seconds after which the node undoes the apply by itself unless
      the controller has confirmed it can still log in
    + verify_ssh: after the restore, open a fresh SSH connection (same key, strict
      host-key checking) and disarm the rollback through it

    The payload carries only ``SVCOPS-`` chains and svcops's jumps in the built-in
    chains: missing jumps are inserted, stale svcops chains flushed and deleted;
    nothing else in the tables is named, so docker's, ufw's or fail2ban's rules stay
    as they are. When the live svcops chains, rules and jumps already equal the
    rendered ones, no command runs at all.

    Never cut SSH: before the restore a dead-man switch is armed on the node (a
    detached ``setsid`` timer holding a rollback payload computed on the controller
    from the live state); after it, the controller logs in afresh and disarms it. If
    that fresh login fails, the controller rolls back through the still-open
    connection, the node would do so by itself anyway, and the operation fails.

    **Example:**

    .. code:: python

        from svcops.deploy import compiled_site
        iptables_rules(
            name="svcops rules",
            rules=compiled_site("sites/prod").outputs[host.name].iptables,
        )
    """
    live = host.get_fact(SvcopsIptables)
    if live is None:
        yield _fail("the node's iptables (iptables-save)")
        return
    if in_sync(rules, live):
        host.noop("svcops rules are in sync")
        return
    token = secrets.token_hex(6)
    d = RUN_DIR
    apply_path = f"{d}/apply.{token}"
    yield StringCommand(f"mkdir -p {d} && chmod 700 {d} && cat > {apply_path}", _stdin=restore_payload(rules, live))
    restore = f"iptables-restore -w 5 --noflush {apply_path}"
    if not verify_ssh:
        yield StringCommand(f"{restore} && rm -f {apply_path}")
        return
    yield StringCommand(f"cat > {d}/rollback.{token}", _stdin=rollback_payload(live, rules))
    yield StringCommand(f"cat > {d}/deadman.{token}", _stdin=deadman_script(token, rollback_after))
    # Arm, then restore; a restore that fails changed nothing (it is atomic): cancel the switch.
    yield StringCommand(
        f": > {d}/armed.{token} && setsid -f sh {d}/deadman.{token} >/dev/null 2>&1 < /dev/null && "
        f"if {restore}; then :; else mv -f {d}/armed.{token} {d}/cancelled.{token}; "
        f"{_kill_deadman(token)}; exit 1; fi"
    )
    yield FunctionCommand(_verify_and_disarm, (token,), {})


def _kill_deadman(token: str) -> str:
    d = RUN_DIR
    # The script is a session (and group) leader: kill it and its sleep together.
    return f'p=$(cat {d}/pid.{token} 2>/dev/null) && [ -n "$p" ] && kill -- -"$p" 2>/dev/null; true'


def _cleanup(token: str) -> str:
    d = RUN_DIR
    return f"rm -f {d}/apply.{token} {d}/rollback.{token} {d}/deadman.{token} {d}/pid.{token} {d}/disarmed.{token} {d}/cancelled.{token}"


def disarm_command(token: str) -> str:
    """Run on the node through a fresh connection: disarm (an atomic rename that fails
    if the switch already fired), stop the timer, clean up."""
    d = RUN_DIR
    return (
        f"p=$(cat {d}/pid.{token} 2>/dev/null); "
        f"mv {d}/armed.{token} {d}/disarmed.{token} || {{ echo 'svcops: the rollback already ran' >&2; exit 3; }}; "
        f'[ -n "$p" ] && kill -- -"$p" 2>/dev/null; {_cleanup(token)}'
    )


def rollback_now_command(token: str) -> str:
    """Run through the old connection when the fresh one failed: roll back at once."""
    d = RUN_DIR
    return (
        f"if mv {d}/armed.{token} {d}/fired.{token}; then "
        f"iptables-restore -w 5 --noflush {d}/rollback.{token} && echo rolled-back >> {d}/fired.{token}; fi; "
        f"{_kill_deadman(token)}"
    )


def _verify_and_disarm(state, host, token: str) -> bool:
    """FunctionCommand body, on the controller: a fresh login disarms the switch; if
    the login fails, roll back now through the old connection and fail the node."""
    ok, why = run_on_fresh_connection(host, disarm_command(token))
    if ok:
        return True
    host.log_styled(
        f"svcops: a fresh SSH connection failed after the restore ({why}): rolling back",
        fg="red",
        log_func=logger.error,
    )
    try:
        status, _ = host.run_shell_command(StringCommand(rollback_now_command(token)))
        if status:
            host.log_styled("svcops: previous rules restored", fg="yellow", log_func=logger.warning)
    except Exception as e:  # the old connection may be gone too: the node rolls back by itself
        host.log_styled(
            f"svcops: could not roll back through the open connection ({e}); the node will in its own time",
            fg="red",
            log_func=logger.error,
        )
    return False


def run_on_fresh_connection(host, command: str, timeout: float = VERIFY_TIMEOUT) -> tuple[bool, str]:
    """Open a new SSH connection to `host` the way pyinfra opened the first (same user,
    key and host-key policy), run `command`, close it. (True, "") when it exits 0.

    Hosts whose connector is not SSH (``@local``, ``@docker``...) cannot lose their
    connection to a firewall rule: the command runs through the existing connector.
    """
    from pyinfra.connectors.ssh import SSHConnector
    from pyinfra.connectors.sshuserclient import SSHClient

    connector = getattr(host, "connector", None)
    if not isinstance(connector, SSHConnector):
        status, output = host.run_shell_command(StringCommand(command))
        return bool(status), "" if status else "\n".join(output.stderr_lines)
    kwargs = connector.make_paramiko_kwargs()
    hostname = kwargs.pop("hostname")
    kwargs["timeout"] = timeout
    extra = dict(kwargs.pop("_pyinfra_ssh_paramiko_connect_kwargs", None) or {})
    extra.setdefault("banner_timeout", timeout)
    extra.setdefault("auth_timeout", timeout)
    kwargs["_pyinfra_ssh_paramiko_connect_kwargs"] = extra
    client = SSHClient()
    try:
        client.connect(hostname, **kwargs)
        set_nodelay_client(client)
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        code = stdout.channel.recv_exit_status()
        if code != 0:
            return False, f"exit {code}: {stderr.read().decode(errors='replace').strip()}"
        return True, ""
    except Exception as e:  # any failure to log in is the failure we are looking for
        return False, f"{type(e).__name__}: {e}"
    finally:
        client.close()


def set_nodelay_client(client) -> None:
    """TCP_NODELAY on a paramiko client's socket: paramiko leaves Nagle on, which costs
    about 40 ms per remote command."""
    transport = client.get_transport() if client is not None else None
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_nodelay(host) -> None:
    """TCP_NODELAY on `host`'s pyinfra SSH connection, if it has one (5-10x faster commands)."""
    set_nodelay_client(getattr(getattr(host, "connector", None), "client", None))


# --- files, sysctl, addresses ------------------------------------------------------------


@operation()
def persisted_files(files: NodeFiles):
    """
    Write the files svcops persists on the node, each only when its sha256 differs:
    the boot payload and restore script (``/etc/svcops``), the boot unit
    ``svcops-rules.service`` and its ``multi-user.target.wants`` symlink (made directly,
    so it works where systemd is not running), ``/etc/sysctl.d/90-svcops.conf`` and the
    static-address file ``/etc/network/interfaces.d/svcops``.

    + files: ``svcops.node_files.node_files(rules, interfaces, announced)``
    """
    state = host.get_fact(SvcopsNodeState)
    if state is None:
        yield _fail("the node's svcops state")
        return
    modes = files.modes or {}
    for path, text in files.files.items():
        if state.files.get(path) != sha256_text(text):
            yield _write_file(path, text, modes.get(path, "644"))
    link, target = files.link
    if state.unit_link != target:
        yield StringCommand(f"mkdir -p {shlex.quote(link.rsplit('/', 1)[0])} && ln -sfn {shlex.quote(target)} {shlex.quote(link)}")


@operation()
def ip_forward():
    """
    Turn on IPv4 forwarding now (``net.ipv4.ip_forward=1``) if it is off; the
    ``/etc/sysctl.d/90-svcops.conf`` that `persisted_files` writes keeps it on at boot.
    """
    state = host.get_fact(SvcopsNodeState)
    if state is None:
        yield _fail("the node's svcops state")
        return
    if state.ip_forward == "1":
        host.noop("net.ipv4.ip_forward is 1")
        return
    yield "sysctl -q -w net.ipv4.ip_forward=1"


@operation()
def static_address(address: str | None, prefixlen: int, interface: str):
    """
    Put the node's static address on its interface, now, if it is not there yet.

    ``ip addr replace`` adds the address (or updates its prefix) and never removes any
    other: the address the SSH session came in on stays, whatever the file says. The
    file itself (``/etc/network/interfaces.d/svcops``) is written by
    `persisted_files` and takes over at the next boot.
    """
    if not address:
        host.noop("the site manages no static address for this node")
        return
    state = host.get_fact(SvcopsNodeState)
    if state is None:
        yield _fail("the node's svcops state")
        return
    if any(a.address == address and a.prefixlen == prefixlen and a.interface == interface for a in state.addresses):
        host.noop(f"{address}/{prefixlen} is on {interface}")
        return
    yield f"ip addr replace {shlex.quote(f'{address}/{prefixlen}')} dev {shlex.quote(interface)}"


def _arping(address: str, interface: str) -> str:
    a, i = shlex.quote(address), shlex.quote(interface)
    # Detached: arping -U waits a second after each request; nothing waits for it.
    return (
        f"if command -v arping >/dev/null; then setsid -f arping -q -U -c 2 -I {i} {a} >/dev/null 2>&1 < /dev/null; "
        "else echo 'svcops: arping not found (install iputils-arping): no gratuitous ARP sent' >&2; fi"
    )


@operation()
def lb_addresses(announced: Sequence[Announcement], recorded: Sequence[str] = ()):
    """
    Announce the load-balancer addresses this node was chosen for (`svcops.announce`):
    each is added as a /32 labelled "<interface>:svc" and announced with gratuitous
    ARP (``arping -U``, from iputils-arping). Addresses svcops put here before and that
    another node now announces are removed: those labelled as svcops's, and those in
    ``/etc/svcops/announce`` (the record, for interfaces whose name leaves no room
    for a label). No other address is ever removed.

    + announced: the addresses this node announces
    + recorded: addresses svcops recorded on this node (default: read from the fact)
    """
    state = host.get_fact(SvcopsNodeState)
    if state is None:
        yield _fail("the node's svcops state")
        return
    wanted = {(a.address, a.interface) for a in announced}
    for a in announced:
        if state.has_address(a.address, a.interface):
            continue
        label = a.label
        lbl = f" label {shlex.quote(label)}" if label else ""
        yield f"ip addr replace {shlex.quote(a.address + '/32')} dev {shlex.quote(a.interface)}{lbl} && {_arping(a.address, a.interface)}"
    recorded_set = set(recorded) | set(state.announced)
    # Never the address this connection came in on, whatever a record says.
    session = host.data.get("ssh_hostname") or host.name
    for addr in state.addresses:
        if (addr.address, addr.interface) in wanted or addr.prefixlen != 32 or addr.address == session:
            continue
        if addr.label == address_label(addr.interface) or addr.address in recorded_set:
            yield f"ip addr del {shlex.quote(f'{addr.address}/{addr.prefixlen}')} dev {shlex.quote(addr.interface)}"


__all__ += ["run_on_fresh_connection", "set_nodelay", "disarm_command", "rollback_now_command"]
