#!/usr/bin/env bash
# The main job, set-up included: `bash scripts/demo.sh` (as root).
# Validates the example site (the seed's walkthrough), plans it against the example
# inventory and shows what node1 gets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
site=examples/walkthrough
inv=inventory/example.py
run() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
run svcops validate -i "$inv" "$site"
run svcops plan -i "$inv" "$site"
run svcops render -i "$inv" --node node1 "$site"
cat <<TXT

Look around:
  svcops plan -i $inv --json $site
  svcops render -i $inv --node node2 --only iptables $site | iptables-restore --test --noflush
  \$EDITOR $site/services/nginx.yaml && svcops validate $site
TXT
