"""An example pyinfra inventory: the seed's three nodes, each running one nginx backend.

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
    _node("node1", "192.168.36.79"),
    _node("node2", "192.168.36.80"),
    _node("node3", "192.168.36.82"),
]
