"""Endpoints: which backends stand behind each port of each proxied service.

This is what Kubernetes' endpoints controller and kube-proxy's service/endpoint
trackers do together, as one pure function over the loaded site:

* A Service with a selector gets, for each of its ports, one endpoint per workload
  (on any node of the inventory) whose labels contain every selector pair. A numeric
  ``targetPort`` is used as it is; a named one is looked up in each workload's ports
  (name and protocol), and a workload lacking it is left out of that port, with a
  warning, as the endpoints controller does. A selector that matches nothing is a
  warning too: the service is valid, it just rejects connections.
* A workload that is not ready (`Readiness`: its readinessProbe fails, or its node
  was lost; the watch knows) is no endpoint, unless the service has
  ``publishNotReadyAddresses``. When no endpoint is left, the service rejects
  connections at once, as kube-proxy's rules do.
* A Service without a selector takes its endpoints from a hand-written ``Endpoints``
  object (``site.endpoints``), whose ports are matched to the service's ports by name
  and protocol. Each address is placed on a node (what ``Local`` traffic policies
  need): its ``nodeName``, else the node running a workload with that address, else
  the node whose own address it is, else none (a backend outside the inventory).

`resolve` returns one `ResolvedPort` per port of every proxied service (ExternalName
and headless services are DNS-only), with its cluster IP, node port and load-balancer
IP taken from the allocations, and its endpoints sorted by (address, port), so that
everything rendered from it is deterministic. `local_endpoints` is the per-node view
that ``externalTrafficPolicy: Local`` / ``internalTrafficPolicy: Local`` use.

Speed matters (10,000 services over 100,000 workloads): workloads are indexed once
by (label key, label value), and a selector intersects the index's lists, smallest
first, so a service costs about the size of its answer, not of the inventory.
"""

from __future__ import annotations

import socket
from typing import Iterable, Mapping, Sequence

from svcops.gcpause import gc_paused
from svcops.site.diagnostics import Diagnostic, error, warning
from svcops.site.hostdata import workload_address_problems
from svcops.site.model import (
    Allocations,
    Endpoint,
    HeadlessEndpoints,
    ManualEndpoints,
    Node,
    Readiness,
    ResolvedPort,
    Service,
    ServicePort,
    Site,
    Workload,
    node_port_key,
)

__all__ = ["resolve", "local_endpoints", "endpoint_sort_key", "headless_endpoints"]

# How many lacking workloads a named-targetPort warning lists before "and N more".
_MAX_NAMED = 5


def endpoint_sort_key(e: Endpoint) -> tuple[bytes, int]:
    """Numeric address order (10.0.0.2 before 10.0.0.10), then port."""
    return (_ip_bytes(e.ip), e.port)


def _ip_bytes(ip: str) -> bytes:
    try:
        return socket.inet_aton(ip) if ":" not in ip else b"\xff" + socket.inet_pton(socket.AF_INET6, ip)
    except OSError:  # not an address: validation reports it; sort it last, stably
        return b"\xff\xff" + ip.encode()




def local_endpoints(port: ResolvedPort, node: str) -> tuple[Endpoint, ...]:
    """The endpoints of `port` that run on `node` (the view of Local traffic policies)."""
    return tuple(e for e in port.endpoints if e.node == node)


class _WorkloadIndex:
    """Every workload of the inventory, with its effective address, indexed by label.

    Parallel lists (one entry per workload, in inventory order) keep the hot loops
    free of attribute lookups, and only the label keys some selector uses are indexed.
    """

    __slots__ = ("workloads", "nodes", "addresses", "keys", "by_label", "_node_of_address", "_node_list", "_allocs")

    def __init__(self, nodes: Sequence[Node], allocations: Allocations, label_keys: set[str]) -> None:
        node_addresses = allocations.node_addresses
        workloads: list[Workload] = []
        addresses: list[str] = []
        for node in nodes:
            node_addr = node_addresses.get(node.name) or node.address or node.ssh_host
            ws = node.workloads
            workloads.extend(ws)
            addresses.extend([w.address or node_addr for w in ws])
        self.workloads = workloads
        self.nodes = [w.node for w in workloads]
        self.addresses = addresses
        try:
            self.keys = list(map(socket.inet_aton, addresses))
        except OSError:  # some IPv6 (or invalid) address: the slower, general key
            self.keys = list(map(_ip_bytes, addresses))
        # label key -> label value -> indices of the workloads carrying it.
        by_label: dict[str, dict[str, list[int]]] = {k: {} for k in label_keys}
        for key, values in by_label.items():
            for i, w in enumerate(workloads):
                v = w.labels.get(key)
                if v is not None:
                    lst = values.get(v)
                    if lst is None:
                        values[v] = [i]
                    else:
                        lst.append(i)
        self.by_label = by_label
        self._node_list = nodes
        self._allocs = allocations
        self._node_of_address: dict[str, str] | None = None

    @property
    def node_of_address(self) -> dict[str, str]:
        """address -> node: nodes' own addresses, then workloads' own ones (built on first use)."""
        if self._node_of_address is None:
            node_addresses = self._allocs.node_addresses
            node_of: dict[str, str] = {}
            for node in self._node_list:
                for addr in (node_addresses.get(node.name), node.ssh_host, node.address):
                    if addr:
                        node_of.setdefault(addr, node.name)
            own: dict[str, str] = {}
            for w in self.workloads:
                if w.address:
                    own.setdefault(w.address, w.node)
            node_of.update(own)
            self._node_of_address = node_of
        return self._node_of_address

    def ready_mask(self, readiness: Readiness | None) -> list[bool] | None:
        """Per workload (index order), whether it is ready; None: all are (no watch)."""
        if not readiness:
            return None
        return [readiness.ready(w.node, w.name) for w in self.workloads]

    def select(self, selector: Mapping[str, str]) -> list[int]:
        """Indices (in inventory order) of the workloads whose labels contain `selector`."""
        lists = []
        for k, v in selector.items():
            lst = self.by_label[k].get(v)
            if not lst:
                return []
            lists.append(lst)
        if len(lists) == 1:
            return lists[0]
        lists.sort(key=len)
        keep = set(lists[0])
        for lst in lists[1:]:
            keep.intersection_update(lst)
            if not keep:
                return []
        return sorted(keep)


def resolve(
    site: Site, nodes: Sequence[Node], allocations: Allocations, readiness: Readiness | None = None
) -> tuple[tuple[ResolvedPort, ...], list[Diagnostic]]:
    """One ResolvedPort per port of every proxied service, sorted by service then port.

    `readiness` (the watch's): a selected workload that is not ready is no endpoint,
    unless its service publishes not-ready addresses (publishNotReadyAddresses), as
    the EndpointSlice controller and kube-proxy do; None: every workload is ready.

    Diagnostics are warnings (a selector matching nothing, a workload lacking a named
    targetPort, Endpoints ignored because the service has a selector) and errors: a
    workload without an address (`workload_address_problems`), and, only if the
    allocations are incomplete (a bug upstream), a service without its cluster IP.
    """
    with gc_paused():
        return _resolve(site, nodes, allocations, readiness)


def _only_ready(selected: list[int], ready: list[bool] | None, svc: Service) -> list[int]:
    if ready is None or svc.publish_not_ready:
        return selected
    return [i for i in selected if ready[i]]


def _resolve(
    site: Site, nodes: Sequence[Node], allocations: Allocations, readiness: Readiness | None
) -> tuple[tuple[ResolvedPort, ...], list[Diagnostic]]:
    diags: list[Diagnostic] = workload_address_problems(nodes, allocations)
    label_keys = {k for svc in site.services if svc.selector for k in svc.selector}
    index = _WorkloadIndex(nodes, allocations, label_keys)
    ready = index.ready_mask(readiness)
    manual = {m.key: m for m in site.endpoints}
    out: list[ResolvedPort] = []
    for svc in sorted(site.services, key=_service_order):
        if svc.type == "ExternalName":
            continue
        selected: list[int] | None = None
        if svc.selector:
            selected = index.select(svc.selector)
            if not selected:
                diags.append(
                    warning(
                        svc.source.file,
                        svc.source.line,
                        "spec.selector",
                        f"selects no workload on any node ({_fmt_selector(svc.selector)}); "
                        f"{svc.key} has no endpoints",
                    )
                )
            if svc.key in manual:
                m = manual[svc.key]
                diags.append(
                    warning(
                        m.source.file,
                        m.source.line,
                        "kind",
                        f"Endpoints {svc.key} are ignored: the service has a selector "
                        "(as in Kubernetes, its endpoints come from the selector)",
                    )
                )
        if not svc.proxied:
            continue
        if selected:
            selected = _only_ready(selected, ready, svc)
        addresses = _addresses(svc, allocations, diags)
        if addresses is None:
            continue
        cluster_ip, lb_ip = addresses
        for i, port in enumerate(svc.ports):
            if selected is not None:
                endpoints = _selected_endpoints(svc, i, port, selected, index, diags)
            elif svc.key in manual:
                endpoints = _manual_endpoints(manual[svc.key], port, index)
            else:
                endpoints = ()
            node_port = None
            if svc.has_node_ports:
                node_port = allocations.node_ports.get(node_port_key(svc, port), port.node_port)
            out.append(ResolvedPort(svc, port, cluster_ip, node_port, lb_ip, endpoints))
    return tuple(out), diags


def _service_order(svc: Service) -> tuple[str, str]:
    return (svc.namespace, svc.name)


def _fmt_selector(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _addresses(
    svc: Service, allocations: Allocations, diags: list[Diagnostic]
) -> tuple[str, str | None] | None:
    key = svc.key
    cluster_ip = allocations.cluster_ips.get(key) or svc.cluster_ip
    if not cluster_ip:
        diags.append(error(svc.source.file, svc.source.line, "spec.clusterIP", f"no cluster IP allocated for {key}"))
        return None
    lb_ip = None
    if svc.type == "LoadBalancer":
        lb_ip = allocations.load_balancer_ips.get(key) or svc.load_balancer_ip
    return cluster_ip, lb_ip


def _selected_endpoints(
    svc: Service,
    port_index: int,
    port: ServicePort,
    selected: list[int],
    index: _WorkloadIndex,
    diags: list[Diagnostic],
) -> tuple[Endpoint, ...]:
    addresses, keys, nodes = index.addresses, index.keys, index.nodes
    target = port.target_port
    # (address sort key, port, address, node): sorted as plain tuples, no key function.
    rows: list[tuple[bytes, int, str, str]]
    if isinstance(target, int):
        rows = [(keys[i], target, addresses[i], nodes[i]) for i in selected]
    else:
        rows = []
        lacking: list[int] = []
        proto = port.protocol
        workloads = index.workloads
        for i in selected:
            for wp in workloads[i].ports:
                if wp.name == target and wp.protocol == proto:
                    rows.append((keys[i], wp.port, addresses[i], nodes[i]))
                    break
            else:
                lacking.append(i)
        if lacking:
            diags.append(_lacking_warning(svc, port_index, port, [f"{nodes[i]}/{index.workloads[i].name}" for i in lacking]))
    rows.sort()
    out = []
    last = None
    for key, number, addr, node in rows:
        if (key, number) != last:  # one endpoint per address:port, whoever else runs it
            out.append(Endpoint(addr, number, node))
            last = (key, number)
    return tuple(out)


def _lacking_warning(svc: Service, port_index: int, port: ServicePort, lacking: list[str]) -> Diagnostic:
    n = len(lacking)
    more = f" and {n - _MAX_NAMED} more" if n > _MAX_NAMED else ""
    return warning(
        svc.source.file,
        port.line if port.line is not None else svc.source.line,
        f"spec.ports[{port_index}].targetPort",
        f"{n} selected workload{'s' if n != 1 else ''} lack{'s' if n == 1 else ''} a {port.protocol} port "
        f"named {port.target_port!r} and {'are' if n != 1 else 'is'} not an endpoint of {svc.key}: "
        f"{', '.join(lacking[:_MAX_NAMED])}{more}",
    )


def _manual_endpoints(m: ManualEndpoints, port: ServicePort, index: _WorkloadIndex) -> tuple[Endpoint, ...]:
    seen: dict[tuple[str, int], Endpoint] = {}
    node_of = index.node_of_address
    for subset in m.subsets:
        for spec in _matching_ports(subset.ports, port):
            for a in subset.addresses:
                if (a.ip, spec.port) not in seen:
                    seen[(a.ip, spec.port)] = Endpoint(a.ip, spec.port, a.node or node_of.get(a.ip))
    eps = list(seen.values())
    eps.sort(key=endpoint_sort_key)
    return tuple(eps)


def _matching_ports(specs: Iterable, port: ServicePort) -> list:
    """An Endpoints port belongs to the service port with the same name and protocol."""
    return [s for s in specs if s.name == port.name and s.protocol == port.protocol]


# --- headless services: DNS only ----------------------------------------------------


def headless_endpoints(
    site: Site, nodes: Sequence[Node], allocations: Allocations, readiness: Readiness | None = None
) -> dict[str, HeadlessEndpoints]:
    """"ns/name" -> its endpoints, for every headless service of the site.

    The same matching as `resolve` (selector and named targetPorts, or a hand-written
    Endpoints object, and `readiness`); its warnings are `resolve`'s business and are
    not repeated.
    Costs nothing when the site has no headless service.
    """
    headless = [s for s in site.services if s.headless and s.type != "ExternalName"]
    if not headless:
        return {}
    with gc_paused():
        label_keys = {k for svc in headless if svc.selector for k in svc.selector}
        index = _WorkloadIndex(nodes, allocations, label_keys)
        ready = index.ready_mask(readiness)
        manual = {m.key: m for m in site.endpoints}
        out: dict[str, HeadlessEndpoints] = {}
        ignored: list[Diagnostic] = []
        for svc in sorted(headless, key=_service_order):
            selected = _only_ready(index.select(svc.selector), ready, svc) if svc.selector else None
            ports: list[ResolvedPort] = []
            for i, port in enumerate(svc.ports):
                if selected is not None:
                    endpoints = _selected_endpoints(svc, i, port, selected, index, ignored)
                elif svc.key in manual:
                    endpoints = _manual_endpoints(manual[svc.key], port, index)
                else:
                    endpoints = ()
                ports.append(ResolvedPort(svc, port, "None", None, None, endpoints))
            if svc.ports:
                ips = {e.ip for rp in ports for e in rp.endpoints}
            elif selected is not None:
                ips = {index.addresses[i] for i in selected}
            elif svc.key in manual:
                ips = {a.ip for sub in manual[svc.key].subsets for a in sub.addresses}
            else:
                ips = set()
            addresses = tuple(sorted(ips, key=_ip_bytes))
            out[svc.key] = HeadlessEndpoints(addresses, tuple(ports))
        return out
