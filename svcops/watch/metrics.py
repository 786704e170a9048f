"""The watch's Prometheus metrics (prometheus-client), on the address `--metrics` names.

    svcops_watch_node_up{node}                        1 while the node answers, 0 when lost
    svcops_watch_workload_ready{node,workload}        1 ready, 0 not (workloads with a probe)
    svcops_watch_probe_transitions_total{node,workload,ready}
    svcops_watch_endpoints{service}                   ready endpoints in the rules, all ports
    svcops_watch_pushes_total{result}                 ok | failed (a push with a node failing)
    svcops_watch_push_seconds                         event to every node done (histogram)
    svcops_watch_push_errors_total{node}
    svcops_watch_errors_total{kind}                   reload | agent | connect
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics", "parse_address"]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` -> (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not an address to listen on: HOST:PORT, such as 127.0.0.1:9753")
    return host, int(port)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.node_up = Gauge("svcops_watch_node_up", "Whether the node answers (1) or is lost (0)", ["node"], registry=r)
        self.ready = Gauge("svcops_watch_workload_ready", "Whether the workload's readinessProbe passes", ["node", "workload"], registry=r)
        self.transitions = Counter(
            "svcops_watch_probe_transitions_total", "Readiness transitions reported by the nodes", ["node", "workload", "ready"], registry=r
        )
        self.endpoints = Gauge("svcops_watch_endpoints", "Ready endpoints of the service in the rules pushed, all ports", ["service"], registry=r)
        self.pushes = Counter("svcops_watch_pushes_total", "Pushes to the nodes", ["result"], registry=r)
        self.push_seconds = Histogram(
            "svcops_watch_push_seconds",
            "Seconds from the event to every node pushed",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30),
            registry=r,
        )
        self.push_errors = Counter("svcops_watch_push_errors_total", "Nodes a push failed on", ["node"], registry=r)
        self.errors = Counter("svcops_watch_errors_total", "Errors of the watch itself", ["kind"], registry=r)
        self._services: set[str] = set()

    def serve(self, address: str) -> None:
        host, port = parse_address(address)
        start_http_server(port, addr=host, registry=self.registry)

    def set_endpoints(self, counts: Iterable[tuple[str, int]]) -> None:
        seen = set()
        for service, n in counts:
            self.endpoints.labels(service).set(n)
            seen.add(service)
        for gone in self._services - seen:
            self.endpoints.remove(gone)
        self._services = seen
