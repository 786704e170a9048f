"""The files svcops keeps on a node, and the texts of its small node-side scripts.

Pure: every function returns text; the operations (`svcops.operations`) write it.

Boot persistence, the Debian way: a systemd unit, ``svcops-rules.service``, modelled
on netfilter-persistent's (oneshot, ``DefaultDependencies=no``, ordered
``Before=network-pre.target``, so the rules are in place before any interface comes
up), runs ``/etc/svcops/restore``, an idempotent shell script:

    cat s0 ?? s1 | iptables-restore --noflush           svcops's chains and rules, from the
                                                       record /etc/svcops/iptables.d (the
                                                       rules operation writes it), then the
                                                       canary chain (`svcops.render.iptables_record`)
    iptables -C ... || iptables -I ... 1 ...           each jump, inserted only if missing
    ip addr replace <LB address>/32 dev <if> ...        the load-balancer addresses it announces

That is iptables mode. The script and the files follow the site's proxy mode:

    nftables   the record /etc/svcops/nft.d (`svcops.render.nftables_record`), loaded
               a few buckets a transaction: the whole table ip svcops, replacing any
               svcops table there, the canary last; iptables is not used at all
    ipvs       modules (ip_vs, its schedulers, dummy), the IPVS sysctls, the dummy
               interface svcops-ipvs0, then from the record /etc/svcops/ipvs.d
               (`svcops.render.ipvs_record`) its addresses, svcops's sets and, when
               IPVS holds no virtual server yet, the virtual servers, the canary last;
               then the iptables part as above

The files of the other modes are removed when a site changes mode (`MODE_FILES`).

The unit is enabled by creating its ``multi-user.target.wants`` symlink directly
(what ``systemctl enable`` does), so enabling works where systemd is not running, as
in a container or the lab. Every file lives under ``/etc`` (``/etc/svcops``,
``/etc/systemd/system``, ``/etc/sysctl.d``, ``/etc/network/interfaces.d``): that is
what a node's configuration management owns, and in the lab each node has its own
``/etc``. (An apply's transaction lives in ``/run/svcops``: `svcops.render.txn`.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from svcops.render.iptables import IptablesRules, Jump, restore_transactions
from svcops.render.iptables_record import FIRST, LAST, MODE, OWN, RECORD_DIR, STATE, UNVERIFIED
from svcops.render.ipvs import DUMMY_INTERFACE, SYSCTLS, ipvs_modules
from svcops.render.ipvs_record import BOOT_LOADER as IPVS_BOOT_LOADER
from svcops.render.nftables_record import BOOT_LOADER
from svcops.render.nftables_sync import LOADER
from svcops.site.model import INTERFACE_NAME, Announcement, is_ipv4

__all__ = [
    "ETC_DIR",
    "RULES_FILE",
    "RESTORE_SCRIPT",
    "ANNOUNCE_FILE",
    "UNIT_NAME",
    "UNIT_FILE",
    "UNIT_LINK",
    "SYSCTL_FILE",
    "INTERFACES_FILE",
    "MANAGED_FILES",
    "NodeFiles",
    "node_files",
    "boot_payload",
    "restore_script",
    "announce_file",
    "unit_text",
    "SYSCTL_TEXT",
    "sha256_text",
    "NFT_FILE",
    "NFT_RECORD_DIR",
    "IPSET_FILE",
    "IPVSADM_FILE",
    "IPVS_ADDRESSES_FILE",
    "IPVS_RECORD_DIR",
    "MODE_FILES",
    "sysctl_text",
]

ETC_DIR = "/etc/svcops"
RULES_FILE = f"{ETC_DIR}/rules.v4"
RESTORE_SCRIPT = f"{ETC_DIR}/restore"
ANNOUNCE_FILE = f"{ETC_DIR}/announce"
NFT_FILE = f"{ETC_DIR}/rules.nft"  # before the record (kept only to be removed)
NFT_RECORD_DIR = f"{ETC_DIR}/nft.d"  # nftables mode's record: the boot data (svcops.render.nftables_record)
IPVS_RECORD_DIR = f"{ETC_DIR}/ipvs.d"  # IPVS mode's record: the boot data (svcops.render.ipvs_record)
IPSET_FILE = f"{ETC_DIR}/ipset"  # IPVS mode's boot files before the record (kept only to be removed)
IPVSADM_FILE = f"{ETC_DIR}/ipvsadm"
IPVS_ADDRESSES_FILE = f"{ETC_DIR}/ipvs-addresses"
UNIT_NAME = "svcops-rules.service"
UNIT_FILE = f"/etc/systemd/system/{UNIT_NAME}"
UNIT_LINK = f"/etc/systemd/system/multi-user.target.wants/{UNIT_NAME}"
SYSCTL_FILE = "/etc/sysctl.d/90-svcops.conf"
INTERFACES_FILE = "/etc/network/interfaces.d/svcops"

# Every regular file svcops writes on a node (the fact reports their sha256).
MANAGED_FILES = (
    RULES_FILE, RESTORE_SCRIPT, ANNOUNCE_FILE, UNIT_FILE, SYSCTL_FILE, INTERFACES_FILE,
    NFT_FILE, IPSET_FILE, IPVSADM_FILE, IPVS_ADDRESSES_FILE,
)  # fmt: skip
# The rule files of each proxy mode: a file of another mode is removed from a node.
MODE_FILES = {
    "iptables": (),
    "nftables": (NFT_FILE,),
    "ipvs": (RULES_FILE,),
}
# Boot files of svcops before the records, removed in every mode.
OLD_FILES = (NFT_FILE, IPSET_FILE, IPVSADM_FILE, IPVS_ADDRESSES_FILE)

_HEADER = "# Written by svcops; do not edit: svcops rewrites it (change the site instead).\n"

SYSCTL_TEXT = (
    "# svcops: nodes forward service traffic to endpoints on other nodes.\n"
    + _HEADER
    + "net.ipv4.ip_forward = 1\n"
)


def sysctl_text(mode: str = "iptables") -> str:
    """/etc/sysctl.d/90-svcops.conf: forwarding, and in IPVS mode kube-proxy's IPVS
    settings (the net.ipv4.vs keys exist once ip_vs is loaded: the restore script loads
    it and applies this file again)."""
    if mode != "ipvs":
        return SYSCTL_TEXT
    return (
        "# svcops: nodes forward service traffic to endpoints on other nodes; IPVS mode's settings.\n"
        + _HEADER
        + "".join(f"{k} = {v}\n" for k, v in SYSCTLS.items())
    )


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def boot_payload(rules: IptablesRules) -> str:
    """svcops's chains and rules for `iptables-restore --noflush`, without the jumps
    (the restore script inserts those only where missing, so running it twice is
    harmless)."""
    # Cut into transactions like an apply: one of 10,000 services takes minutes at boot.
    return "".join(restore_transactions(replace(rules, jumps=())))


def _ensure_jump(j: Jump) -> str:
    # The spec is iptables-save text ("-m comment --comment \"...\" -j X"): its quoting
    # is the shell's, so it goes into the script as it is.
    return f"ensure {j.table} {j.chain} {j.spec}\n"


def announce_file(announced: Sequence[Announcement]) -> str:
    """The record of the load-balancer addresses this node announces: "ADDRESS DEV [LABEL]".

    The restore script reads it word by word at boot: an interface name that is not one
    svcops accepts (a space or a newline in it) raises ValueError rather than be written."""
    for a in announced:
        if not (is_ipv4(a.address) and INTERFACE_NAME.fullmatch(a.interface)):
            raise ValueError(f"{a.address!r} on {a.interface!r} cannot go into {ANNOUNCE_FILE}")
    lines = [f"{a.address} {a.interface}" + (f" {a.label}" if a.label else "") for a in announced]
    return "".join(line + "\n" for line in lines)


def _record_part() -> list[str]:
    """iptables mode's chains from the record (`svcops.render.iptables_record`), then
    the canary (nat: the record's fingerprint; filter: the digest of bucket s0) when
    every bucket file is the one the index names, else "unverified" in both (the next
    apply then reads the whole live state)."""
    R, st = RECORD_DIR, STATE
    canary = f"printf '*%s\\n:{st} - [0:0]\\n-A {st} -m comment --comment \"svcops-state %s\" -j RETURN\\nCOMMIT\\n'"
    return [
        "# svcops's chains from its record: the shared chains jumped to (s0), each bucket of\n",
        "# service ports, this node's own parts of them (n*), then the dispatch chains (s1);\n",
        "# one transaction per bucket, in one\n",
        "# iptables-restore. Then the canary chain, in both tables.\n",
        f"R={R}\n",
        'if [ -s "$R/index" ]; then\n',
        f"    nat=$(sed -n '1s/^svcops-record [^ ]* {MODE} \\([^ ]*\\).*/\\1/p' \"$R/index\")\n",
        # The index's lines: bucket, content digest, file digest.
        f"    filter=$(sed -n 's/^{FIRST} \\([^ ]*\\).*/\\1/p' \"$R/index\")\n",
        '    if ! sed 1d "$R/index" | while read -r b c d; do\n',
        '        [ "$(sha256sum < "$R/$b" | cut -c1-32)" = "$d" ] || exit 1\n',
        f'    done || [ -z "$nat" ] || [ -z "$filter" ]; then nat={UNVERIFIED} filter={UNVERIFIED}; fi\n',
        f"    {{ for b in {FIRST} $(sed '1d;s/ .*//' \"$R/index\" | grep '^[0-9a-f]') $(sed '1d;s/ .*//' \"$R/index\" | grep '^{OWN}') {LAST}; do\n",
        '          [ ! -f "$R/$b" ] || cat "$R/$b"\n',
        "      done\n",
        f'      {canary} filter "$filter"\n',
        f'      {canary} nat "$nat"\n',
        "    } | iptables-restore -w 5 --noflush\n",
        "fi\n",
    ]


def _iptables_part(jumps: Sequence[Jump], record: bool = False) -> list[str]:
    load = _record_part() if record else [f"iptables-restore -w 5 --noflush {RULES_FILE}\n"]
    out = [
        *load,
        "ensure() {\n",
        '    t=$1; c=$2; shift 2\n',
        '    iptables -w 5 -t "$t" -C "$c" "$@" 2>/dev/null || iptables -w 5 -t "$t" -I "$c" 1 "$@"\n',
        "}\n",
        "# svcops's jumps, each inserted at the top of its built-in chain if it is missing\n",
        "# (inserted bottom-up, so they end up in this order).\n",
    ]
    by_chain: dict[tuple[str, str], list[Jump]] = {}
    for j in jumps:
        by_chain.setdefault((j.table, j.chain), []).append(j)
    for group in by_chain.values():
        out.extend(_ensure_jump(j) for j in reversed(group))
    return out


def _nft_part() -> list[str]:
    return [
        "# svcops's table ip svcops from its record, one transaction at a time (the first\n",
        "# replaces any svcops table there; no other table is touched), the canary last\n",
        LOADER,
        BOOT_LOADER,
        f"svcops_nft_boot {NFT_RECORD_DIR}\n",
    ]


def _ipvs_part(jumps: Sequence[Jump], modules: Sequence[str]) -> list[str]:
    D = DUMMY_INTERFACE
    return [
        "# IPVS: modules (built in is as good), then the settings that need them\n",
        f"for m in {' '.join(modules)}; do\n",
        '    modprobe -q "$m" 2>/dev/null || [ -d "/sys/module/$m" ] || echo "svcops: cannot load module $m" >&2\n',
        "done\n",
        f"sysctl -q -p {SYSCTL_FILE} || true\n",
        "# the dummy interface holding the virtual addresses (left down, like kube-ipvs0)\n",
        f"ip link show {D} >/dev/null 2>&1 || ip link add {D} type dummy\n",
        "# from the record: the addresses (one ip process for all), every set refilled, the\n",
        "# virtual servers when IPVS holds none yet (a node already serving keeps what it\n",
        "# has: svcops apply keeps it in sync), the canary; then the iptables part, whose\n",
        "# rules match those sets\n",
        IPVS_BOOT_LOADER,
        f"svcops_ipvs_boot {IPVS_RECORD_DIR}\n",
        *_iptables_part(jumps),
    ]


def restore_script(jumps: Sequence[Jump], mode: str = "iptables", modules: Sequence[str] = ()) -> str:
    """The boot script: idempotent, safe to run at any time."""
    what = {"iptables": "iptables rules", "nftables": "nftables table", "ipvs": "IPVS rules"}[mode]
    out = [
        "#!/bin/sh\n",
        f"# svcops: restore svcops's {what} and load-balancer addresses (run by\n",
        f"# {UNIT_NAME} at boot, before the network comes up). Idempotent.\n",
        _HEADER,
        "set -e\n",
    ]
    if mode == "nftables":
        out += _nft_part()
    elif mode == "ipvs":
        out += _ipvs_part(jumps, modules or ipvs_modules(""))
    else:
        out += _iptables_part(jumps, record=True)
    out += [
        "# load-balancer addresses this node announces\n",
        f"if [ -s {ANNOUNCE_FILE} ]; then\n",
        "    while read -r ip dev label; do\n",
        '        ip addr replace "$ip/32" dev "$dev" ${label:+label "$label"} || true\n',
        f"    done < {ANNOUNCE_FILE}\n",
        "fi\n",
    ]
    return "".join(out)


def unit_text() -> str:
    """svcops-rules.service: netfilter-persistent's ordering, running the restore script."""
    return (
        "[Unit]\n"
        "Description=svcops service rules and load-balancer addresses\n"
        f"Documentation=file:{RESTORE_SCRIPT}\n"
        "DefaultDependencies=no\n"
        "Wants=network-pre.target systemd-modules-load.service local-fs.target\n"
        "Before=network-pre.target shutdown.target\n"
        # After the node's own firewall loaders: Debian's /etc/nftables.conf starts with
        # `flush ruleset`, which would drop svcops's rules if it ran later.
        "After=systemd-modules-load.service local-fs.target nftables.service netfilter-persistent.service "
        "ufw.service firewalld.service\n"
        "Conflicts=shutdown.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=/bin/sh {RESTORE_SCRIPT}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """Path -> content of every file svcops writes on one node, and the unit's symlink."""

    files: Mapping[str, str]
    link: tuple[str, str] = (UNIT_LINK, UNIT_FILE)  # (symlink, target)
    modes: Mapping[str, str] | None = None  # path -> chmod mode, when not 644
    remove: tuple[str, ...] = ()  # files of another proxy mode, removed if present


def node_files(
    rules: IptablesRules,
    interfaces: str,
    announced: Sequence[Announcement],
    mode: str = "iptables",
    nftables=None,
    ipvs=None,
) -> NodeFiles:
    """Everything persisted on a node: boot rules, boot script and unit, sysctl, its
    static-address file (when the site manages node addresses) and its announced
    addresses. `mode` picks the rule files: `nftables` (NftRules) in nftables mode,
    `ipvs` (IpvsRules) in IPVS mode (its iptables part is `rules`)."""
    files: dict[str, str] = {}
    modules: tuple[str, ...] = ()
    if mode == "nftables":
        pass  # the boot data is the record (/etc/svcops/nft.d), written by the nftables operation
    elif mode == "ipvs":
        # The rest of the boot data is the record (/etc/svcops/ipvs.d), written by the ipvs operation.
        modules = ipvs_modules(ipvs.ipvsadm)
        files[RULES_FILE] = boot_payload(rules)
    # iptables mode: the rules are in the record (/etc/svcops/iptables.d), which the
    # rules operation writes; the rules.v4 of before goes (MODE_FILES).
    files.update(
        {
            RESTORE_SCRIPT: restore_script(rules.jumps, mode, modules),
            ANNOUNCE_FILE: announce_file(announced),
            UNIT_FILE: unit_text(),
            SYSCTL_FILE: sysctl_text(mode),
        }
    )
    if interfaces:
        files[INTERFACES_FILE] = interfaces
    stale = tuple(f for m, fs in MODE_FILES.items() if m != mode for f in fs if f not in files)
    stale += OLD_FILES  # the boot files of svcops before the records
    return NodeFiles(files, modes={RESTORE_SCRIPT: "755"}, remove=tuple(dict.fromkeys(stale)))
