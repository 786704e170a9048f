"""UDP conntrack cleanup on a node: the commands the rule operations run after a change.

After a node's new rules are in place, the conntrack entries of UDP flows that still
point at endpoints the rules no longer have are deleted (kube-proxy does the same
after each sync). Which flows is the core's decision (`svcops.render.conntrack`); here
it becomes a command that the rule operations (`svcops.operations.iptables`,
`.nftables`, `.ipvs`) yield right after their change (and after SSH was checked),
from the very live state that drove the change, so the previous state is the node's
own, read once::

    iptables.rules(name="svcops rules", rules=out.iptables,
                   udp_ports=node_udp_ports(compiled, host.name))

`svcops.compile.nodeplan.node_udp_ports` gives the node's UDP service ports (what its
rules DNAT to). Proxy modes: iptables mode reads the previous state back from the
live chains (`udp_ports_from_iptables`), nftables mode from the live table
(`udp_ports_from_nft`), IPVS mode from ``ipvsadm-save -n`` (`udp_ports_from_ipvsadm`).
"""

from __future__ import annotations

import shlex
from typing import Mapping

from pyinfra.api import StringCommand

from svcops.render.conntrack import (
    UdpPort,
    conntrack_script,
    stale_conntrack,
    udp_ports_from_iptables,
    udp_ports_from_nft,
)

__all__ = ["cleanup_commands"]


def cleanup_commands(
    live, new: Mapping[str, UdpPort] | None, previous: Mapping[str, UdpPort] | None = None
) -> list[StringCommand]:
    """The command that deletes stale UDP flows once the rules for `new` are in place,
    given the live state read before the change: the iptables tables
    (`svcops.facts.iptables.SvcopsIptables`) or svcops's nftables table (an ``NftLive``), or
    the `previous` UDP ports themselves (IPVS mode: `udp_ports_from_ipvsadm`);
    none when nothing is stale or `new` is None (no cleanup asked for).

    A node without the ``conntrack`` tool gets a warning on stderr, and the apply
    goes on (the flows then time out by themselves)."""
    if new is None or (live is None and previous is None):
        return []
    if previous is None:
        previous = udp_ports_from_nft(live) if hasattr(live, "maps") else udp_ports_from_iptables(live)
    commands = stale_conntrack(previous, new)
    script = conntrack_script(commands)
    if not script:
        return []
    missing = "svcops: conntrack not found (install the conntrack package): stale UDP flows were not deleted"
    return [
        StringCommand(
            f"if command -v conntrack >/dev/null 2>&1 || [ -x /usr/sbin/conntrack ]; then "
            f"PATH=$PATH:/usr/sbin sh -c {shlex.quote(script)}; else echo {shlex.quote(missing)} >&2; fi"
        )
    ]
