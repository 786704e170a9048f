"""The SSH guard's controller-side helpers: fresh SSH logins and Nagle off.

No svcops apply may cut the connection it came in on: `svcops.operations.txn` commits
a node's transaction only through a *fresh* SSH connection (`run_on_fresh_connection`,
opened the way pyinfra opened the first: same user, key and host-key policy, bounded by
`VERIFY_TIMEOUT`), so an apply whose rules would lock operators out is undone on the
node instead. `set_nodelay` turns Nagle off on pyinfra's SSH connections (5-10x faster
commands).
"""

from __future__ import annotations

import socket

from pyinfra.api import StringCommand

__all__ = ["VERIFY_TIMEOUT", "run_on_fresh_connection", "set_nodelay", "set_nodelay_client"]

VERIFY_TIMEOUT = 10  # seconds for the fresh connection (TCP connect, banner, auth) after an apply


def run_on_fresh_connection(host, command: str, timeout: float = VERIFY_TIMEOUT) -> tuple[bool, str, bool]:
    """Open a new SSH connection to `host` the way pyinfra opened the first (same user,
    key and host-key policy), run `command`, close it: (exited 0, why not, sent), where
    `sent` says the command may have run (it was sent; its exit status was lost or not).

    Hosts whose connector is not SSH (``@local``, ``@docker``...) cannot lose their
    connection to a firewall rule: the command runs through the existing connector.
    """
    from pyinfra.connectors.ssh import SSHConnector
    from pyinfra.connectors.sshuserclient import SSHClient

    connector = getattr(host, "connector", None)
    if not isinstance(connector, SSHConnector):
        status, output = host.run_shell_command(StringCommand(command))
        return bool(status), "" if status else "\n".join(output.stderr_lines), True
    kwargs = connector.make_paramiko_kwargs()
    hostname = kwargs.pop("hostname")
    kwargs["timeout"] = timeout
    extra = dict(kwargs.pop("_pyinfra_ssh_paramiko_connect_kwargs", None) or {})
    extra.setdefault("banner_timeout", timeout)
    extra.setdefault("auth_timeout", timeout)
    kwargs["_pyinfra_ssh_paramiko_connect_kwargs"] = extra
    client = SSHClient()
    sock = None
    sent = False
    try:
        if "sock" not in kwargs:  # (a ProxyCommand or jump host brings its own)
            # Our own socket, Nagle off before the key exchange: 60 ms -> 20 ms a login.
            sock = socket.create_connection((hostname, kwargs.get("port") or 22), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            kwargs["sock"] = sock
        client.connect(hostname, **kwargs)
        set_nodelay_client(client)
        sent = True
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        # (recv_exit_status waits without a bound: a connection cut now would hang here.)
        if not stdout.channel.status_event.wait(timeout):
            return False, f"no exit status within {timeout:g} s (the connection went silent)", True
        code = stdout.channel.recv_exit_status()
        if code != 0:
            return False, f"exit {code}: {stderr.read().decode(errors='replace').strip()}", True
        return True, "", True
    except Exception as e:  # any failure to log in is the failure we are looking for
        return False, f"{type(e).__name__}: {e}", sent
    finally:
        client.close()
        if sock is not None:
            sock.close()


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
