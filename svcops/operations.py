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

The rule operations, one per proxy mode (`svcops.deploy.node_operations` picks them
from the site's ``proxyMode``; the others then remove what their mode left):

    iptables_rules   svcops's SVCOPS- chains and jumps (in every mode: empty in
                     nftables mode, IPVS mode's few chains in IPVS mode)
    nftables_rules   table ip svcops (rules=None: no such table)
    ipvs_rules       IPVS mode: sets, chains, dummy interface, virtual servers
    ipvs_absent      no svcops IPVS state (the other modes)

Why one payload and not ``iptables.rule``: pyinfra's own ``iptables.rule`` runs one
``iptables-save`` and one ``iptables`` per rule (1,000 rules took 94 s); svcops uploads
one payload and runs one ``iptables-restore --noflush`` (0.6 s for the same).
"""

from __future__ import annotations

import secrets
import shlex
import socket
from typing import Sequence

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand, operation

from .announce import Announcement, address_label
from .conntrack_ops import cleanup_commands
from .factcache import marks_changes, node_fact
from .facts import NO_IPTABLES, SvcopsIptables, SvcopsIpvs, SvcopsNftables, SvcopsNodeState
from .node_files import (
    NFT_FILE,
    RUN_DIR,
    NodeFiles,
    deadman_script,
    ipvs_modules,
    sha256_text,
)
from .render.iptables import CHUNK_CHAINS, IptablesRules, restore_transactions
from .render.ipvs import DUMMY_INTERFACE as DUMMY
from .render.rollback import in_sync, rollback_payload, simulate

__all__ = [
    "iptables_rules",
    "nftables_rules",
    "ipvs_rules",
    "ipvs_absent",
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
@marks_changes
def iptables_rules(
    rules: IptablesRules,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    verify_ssh: bool = True,
    udp_ports=None,
    chunk: int = CHUNK_CHAINS,
):
    """
    Give the node exactly svcops's ``rules``: one ``iptables-restore --noflush`` of the
    svcops chains whose rules differ from the node's (kube-proxy's partial sync), one
    atomic transaction; a change of more than ``chunk`` chains is cut into several
    (`svcops.render.iptables.restore_transactions`), undone at once if one fails.

    + udp_ports: the node's UDP service ports (`svcops.conntrack_ops.node_udp_ports`):
      after a restore, the conntrack entries of UDP flows still pointing at endpoints
      that are gone are deleted (`svcops.conntrack_ops`); None: no cleanup

    + rules: the node's ``IptablesRules`` (``compile_site(...).outputs[node].iptables``)
    + rollback_after: seconds after which the node undoes the apply by itself unless
      the controller has confirmed it can still log in
    + verify_ssh: after the restore, open a fresh SSH connection (same key, strict
      host-key checking) and disarm the rollback through it
    + chunk: most chains in one transaction

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
    live = node_fact(host, SvcopsIptables)
    if live is None:
        yield _fail("the node's iptables (iptables-save)")
        return
    if live is NO_IPTABLES:
        if not (rules.jumps or rules.filter.chains or rules.nat.chains):
            host.noop("iptables is not installed: svcops has no iptables rules here")
            return
        yield StringCommand("echo 'svcops: iptables-save not found (install iptables); nothing changed' >&2; exit 1")
        return
    if in_sync(rules, live):
        host.noop("svcops rules are in sync")
        return
    token = secrets.token_hex(6)
    d = RUN_DIR
    apply_path = f"{d}/apply.{token}"
    txs = restore_transactions(rules, live, chunk)
    payload = "".join(txs)
    yield StringCommand(f"mkdir -p {d} && chmod 700 {d} && cat > {apply_path}", _stdin=payload)
    restore = f"iptables-restore -w 5 --noflush {apply_path}"
    after = None  # the state after the apply, simulated once for both rollbacks
    if len(txs) > 1:
        # Many chains: several transactions in one restore (see restore_transactions). One
        # that fails leaves the earlier ones committed: give the chains back at once.
        after = simulate(live, payload)
        partial = rollback_payload(live, rules, jumps=False, after=after)
        yield StringCommand(f"cat > {d}/rollback-partial.{token}", _stdin=partial)
        restore = f"{{ {restore} || {{ iptables-restore -w 5 --noflush {d}/rollback-partial.{token}; false; }}; }}"
    if not verify_ssh:
        yield StringCommand(f"{restore} && rm -f {apply_path}")
        yield from cleanup_commands(live, udp_ports)
        return
    yield StringCommand(f"cat > {d}/rollback.{token}", _stdin=rollback_payload(live, rules, after=after))
    yield StringCommand(f"cat > {d}/deadman.{token}", _stdin=deadman_script(token, rollback_after))
    # Arm, then restore; a restore that fails changed nothing (it is atomic, or was
    # undone at once when cut into transactions): cancel the switch.
    yield StringCommand(
        f": > {d}/armed.{token} && setsid -f sh {d}/deadman.{token} >/dev/null 2>&1 < /dev/null && "
        f"if {restore}; then :; else mv -f {d}/armed.{token} {d}/cancelled.{token}; "
        f"{_kill_deadman(token)}; exit 1; fi"
    )
    yield FunctionCommand(_verify_and_disarm, (token,), {})
    # After the new rules (and SSH) stand: flows deleted earlier would be re-made by the old rules.
    yield from cleanup_commands(live, udp_ports)


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


def _guarded(token: str, run: str, undo: str, rollback_after: int, verify_ssh: bool):
    """The commands of an SSH-safe apply whose files are already in RUN_DIR: `run` (a
    shell script that changes the node, and on failure leaves it as it was and exits
    non-zero) and `undo` (a shell script that gives back the previous state).

    As in `iptables_rules`: a dead-man switch armed before `run`, a fresh login after
    it that disarms the switch, or else a rollback through the open connection."""
    d = RUN_DIR
    yield StringCommand(f"cat > {d}/run.{token}", _stdin=run)
    yield StringCommand(f"cat > {d}/undo.{token}", _stdin=undo)
    if not verify_ssh:
        yield StringCommand(f"sh {d}/run.{token}; rc=$?; {_cleanup(token)}; exit $rc")
        return
    undo_cmd = f"sh {d}/undo.{token}"
    yield StringCommand(f"cat > {d}/deadman.{token}", _stdin=deadman_script(token, rollback_after, undo_cmd))
    yield StringCommand(
        f": > {d}/armed.{token} && setsid -f sh {d}/deadman.{token} >/dev/null 2>&1 < /dev/null && "
        f"if sh {d}/run.{token}; then :; else mv -f {d}/armed.{token} {d}/cancelled.{token}; "
        f"{_kill_deadman(token)}; exit 1; fi"
    )
    yield FunctionCommand(_verify_and_disarm, (token,), {"undo": undo_cmd})


# --- nftables ----------------------------------------------------------------------------


@operation()
@marks_changes
def nftables_rules(
    rules=None,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    verify_ssh: bool = True,
    chunk: int = 1000,
    udp_ports=None,
):
    """
    Give the node exactly svcops's nftables table ``ip svcops`` for ``rules``, or no
    such table at all when ``rules`` is None (the site is in another proxy mode).

    + udp_ports: the node's UDP service ports: after the change, conntrack entries of
      UDP flows still pointing at endpoints that are gone are deleted, as in
      `iptables_rules` (the previous state is the live table read before)

    + rules: the node's ``NftRules`` (``compile_site(...).outputs[node].nftables``), or None
    + rollback_after, verify_ssh: as for `iptables_rules`
    + chunk: service ports per transaction on a cold start

    The decision comes from the live table (`svcops.facts.SvcopsNftables`): a node in
    sync gets no command; a clean node gets the skeleton and then the service ports in
    chunks (a 10,000-service table in one transaction takes the kernel ~56 s, in chunks
    ~12.5 s); a live one only the service ports whose digest differs (a one-service
    change is one small transaction). Only ``table ip svcops`` is ever named: no other
    table (iptables-nft's, docker's, a firewall's) is touched.

    SSH safety as in iptables mode. The rollback is the previous table: the boot file
    ``/etc/svcops/rules.nft`` when its fingerprint says it holds exactly the live table,
    else the live table's listing, or the table's deletion when there was none. A
    transaction that fails after earlier ones succeeded rolls back at once.
    """
    from .nft_apply import LOADER, ROLLBACK_FROM_LISTING, chunked, live_fingerprint, removal, transactions

    state = node_fact(host, SvcopsNftables)
    if state is None:
        yield _fail("the node's nftables table (nft list)")
        return
    if not state.available:
        if rules is None:
            host.noop("nft is not installed: no svcops table to remove")
            return
        yield StringCommand("echo 'svcops: nftables mode needs nft (Debian package nftables) on the node; nothing changed' >&2; exit 1")
        return
    txs = transactions(rules, state.live, chunk)
    if not txs:
        host.noop("the svcops table is in sync" if rules is not None else "no svcops table")
        return
    token = secrets.token_hex(6)
    d = RUN_DIR
    lib = f"{d}/lib.{token}"
    yield StringCommand(f"mkdir -p {d} && chmod 700 {d} && cat > {d}/apply.{token}", _stdin=chunked(txs))
    yield StringCommand(f"cat > {lib}", _stdin=LOADER)
    if not state.live.exists:
        yield StringCommand(f"cat > {d}/rollback.{token}", _stdin=removal())
    elif state.boot_state and state.boot_state == live_fingerprint(state.live):
        yield StringCommand(f"cp {NFT_FILE} {d}/rollback.{token}")
    else:
        yield StringCommand(f"{{ {ROLLBACK_FROM_LISTING}; }} > {d}/rollback.{token}")
    run = (
        f". {lib}\n"
        f"svcops_nft_load {d}/apply.{token}; rc=$?\n"
        '[ "$rc" = 0 ] && exit 0\n'
        'echo "svcops: nft transaction $rc failed" >&2\n'
        # Transaction 1 failing changed nothing; a later one leaves earlier ones applied.
        f'if [ "$rc" -gt 1 ]; then svcops_nft_load {d}/rollback.{token} || echo "svcops: the rollback failed too" >&2; fi\n'
        "exit 1\n"
    )
    undo = f". {lib}\nsvcops_nft_load {d}/rollback.{token}\n"
    yield from _guarded(token, run, undo, rollback_after, verify_ssh)
    yield from cleanup_commands(state.live, udp_ports)


# --- IPVS --------------------------------------------------------------------------------


@operation()
@marks_changes
def ipvs_rules(
    rules,
    rollback_after: int = DEFAULT_ROLLBACK_AFTER,
    verify_ssh: bool = True,
    conntrack_cleanup: bool = True,
):
    """
    Give the node svcops's IPVS mode for ``rules`` (``IpvsRules``): modules and
    sysctls, the dummy interface ``svcops-ipvs0`` and its virtual addresses, svcops's
    ipsets, its few iptables chains and jumps, and the virtual and real servers
    (`svcops.ipvs_apply`: kube-proxy's order, each step only when it differs).

    A node that cannot do IPVS (no module ip_vs or dummy, no ipvsadm or ipset) fails
    with what it lacks, and nothing is changed: run this operation first.

    SSH safety as in iptables mode: the dead-man switch's rollback restores the
    previous iptables chains and virtual servers.

    + conntrack_cleanup: after the change, delete the conntrack entries of UDP flows
      still pointing at real servers that are gone, as in `iptables_rules` (the
      previous state is the live ``ipvsadm-save -n`` read before)
    """
    from .conntrack import udp_ports_from_ipvsadm
    from .ipvs_apply import ipvs_plan

    state = node_fact(host, SvcopsIpvs)
    live = node_fact(host, SvcopsIptables)
    if state is None or live is None:
        yield _fail("the node's IPVS and iptables state")
        return
    problems = list(state.missing) + (["missing iptables (Debian package iptables)"] if live is NO_IPTABLES else [])
    if problems:
        msg = "svcops: IPVS mode cannot run on this node: " + "; ".join(problems) + "; nothing changed"
        yield StringCommand(f"echo {shlex.quote(msg)} >&2; exit 1")
        return
    plan = ipvs_plan(rules, state.live, live, ipvs_modules(rules.ipvsadm))
    if plan.empty:
        host.noop("svcops's IPVS rules are in sync")
        return
    token = secrets.token_hex(6)
    d = RUN_DIR
    yield StringCommand(f"mkdir -p {d} && chmod 700 {d}")
    run = ["set -e\n"]
    undo = []
    if plan.prepare:
        run.append(plan.prepare + "\n")
    if plan.addresses:
        yield StringCommand(f"cat > {d}/addresses.{token}", _stdin=plan.addresses)
        run.append(f"ip -batch {d}/addresses.{token}\n")
    if plan.ipset:
        yield StringCommand(f"cat > {d}/ipset.{token}", _stdin=plan.ipset)
        run.append(f"ipset restore < {d}/ipset.{token}\n")
    if plan.iptables:
        yield StringCommand(f"cat > {d}/apply.{token}", _stdin=plan.iptables)
        yield StringCommand(f"cat > {d}/rollback.{token}", _stdin=plan.undo_iptables)
        run.append(f"iptables-restore -w 5 --noflush {d}/apply.{token}\n")
        undo.append(f"iptables-restore -w 5 --noflush {d}/rollback.{token}\n")
    if plan.ipvsadm:
        yield StringCommand(f"cat > {d}/ipvsadm.{token}", _stdin=plan.ipvsadm)
        yield StringCommand(f"cat > {d}/undo-ipvsadm.{token}", _stdin=plan.undo_ipvsadm)
        if plan.iptables:
            # The virtual servers failed after the chains changed: put the chains back.
            run.append(f"ipvsadm -R < {d}/ipvsadm.{token} || {{ iptables-restore -w 5 --noflush {d}/rollback.{token}; exit 1; }}\n")
        else:
            run.append(f"ipvsadm -R < {d}/ipvsadm.{token}\n")
        undo.insert(0, f"ipvsadm -R < {d}/undo-ipvsadm.{token}\n")
    if plan.finish:
        yield StringCommand(f"cat > {d}/stale-addresses.{token}", _stdin=plan.finish)
        run.append(f"ip -batch {d}/stale-addresses.{token}\n")
    yield from _guarded(token, "".join(run), "".join(undo) or "true\n", rollback_after, verify_ssh)
    if conntrack_cleanup and plan.ipvsadm:
        owned = set(rules.addresses) | set(state.live.addresses)
        before = udp_ports_from_ipvsadm(state.live.ipvsadm, owned, rules.node_addresses)
        after = udp_ports_from_ipvsadm(rules.ipvsadm, owned, rules.node_addresses)
        yield from cleanup_commands(None, after, previous=before)


@operation()
@marks_changes
def ipvs_absent(node_addresses: Sequence[str] = ()):
    """
    Remove svcops's IPVS footprint, if any (the site is in another proxy mode): its
    ipsets, its virtual servers and the dummy interface ``svcops-ipvs0``. Run it after
    `iptables_rules` has replaced svcops's IPVS-mode chains (they use the sets).

    + node_addresses: the node's own addresses (its node-port virtual servers are svcops's)
    """
    from .ipvs_apply import ipvs_removal

    state = node_fact(host, SvcopsIpvs)
    if state is None:
        yield _fail("the node's IPVS state")
        return
    removal = ipvs_removal(state.live, node_addresses)
    if removal.empty:
        host.noop("no svcops IPVS state")
        return
    if removal.ipset:
        yield StringCommand("ipset restore", _stdin=removal.ipset)
    if removal.ipvsadm:
        yield StringCommand("ipvsadm -R", _stdin=removal.ipvsadm)
    if removal.link:
        yield StringCommand(f"ip link del {shlex.quote(DUMMY)}")
    if removal.sysctls:
        yield StringCommand(removal.sysctls)


# --- files, sysctl, addresses ------------------------------------------------------------


@operation()
@marks_changes
def persisted_files(files: NodeFiles):
    """
    Write the files svcops persists on the node, each only when its sha256 differs:
    the boot payload and restore script (``/etc/svcops``), the boot unit
    ``svcops-rules.service`` and its ``multi-user.target.wants`` symlink (made directly,
    so it works where systemd is not running), ``/etc/sysctl.d/90-svcops.conf`` and the
    static-address file ``/etc/network/interfaces.d/svcops``.

    + files: ``svcops.node_files.node_files(rules, interfaces, announced)``
    """
    state = node_fact(host, SvcopsNodeState, keep=True)
    if state is None:
        yield _fail("the node's svcops state")
        return
    modes = files.modes or {}
    for path, text in files.files.items():
        if state.files.get(path) != sha256_text(text):
            yield _write_file(path, text, modes.get(path, "644"))
    gone = [p for p in files.remove if p in state.files]
    if gone:
        # Rule files of the proxy mode the site left.
        yield StringCommand("rm -f " + " ".join(shlex.quote(p) for p in gone))
    link, target = files.link
    if state.unit_link != target:
        yield StringCommand(f"mkdir -p {shlex.quote(link.rsplit('/', 1)[0])} && ln -sfn {shlex.quote(target)} {shlex.quote(link)}")


@operation()
@marks_changes
def ip_forward():
    """
    Turn on IPv4 forwarding now (``net.ipv4.ip_forward=1``) if it is off; the
    ``/etc/sysctl.d/90-svcops.conf`` that `persisted_files` writes keeps it on at boot.
    """
    state = node_fact(host, SvcopsNodeState, keep=True)
    if state is None:
        yield _fail("the node's svcops state")
        return
    if state.ip_forward == "1":
        host.noop("net.ipv4.ip_forward is 1")
        return
    yield "sysctl -q -w net.ipv4.ip_forward=1"


@operation()
@marks_changes
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
    state = node_fact(host, SvcopsNodeState, keep=True)
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
@marks_changes
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
    state = node_fact(host, SvcopsNodeState, keep=True)
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
