"""The node's own svcops state: persisted files, forwarding, its static address and the
load-balancer addresses it announces (all read from `svcops.facts.node.SvcopsNodeState`).

    from svcops.operations import node

    node.files(name="svcops files", files=plan.files)       # boot rules, unit, sysctl, ifupdown
    node.ip_forward(name="ip forwarding")
    node.static_address(name="address", address="10.0.0.11", prefixlen=24, interface="eth0")
    node.lb_addresses(name="lb addresses", announced=plan.announced)
"""

from __future__ import annotations

import shlex
from typing import Sequence

from pyinfra import host
from pyinfra.api import operation

from svcops.facts.cache import marks_changes, node_fact
from svcops.facts.node import SvcopsNodeState
from svcops.operations import txn
from svcops.operations.util import fail
from svcops.render.node_files import NodeFiles, sha256_text
from svcops.site.model import Announcement, address_label

__all__ = ["files", "ip_forward", "static_address", "lb_addresses"]


@operation()
@marks_changes
def files(files: NodeFiles):
    """
    Write the files svcops persists on the node, each only when its sha256 differs:
    the boot payload and restore script (``/etc/svcops``), the boot unit
    ``svcops-rules.service`` and its ``multi-user.target.wants`` symlink (made directly,
    so it works where systemd is not running), ``/etc/sysctl.d/90-svcops.conf`` and the
    static-address file ``/etc/network/interfaces.d/svcops``.

    + files: ``svcops.render.node_files.node_files(rules, interfaces, announced)``
    """
    state = node_fact(host, SvcopsNodeState, keep=True)
    if state is None:
        yield fail("the node's svcops state")
        return
    modes = files.modes or {}
    for path, text in files.files.items():
        if state.files.get(path) != sha256_text(text):
            yield from txn.replace_file(path, text, modes.get(path, "644"))
    gone = [p for p in files.remove if p in state.files]
    if gone:
        # Rule files of the proxy mode the site left.
        yield from txn.remove_files(gone)
    link, target = files.link
    if state.unit_link != target:
        ln = f"mkdir -p {shlex.quote(link.rsplit('/', 1)[0])} && ln -sfn {shlex.quote(target)} {shlex.quote(link)}"
        previous = f"ln -sfn {shlex.quote(state.unit_link)} {shlex.quote(link)}" if state.unit_link else f"rm -f {shlex.quote(link)}"
        yield from txn.step("unit-link", ln, previous + "\n")


@operation()
@marks_changes
def ip_forward():
    """
    Turn on IPv4 forwarding now (``net.ipv4.ip_forward=1``) if it is off; the
    ``/etc/sysctl.d/90-svcops.conf`` that `files` writes keeps it on at boot.
    """
    state = node_fact(host, SvcopsNodeState, keep=True)
    if state is None:
        yield fail("the node's svcops state")
        return
    if state.ip_forward == "1":
        host.noop("net.ipv4.ip_forward is 1")
        return
    undo = f"sysctl -q -w net.ipv4.ip_forward={shlex.quote(state.ip_forward)}\n" if state.ip_forward else None
    yield from txn.step("ip-forward", "sysctl -q -w net.ipv4.ip_forward=1", undo)


@operation()
@marks_changes
def static_address(address: str | None, prefixlen: int, interface: str):
    """
    Put the node's static address on its interface, now, if it is not there yet.

    ``ip addr replace`` adds the address (or updates its prefix) and never removes any
    other: the address the SSH session came in on stays, whatever the file says. The
    file itself (``/etc/network/interfaces.d/svcops``) is written by
    `files` and takes over at the next boot.
    """
    if not address:
        host.noop("the site manages no static address for this node")
        return
    state = node_fact(host, SvcopsNodeState, keep=True)
    if state is None:
        yield fail("the node's svcops state")
        return
    if any(a.address == address and a.prefixlen == prefixlen and a.interface == interface for a in state.addresses):
        host.noop(f"{address}/{prefixlen} is on {interface}")
        return
    dev = shlex.quote(interface)
    before = [a for a in state.addresses if a.address == address and a.interface == interface]
    # The address was not there (else it could be the session's): taking it off again is safe.
    undo = (
        f"ip addr replace {shlex.quote(f'{address}/{before[0].prefixlen}')} dev {dev}\n"
        if before
        else f"ip addr del {shlex.quote(f'{address}/{prefixlen}')} dev {dev} 2>/dev/null || true\n"
    )
    yield from txn.step("static-address", f"ip addr replace {shlex.quote(f'{address}/{prefixlen}')} dev {dev}", undo)


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
    Announce the load-balancer addresses this node was chosen for (`svcops.compile.announce`):
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
        yield fail("the node's svcops state")
        return
    wanted = {(a.address, a.interface) for a in announced}
    for a in announced:
        if state.has_address(a.address, a.interface):
            continue
        label = a.label
        lbl = f" label {shlex.quote(label)}" if label else ""
        addr, dev = shlex.quote(a.address + "/32"), shlex.quote(a.interface)
        yield from txn.step(
            "lb-address",
            f"ip addr replace {addr} dev {dev}{lbl} && {_arping(a.address, a.interface)}",
            f"ip addr del {addr} dev {dev} 2>/dev/null || true\n",
        )
    recorded_set = set(recorded) | set(state.announced)
    # Never the address this connection came in on, whatever a record says.
    session = host.data.get("ssh_hostname") or host.name
    for addr in state.addresses:
        if (addr.address, addr.interface) in wanted or addr.prefixlen != 32 or addr.address == session:
            continue
        if addr.label == address_label(addr.interface) or addr.address in recorded_set:
            a, dev = shlex.quote(f"{addr.address}/{addr.prefixlen}"), shlex.quote(addr.interface)
            lbl = f" label {shlex.quote(addr.label)}" if addr.label else ""
            yield from txn.step("lb-address-off", f"ip addr del {a} dev {dev}", f"ip addr replace {a} dev {dev}{lbl}\n")
