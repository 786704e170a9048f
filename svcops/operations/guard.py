"""The SSH guard: no svcops apply may cut the connection it came in on.

Every rule operation changes a node under a dead-man switch, in three steps:

1. arm: a detached ``setsid`` timer on the node (`deadman_script`) that, after
   ``rollback_after`` seconds, undoes the change by itself unless it was disarmed
   first; the files it needs are in `RUN_DIR` (tmpfs: gone at reboot, as a pending
   rollback should be), each named with the apply's random token;
2. change the node (a restore, an ``nft -f``, the IPVS steps): a change that fails
   leaves the node as it was and cancels the switch;
3. prove SSH still works: the controller opens a *fresh* SSH connection the way
   pyinfra opened the first (same user, key and host-key policy; `VERIFY_TIMEOUT`)
   and disarms the switch through it (`disarm_command`: an atomic rename that fails
   if the switch already fired). If that login fails, the controller rolls back at
   once through the still-open connection (`rollback_now_command`), the node would do
   so by itself anyway, and the operation fails.

`guarded` yields the commands of steps 1-3 for a change given as two shell scripts
(run, undo); `svcops.operations.iptables` arms the switch around its restore itself.
`set_nodelay` turns Nagle off on pyinfra's SSH connections (5-10x faster commands).
"""

from __future__ import annotations

import shlex
import socket

from pyinfra import logger
from pyinfra.api import FunctionCommand, StringCommand

__all__ = [
    "DEFAULT_ROLLBACK_AFTER",
    "VERIFY_TIMEOUT",
    "RUN_DIR",
    "deadman_script",
    "arm_and_run",
    "guarded",
    "disarm_command",
    "rollback_now_command",
    "run_on_fresh_connection",
    "set_nodelay",
    "set_nodelay_client",
]

DEFAULT_ROLLBACK_AFTER = 60  # seconds the dead-man switch waits before undoing an apply
VERIFY_TIMEOUT = 10  # seconds for the fresh connection (TCP connect, banner, auth) after an apply
RUN_DIR = "/run/svcops"  # the dead-man switch's files (tmpfs: gone at reboot)


def deadman_script(token: str, seconds: int, undo: str | None = None) -> str:
    """The dead-man switch: after `seconds`, undo the apply unless the controller has
    disarmed it by renaming ``armed.TOKEN`` (an atomic rename: exactly one of the
    controller's disarm and this script's firing wins).

    undo: the shell command that undoes the apply (default: iptables-restore of
    ``rollback.TOKEN``, iptables mode's rollback payload)."""
    d, t = RUN_DIR, shlex.quote(token)
    undo = undo or f"iptables-restore -w 5 --noflush {d}/rollback.{t}"
    return (
        "#!/bin/sh\n"
        "# svcops dead-man switch: restores the previous svcops rules unless disarmed.\n"
        f"echo $$ > {d}/pid.{t}\n"
        f"sleep {int(seconds)}\n"
        f"if mv {d}/armed.{t} {d}/fired.{t} 2>/dev/null; then\n"
        f"    {undo} && echo rolled-back >> {d}/fired.{t}\n"
        "fi\n"
        f"rm -f {d}/pid.{t}\n"
    )


def _kill_deadman(token: str) -> str:
    d = RUN_DIR
    # The script is a session (and group) leader: kill it and its sleep together.
    return f'p=$(cat {d}/pid.{token} 2>/dev/null) && [ -n "$p" ] && kill -- -"$p" 2>/dev/null; true'


def _cleanup(token: str) -> str:
    d = RUN_DIR
    return (
        f"rm -f {d}/apply.{token} {d}/rollback.{token} {d}/deadman.{token} {d}/pid.{token} {d}/disarmed.{token} "
        f"{d}/cancelled.{token} {d}/run.{token} {d}/undo.{token} {d}/lib.{token} {d}/ipset.{token} {d}/ipvsadm.{token} "
        f"{d}/undo-ipvsadm.{token} {d}/addresses.{token} {d}/stale-addresses.{token} {d}/rollback-partial.{token}"
    )


def disarm_command(token: str) -> str:
    """Run on the node through a fresh connection: disarm (an atomic rename that fails
    if the switch already fired), stop the timer, clean up."""
    d = RUN_DIR
    return (
        f"p=$(cat {d}/pid.{token} 2>/dev/null); "
        f"mv {d}/armed.{token} {d}/disarmed.{token} || {{ echo 'svcops: the rollback already ran' >&2; exit 3; }}; "
        f'[ -n "$p" ] && kill -- -"$p" 2>/dev/null; {_cleanup(token)}'
    )


def rollback_now_command(token: str, undo: str | None = None) -> str:
    """Run through the old connection when the fresh one failed: roll back at once.
    undo: the shell command that undoes the apply (default: iptables mode's)."""
    d = RUN_DIR
    undo = undo or f"iptables-restore -w 5 --noflush {d}/rollback.{token}"
    return (
        f"if mv {d}/armed.{token} {d}/fired.{token}; then "
        f"{undo} && echo rolled-back >> {d}/fired.{token}; fi; "
        f"{_kill_deadman(token)}"
    )


def _verify_and_disarm(state, host, token: str, undo: str | None = None) -> bool:
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
        status, _ = host.run_shell_command(StringCommand(rollback_now_command(token, undo)))
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


def arm_and_run(token: str, change: str, rollback_after: int, undo: str | None = None):
    """Steps 1-3 (see the module's docstring) around `change`, a shell command that
    changes the node and, when it fails, leaves it as it was. The switch's files
    (``rollback.TOKEN`` or the `undo` script's) must be in `RUN_DIR` already.

    undo: the shell command that undoes the change (default: iptables mode's,
    ``iptables-restore`` of ``rollback.TOKEN``)."""
    d = RUN_DIR
    yield StringCommand(f"cat > {d}/deadman.{token}", _stdin=deadman_script(token, rollback_after, undo))
    # Arm, then change; a change that fails changed nothing: cancel the switch.
    yield StringCommand(
        f": > {d}/armed.{token} && setsid -f sh {d}/deadman.{token} >/dev/null 2>&1 < /dev/null && "
        f"if {change}; then :; else mv -f {d}/armed.{token} {d}/cancelled.{token}; "
        f"{_kill_deadman(token)}; exit 1; fi"
    )
    yield FunctionCommand(_verify_and_disarm, (token,), {"undo": undo})


def guarded(token: str, run: str, undo: str, rollback_after: int, verify_ssh: bool):
    """The commands of an SSH-safe change whose files are already in `RUN_DIR`: `run`
    (a shell script that changes the node, and on failure leaves it as it was and
    exits non-zero) and `undo` (a shell script that gives back the previous state),
    under the dead-man switch (`arm_and_run`); without `verify_ssh`, just `run`."""
    d = RUN_DIR
    yield StringCommand(f"cat > {d}/run.{token}", _stdin=run)
    yield StringCommand(f"cat > {d}/undo.{token}", _stdin=undo)
    if not verify_ssh:
        yield StringCommand(f"sh {d}/run.{token}; rc=$?; {_cleanup(token)}; exit $rc")
        return
    yield from arm_and_run(token, f"sh {d}/run.{token}", rollback_after, f"sh {d}/undo.{token}")
