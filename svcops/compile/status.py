"""What `svcops status` shows: each service as `kubectl get svc -o wide` does, with its
endpoints and their readiness.

`service_statuses(site, nodes, allocations, readiness)` gives one `ServiceStatus` per
service (sorted by namespace, name): type, cluster IP (``None`` when headless),
external addresses (externalIPs, the load-balancer address, or an ExternalName's
name), ports as kubectl prints them (``80:30001/TCP``), and per port its endpoints:
every backend the selector (or an Endpoints object) gives, each with whether it is
ready (`Readiness`: its workload's probe, its node), why not, and whether it is in
the rules (a not-ready one is not, unless the service publishes not-ready addresses).

Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from svcops.compile.endpoints import headless_endpoints, resolve
from svcops.site.model import Allocations, Node, Readiness, ResolvedPort, Service, Site, node_port_key

__all__ = ["EndpointStatus", "PortStatus", "ServiceStatus", "service_statuses", "status_text", "status_json"]


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    ip: str
    port: int
    node: str | None
    ready: bool
    in_rules: bool
    why: str = ""


@dataclass(frozen=True, slots=True)
class PortStatus:
    name: str
    port: int
    protocol: str
    node_port: int | None
    target_port: int | str
    endpoints: tuple[EndpointStatus, ...]


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    key: str
    type: str
    cluster_ip: str | None
    external: tuple[str, ...]
    ports: tuple[PortStatus, ...]

    @property
    def ports_text(self) -> str:
        if not self.ports:
            return "<none>"
        return ",".join(f"{p.port}:{p.node_port}/{p.protocol}" if p.node_port else f"{p.port}/{p.protocol}" for p in self.ports)

    def ready_counts(self) -> tuple[int, int]:
        eps = {(e.ip, e.port) for p in self.ports for e in p.endpoints}
        ready = {(e.ip, e.port) for p in self.ports for e in p.endpoints if e.ready}
        return len(ready), len(eps)


def _workload_of(nodes: Sequence[Node], allocations: Allocations):
    """(node, address) -> the names of the workloads there (endpoints carry no name)."""
    out: dict[tuple[str, str], list[str]] = {}
    for n in nodes:
        node_addr = allocations.node_addresses.get(n.name) or n.address or n.ssh_host
        for w in n.workloads:
            out.setdefault((n.name, w.address or node_addr), []).append(w.name)
    return out


def service_statuses(
    site: Site, nodes: Sequence[Node], allocations: Allocations, readiness: Readiness | None
) -> list[ServiceStatus]:
    every, _ = resolve(site, nodes, allocations, None)
    kept, _ = resolve(site, nodes, allocations, readiness)
    in_rules = {(rp.service.key, rp.port.key): {(e.ip, e.port) for e in rp.endpoints} for rp in kept}
    headless_all = headless_endpoints(site, nodes, allocations, None)
    headless_kept = headless_endpoints(site, nodes, allocations, readiness)
    for key, h in headless_kept.items():
        for rp in h.ports:
            in_rules[(key, rp.port.key)] = {(e.ip, e.port) for e in rp.endpoints}
    where = _workload_of(nodes, allocations)
    r = readiness or Readiness()

    def endpoint(svc_key: str, rp: ResolvedPort, e) -> EndpointStatus:
        names = where.get((e.node, e.ip), []) if e.node else []
        down = [n for n in names if not r.ready(e.node, n)]
        why = ""
        if e.node in r.lost:
            why = "node lost"
        elif down:
            why = r.why.get(f"{e.node}/{down[0]}", "not ready")
        return EndpointStatus(e.ip, e.port, e.node, not why, (e.ip, e.port) in in_rules.get((svc_key, rp.port.key), set()), why)

    by_service: dict[str, list[ResolvedPort]] = {}
    for rp in every:
        by_service.setdefault(rp.service.key, []).append(rp)
    for key, h in headless_all.items():
        by_service[key] = list(h.ports)
    out = []
    for svc in sorted(site.services, key=lambda s: (s.namespace, s.name)):
        ports = []
        resolved = {rp.port.key: rp for rp in by_service.get(svc.key, [])}
        for p in svc.ports:
            rp = resolved.get(p.key)
            node_port = allocations.node_ports.get(node_port_key(svc, p), p.node_port) if svc.has_node_ports else None
            eps = tuple(endpoint(svc.key, rp, e) for e in rp.endpoints) if rp is not None else ()
            ports.append(PortStatus(p.name, p.port, p.protocol, node_port, p.target_port, eps))
        out.append(ServiceStatus(svc.key, svc.type, _cluster_ip(svc, allocations), _external(svc, allocations), tuple(ports)))
    return out


def _cluster_ip(svc: Service, allocations: Allocations) -> str | None:
    if svc.type == "ExternalName":
        return None
    if svc.headless:
        return "None"
    return allocations.cluster_ips.get(svc.key) or svc.cluster_ip


def _external(svc: Service, allocations: Allocations) -> tuple[str, ...]:
    if svc.type == "ExternalName":
        return (svc.external_name,) if svc.external_name else ()
    lb = allocations.load_balancer_ips.get(svc.key) or svc.load_balancer_ip if svc.type == "LoadBalancer" else None
    return tuple(dict.fromkeys([*([lb] if lb else []), *svc.external_ips]))


def status_text(statuses: Sequence[ServiceStatus], source: str) -> str:
    """The table (services, then each port's endpoints indented), and where the
    readiness came from (`source`)."""
    rows = [("NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "ENDPOINTS")]
    details: dict[int, list[str]] = {}
    for s in statuses:
        ready, total = s.ready_counts()
        eps = "<none>" if not total else f"{ready}/{total} ready"
        if s.type == "ExternalName":
            eps = "<dns only>"
        rows.append((s.key, s.type, s.cluster_ip or "<none>", ",".join(s.external) or "<none>", s.ports_text, eps))
        lines = []
        for p in s.ports:
            for e in p.endpoints:
                state = "ready" if e.ready else f"not ready ({e.why})"
                if not e.ready and e.in_rules:
                    state += ", kept: publishNotReadyAddresses"
                lines.append(f"    {p.port}/{p.protocol} -> {e.ip}:{e.port}  {e.node or '<outside>'}  {state}")
        details[len(rows) - 1] = lines
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [f"readiness: {source}"]
    for i, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        out += details.get(i, [])
    return "\n".join(out) + "\n"


def status_json(statuses: Sequence[ServiceStatus], source: str) -> dict:
    return {
        "version": 1,
        "readiness": source,
        "services": [
            {
                "name": s.key.split("/", 1)[1],
                "namespace": s.key.split("/", 1)[0],
                "type": s.type,
                "clusterIP": s.cluster_ip,
                "external": list(s.external),
                "ports": [
                    {
                        "name": p.name,
                        "port": p.port,
                        "protocol": p.protocol,
                        "nodePort": p.node_port,
                        "targetPort": p.target_port,
                        "endpoints": [
                            {"ip": e.ip, "port": e.port, "node": e.node, "ready": e.ready, "inRules": e.in_rules, "why": e.why or None}
                            for e in p.endpoints
                        ],
                    }
                    for p in s.ports
                ],
            }
            for s in statuses
        ],
    }
