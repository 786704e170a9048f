#!/usr/bin/env python3
"""Prove svcops's IPVS mode in a real Debian kernel, under qemu software emulation.

This machine's kernel has no IPVS and no dummy interfaces, so the proof boots Debian's
own cloud kernel (the package linux-image-cloud-amd64 depends on) with qemu TCG and a
small initramfs holding busybox, ipvsadm, ipset, iptables (nft), iproute2, the kernel
modules they need, and the payloads svcops renders. The guest's /init (init.sh here):

1. loads the modules (in dependency order, computed here from their .modinfo);
2. for every golden scenario (tests/golden/ipvs/), in its own network namespace,
   applies the ipset payload, the iptables payload and the ipvsadm payload with the
   real `ipset restore`, `iptables-restore --noflush` and `ipvsadm-restore`, and prints
   `ipvsadm-save -n` back;
3. turns itself into "node1" of a small site (`proof_site`): the dummy interface with
   the virtual addresses, the rendered payloads, a backend on the node's own address
   and one in a namespace (another node's workload address), a client namespace on the
   node's segment; sends requests to cluster IPs, node ports and a load-balancer IP from
   the node and from the client, and prints who answered;
4. powers off.

Run it by hand (as root; downloads into the cache on first use):

    .venv/bin/python tests/qemu/harness.py [--cache /var/cache/svcops-qemu] [--timeout 300]

tests/qemu/test_ipvs_qemu.py runs the same and checks the report. Everything built goes to
the cache directory (the kernel package) and a temporary directory (the initramfs);
nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
GOLDEN = TESTS / "golden" / "ipvs"

DEFAULT_CACHE = Path(os.environ.get("SVCOPS_QEMU_CACHE", "/var/cache/svcops-qemu"))
KERNEL_META = "linux-image-cloud-amd64"
HOST_PACKAGES = {"qemu-system-x86_64": "qemu-system-x86", "busybox": "busybox-static", "cpio": "cpio"}
GUEST_TOOLS = ("/usr/sbin/ipvsadm", "/usr/sbin/ipset", "/usr/sbin/xtables-nft-multi", "/usr/sbin/ip", "/usr/sbin/conntrack")
GUEST_SCRIPTS = ("/usr/sbin/ipvsadm-restore", "/usr/sbin/ipvsadm-save")
XTABLES_DIR = Path("/usr/lib/x86_64-linux-gnu/xtables")

# The modules the guest needs (their dependencies are added). IPVS and its schedulers,
# ipset and the set types svcops uses, iptables on nf_tables with the matches and
# targets of the payload, and the links of the proof's topology.
MODULES = (
    "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_sh", "ip_vs_dh", "ip_vs_sed", "ip_vs_nq",
    "ip_set", "ip_set_hash_ip", "ip_set_hash_ipport", "ip_set_hash_ipportip", "ip_set_hash_ipportnet",
    "ip_set_bitmap_port", "xt_set",
    "nf_tables", "nft_compat", "nft_chain_nat", "nft_ct", "nft_masq", "nft_reject_ipv4", "nf_conntrack", "nf_nat",
    "nf_conntrack_netlink",
    "xt_addrtype", "xt_comment", "xt_conntrack", "xt_mark", "xt_MASQUERADE", "xt_tcpudp", "xt_sctp", "xt_nat",
    "ipt_REJECT", "xt_multiport", "xt_statistic", "xt_recent",
    "dummy", "veth",
)  # fmt: skip


class Unavailable(Exception):
    """The host cannot run the proof (packages cannot be installed or downloaded)."""


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kw)


# --- host tools and the kernel --------------------------------------------------------


def ensure_host_tools() -> None:
    """qemu, a static busybox and cpio, installed with apt-get when missing."""
    missing = [pkg for binary, pkg in HOST_PACKAGES.items() if not shutil.which(binary)]
    missing += [t for t in GUEST_TOOLS + GUEST_SCRIPTS if not Path(t).exists()]
    if not missing:
        return
    pkgs = sorted({HOST_PACKAGES.get(Path(m).name, m) for m in missing if not m.startswith("/")})
    pkgs += sorted({"ipvsadm" if "ipvsadm" in m else "ipset" if "ipset" in m else "iptables" if "xtables" in m
                    else "conntrack" if "conntrack" in m else "iproute2" for m in missing if m.startswith("/")})  # fmt: skip
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"missing {', '.join(pkgs)} and cannot install them (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs], env=env, timeout=900)
    if r.returncode != 0:
        _run(["apt-get", "update", "-qq"], env=env, timeout=600)
        r = _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs], env=env, timeout=900)
    if r.returncode != 0:
        raise Unavailable(f"apt-get install {' '.join(pkgs)} failed: {r.stderr.strip()[-500:]}")


@dataclass(frozen=True)
class Kernel:
    vmlinuz: Path
    modules: Path  # .../lib/modules/<version>
    version: str


def ensure_kernel(cache: Path = DEFAULT_CACHE) -> Kernel:
    """Debian's cloud kernel, downloaded (apt-get download) and unpacked into `cache`."""
    cache.mkdir(parents=True, exist_ok=True)
    found = _unpacked_kernel(cache)
    if found:
        return found
    r = _run(["apt-cache", "depends", KERNEL_META], timeout=120)
    pkg = next(iter(re.findall(r"Depends:\s*(linux-image-\S+)", r.stdout)), None)
    if pkg is None:
        raise Unavailable(f"apt-cache knows no {KERNEL_META} dependency: {r.stderr.strip() or r.stdout.strip()}")
    r = _run(["apt-get", "download", pkg], cwd=cache, timeout=600)
    debs = sorted(cache.glob(f"{pkg}_*.deb"))
    if not debs:
        raise Unavailable(f"apt-get download {pkg} failed: {r.stderr.strip()[-500:]}")
    unpack = cache / "root"
    r = _run(["dpkg-deb", "-x", str(debs[-1]), str(unpack)], timeout=300)
    if r.returncode != 0:
        raise Unavailable(f"dpkg-deb -x {debs[-1].name} failed: {r.stderr.strip()}")
    found = _unpacked_kernel(cache)
    if not found:
        raise Unavailable(f"{debs[-1].name} holds no vmlinuz and modules")
    return found


def _unpacked_kernel(cache: Path) -> Kernel | None:
    for vmlinuz in sorted((cache / "root" / "boot").glob("vmlinuz-*")):
        version = vmlinuz.name[len("vmlinuz-") :]
        for base in (cache / "root" / "lib" / "modules", cache / "root" / "usr" / "lib" / "modules"):
            if (base / version).is_dir():
                return Kernel(vmlinuz, base / version, version)
    return None


def _modinfo_depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    m = re.search(rb"\x00depends=([^\x00]*)\x00", data)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def module_order(modules: Path, wanted=MODULES) -> list[Path]:
    """The .ko files of `wanted` and everything they depend on, dependencies first."""
    index = {p.name.split(".ko")[0].replace("-", "_"): p for p in modules.rglob("*.ko*")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:
            return  # built into the kernel
        for dep in _modinfo_depends(path):
            visit(dep)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


# --- the initramfs --------------------------------------------------------------------


def _libs(binary: Path) -> list[Path]:
    r = _run(["ldd", str(binary)])
    out = []
    for line in r.stdout.splitlines():
        m = re.search(r"(/\S+)\s*\(0x", line)
        if m:
            out.append(Path(m.group(1)))
    return out


def _copy(src: Path, root: Path, dest: str | None = None) -> None:
    target = root / (dest or str(src)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copy2(src.resolve(), target)


def build_initramfs(
    kernel: Kernel,
    payload: Path,
    out: Path,
    init: Path = HERE / "init.sh",
    extra_modules: tuple[str, ...] = (),
    extra_binaries: tuple[str, ...] = (),
    files: dict[str, str] | None = None,
) -> Path:
    """A gzipped newc cpio with busybox, the tools and their libraries, the modules and
    `payload`; `init` (a busybox sh script) is its /init. `extra_modules`,
    `extra_binaries` (with their libraries) and `files` (guest path -> text, written
    last) add to it."""
    with tempfile.TemporaryDirectory(prefix="svcops-initramfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "usr/bin", "usr/sbin", "usr/lib/x86_64-linux-gnu", "usr/lib64", "etc", "modules"):
            (root / d).mkdir(parents=True, exist_ok=True)
        # Debian's merged /usr: /lib and /lib64 are links, so ldd's paths work as they are.
        (root / "lib").symlink_to("usr/lib")
        (root / "lib64").symlink_to("usr/lib64")
        _copy(Path(shutil.which("busybox") or "/usr/bin/busybox"), root, "/bin/busybox")
        shutil.copy2(init, root / "init")
        (root / "init").chmod(0o755)
        for shared in ("prelude.sh", "topology.sh"):
            shutil.copy2(HERE / shared, root / shared)
        binaries = [Path(t) for t in GUEST_TOOLS + tuple(extra_binaries)] + sorted(XTABLES_DIR.glob("*.so"))
        for b in binaries:
            _copy(b, root, str(b))
            for lib in _libs(b):
                _copy(lib, root, "/usr" + str(lib) if not str(lib).startswith("/usr/") else str(lib))
        for s in GUEST_SCRIPTS:
            _copy(Path(s), root)
        for name in ("iptables", "iptables-restore", "iptables-save", "iptables-nft"):
            (root / "usr/sbin" / name).symlink_to("xtables-nft-multi")
        (root / "etc/passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
        (root / "etc/group").write_text("root:x:0:\n")
        (root / "etc/protocols").write_text(Path("/etc/protocols").read_text() if Path("/etc/protocols").exists() else "")
        order = module_order(kernel.modules, MODULES + tuple(extra_modules))
        for ko in order:
            shutil.copy2(ko, root / "modules" / ko.name)
        (root / "modules" / "order").write_text("".join(ko.name + "\n" for ko in order))
        shutil.copytree(payload, root / "payload")
        for path, text in (files or {}).items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        listing = subprocess.run(
            ["sh", "-c", "find . -print0 | cpio --null -o -H newc --quiet"], cwd=root, capture_output=True, timeout=300
        )
        if listing.returncode != 0:
            raise RuntimeError(f"cpio failed: {listing.stderr!r}")
        out.write_bytes(gzip.compress(listing.stdout, compresslevel=1))
    return out


# --- the payloads -----------------------------------------------------------------------

# The proof site: node1 (10.0.0.11) runs web-1 on its own address; web-2 (10.244.2.7,
# node2's workload) sits in a namespace behind node1. Allocations as render_fixtures
# makes them: cluster IPs 10.96.0.10+i, node ports 30080+, LB IPs 192.0.2.1+i.
PROOF_NODE = "node1"
PROOF_NODE_ADDRESS = "10.0.0.11"


def proof_site():
    """(services, resolved ports, cluster) of the proof."""
    sys.path.insert(0, str(TESTS))
    sys.path.insert(0, str(ROOT))
    import render_fixtures as F

    from svcops.compile.endpoints import resolve
    from svcops.site.model import ServicePort

    services = (
        F.service("web", F.HTTP, type="NodePort"),  # 10.96.0.10, node port 30080
        F.service("sticky", F.HTTP, session_affinity="ClientIP", affinity_timeout=600),  # 10.96.0.11
        F.service("closed", F.HTTP, type="LoadBalancer", load_balancer_source_ranges=("203.0.113.0/24",)),
        # ^ 10.96.0.12, node port 30081, LB 192.0.2.3
        F.service("lonely", F.HTTP, selector={"app": "missing"}),  # 10.96.0.13: no endpoints
        F.service("local", F.HTTP, type="NodePort", external_traffic_policy="Local",
                  annotations={"svcops.io/ipvs-scheduler": "wrr"}),  # 10.96.0.14, node port 30082
        F.service("udp", ServicePort("u", "UDP", 5353, 5353), selector=None),
        # ^ 10.96.0.15: a UDP virtual server, its endpoints from `udp_endpoints`
    )  # fmt: skip
    ports, _ = resolve(F.site(services, (udp_endpoints(UDP_ENDPOINTS),)), F.nodes(), F.allocations(services))
    return services, ports, F.CLUSTER


# The UDP service's endpoints: node1 itself and web-2's address; the update drops web-2's
# (its conntrack entries must go with it: svcops.render.conntrack).
UDP_ENDPOINTS = ("10.0.0.11", "10.244.2.7")


def udp_endpoints(addresses: tuple[str, ...]):
    from svcops.site.model import EndpointAddress, EndpointPortSpec, EndpointSubset, ManualEndpoints, Source

    subset = EndpointSubset(tuple(EndpointAddress(a) for a in addresses), (EndpointPortSpec("u", 5353, "UDP"),))
    return ManualEndpoints("default", "udp", (subset,), Source("endpoints/udp.yaml", 1))


# label, requests, from where, address, port; expectations are in tests/qemu/test_ipvs_qemu.py.
PROBES = (
    ("node-cluster-ip", 6, "node", "10.96.0.10", 80),
    ("client-cluster-ip", 6, "client", "10.96.0.10", 80),
    ("client-node-port", 6, "client", "10.0.0.11", 30080),
    ("client-sticky", 6, "client", "10.96.0.11", 80),
    ("client-lb-closed", 2, "client", "192.0.2.3", 80),
    ("client-lb-closed-node-port", 4, "client", "10.0.0.11", 30081),
    ("client-no-endpoints", 2, "client", "10.96.0.13", 80),
    ("client-other-port", 2, "client", "10.96.0.10", 81),
    ("client-local-node-port", 6, "client", "10.0.0.11", 30082),
)


def update_site():
    """The proof site after a change: `lonely` removed, `sticky`'s timeout changed, a
    new service added, `web` (NodePort) now with externalTrafficPolicy Local, `udp`
    without its endpoint on web-2's address."""
    sys.path.insert(0, str(TESTS))
    sys.path.insert(0, str(ROOT))

    import render_fixtures as F

    from svcops.compile.endpoints import resolve

    services, _, _ = proof_site()
    by = {s.name: s for s in services}
    changed = (
        replace(by["web"], external_traffic_policy="Local"),
        replace(by["sticky"], affinity_timeout=300),
        by["closed"],
        by["local"],
        by["udp"],
        F.service("added", F.HTTP),
    )
    allocations = F.allocations(services)
    cips = dict(allocations.cluster_ips)
    del cips["default/lonely"]
    cips["default/added"] = "10.96.0.20"
    allocations = replace(allocations, cluster_ips=cips)
    ports, _ = resolve(F.site(changed, (udp_endpoints(UDP_ENDPOINTS[:1]),)), F.nodes(), allocations)
    return changed, ports, F.CLUSTER


def write_update(dest: Path) -> None:
    """svcops's IPVS apply steps (`svcops.render.ipvs_sync.ipvs_plan`) from the proof site's
    render to `update_site`'s, on a node holding the first; then the steps that leave
    IPVS mode (`ipvs_removal`, after svcops's iptables chains are gone)."""
    from svcops.compile.pipeline import no_iptables_rules
    from svcops.render.iptables import restore_payload
    from svcops.render.iptables_sync import expected_tables
    from svcops.render.ipvs import ipvs_modules, render_nodes
    from svcops.render.ipvs_sync import applied_state, ipvs_plan, ipvs_removal

    _, ports, cluster = proof_site()
    _, ports2, _ = update_site()
    node = [(PROOF_NODE, (PROOF_NODE_ADDRESS,))]
    old = render_nodes(cluster, ports, node)[PROOF_NODE]
    new = render_nodes(cluster, ports2, node)[PROOF_NODE]
    live = applied_state(old, ipvs_modules(old.ipvsadm))
    plan = ipvs_plan(new, live, expected_tables(old.iptables_rules), ipvs_modules(new.ipvsadm))
    u = dest / "update"
    u.mkdir()
    (u / "prepare").write_text(guest_shell(plan.prepare) + "\n")
    (u / "addresses").write_text(plan.addresses)
    (u / "ipset").write_text(plan.ipset)
    (u / "iptables").write_text(plan.iptables)
    (u / "ipvsadm").write_text(plan.ipvsadm)
    (u / "finish").write_text(plan.finish)
    # The UDP flows to real servers that are gone, deleted as `svcops.operations.ipvs.rules` does.
    from svcops.render.conntrack import conntrack_script, stale_conntrack, udp_ports_from_ipvsadm

    owned = set(new.addresses) | set(live.addresses)
    before = udp_ports_from_ipvsadm(live.ipvsadm, owned, new.node_addresses)
    (u / "conntrack").write_text(conntrack_script(stale_conntrack(before, udp_ports_from_ipvsadm(new.ipvsadm, owned, new.node_addresses))))
    # The node as the proof's cold apply left it: the ARP sysctls' own values were kept.
    after = replace(applied_state(new, ipvs_modules(new.ipvsadm)), before=GUEST_SYSCTLS)
    gone = ipvs_removal(after, new.node_addresses)
    r = dest / "removal"
    r.mkdir()
    (r / "iptables").write_text(restore_payload(no_iptables_rules(PROOF_NODE), expected_tables(new.iptables_rules)))
    (r / "ipset").write_text(gone.ipset)
    (r / "ipvsadm").write_text(gone.ipvsadm)
    (r / "sysctls").write_text(gone.sysctls + "\n")
    # Boot: every file svcops persists in IPVS mode for the updated site, under boot/.
    from svcops.render.node_files import node_files

    from svcops.render.ipvs_record import record_files
    from svcops.render.node_files import IPVS_RECORD_DIR

    files = dict(node_files(new.iptables_rules, "", (), "ipvs", ipvs=new).files)
    files.update({f"{IPVS_RECORD_DIR}/{b}": t for b, t in record_files(new).items() if t is not None})
    for path, text in files.items():
        f = dest / "boot" / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


# The kernel's defaults for the node-wide ARP sysctls, as the guest boots with them.
GUEST_SYSCTLS = {"net.ipv4.conf.all.arp_ignore": "0", "net.ipv4.conf.all.arp_announce": "0"}


def guest_shell(text: str) -> str:
    """svcops's shell (steps, fact commands) for the guest: its busybox runs its own
    `ip` applet before PATH, so iproute2 is named by its full path."""
    return re.sub(r"(?<![\w/.-])ip (?=(link|addr|-4|-o) )", "/usr/sbin/ip ", text)


def write_payloads(dest: Path) -> None:
    """The golden scenarios' payloads and the proof site's, as the guest's init reads them."""
    sys.path.insert(0, str(ROOT))
    from svcops.render.ipvs import SYSCTLS, render_nodes

    iptables = (GOLDEN / "iptables.txt").read_text()
    (dest / "golden").mkdir(parents=True)
    (dest / "iptables").write_text(iptables)
    for path in sorted(GOLDEN.glob("*.txt")):
        if path.stem == "iptables":
            continue
        sec = golden_sections(path.read_text())
        d = dest / "golden" / path.stem
        d.mkdir()
        (d / "ipset").write_text(sec["## ipset restore"])
        (d / "ipvsadm").write_text(sec["## ipvsadm -R"])
    _, ports, cluster = proof_site()
    rules = render_nodes(cluster, ports, [(PROOF_NODE, (PROOF_NODE_ADDRESS,))])[PROOF_NODE]
    p = dest / "proof"
    p.mkdir()
    # svcops's cold apply (`ipvs_plan` on a clean node; the guest's init loaded the modules).
    from svcops.render.iptables import LiveTables
    from svcops.render.ipvs import ipvs_modules
    from svcops.render.ipvs_sync import IpvsLive, ipvs_plan

    mods = ipvs_modules(rules.ipvsadm)
    cold = ipvs_plan(rules, IpvsLive(sysctls=GUEST_SYSCTLS, modules=frozenset(mods)), LiveTables(), mods)
    (p / "prepare").write_text(guest_shell(cold.prepare) + "\n")
    (p / "addresses").write_text(cold.addresses)
    (p / "ipset").write_text(cold.ipset)
    (p / "iptables").write_text(cold.iptables)
    (p / "ipvsadm").write_text(cold.ipvsadm)
    (p / "sysctl-keys").write_text("".join(f"{k}\n" for k in SYSCTLS))
    (p / "probes").write_text("".join(" ".join(map(str, probe)) + "\n" for probe in PROBES))
    write_update(dest)


def golden_sections(text: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            current = out.setdefault(line.split(" (")[0].strip(), [])
        elif current is not None:
            current.append(line)
    return {k: "".join(v) for k, v in out.items()}


# --- booting and reading the report -------------------------------------------------------


@dataclass
class Report:
    output: str
    boot_seconds: float | None = None  # until the guest's init said BOOTED
    total_seconds: float = 0.0
    booted: bool = False
    done: bool = False
    module_failures: list[str] = field(default_factory=list)
    apply_failures: list[str] = field(default_factory=list)
    golden_rc: dict[str, int] = field(default_factory=dict)
    golden_errors: dict[str, list[str]] = field(default_factory=dict)
    golden_saved: dict[str, str] = field(default_factory=dict)  # ipvsadm-save -n, per scenario
    proof_ipvs: str = ""
    probes: dict[str, list[str]] = field(default_factory=dict)
    update_ipvs: str = ""  # ipvsadm-save -n after svcops's update steps
    update_probes: dict[str, list[str]] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)  # what is left after leaving IPVS mode
    sysctls: dict[str, str] = field(default_factory=dict)  # as the cold apply set them
    kept: str = ""  # /etc/svcops/ipvs-sysctls.before after the cold apply
    boot_ipvs: str = ""  # ipvsadm-save -n after the boot script ran on a clean node
    conntrack: dict[str, list[str]] = field(default_factory=dict)  # "before"/"after": UDP flows
    boot: dict[str, str] = field(default_factory=dict)


def parse_report(output: str) -> Report:
    rep = Report(output)
    for raw in output.splitlines():
        i = raw.find("SVCOPS ")
        if i < 0:
            continue
        line = raw[i + len("SVCOPS ") :].rstrip("\r")
        kind, _, rest = line.partition(" ")
        if kind == "BOOTED":
            rep.booted = True
        elif kind == "DONE":
            rep.done = True
        elif kind == "MODULE-FAIL":
            rep.module_failures.append(rest)
        elif kind in ("APPLY-FAIL", "SYSCTL-FAIL"):
            rep.apply_failures.append(f"{kind} {rest}")
        elif kind == "GOLDEN":
            name, _, rc = rest.partition(" rc=")
            rep.golden_rc[name] = int(rc or -1)
        elif kind == "ERR":
            name, _, msg = rest.partition(" ")
            rep.golden_errors.setdefault(name, []).append(msg)
        elif kind == "IPVS":
            name, _, msg = rest.partition(" ")
            rep.golden_saved[name] = rep.golden_saved.get(name, "") + msg + "\n"
        elif kind == "PROOF-IPVS":
            rep.proof_ipvs += rest + "\n"
        elif kind == "UPDATE-IPVS":
            rep.update_ipvs += rest + "\n"
        elif kind == "UPDATE-PROBE":
            label, _, rest2 = rest.partition(" ")
            _, _, answer = rest2.partition(" ")
            rep.update_probes.setdefault(label, []).append(answer.strip())
        elif kind == "SYSCTL":
            k, _, v = rest.partition("=")
            rep.sysctls[k] = v.strip()
        elif kind == "CT":
            when, _, flow = rest.partition(" ")
            rep.conntrack.setdefault(when, []).append(flow.strip())
        elif kind == "BOOT-IPVS":
            rep.boot_ipvs += rest + "\n"
        elif kind == "BOOT":
            what, _, value = rest.partition(" ")
            rep.boot[what] = value.strip()
        elif kind == "KEPT":
            rep.kept = rest.strip()
        elif kind == "REMOVED":
            what, _, value = rest.partition(" ")
            rep.removed[what] = rep.removed.get(what, "") + value + "\n"
        elif kind == "PROBE":
            label, _, rest2 = rest.partition(" ")
            _, _, answer = rest2.partition(" ")
            rep.probes.setdefault(label, []).append(answer.strip())
    return rep


def qemu_argv(kernel: Kernel, initrd: Path, memory: int = 512, net: list[str] | None = None) -> list[str]:
    """qemu with TCG (the stock kernel cannot use this machine's /dev/kvm), the serial
    console on stdout; no network unless `net` (qemu's -netdev/-device options)."""
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-m", str(memory), "-smp", "1", "-nographic", "-no-reboot",
        *(net or ["-net", "none"]), "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
        "-append", "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init",
    ]  # fmt: skip


def run_guest(
    kernel: Kernel, initrd: Path, timeout: float, memory: int = 512, on_line: Callable[[str], None] | None = None
) -> Report:
    """Boot the guest with TCG (the stock kernel cannot use this machine's /dev/kvm).

    `memory`: the guest's, in MB. `on_line`: called with each "SVCOPS " line (without
    the prefix) as it arrives, e.g. to print progress."""
    argv = qemu_argv(kernel, initrd, memory)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    chunks: list[bytes] = []
    pending = b""
    boot = None
    try:
        assert proc.stdout is not None
        # os.read on the raw descriptor, never the file object: once gevent is patched in
        # (svcops's apply does it), a file object's read() waits for EOF, which a guest
        # that hangs never sends, and the timeout below would never be checked.
        fd = proc.stdout.fileno()
        os.set_blocking(fd, False)
        while True:
            if time.monotonic() - start > timeout:
                proc.kill()
                chunks.append(f"\nSVCOPS-HARNESS timeout after {timeout:.0f} s\n".encode())
                break
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                data = None
            if data:
                chunks.append(data)
                if on_line is not None:
                    *lines, pending = (pending + data).split(b"\n")
                    for line in lines:
                        i = line.find(b"SVCOPS ")
                        if i >= 0:
                            on_line(line[i + 7 :].decode(errors="replace").rstrip("\r"))
                if boot is None and b"SVCOPS BOOTED" in b"".join(chunks[-3:]):
                    boot = time.monotonic() - start
            elif proc.poll() is not None:
                break
            else:
                time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    rep = parse_report(b"".join(chunks).decode(errors="replace"))
    rep.boot_seconds = boot
    rep.total_seconds = time.monotonic() - start
    return rep


def prove(cache: Path = DEFAULT_CACHE, timeout: float = 300) -> Report:
    """Build everything (downloading what is missing) and run the guest once."""
    ensure_host_tools()
    kernel = ensure_kernel(cache)
    with tempfile.TemporaryDirectory(prefix="svcops-qemu-") as tmp:
        payload = Path(tmp) / "payload"
        payload.mkdir()
        write_payloads(payload)
        initrd = build_initramfs(kernel, payload, Path(tmp) / "initrd.gz")
        return run_guest(kernel, initrd, timeout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--serial", action="store_true", help="print the guest's whole serial output")
    a = ap.parse_args()
    try:
        rep = prove(a.cache, a.timeout)
    except Unavailable as e:
        print(f"cannot run the IPVS proof here: {e}", file=sys.stderr)
        return 2
    if a.serial:
        print(rep.output)
    print(f"booted: {rep.booted} (init after {rep.boot_seconds or 0:.1f} s), done: {rep.done}, total {rep.total_seconds:.1f} s")
    for f in rep.module_failures + rep.apply_failures:
        print("  failure:", f)
    for name, rc in sorted(rep.golden_rc.items()):
        print(f"  golden {name}: rc={rc} {' | '.join(rep.golden_errors.get(name, []))}")
    print(rep.proof_ipvs, end="")
    for label, answers in rep.probes.items():
        print(f"  {label}: {answers}")
    ok = rep.done and not rep.module_failures and not rep.apply_failures and all(v == 0 for v in rep.golden_rc.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
