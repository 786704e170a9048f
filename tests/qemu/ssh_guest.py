"""A guest svcops can push to over SSH: Debian's kernel under qemu (TCG) with sshd.

The harness's guest (tests/qemu/harness.py) plus OpenSSH's sshd, dash as root's shell,
util-linux's setsid and flock, bash and coreutils' timeout (svcops's node guard), virtio-net, and qemu's
user network, restricted (the guest reaches nothing outside) with one forward: the
host's 127.0.0.1:PORT to the guest's sshd. Keys are made for each run: a host key
(written to a known_hosts file for strict checking) and a client key.

    with SshGuest(tmp) as g:          # boots, waits until sshd runs
        g.inventory(site, data)       # a pyinfra inventory file for `svcops apply -i`
        g.ssh("ipvsadm -S -n")        # a command in the guest
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import harness

SSH_MODULES = ("virtio_pci", "virtio_net")
# bash, flock and timeout: svcops's node guard and its steps (Debian has all three on every node).
SSH_BINARIES = (
    "/usr/sbin/sshd", "/usr/lib/openssh/sftp-server", "/usr/bin/setsid", "/usr/bin/dash",
    "/usr/bin/bash", "/usr/bin/flock", "/usr/bin/timeout",
)  # fmt: skip
NODE = "node1"
NODE_ADDRESS = "10.0.0.11"  # on the guest's c0, as in the harness's proof

SSHD_CONFIG = """\
Port 22
ListenAddress 0.0.0.0
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AuthorizedKeysFile /root/.ssh/authorized_keys
Subsystem sftp /usr/lib/openssh/sftp-server
PidFile /run/sshd.pid
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SshGuest:
    def __init__(self, tmp: Path, memory: int = 768, boot_timeout: float = 180) -> None:
        self.tmp, self.memory, self.boot_timeout = tmp, memory, boot_timeout
        self.port = _free_port()
        self.key = tmp / "id_ed25519"
        self.known_hosts = tmp / "known_hosts"
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._ready = threading.Event()

    # --- boot and power off -----------------------------------------------------------

    def __enter__(self) -> "SshGuest":
        harness.ensure_host_tools()
        missing = [b for b in SSH_BINARIES if not Path(b).exists()]
        if missing:
            raise harness.Unavailable(f"missing {', '.join(missing)} (openssh-server, util-linux, dash)")
        kernel = harness.ensure_kernel()
        host_key = self.tmp / "host_ed25519"
        for path in (self.key, host_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "svcops-qemu", "-f", str(path)], check=True)
        host_pub = (host_key.with_suffix(".pub")).read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        payload = self.tmp / "payload"
        payload.mkdir()
        (payload / "none").write_text("")
        files = {
            "/etc/ssh/sshd_config": SSHD_CONFIG,
            "/etc/ssh/ssh_host_ed25519_key": host_key.read_text(),
            "/root/.ssh/authorized_keys": self.key.with_suffix(".pub").read_text(),
            "/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n",
            "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
            "/etc/shadow": "root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n",
            "/etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
        }
        initrd = harness.build_initramfs(
            kernel, payload, self.tmp / "initrd-ssh.gz", init=harness.HERE / "ssh_init.sh",
            extra_modules=SSH_MODULES, extra_binaries=SSH_BINARIES, files=files,
        )  # fmt: skip
        net = [
            "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22",
            "-device", "virtio-net-pci,netdev=n0,romfile=",
        ]  # fmt: skip
        argv = harness.qemu_argv(kernel, initrd, self.memory, net)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(self.boot_timeout) or not self._login_works():
            self.__exit__(None, None, None)
            raise RuntimeError("the SSH guest did not come up:\n" + "\n".join(self.lines[-40:]))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(line)
            if "SVCOPS READY" in line:
                self._ready.set()

    def _login_works(self, seconds: float = 60) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.ssh("true", check=False, timeout=30).returncode == 0:
                return True
            time.sleep(1)
        return False

    def __exit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.ssh("touch /tmp/poweroff", check=False, timeout=20)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # our own qemu, by its PID
                self.proc.wait(10)
        self.proc = None

    # --- using it -------------------------------------------------------------------------

    def ssh(self, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        argv = [
            "ssh", "-p", str(self.port), "-i", str(self.key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=20", "root@127.0.0.1", command,
        ]  # fmt: skip
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"guest: {command}: exit {r.returncode}: {r.stderr.strip()}")
        return r

    def inventory(self, site: Path, data: dict) -> Path:
        """A pyinfra inventory file with this guest as node1 (`data` added to its host data)."""
        host = {
            "ssh_hostname": "127.0.0.1", "ssh_port": self.port, "ssh_user": "root", "ssh_key": str(self.key),
            "ssh_known_hosts_file": str(self.known_hosts), "ssh_strict_host_key_checking": "yes",
            "svcops_address": NODE_ADDRESS, "svcops_interface": "c0", "svcops_site": str(site), **data,
        }  # fmt: skip
        path = self.tmp / "inventory.py"
        path.write_text(f"nodes = [({NODE!r}, {host!r})]\n")
        return path

    def get(self, address: str, port: int, count: int, where: str = "client") -> list[str]:
        """`count` HTTP requests from the guest's `where` namespace: the answers."""
        script = f"for i in $(seq {count}); do ip netns exec {where} /tmp/get {address} {port}; done"
        return self.ssh(script, timeout=300).stdout.splitlines()
