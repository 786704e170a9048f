"""An example pyinfra inventory: three nodes, each running one nginx backend (the seed's
my-deploy). The addresses are those `svcops lab up` gives its nodes, so the example
site's svcops.lock fits both this inventory and inventory/lab.py.

svcops reads each host's data (see README, "Host data"):
  svcops_address    the node's static address (inside nodeNetwork.cidr)
  svcops_interface  the interface it goes on
  svcops_workloads  the backends the node runs: labels and named ports
"""


def _node(name: str, address: str) -> tuple[str, dict]:
    return (
        name,
        {
            "ssh_hostname": address,
            "svcops_interface": "eth0",
            "svcops_address": address,
            "svcops_labels": {"zone": "lab"},
            "svcops_workloads": [
                {
                    "name": f"my-deploy-{name}",
                    "labels": {"app": "web"},
                    "ports": [{"name": "http", "port": 80}],
                }
            ],
        },
    )


nodes = [
    _node("node1", "192.168.36.11"),
    _node("node2", "192.168.36.12"),
    _node("node3", "192.168.36.13"),
]
