"""The core pipeline: a loaded site and its nodes in, what every node gets out.

    allocate -> resolve endpoints -> render per node, for the proxy mode

The mode is the site's ``proxyMode`` (or the one asked for): every node's
`NodeOutput` holds that mode's rules, and its ``iptables`` field is always svcops's
*iptables footprint* in that mode, so the iptables operation, `svcops plan` and the
dry-run diff work for every mode alike:

    mode       NodeOutput.iptables                      its own rules
    iptables   the kube-proxy-style chains and jumps    -
    ipvs       the few SVCOPS- chains IPVS mode keeps   .ipvs  (IpvsRules)
    nftables   nothing (empty: a node's old chains go)  .nftables (NftRules)

Pure: no files, no SSH, no clock. The CLI (and the pyinfra operations) call
`compile_site` and then do the I/O with what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from svcops.compile.allocate import allocate
from svcops.compile.endpoints import resolve
from svcops.render import iptables as render_iptables
from svcops.render import ipvs as render_ipvs
from svcops.render import nftables as render_nftables
from svcops.render.ifupdown import render_interfaces
from svcops.render.iptables import IptablesRules, TableRules
from svcops.render.ipvs import IpvsRules
from svcops.render.nftables import NftRules
from svcops.site.diagnostics import Diagnostic, has_errors
from svcops.site.model import Allocations, Node, Readiness, ResolvedPort, Site

MODES = ("iptables", "nftables", "ipvs")


def no_iptables_rules(node: str) -> IptablesRules:
    """svcops's iptables footprint in nftables mode: no chain and no jump at all
    (applied to a live node, it removes what iptables mode left there)."""
    return IptablesRules(node, TableRules([], []), TableRules([], []), ())


@dataclass(frozen=True, slots=True)
class NodeOutput:
    """Everything one node gets."""

    node: Node
    address: str | None  # its static address (explicit or allocated), if any
    iptables: IptablesRules  # svcops's iptables footprint in this mode (see above)
    interfaces: str  # the ifupdown file; "" when the site manages no node addresses
    mode: str = "iptables"  # the proxy mode these rules are for
    nftables: NftRules | None = None  # nftables mode: the table's units
    ipvs: IpvsRules | None = None  # IPVS mode: sets, virtual servers, dummy addresses

    @property
    def node_addresses(self) -> tuple[str, ...]:
        """The node's own addresses as the site knows them (static, then SSH host)."""
        return node_addresses(self.node, self.address)


@dataclass(frozen=True, slots=True)
class Compiled:
    site: Site
    nodes: tuple[Node, ...]
    allocations: Allocations
    ports: tuple[ResolvedPort, ...]
    outputs: Mapping[str, NodeOutput]
    mode: str = "iptables"
    readiness: Readiness | None = None  # the watch's, when compiled with it


def node_addresses(node: Node, address: str | None) -> tuple[str, ...]:
    """A node's addresses known to the site: its static one and its SSH host (IPVS
    mode makes a node-port virtual server on each; names that are not addresses are
    left out by the renderer)."""
    return tuple(dict.fromkeys(a for a in (address, node.ssh_host) if a))


def render_outputs(
    site: Site, nodes: Sequence[Node], allocations: Allocations, ports: Sequence[ResolvedPort], mode: str
) -> dict[str, NodeOutput]:
    """Every node's output in `mode` (one of MODES), from resolved ports."""
    if mode not in MODES:
        raise ValueError(f"unknown proxy mode {mode!r} (one of {', '.join(MODES)})")
    names = [n.name for n in nodes]
    # With nodeNetwork, the allocated (and configured) address; without, svcops_address
    # as given (svcops does not configure it), or none.
    addresses = {n.name: allocations.node_addresses.get(n.name) or n.address for n in nodes}
    ipt: Mapping[str, IptablesRules] = {}
    nft: Mapping[str, NftRules] = {}
    ipvs: Mapping[str, IpvsRules] = {}
    if mode == "iptables":
        ipt = render_iptables.render_nodes(site.cluster, ports, names)
    elif mode == "nftables":
        nft = render_nftables.render_nodes(site.cluster, ports, names)
    else:
        ipvs = render_ipvs.render_nodes(
            site.cluster, ports, [(n.name, node_addresses(n, addresses[n.name])) for n in nodes]
        )
    outputs = {}
    for node in nodes:
        name = node.name
        if mode == "iptables":
            iptables = ipt[name]
        elif mode == "ipvs":
            iptables = ipvs[name].iptables_rules
        else:
            iptables = no_iptables_rules(name)
        outputs[name] = NodeOutput(
            node=node,
            address=addresses[name],
            iptables=iptables,
            interfaces=render_interfaces(node, site.cluster, addresses[name]),
            mode=mode,
            nftables=nft.get(name),
            ipvs=ipvs.get(name),
        )
    return outputs


def compile_site(
    site: Site,
    nodes: Sequence[Node],
    previous: Allocations,
    lock_file: str = "svcops.lock",
    mode: str | None = None,
    readiness: Readiness | None = None,
) -> tuple[Compiled | None, list[Diagnostic]]:
    """Allocate, resolve and render; None (with the errors) when anything is wrong.

    mode: the proxy mode to render for (default: the site's ``proxyMode``).
    readiness: which workloads are not ready (the watch's); None: all are.
    """
    allocations, diags = allocate(site.cluster, site.services, nodes, previous, lock_file)
    if has_errors(diags):
        return None, diags
    ports, resolve_diags = resolve(site, nodes, allocations, readiness)
    diags += resolve_diags
    if has_errors(diags):
        return None, diags
    mode = mode or site.cluster.proxy_mode
    outputs = render_outputs(site, nodes, allocations, ports, mode)
    return Compiled(site, tuple(nodes), allocations, tuple(ports), outputs, mode, readiness), diags


def with_readiness(compiled: Compiled, readiness: Readiness | None) -> Compiled:
    """`compiled` again with another readiness (the watch's, on every transition): the
    same as `compile_site` with its allocations, made cheaper. The allocations are kept
    (the same site and nodes need none: allocating 10,000 services is a third of a
    compile), and only the services selecting a workload whose readiness changed are
    resolved again (Endpoints objects and publishNotReadyAddresses services never
    change with readiness); every node is rendered anew."""
    changed = _readiness_changed(compiled.nodes, compiled.readiness, readiness)
    if not changed:
        return replace(compiled, readiness=readiness)
    touched = [
        svc for svc in compiled.site.services
        if svc.selector and not svc.publish_not_ready and any(_selects(svc.selector, w.labels) for w in changed)
    ]  # fmt: skip
    ports = compiled.ports
    if touched:
        again, _ = resolve(replace(compiled.site, services=tuple(touched)), compiled.nodes, compiled.allocations, readiness)
        by_service: dict[str, list[ResolvedPort]] = {}
        for rp in again:
            by_service.setdefault(rp.service.key, []).append(rp)
        keys = {svc.key for svc in touched}
        out: list[ResolvedPort] = []
        for rp in ports:  # sorted by service, then port: a service's ports are together
            key = rp.service.key
            if key not in keys:
                out.append(rp)
            elif key in by_service:
                out.extend(by_service.pop(key))
        ports = tuple(out)
    outputs = render_outputs(compiled.site, compiled.nodes, compiled.allocations, ports, compiled.mode)
    return Compiled(compiled.site, compiled.nodes, compiled.allocations, ports, outputs, compiled.mode, readiness)


def _readiness_changed(nodes: Sequence[Node], old: Readiness | None, new: Readiness | None) -> list:
    """The workloads ready in one readiness and not in the other."""
    a, b = old or Readiness(), new or Readiness()
    if a.not_ready == b.not_ready and a.lost == b.lost:
        return []
    return [w for n in nodes for w in n.workloads if a.ready(n.name, w.name) != b.ready(n.name, w.name)]


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass(frozen=True, slots=True)
class AllocationChange:
    """One line of the allocation diff that `svcops plan` shows."""

    kind: str  # clusterIP | nodePort | loadBalancerIP | nodeAddress
    key: str
    old: str | None
    new: str | None

    @property
    def action(self) -> str:
        if self.old is None:
            return "add"
        if self.new is None:
            return "release"
        return "change" if self.old != self.new else "keep"


_KINDS = (
    ("clusterIP", "cluster_ips"),
    ("nodePort", "node_ports"),
    ("loadBalancerIP", "load_balancer_ips"),
    ("nodeAddress", "node_addresses"),
)


def allocation_changes(old: Allocations, new: Allocations) -> list[AllocationChange]:
    """What differs between two lock contents, sorted by kind then key."""
    changes = []
    for kind, attr in _KINDS:
        before: Mapping = getattr(old, attr)
        after: Mapping = getattr(new, attr)
        for key in sorted(before.keys() | after.keys()):
            b, a = before.get(key), after.get(key)
            if b != a:
                changes.append(
                    AllocationChange(
                        kind, key, None if b is None else str(b), None if a is None else str(a)
                    )
                )
    return changes
