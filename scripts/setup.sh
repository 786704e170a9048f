#!/usr/bin/env bash
# Installs what svcops and its tests need on a Debian machine, as root:
# the kernel tools svcops drives, sshd for the lab, and a virtualenv (.venv) holding svcops.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (apt-get, network namespaces and iptables need it)" >&2
    exit 1
fi

packages=(iptables nftables ipset ipvsadm iproute2 iputils-arping conntrack openssh-server openssh-client
          curl python3 python3-venv python3-pip pdns-recursor dash util-linux systemd
          qemu-system-x86 busybox-static cpio)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "setup: ready ($(.venv/bin/svcops --version))"
