"""The probes each node runs for its own workloads, as its agent takes them.

`node_probes` turns the readinessProbe of each workload on a node into the agent's
spec (`svcops.watch.agent`): the address to reach is the probe's ``host``, else the
workload's own address, else its node's (static or allocated), as the kubelet
probes the pod's IP. Keys are workload names: unique on a node.

Pure.
"""

from __future__ import annotations

from typing import Any

from svcops.site.model import Allocations, Node, Probe, Workload

__all__ = ["node_probes", "probe_spec"]


def probe_spec(probe: Probe, host: str) -> dict[str, Any]:
    """One probe as the agent reads it (JSON-ready)."""
    return {
        "kind": probe.kind,
        "host": probe.host or host,
        "port": probe.port,
        "path": probe.path,
        "scheme": probe.scheme,
        "headers": [list(h) for h in probe.headers],
        "command": list(probe.command),
        "initialDelay": probe.initial_delay,
        "period": probe.period,
        "timeout": probe.timeout,
        "successThreshold": probe.success_threshold,
        "failureThreshold": probe.failure_threshold,
    }


def workload_address(w: Workload, node: Node, allocations: Allocations) -> str:
    return w.address or allocations.node_addresses.get(node.name) or node.address or node.ssh_host


def node_probes(node: Node, allocations: Allocations) -> dict[str, dict[str, Any]]:
    """workload name -> its probe spec, for the workloads of `node` that have one."""
    return {
        w.name: probe_spec(w.readiness_probe, workload_address(w, node, allocations))
        for w in node.workloads
        if w.readiness_probe is not None
    }
