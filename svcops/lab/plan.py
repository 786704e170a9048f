"""The lab's plan: names, addresses, and every file and command text a lab host gets.

Pure functions of the node count and the lab's folder: no I/O, no clock, no processes.
The shell (``svcops.lab.shell``) writes these texts and runs them; keeping them here
lets the tests read exactly what a node would get, and keeps the shell short.

The lab's shape (fixed, so that the example site's addresses fit)::

      the machine                 netns svl-net (the "wire")          netns svl-nodeK
    +----------------+          +--------------------------+        +------------------+
    | svl-gw         |--veth----| uplink                   |        |                  |
    | 192.168.36.1/24|          |        br0 (bridge)      |--veth--| eth0             |
    +----------------+          | node1 node2 ... client   |        | 192.168.36.10+K  |
                                +--------------------------+        +------------------+

- The bridge lives in its own network namespace, ``svl-net``, joined to the machine by
  one veth pair: the machine sees a single link of ours, ``svl-gw``, carrying the
  gateway address 192.168.36.1/24. Nothing of the machine's own bridges, iptables or
  routes is touched; the connected route of ``svl-gw`` is how the machine reaches the
  nodes (SSH, status probes).
- Each host (``node1``..``nodeN`` and ``client``) has its own network namespace
  ``svl-<name>`` with ``eth0`` (the veth end; its peer in ``svl-net`` is a bridge port
  named like the host), its address in 192.168.36.0/24 and a default route via the
  gateway, so traffic to virtual addresses (cluster IPs) has a route and meets the node's
  own rules.
- Nothing leaves the machine: ``svl-gw`` does not forward (its ``forwarding`` sysctl is
  0), and a bridge-family nftables table inside ``svl-net`` (the lab's own namespace,
  not the machine's tables) drops IPv4 through the uplink whose other end is outside
  192.168.36.0/24, and all IPv6 through it. That guard holds even if someone later turns
  on forwarding for the whole machine.
- Each host also has its own mount namespace (an overlay of the machine's ``/etc`` with
  a per-host upper folder; a fresh tmpfs ``/root``, ``/run`` and ``/tmp``) and its own UTS
  namespace (hostname). A node runs its own sshd (key login only) and the demo HTTP
  backend on port 80 of its address; the client runs neither.
"""

from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterable, Mapping

import netaddr

SUBNET = "192.168.36.0/24"
PREFIX_LEN = 24
GATEWAY = "192.168.36.1"
CLIENT_ADDRESS = "192.168.36.2"
NODE_BASE = 10  # node K lives at 192.168.36.(10 + K)
# Node addresses stop below 192.168.36.240/28: the example site's load-balancer pool.
MAX_NODES = 229
DEFAULT_NODES = 3

NAME_PREFIX = "svl-"  # every namespace and machine-side link of the lab starts with it
LAB_NETNS = "svl-net"  # the namespace holding the bridge
HOST_LINK = "svl-gw"  # the machine's end of the uplink veth (carries GATEWAY)
UPLINK_PORT = "uplink"  # its peer: a bridge port inside LAB_NETNS
BRIDGE = "br0"  # inside LAB_NETNS, so the name cannot collide with the machine's
HOST_INTERFACE = "eth0"  # each host's own end of its veth, inside its namespace

DEFAULT_DIR = "/run/svcops-lab"  # tmpfs on Debian: gone at reboot, like the namespaces
DIR_ENV = "SVCOPS_LAB_DIR"

SSH_USER = "root"
BACKEND_PORT = 80
NFT_TABLE = "svcops_lab"

# Mount points each host gets in its own mount namespace (recorded in the state).
HOST_MOUNTS = ("/etc", "/root", "/run", "/tmp")

# Host keys of the machine that the node's /etc must not show (the node has its own).
MACHINE_HOST_KEYS = (
    "ssh_host_rsa_key",
    "ssh_host_rsa_key.pub",
    "ssh_host_ecdsa_key",
    "ssh_host_ecdsa_key.pub",
    "ssh_host_dsa_key",
    "ssh_host_dsa_key.pub",
)


@dataclass(frozen=True, slots=True)
class LabHost:
    """One host of the lab: a node (``nodeK``) or the client.

    ``netns`` is its network namespace (``ip netns`` name); ``port`` is the name of its
    veth peer, a port of the bridge inside ``svl-net``.
    """

    name: str
    role: str  # "node" | "client"
    index: int  # K for nodeK, 0 for the client
    address: str

    @property
    def netns(self) -> str:
        return NAME_PREFIX + self.name

    @property
    def port(self) -> str:
        return self.name

    @property
    def interface(self) -> str:
        return HOST_INTERFACE

    @property
    def is_node(self) -> bool:
        return self.role == "node"


@dataclass(frozen=True, slots=True)
class LabPaths:
    """Where the lab keeps its files: one folder (``/run/svcops-lab`` or $SVCOPS_LAB_DIR)."""

    root: str

    def _p(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    @property
    def state(self) -> str:
        return self._p("state.json")

    @property
    def key(self) -> str:
        return self._p("id_ed25519")

    @property
    def public_key(self) -> str:
        return self._p("id_ed25519.pub")

    @property
    def known_hosts(self) -> str:
        return self._p("known_hosts")

    @property
    def ssh_config(self) -> str:
        return self._p("ssh_config")

    @property
    def guard(self) -> str:
        return self._p("guard.nft")

    def host_dir(self, name: str) -> str:
        return self._p("hosts", name)

    def upper(self, name: str) -> str:
        """The host's /etc overlay upper folder: what the host changed in its /etc."""
        return self._p("hosts", name, "etc")

    def work(self, name: str) -> str:
        return self._p("hosts", name, "etc-work")

    def boot_script(self, name: str) -> str:
        return self._p("hosts", name, "boot.sh")

    def log(self, name: str) -> str:
        return self._p("hosts", name, "boot.log")


def check_node_count(n: int) -> str | None:
    """An error message when N nodes cannot be addressed in the lab segment, else None."""
    if n < 1 or n > MAX_NODES:
        return (
            f"--nodes must be between 1 and {MAX_NODES} (node K gets 192.168.36.(10+K); "
            "192.168.36.240/28 is kept for load-balancer addresses)"
        )
    return None


def check_lab_dir(path: str) -> str | None:
    """An error message when the lab folder cannot be used in mount options, else None."""
    if not path.startswith("/"):
        return f"{DIR_ENV}={path!r}: must be an absolute path"
    bad = [c for c in ",:\\ \t\n\"'" if c in path]
    if bad:
        # overlayfs options are comma- and colon-separated; the boot script is shell.
        return f"{DIR_ENV}={path!r}: must not contain {' '.join(repr(c) for c in bad)}"
    return None


def node_name(k: int) -> str:
    return f"node{k}"


def node_address(k: int) -> str:
    return str(netaddr.IPNetwork(SUBNET).network + NODE_BASE + k)


def lab_hosts(n: int) -> tuple[LabHost, ...]:
    """The client, then node1..nodeN, in that order."""
    client = LabHost("client", "client", 0, CLIENT_ADDRESS)
    return (client, *(LabHost(node_name(k), "node", k, node_address(k)) for k in range(1, n + 1)))


def host_from_name(name: str) -> LabHost | None:
    """The LabHost a name stands for (``client`` or ``nodeK``), else None."""
    if name == "client":
        return LabHost("client", "client", 0, CLIENT_ADDRESS)
    if name.startswith("node") and name[4:].isdigit() and not name[4:].startswith("0"):
        k = int(name[4:])
        if 1 <= k <= MAX_NODES:
            return LabHost(name, "node", k, node_address(k))
    return None


# --- inventory ------------------------------------------------------------------------


def workload_name(host: LabHost) -> str:
    return f"web-{host.name}"


def inventory_data(host: LabHost, paths: LabPaths) -> dict:
    """The pyinfra host data of one node (svcops_site is added by inventory/lab.py).

    Strict host-key checking against the lab's own known_hosts: pyinfra 3.10's default
    policy would accept new keys, so it is named explicitly. The agent and ~/.ssh keys
    stay out of it: only the lab key logs in.
    """
    return {
        "ssh_hostname": host.address,
        "ssh_user": SSH_USER,
        "ssh_key": paths.key,
        "ssh_known_hosts_file": paths.known_hosts,
        "ssh_strict_host_key_checking": "yes",
        "ssh_allow_agent": False,
        "ssh_look_for_keys": False,
        "svcops_address": host.address,
        "svcops_interface": host.interface,
        "svcops_labels": {"kubernetes.io/hostname": host.name, "svcops.io/lab": "true"},
        "svcops_workloads": [
            {
                "name": workload_name(host),
                "labels": {"app": "web"},
                "ports": [{"name": "http", "port": BACKEND_PORT}],
            }
        ],
    }


# --- files ----------------------------------------------------------------------------


def machine_id(name: str) -> str:
    """A stable machine-id per host name (32 hex digits, as systemd writes it)."""
    return hashlib.md5(f"svcops-lab/{name}".encode()).hexdigest()


def hosts_file(hosts: Iterable[LabHost], own: LabHost) -> str:
    """The host's /etc/hosts: localhost, itself, the gateway and every lab host."""
    lines = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{own.name}", "::1\tlocalhost ip6-localhost ip6-loopback", f"{GATEWAY}\tgateway"]
    lines += [f"{h.address}\t{h.name}" for h in hosts]
    return "\n".join(lines) + "\n"


def authorized_keys_path() -> str:
    return "/etc/ssh/svcops-lab_authorized_keys"


def sshd_config(host: LabHost) -> str:
    """The node's own sshd_config: key login as root, on the node's address only.

    No Include of the machine's sshd_config.d: the node's sshd is entirely the lab's.
    UseDNS/UsePAM off and a clean /root keep every command fast (pyinfra runs many).
    """
    return f"""\
# Written by `svcops lab up` for {host.name}: its own sshd, on its own address.
ListenAddress {host.address}:22
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile {authorized_keys_path()}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
MaxSessions 64
MaxStartups 64:30:128
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def ssh_client_config(hosts: Iterable[LabHost], paths: LabPaths) -> str:
    """An ssh_config for people: ``ssh -F /run/svcops-lab/ssh_config node1``."""
    out = ["# Written by `svcops lab up`: ssh -F THIS_FILE node1"]
    for h in hosts:
        if not h.is_node:
            continue
        out += [
            f"Host {h.name} {h.address}",
            f"  HostName {h.address}",
            f"  User {SSH_USER}",
            f"  IdentityFile {paths.key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {paths.known_hosts}",
            "  StrictHostKeyChecking yes",
            "  BatchMode yes",
            "",
        ]
    return "\n".join(out)


def known_hosts(entries: Iterable[tuple[LabHost, str]]) -> str:
    """known_hosts lines for (host, public key line): by address and by name."""
    lines = []
    for host, pub in entries:
        key_type, key_b64 = pub.split()[:2]
        lines.append(f"{host.address},{host.name} {key_type} {key_b64}")
    return "\n".join(lines) + ("\n" if lines else "")


# --- the network: ip -batch texts -----------------------------------------------------


def infra_batch() -> str:
    """``ip -batch`` on the machine: the wire namespace and the uplink veth pair.

    The machine's end stays down here: the shell first turns off its forwarding and
    IPv6 (sysctls of that one link), then brings it up.
    """
    return (
        f"netns add {LAB_NETNS}\n"
        f"link add {HOST_LINK} type veth peer name {UPLINK_PORT} netns {LAB_NETNS}\n"
        f"addr add {GATEWAY}/{PREFIX_LEN} dev {HOST_LINK}\n"
    )


def infra_wire_batch() -> str:
    """``ip -n svl-net -batch``: the bridge and its uplink port."""
    return (
        "link set lo up\n"
        f"link add {BRIDGE} type bridge stp_state 0 forward_delay 0\n"
        f"link set {BRIDGE} up\n"
        f"link set {UPLINK_PORT} master {BRIDGE} up\n"
    )


def hosts_batch(hosts: Iterable[LabHost]) -> str:
    """``ip -batch`` on the machine: each host's namespace and its veth pair.

    The veth is created with each end directly in its namespace (the host's ``eth0``
    and the bridge port in ``svl-net``), so no link of a host ever appears on the
    machine, not even for a moment, and the names cannot collide with the machine's.
    """
    out = []
    for h in hosts:
        out.append(f"netns add {h.netns}\n")
        out.append(f"link add {h.interface} netns {h.netns} type veth peer name {h.port} netns {LAB_NETNS}\n")
    return "".join(out)


def ports_batch(hosts: Iterable[LabHost]) -> str:
    """``ip -n svl-net -batch``: the hosts' veth peers join the bridge."""
    return "".join(f"link set {h.port} master {BRIDGE} up\n" for h in hosts)


def remove_ports_batch(hosts: Iterable[LabHost]) -> str:
    """``ip -n svl-net -batch``: remove hosts' bridge ports (their eth0 goes with them)."""
    return "".join(f"link del {h.port}\n" for h in hosts)


def host_net_batch(host: LabHost) -> str:
    """``ip -batch`` run inside the host's namespace by its boot script."""
    return (
        "link set lo up\n"
        f"addr add {host.address}/{PREFIX_LEN} dev {host.interface}\n"
        f"link set {host.interface} up\n"
        f"route add default via {GATEWAY}\n"
    )


def guard_ruleset() -> str:
    """The bridge-family nftables table in ``svl-net`` that keeps the lab on the machine.

    Only the uplink (towards the machine) is filtered: IPv4 whose other end lies outside
    the lab segment, and IPv6, go no further. Traffic between lab hosts is untouched.
    """
    return f"""\
table bridge {NFT_TABLE} {{
  chain guard {{
    type filter hook forward priority 0; policy accept;
    oifname "{UPLINK_PORT}" ether type ip ip daddr != {SUBNET} drop
    iifname "{UPLINK_PORT}" ether type ip ip saddr != {SUBNET} drop
    oifname "{UPLINK_PORT}" ether type ip6 drop
    iifname "{UPLINK_PORT}" ether type ip6 drop
  }}
}}
"""


# --- the boot script ------------------------------------------------------------------


def boot_command(host: LabHost, paths: LabPaths) -> list[str]:
    """The command that boots a host: into its netns, new mount and UTS namespaces, boot.sh.

    ``--propagation private``: nothing the host mounts reaches the machine, and nothing
    the machine mounts later (other ``ip netns add``) reaches the host.
    """
    return [
        "nsenter",
        f"--net=/run/netns/{host.netns}",
        "--",
        "unshare",
        "--mount",
        "--uts",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        paths.boot_script(host.name),
    ]


def boot_script(
    host: LabHost,
    paths: LabPaths,
    *,
    backend_script: str,
    python: str = "/usr/bin/python3",
    sshd: str = "/usr/sbin/sshd",
) -> str:
    """The shell script that turns fresh namespaces into a lab host.

    It runs inside the host's new mount and UTS namespaces and its network namespace,
    prints one line ``ready keeper=PID sshd=PID backend=PID`` on its standard output for
    ``svcops lab up``, and then becomes the host's keeper (``sleep infinity``): the
    process ``lab exec`` enters by PID and that holds the namespaces while the host lives.

    Order matters:
    - Mounts of namespace files copied from the machine (``/run/netns/*``, nsfs) are
      unmounted first: a copy would keep those namespaces alive after ``lab down``.
    - Files under the lab folder are opened (log, backend source) before ``/run`` and
      ``/tmp`` are covered by the host's own tmpfs, since the lab folder may live there.
    - The backend runs Debian's own python3 (``/root`` is covered by a fresh tmpfs: an
      interpreter living under the machine's /root would vanish) and reads its source
      from a file descriptor opened beforehand.
    """
    q = shlex.quote
    upper, work, log = paths.upper(host.name), paths.work(host.name), paths.log(host.name)
    lines = [
        "#!/bin/sh",
        f"# Written by `svcops lab up`: boots {host.name} inside its own namespaces.",
        "set -eu",
        "exec 3>&1",  # fd 3: the report line for `svcops lab up`
        f"exec >>{q(log)} 2>&1 </dev/null",
        f"echo \"boot {host.name} $$\"",
        f"ip -batch - <<'EOF'\n{host_net_batch(host)}EOF",
        f"echo {q(host.name)} > /proc/sys/kernel/hostname",
        "# Unmount copies of namespace files (ip netns, nsfs): they would outlive `lab down`.",
        "# /run/netns first, with all of them beneath it; then any others, in one umount.",
        "umount -l /run/netns 2>/dev/null || true",
        "ns_mounts=$(while read -r _dev mnt fstype _rest; do [ \"$fstype\" = nsfs ] && echo \"$mnt\"; done < /proc/self/mounts || true)",
        "[ -z \"$ns_mounts\" ] || umount -l $ns_mounts 2>/dev/null || true",
        f"mount -t overlay svcops-lab-etc -o lowerdir=/etc,upperdir={q(upper)},workdir={q(work)} /etc",
        "mount -t tmpfs -o mode=0700,size=64m svcops-lab-root /root",
    ]
    if host.is_node:
        lines.append(f"exec 4<{q(backend_script)}")
    lines += [
        "mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m svcops-lab-run /run",
        "mount -t tmpfs -o mode=1777,nosuid,nodev,size=256m svcops-lab-tmp /tmp",
        "mkdir -m 0755 /run/sshd",
    ]
    if host.is_node:
        lines += [
            f"{q(sshd)} -D -e -f /etc/ssh/sshd_config &",
            "sshd_pid=$!",
            f"{q(python)} -I -S - --address {host.address} --port {BACKEND_PORT} <&4 4<&- &",
            "backend_pid=$!",
            "exec 4<&-",
        ]
    else:
        lines += ["sshd_pid=", "backend_pid="]
    lines += [
        'echo "ready keeper=$$ sshd=$sshd_pid backend=$backend_pid" >&3',
        "exec 3>&-",
        "exec sleep infinity",
    ]
    return "\n".join(lines) + "\n"


def parse_ready(line: str) -> dict[str, int | None] | None:
    """Parse boot.sh's ``ready keeper=1 sshd=2 backend=3`` line (empty value: None)."""
    parts = line.split()
    if not parts or parts[0] != "ready":
        return None
    out: dict[str, int | None] = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        out[key] = int(value) if value.isdigit() else None
    if "keeper" not in out or out["keeper"] is None:
        return None
    return out


def etc_files(host: LabHost, hosts: Iterable[LabHost], lab_public_key: str) -> Mapping[str, str]:
    """Files written into the host's /etc overlay upper folder (path relative to /etc).

    The node's host key pair (``ssh/ssh_host_ed25519_key``) is written there too, by
    ssh-keygen; the machine's other host keys are hidden with overlay whiteouts.
    """
    files = {
        "hostname": host.name + "\n",
        "hosts": hosts_file(hosts, host),
        "machine-id": machine_id(host.name) + "\n",
        # The lab's own nameserver, the client (tests run a stand-in DNS server there):
        # the machine's resolv.conf names a server outside the lab, and svcops's DNS
        # (pdns-recursor) forwards to the node's previous nameservers, priming "." at start.
        "resolv.conf": f"nameserver {CLIENT_ADDRESS}\n",
    }
    if host.is_node:
        files["ssh/sshd_config"] = sshd_config(host)
        files[authorized_keys_path().removeprefix("/etc/")] = lab_public_key
    return files
