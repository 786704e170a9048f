#!/usr/bin/env bash
# The main job, set-up included: `bash scripts/demo.sh` (as root).
# Brings up the lab (3 Debian nodes and a client in network namespaces, each node with
# its own sshd and an HTTP backend), applies the example site (the seed's walkthrough)
# over SSH with pyinfra, and shows the seed's demonstration: requests to the ClusterIP
# and to the NodePort, answered by different backends in turn.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
site=examples/walkthrough
inv=inventory/lab.py
run() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

run svcops lab up --nodes 3
run svcops validate -i "$inv" "$site"
run svcops plan -i "$inv" "$site"
run svcops apply -i "$inv" -y "$site"

cluster_ip=$(awk '$1 == "default/my-deploy:" {print $2}' "$site/svcops.lock")
printf '\n\033[1mThe ClusterIP %s:8000, from node1 (as `curl 10.1.11.83:8000` in the seed):\033[0m\n' "$cluster_ip"
for i in $(seq 9); do
    svcops lab exec node1 -- curl -s --max-time 2 "http://$cluster_ip:8000/"
done
printf '\n\033[1mThe same service by name, from node2 (as `curl my-deploy.default.svc:8000` in the seed):\033[0m\n'
svcops lab exec node2 -- getent hosts my-deploy.default.svc.cluster.local
for i in $(seq 3); do
    svcops lab exec node2 -- curl -s --max-time 2 "http://my-deploy.default.svc:8000/"
done
printf '\n\033[1mThe NodePort 30001 on every node, from the client:\033[0m\n'
for node in 192.168.36.11 192.168.36.12 192.168.36.13; do
    for i in 1 2 3; do
        printf '%s:30001 -> ' "$node"
        svcops lab exec client -- curl -s --max-time 2 "http://$node:30001/"
    done
done

cat <<TXT

Each answer names the backend that served it: the same address, spread over the three
nodes' backends. Look around:
  svcops lab status
  svcops lab exec node1 -- iptables-save          # svcops's chains: SVCOPS-*
  svcops render -i $inv --node node1 $site        # exactly what node1 got
  svcops plan -i $inv $site                       # allocations and per-node summary
  svcops apply -i $inv --dry $site                # nothing to change now
  svcops lab down                                 # remove everything the lab made
TXT
