"""The core pipeline: a loaded site and its nodes in, what every node gets out.

    allocate -> resolve endpoints -> render per node

Pure: no files, no SSH, no clock. The CLI (and the pyinfra operations) call
`compile_site` and then do the I/O with what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from .allocate import allocate
from .diagnostics import Diagnostic, has_errors
from .endpoints import resolve
from .model import Allocations, Node, ResolvedPort, Site
from .render.ifupdown import render_interfaces
from .render.iptables import IptablesRules, render_nodes


@dataclass(frozen=True, slots=True)
class NodeOutput:
    """Everything one node gets."""

    node: Node
    address: str | None  # its static address (explicit or allocated), if any
    iptables: IptablesRules
    interfaces: str  # the ifupdown file; "" when the site manages no node addresses


@dataclass(frozen=True, slots=True)
class Compiled:
    site: Site
    nodes: tuple[Node, ...]
    allocations: Allocations
    ports: tuple[ResolvedPort, ...]
    outputs: Mapping[str, NodeOutput]


def compile_site(
    site: Site,
    nodes: Sequence[Node],
    previous: Allocations,
    lock_file: str = "svcops.lock",
) -> tuple[Compiled | None, list[Diagnostic]]:
    """Allocate, resolve and render; None (with the errors) when anything is wrong."""
    allocations, diags = allocate(site.cluster, site.services, nodes, previous, lock_file)
    if has_errors(diags):
        return None, diags
    ports, resolve_diags = resolve(site, nodes, allocations)
    diags += resolve_diags
    if has_errors(diags):
        return None, diags
    rules = render_nodes(site.cluster, ports, [n.name for n in nodes])
    outputs = {}
    for node in nodes:
        address = allocations.node_addresses.get(node.name)
        outputs[node.name] = NodeOutput(
            node=node,
            address=address,
            iptables=rules[node.name],
            interfaces=render_interfaces(node, site.cluster, address),
        )
    return Compiled(site, tuple(nodes), allocations, ports, outputs), diags


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
