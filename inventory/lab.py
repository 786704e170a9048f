"""The lab's pyinfra inventory: the nodes of `svcops lab up`, as they are right now.

    svcops lab up
    pyinfra -y inventory/lab.py deploys/services.py
    svcops plan -i inventory/lab.py

It reads the lab's state file (/run/svcops-lab/state.json, or $SVCOPS_LAB_DIR/state.json)
and lists node1..nodeN in the group ``nodes``. The client is not a node: it is not
listed (`svcops lab exec client -- ...` reaches it). When the lab is down the group is
empty and a message on stderr says so.

Each node's host data (written by `svcops lab up`):
  ssh_hostname, ssh_user (root), ssh_key (the lab's generated key),
  ssh_known_hosts_file (the lab's known_hosts: every node's host key, written by
  `lab up`), ssh_strict_host_key_checking "yes" (pyinfra would otherwise accept new keys)
  svcops_address    the node's address (192.168.36.10+K)
  svcops_interface  eth0 (the node's veth)
  svcops_labels     {"kubernetes.io/hostname": "nodeK", "svcops.io/lab": "true"}
  svcops_workloads  [{name: web-nodeK, labels: {app: web}, ports: [{name: http, port: 80}]}]:
                    the demo backend every node runs
  svcops_site       the example site, examples/walkthrough (absolute path)

Standalone on purpose (json and os only): pyinfra executes this file as it is.
"""

import json as _json
import os as _os
import sys as _sys

_LAB_DIR = _os.environ.get("SVCOPS_LAB_DIR") or "/run/svcops-lab"
_STATE = _os.path.join(_LAB_DIR, "state.json")
_SITE = _os.path.normpath(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "..", "examples", "walkthrough"))


def _lab_nodes():
    try:
        with open(_STATE, encoding="utf-8") as f:
            state = _json.load(f)
    except FileNotFoundError:
        print(f"inventory/lab.py: the lab is down (no {_STATE}): run `svcops lab up`", file=_sys.stderr)
        return []
    except (OSError, ValueError) as e:
        print(f"inventory/lab.py: cannot read {_STATE}: {e}", file=_sys.stderr)
        return []
    if state.get("status") != "up":
        print(f"inventory/lab.py: the lab is not up (status {state.get('status')!r}): run `svcops lab up`", file=_sys.stderr)
        return []
    hosts = state.get("hosts", {})
    out = []
    for name in state.get("nodes", []):
        data = dict((hosts.get(name) or {}).get("inventory") or {})
        if not data:
            continue
        data["svcops_site"] = _SITE
        out.append((name, data))
    if not out:
        print(f"inventory/lab.py: the lab has no nodes ({_STATE}): run `svcops lab up`", file=_sys.stderr)
    return out


nodes = _lab_nodes()
