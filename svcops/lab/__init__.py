"""The lab: N Debian nodes and a client on one machine, to try svcops on for real.

``svcops lab up [--nodes N] | down | status | exec HOST -- CMD``. Each host lives in
its own network, mount and UTS namespaces on a shared bridge (192.168.36.0/24), with
its own /etc, a fresh /root, /run and /tmp, its own sshd and (on nodes) a demo HTTP
backend. ``inventory/lab.py`` lists the nodes for pyinfra and svcops.

Modules:
  plan     pure: names, addresses, every file and command text of the lab
  state    the state file (state.json) and the processes it records
  shell    the imperative part: checks, ip/nsenter/unshare/ssh-keygen, boot, probes, down
  backend  the demo HTTP server (stdlib only; runs inside the nodes)
  cli      the ``lab`` sub-command: ``register(subparsers)``
"""

from .plan import CLIENT_ADDRESS, DEFAULT_DIR, DIR_ENV, GATEWAY, SUBNET, node_address

__all__ = ["CLIENT_ADDRESS", "DEFAULT_DIR", "DIR_ENV", "GATEWAY", "SUBNET", "node_address"]
