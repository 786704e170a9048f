"""The files svcops persists on a node (`svcops.render.node_files`): boot payload, restore script
and unit for every proxy mode, and the other modes' files removed.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from modes_fixtures import compiled, files_of, live_state, ns_sh, root
from netns import netns
from render_fixtures import rendered

from svcops.render.iptables import JUMPS, parse_iptables_save
from svcops.render.iptables_sync import (
    expected_tables,
)
from svcops.render.ipvs import DUMMY_INTERFACE
from svcops.render.nftables_sync import (
    transactions,
)
from svcops.render.node_files import (
    IPSET_FILE,
    IPVS_ADDRESSES_FILE,
    IPVSADM_FILE,
    NFT_FILE,
    NFT_RECORD_DIR,
    RESTORE_SCRIPT,
    RULES_FILE,
    SYSCTL_FILE,
    UNIT_FILE,
    UNIT_LINK,
    boot_payload,
    node_files,
    restore_script,
    unit_text,
)


def test_boot_payload_holds_the_chains_and_rules_but_no_jump():
    rules = rendered("load-balancer")
    boot = parse_iptables_save(boot_payload(rules))
    want = expected_tables(rules)
    for t in ("filter", "nat"):
        assert boot.table(t).chains == want.table(t).chains
        assert boot.table(t).jumps == ()


def test_restore_script_restores_then_inserts_each_missing_jump_in_order():
    script = restore_script(JUMPS)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    # iptables mode loads its record (`svcops.render.iptables_record`), not rules.v4.
    restore_at = lines.index("    } | iptables-restore -w 5 --noflush")
    assert RULES_FILE not in script
    ensures = [ln for ln in lines if ln.startswith("ensure ")]
    assert len(ensures) == len(JUMPS) and lines.index(ensures[0]) > restore_at
    # Each is inserted at the top when missing: per chain, bottom-up.
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        specs = [j.spec for j in JUMPS if j.table == "filter" and j.chain == chain]
        got = [ln.split(" ", 3)[3] for ln in ensures if ln.startswith(f"ensure filter {chain} ")]
        assert got == list(reversed(specs))
    assert '-C "$c" "$@" 2>/dev/null || iptables -w 5 -t "$t" -I "$c" 1 "$@"' in script


def test_restore_script_is_valid_shell():
    if not shutil.which("sh"):
        pytest.skip("no sh")
    r = subprocess.run(["sh", "-n"], input=restore_script(JUMPS), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_unit_runs_the_script_once_before_the_network():
    text = unit_text()
    sections = {}
    current = None
    for line in text.splitlines():
        if line.startswith("["):
            current = sections.setdefault(line, {})
        elif "=" in line:
            k, v = line.split("=", 1)
            current[k] = v
    assert "network-pre.target" in sections["[Unit]"]["Before"].split()
    # After the loaders that flush the whole ruleset (Debian's nftables.conf does).
    assert {"nftables.service", "netfilter-persistent.service"} <= set(sections["[Unit]"]["After"].split())
    assert sections["[Unit]"]["DefaultDependencies"] == "no"
    assert sections["[Service]"]["Type"] == "oneshot"
    assert sections["[Service]"]["RemainAfterExit"] == "yes"
    assert sections["[Service]"]["ExecStart"].endswith("/etc/svcops/restore")
    assert sections["[Install]"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    # systemd's own parser: no warning (an unknown key or value prints one), exit 0.
    unit = tmp_path / "svcops-rules.service"
    unit.write_text(unit_text())
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_node_files_and_their_symlink():
    rules = rendered("cluster-ip")
    files = node_files(rules, "auto eth0\n", ())
    assert "net.ipv4.ip_forward = 1" in files.files[SYSCTL_FILE].splitlines()
    assert files.files[UNIT_FILE] == unit_text()
    assert files.link == (UNIT_LINK, UNIT_FILE)
    assert files.files["/etc/network/interfaces.d/svcops"] == "auto eth0\n"
    assert "/etc/network/interfaces.d/svcops" not in node_files(rules, "", ()).files




def test_boot_files_follow_the_mode_and_the_other_modes_files_go():
    ipt, nft, ipvs = files_of("iptables"), files_of("nftables"), files_of("ipvs")
    assert RULES_FILE not in ipt.files and NFT_FILE not in ipt.files
    assert set(ipt.remove) == {RULES_FILE, NFT_FILE, IPSET_FILE, IPVSADM_FILE, IPVS_ADDRESSES_FILE}
    # nftables mode boots from its record (written by the nftables operation); the boot
    # file of svcops before the record goes.
    assert NFT_FILE not in nft.files and RULES_FILE in nft.remove and NFT_FILE in nft.remove
    assert "iptables" not in nft.files[RESTORE_SCRIPT] and "svcops_nft_boot /etc/svcops/nft.d" in nft.files[RESTORE_SCRIPT]
    # IPVS mode boots from its record too (written by the ipvs operation): only the
    # iptables part stays a whole file; the boot files of svcops before the record go.
    assert RULES_FILE in ipvs.files
    assert set(ipvs.remove) == {NFT_FILE, IPSET_FILE, IPVSADM_FILE, IPVS_ADDRESSES_FILE}
    script = ipvs.files[RESTORE_SCRIPT]
    order = [script.index(s) for s in ("modprobe", "sysctl -q -p", f"ip link add {DUMMY_INTERFACE}", "ipset restore", "ipvsadm -R", "svcops_ipvs_boot /etc/svcops/ipvs.d", "iptables-restore")]
    assert order == sorted(order)
    assert "net.ipv4.vs.conntrack = 1" in ipvs.files[SYSCTL_FILE]
    for files in (ipt, nft, ipvs):
        r = subprocess.run(["sh", "-n"], input=files.files[RESTORE_SCRIPT], text=True, capture_output=True)
        assert r.returncode == 0, r.stderr


def _nft_boot(tmp_path):
    """(the restore script, pointed at a record folder in tmp_path holding node1's
    nftables record; the folder; node1's NftRules)."""
    from svcops.render.nftables_record import record_files

    record = tmp_path / "nft.d"
    script = files_of("nftables").files[RESTORE_SCRIPT].replace(NFT_RECORD_DIR, str(record))
    script = script.replace("/etc/svcops/announce", str(tmp_path / "announce"))
    rules = compiled("nftables").outputs["node1"].nftables
    record.mkdir()
    for name, text in record_files(rules).items():
        if text is not None:
            (record / name).write_text(text)
    return script, record, rules


@root
@pytest.mark.root
def test_nftables_restore_script_rebuilds_the_table_and_touches_nothing_else(tmp_path):
    from svcops.render.nftables_record import fingerprint_of, parse_canary

    script, _, rules = _nft_boot(tmp_path)
    with netns() as ns:
        ns_sh(ns, "nft add table inet theirs; nft add chain inet theirs input '{ type filter hook input priority 0; }'")
        for _ in range(2):  # idempotent
            ns_sh(ns, script)
            assert transactions(rules, live_state(ns).live) == []
            # The canary names the record: the next apply trusts it.
            canary = ns_sh(ns, "nft list set ip svcops state").stdout.splitlines()
            assert parse_canary(canary) == fingerprint_of(rules)
        assert "table inet theirs" in ns_sh(ns, "nft list tables").stdout


def test_the_announce_file_refuses_an_interface_the_restore_script_would_misread():
    from svcops.render.node_files import announce_file
    from svcops.site.model import Announcement

    assert announce_file([Announcement("192.0.2.1", "eth0", ("default/web",))]) == "192.0.2.1 eth0 eth0:svc\n"
    for iface in ("eth0 192.0.2.9", "eth0\n192.0.2.9 lo", "$(reboot)"):
        with pytest.raises(ValueError):
            announce_file([Announcement("192.0.2.1", iface, ("default/web",))])
    with pytest.raises(ValueError):
        announce_file([Announcement("192.0.2.1 lo\n10.0.0.1", "eth0", ("default/web",))])


@root
@pytest.mark.root
def test_a_record_file_that_is_not_the_one_its_index_names_boots_without_the_canary(tmp_path):
    """Loaded as it is (traffic first), but without the canary: the next apply reads the
    whole table and puts it right."""
    from svcops.render.nftables_record import parse_canary

    script, record, rules = _nft_boot(tmp_path)
    bucket = next(p.name for p in sorted(record.iterdir()) if p.name not in ("index", "sk"))
    with (record / bucket).open("a") as f:
        f.write("# edited by hand\n")
    with netns() as ns:
        r = ns_sh(ns, script)
        assert f"{bucket} is not the file the record's index names" in r.stderr
        assert transactions(rules, live_state(ns).live) == []
        assert parse_canary(ns_sh(ns, "nft list set ip svcops state").stdout.splitlines()) is None
