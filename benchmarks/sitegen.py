"""A synthetic site for benchmarks: N services x E endpoints over M nodes.

Service i selects the workloads labelled app=svc-<i>; its E workloads sit on E
different nodes, each with its own address (as pods have), port "http" 8080.
The mix of types and policies is fixed, so every run renders the same thing:
about 75% ClusterIP, 15% NodePort, 10% LoadBalancer; every 20th service uses
ClientIP affinity, every 25th externalTrafficPolicy Local.
"""

from __future__ import annotations

from pathlib import Path

import yaml

PER_FILE = 100


def service_doc(i: int) -> dict:
    kind = "LoadBalancer" if i % 10 == 0 else "NodePort" if i % 10 in (1, 2) and i % 20 != 12 else "ClusterIP"
    spec: dict = {
        "type": kind,
        "selector": {"app": f"svc-{i}"},
        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
    }
    if i % 20 == 5:
        spec["sessionAffinity"] = "ClientIP"
    if kind != "ClusterIP" and i % 25 == 0:
        spec["externalTrafficPolicy"] = "Local"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": f"ns-{i % 50}"},
        "spec": spec,
    }


def write_site(root: Path, services: int) -> None:
    (root / "services").mkdir(parents=True, exist_ok=True)
    (root / "svcops.yaml").write_text(
        yaml.safe_dump(
            {
                "serviceCIDR": "10.96.0.0/12",
                "nodePortRange": "30000-32767",
                "loadBalancerPools": [{"name": "default", "addresses": ["100.64.0.0/20"]}],
                "nodeNetwork": {"cidr": "10.0.0.0/16", "gateway": "10.0.0.1", "dnsServers": ["10.0.0.1"]},
            }
        )
    )
    for f in range(0, services, PER_FILE):
        docs = [service_doc(i) for i in range(f, min(f + PER_FILE, services))]
        (root / "services" / f"part-{f // PER_FILE:04d}.yaml").write_text(
            yaml.safe_dump_all(docs, sort_keys=False)
        )


def hosts(services: int, endpoints: int, nodes: int) -> list[tuple[str, dict]]:
    """pyinfra-style (name, host data) pairs."""
    workloads: list[list[dict]] = [[] for _ in range(nodes)]
    n = 0
    for i in range(services):
        for j in range(endpoints):
            node = (i + j * (nodes // endpoints or 1)) % nodes
            n += 1
            # 10.128.0.0/10 holds every workload address: one per workload, as pods have.
            addr = f"10.{128 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"
            workloads[node].append(
                {"name": f"svc-{i}-{j}", "address": addr, "labels": {"app": f"svc-{i}"},
                 "ports": [{"name": "http", "port": 8080}]}
            )
    return [
        (
            f"node{k + 1}",
            {
                "ssh_hostname": f"10.0.{k // 200}.{k % 200 + 10}",
                "svcops_address": f"10.0.{k // 200}.{k % 200 + 10}",
                "svcops_interface": "eth0",
                "svcops_workloads": workloads[k],
            },
        )
        for k in range(nodes)
    ]
