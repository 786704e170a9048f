"""What an apply would change on one node, from its live facts: `svcops apply --dry`.

Pure: the node's plan (`svcops.compile.nodeplan.NodePlan`) and its facts in, a `NodeDiff` out.
The same decisions the operations take (`svcops.operations`), so a dry run shows what
a real run does.
"""

from __future__ import annotations

from dataclasses import dataclass

from svcops.facts.node import NodeState
from svcops.operations.dns import dns_plan
from svcops.render.iptables import LiveTables
from svcops.render.iptables_sync import TablesDiff, diff_tables
from svcops.render.ipvs import ipvs_modules
from svcops.render.ipvs_sync import ipvs_plan, ipvs_removal
from svcops.render.nftables_sync import DELETE_TABLE, nft_plan
from svcops.render.iptables_record import applied_rules
from svcops.render.node_files import sha256_text
from svcops.site.model import address_label

__all__ = ["NodeDiff", "node_diff"]


@dataclass(frozen=True, slots=True)
class NodeDiff:
    node: str
    rules: TablesDiff
    addresses_added: tuple[str, ...] = ()  # "192.168.36.252/32 on eth0"
    addresses_removed: tuple[str, ...] = ()
    files_written: tuple[str, ...] = ()
    ip_forward: bool = False  # would be turned on
    modes: tuple[str, ...] = ()  # nftables / IPVS changes, one line each
    files_removed: tuple[str, ...] = ()  # rule files of a proxy mode the site left
    dns: tuple[str, ...] = ()  # the DNS server's steps, one line each (`DnsPlan.summary`)

    @property
    def empty(self) -> bool:
        return self.rules.empty and not (
            self.addresses_added or self.addresses_removed or self.files_written or self.ip_forward
            or self.modes or self.files_removed or self.dns
        )

    def lines(self) -> list[str]:
        """Human-readable, one change a line (["in sync"] when nothing changes)."""
        if self.empty:
            return ["in sync"]
        out = []
        if not self.rules.empty:
            out.append(f"iptables: {self.rules.summary()}")
            for name, d in self.rules.tables.items():
                out += [f"  {name}: + {c}" for c in d.added]
                out += [f"  {name}: - {c}" for c in d.removed]
                out += [f"  {name}: ~ {c}" for c in d.changed]
                out += [f"  {name}: + jump {j}" for j in d.jumps_added]
                out += [f"  {name}: - jump {j}" for j in d.jumps_removed]
        out += list(self.modes)
        out += [f"address: + {a}" for a in self.addresses_added]
        out += [f"address: - {a}" for a in self.addresses_removed]
        if self.ip_forward:
            out.append("sysctl: net.ipv4.ip_forward 0 -> 1")
        out += [f"file: {f}" for f in self.files_written]
        out += [f"file: - {f}" for f in self.files_removed]
        out += list(self.dns)
        return out

    def as_json(self) -> dict:
        return {
            "node": self.node,
            "inSync": self.empty,
            "iptables": {
                name: {
                    "chainsAdded": list(d.added),
                    "chainsRemoved": list(d.removed),
                    "chainsChanged": list(d.changed),
                    "rulesBefore": d.rules_before,
                    "rulesAfter": d.rules_after,
                    "jumpsAdded": list(d.jumps_added),
                    "jumpsRemoved": list(d.jumps_removed),
                }
                for name, d in self.rules.tables.items()
            },
            "addressesAdded": list(self.addresses_added),
            "addressesRemoved": list(self.addresses_removed),
            "filesWritten": list(self.files_written),
            "ipForward": self.ip_forward,
            "proxyMode": list(self.modes),
            "filesRemoved": list(self.files_removed),
            "dns": list(self.dns),
        }


def mode_changes(out, nft=None, ipvs=None, iptables: LiveTables | None = None, nft_fast=None, ipvs_fast=None) -> list[str]:
    """The nftables / IPVS lines of the diff, from the SvcopsNftables and SvcopsIpvs
    facts (None: not read), or from the records (`nft_fast`, a
    `svcops.render.nftables_record.FastPlan`, `ipvs_fast`, a
    `svcops.render.ipvs_record.IpvsFastPlan`: what the apply's fast path would send)."""
    lines: list[str] = []
    if ipvs_fast is not None:
        lines += ipvs_fast.summary()
    if nft_fast is not None:
        lines += nft_fast.summary()
    elif nft is not None:
        want = out.nftables if out.mode == "nftables" else None
        if not nft.available:
            if want is not None:
                lines.append("nftables: nft is not installed on the node (apply fails)")
        else:
            lines += _nft_lines(nft_plan(want, nft.live))
    if ipvs is not None:
        if out.mode == "ipvs":
            if ipvs.missing:
                lines.append("ipvs: the node cannot do IPVS (apply fails): " + "; ".join(ipvs.missing))
            elif iptables is not None:
                lines += ipvs_plan(out.ipvs, ipvs.live, iptables, ipvs_modules(out.ipvs.ipvsadm)).summary()
        else:
            removal = ipvs_removal(ipvs.live, out.node_addresses)
            if not removal.empty:
                lines.append("ipvs: - svcops's sets, virtual servers and dummy interface")
    return lines


def _nft_lines(plan) -> list[str]:
    """An `NftPlan` as diff lines: what changes, then what drifted, one line each."""
    txs = plan.transactions
    if not txs:
        return []
    if txs == (DELETE_TABLE,):
        return ["nftables: - table ip svcops"]
    n = f"{len(txs)} transaction{'s' if len(txs) != 1 else ''}"
    if plan.cold:
        return [f"nftables: cold start, {n}"]
    what = f"service ports +{plan.added} ~{plan.changed} -{plan.removed}"
    if plan.drifted:
        what += f", drift in {plan.drifted}"
    if plan.reload:
        what += ", the table re-made whole"
    return [f"nftables: {what}, {n}", *(f"nftables: drift: {d}" for d in plan.drift)]


def node_diff(
    plan, live: LiveTables, state: NodeState, session_address: str | None = None, nft=None, ipvs=None, dns=None,
    nft_fast=None,
    ipvs_fast=None,
    ipt_diff: TablesDiff | None = None,
) -> NodeDiff:
    """What applying `plan` (a NodePlan) would change on a node whose facts are
    `live` (SvcopsIptables), `state` (SvcopsNodeState) and, when read, `nft`
    (SvcopsNftables) or `nft_fast` (the fast path's plan from the record), `ipvs`
    (SvcopsIpvs) or `ipvs_fast` (likewise) and `dns` (SvcopsDns); `ipt_diff`: the
    iptables part, when the fast path worked it out from the record (`live` is then not
    read for it)."""
    out = plan.output
    added: list[str] = []
    removed: list[str] = []
    wanted = {(a.address, a.interface) for a in plan.announced}
    for a in plan.announced:
        if not state.has_address(a.address, a.interface):
            added.append(f"{a.address}/32 on {a.interface}")
    recorded = set(state.announced)
    for addr in state.addresses:
        if (addr.address, addr.interface) in wanted or addr.prefixlen != 32 or addr.address == session_address:
            continue
        if addr.label == address_label(addr.interface) or addr.address in recorded:
            removed.append(f"{addr.address}/32 on {addr.interface}")
    prefix = plan.prefixlen
    if out.address and prefix is not None:
        if not any(
            a.address == out.address and a.prefixlen == prefix and a.interface == out.node.interface
            for a in state.addresses
        ):
            added.append(f"{out.address}/{prefix} on {out.node.interface}")
    files = [p for p, text in plan.files.files.items() if state.files.get(p) != sha256_text(text)]
    if state.unit_link != plan.files.link[1]:
        files.append(plan.files.link[0] + " -> " + plan.files.link[1])
    return NodeDiff(
        out.node.name,
        # iptables mode's canary chain is svcops's too (`svcops.render.iptables_record`).
        ipt_diff if ipt_diff is not None else diff_tables(applied_rules(out.iptables) if out.mode == "iptables" else out.iptables, live),
        tuple(added),
        tuple(removed),
        tuple(files),
        state.ip_forward != "1",
        tuple(mode_changes(out, nft, ipvs, live, nft_fast, ipvs_fast)),
        tuple(p for p in plan.files.remove if p in state.files),
        tuple(_dns_lines(plan, dns)),
    )


def _dns_lines(plan, dns) -> list[str]:
    if dns is None:
        return []
    if plan.dns_zone is None:  # serviceDNS: false: what dns.absent would take off
        return ["dns: - svcops's DNS server (serviceDNS: false), resolv.conf given back"] if dns.present else []
    return dns_plan(dns, plan.dns_zone).summary()
