"""The proxy modes in the core and the push: compile_site per mode, `svcops render
--mode`, the pure parts of the nftables and IPVS pushes (what runs on a node, from its
facts), the boot files, switching modes. Real nftables in throwaway namespaces where
root allows; IPVS by its pure parts here (this kernel has no ip_vs) and in a real
kernel in tests/test_ipvs_qemu.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

import render_fixtures as F
from netns import netns
from svcops.cli import main
from svcops.deploy import plan_site
from svcops.facts import parse_ipvs_state, parse_nft_state
from svcops.ipvs_apply import IpvsLive, ipset_payload, ipvs_plan, ipvs_removal, ipvsadm_edit, parse_ipset_save
from svcops.nft_apply import (
    DELETE_TABLE,
    LOADER,
    ROLLBACK_FROM_LISTING,
    boot_file,
    chunked,
    count_transactions,
    fingerprint,
    live_fingerprint,
    transactions,
)
from svcops.node_files import (
    IPSET_FILE,
    IPVS_ADDRESSES_FILE,
    IPVSADM_FILE,
    NFT_FILE,
    RESTORE_SCRIPT,
    RULES_FILE,
    SYSCTL_FILE,
    ipvs_modules,
)
from svcops.nodediff import mode_changes
from svcops.pipeline import compile_site
from svcops.render.iptables import JUMPS, parse_iptables_save, restore_payload
from svcops.render.ipvs import DUMMY_INTERFACE, IPVS_JUMPS, SETS, SYSCTLS, SYSCTLS_BEFORE, parse_ipvsadm_save
from svcops.render.nftables import LIVE_COMMANDS, NftLive
from svcops.render.rollback import expected_tables, in_sync

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "walkthrough"
INVENTORY = str(ROOT / "inventory" / "example.py")

SERVICES = (
    F.service("web", F.HTTP, type="NodePort"),
    F.service("sticky", F.HTTP, session_affinity="ClientIP", affinity_timeout=600),
    F.service("lb", F.HTTP, type="LoadBalancer", load_balancer_source_ranges=("203.0.113.0/24",)),
    F.service("lonely", F.HTTP, selector={"app": "missing"}),
    F.service("local", F.HTTP, type="NodePort", external_traffic_policy="Local"),
)


def compiled(mode: str, services=SERVICES):
    site = F.site(services)
    c, diags = compile_site(site, F.nodes(), F.allocations(services), mode=mode)
    assert c is not None, diags
    return c


# --- the core ----------------------------------------------------------------------------


def test_compile_renders_the_sites_mode_by_default_and_any_mode_on_request():
    site = F.site(SERVICES)
    for mode in ("iptables", "nftables", "ipvs"):
        s = replace(site, cluster=replace(site.cluster, proxy_mode=mode))
        c, _ = compile_site(s, F.nodes(), F.allocations(SERVICES))
        assert c.mode == mode and all(o.mode == mode for o in c.outputs.values())
    c = compiled("nftables")
    out = c.outputs["node1"]
    assert out.nftables is not None and out.ipvs is None
    assert {u.id for u in out.nftables.units} >= {"default/web/tcp/http", "default/lonely/tcp/http"}


def test_each_modes_iptables_footprint():
    ipt = compiled("iptables").outputs["node1"].iptables
    assert ipt.jumps == JUMPS and ipt.counts()[0] > 0
    # nftables mode: no svcops chain and no jump at all; applied live, it removes iptables mode's.
    none = compiled("nftables").outputs["node1"].iptables
    assert none.jumps == () and none.counts() == (0, 0)
    live = expected_tables(ipt)
    payload = restore_payload(none, live)
    after = parse_iptables_save(restore_payload(ipt) + payload)
    assert all(not after.table(t).chains and not after.table(t).jumps for t in ("filter", "nat"))
    # IPVS mode: the IPVS renderer's few chains.
    ipvs = compiled("ipvs").outputs["node1"]
    assert ipvs.iptables.jumps == IPVS_JUMPS and ipvs.iptables is ipvs.ipvs.iptables_rules


def test_ipvs_mode_gets_a_node_port_virtual_server_on_each_node_address():
    out = compiled("ipvs").outputs["node2"]
    assert out.node_addresses == ("10.0.0.12",)
    assert "-A -t 10.0.0.12:30080 -s rr" in out.ipvs.ipvsadm
    assert "10.0.0.11:30080" not in out.ipvs.ipvsadm


# --- svcops render --mode --------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Path:
    dst = tmp_path / "site"
    shutil.copytree(EXAMPLE, dst)
    return dst


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_render_mode_prints_each_payload_of_the_mode(capsys, site):
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--mode", "nftables", str(site))
    assert code == 0
    assert "proxy mode nftables" in out and "# ==> nft -f payload for node1" in out
    assert "add table ip svcops" in out and "address 192.168.36.11/24" in out
    assert "iptables-restore" not in out
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--mode", "ipvs", str(site))
    assert code == 0
    for heading in ("sysctl settings", f"addresses of the dummy interface {DUMMY_INTERFACE}", "ipset restore", "iptables-restore", "ipvsadm -R"):
        assert f"# ==> {heading}" in out, heading
    assert "-A -t 10.1.11.83:8000 -s rr" in out  # the walkthrough's cluster IP as a virtual server
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node1", str(site))
    assert "proxy mode iptables" in out and "-d 10.1.11.83/32" in out  # the site's own mode


def test_render_only_a_part_of_another_mode_implies_it_or_is_an_error(capsys, site):
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--only", "ipvsadm", str(site))
    assert code == 0 and out.startswith("-A -t ")
    code, out, err = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--mode", "iptables", "--only", "nftables", str(site))
    assert code == 1 and "--only nftables is part of nftables mode" in err and out == ""
    # In nftables mode svcops has no iptables rules: the iptables part is empty.
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node1", "--mode", "nftables", "--only", "iptables", str(site))
    assert code == 0 and "SVCOPS-" not in out


root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft"), reason="needs root and nft")


def ns_sh(ns: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"{script[:200]}: {r.stderr[:2000]}"
    return r


@root
@pytest.mark.root
def test_render_only_nftables_passes_nft_check(capsys, site):
    code, out, _ = run(capsys, "render", "-i", INVENTORY, "--node", "node2", "--only", "nftables", str(site))
    assert code == 0
    with netns() as ns:
        r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-c", "-f", "-"], input=out, text=True, capture_output=True)
        assert r.returncode == 0, r.stderr


# --- nftables push ---------------------------------------------------------------------------


def live_state(ns: str, boot: str = "") -> "object":
    """What SvcopsNftables reads on a node, from the namespace."""
    out = "".join(
        subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True).stdout for cmd in LIVE_COMMANDS
    )
    return parse_nft_state([f"svcops-nft boot {boot}", *out.splitlines()])


def load(ns: str, text: str) -> subprocess.CompletedProcess:
    """The node side: LOADER on a chunked file."""
    path = f"/tmp/svmode-{uuid.uuid4().hex}"
    Path(path).write_text(text)
    try:
        return ns_sh(ns, f"{LOADER}\nsvcops_nft_load {path}", check=False)
    finally:
        os.unlink(path)


def test_chunked_file_marks_each_transaction_and_carries_the_state_first():
    text = chunked(["add table ip svcops\n", "add chain ip svcops x\n"], "abc")
    assert text.splitlines()[0] == "# svcops-state abc"
    assert count_transactions(text) == 2
    rules = compiled("nftables").outputs["node1"].nftables
    boot = boot_file(rules, chunk=2)
    assert boot.startswith(f"# svcops-state {fingerprint(rules)}\n")
    assert count_transactions(boot) == 1 + -(-len(rules.units) // 2)  # the skeleton, then chunks of 2


def test_transactions_for_another_mode_delete_the_table_only_if_there():
    assert transactions(None, NftLive()) == []
    assert transactions(None, NftLive(exists=True)) == [DELETE_TABLE]
    assert "svcops" in DELETE_TABLE and all(" svcops" in ln for ln in DELETE_TABLE.splitlines())


@root
@pytest.mark.root
def test_boot_file_loads_in_chunks_and_the_live_fingerprint_matches_it():
    rules = compiled("nftables").outputs["node1"].nftables
    with netns() as ns:
        r = load(ns, boot_file(rules, chunk=2))
        assert r.returncode == 0, r.stderr
        state = live_state(ns, f"# svcops-state {fingerprint(rules)}")
        assert state.available and state.live.exists
        assert state.boot_state == fingerprint(rules) == live_fingerprint(state.live)
        assert transactions(rules, state.live) == []  # in sync: the apply runs nothing
        # Loading it again (a second boot, or the restore script run by hand) is the same.
        assert load(ns, boot_file(rules)).returncode == 0
        assert transactions(rules, live_state(ns).live) == []


@root
@pytest.mark.root
def test_one_service_changed_is_one_small_transaction_and_the_fingerprint_follows():
    old = compiled("nftables").outputs["node1"].nftables
    changed = (SERVICES[0], replace(SERVICES[1], affinity_timeout=300), *SERVICES[2:])
    new = compiled("nftables", changed).outputs["node1"].nftables
    with netns() as ns:
        assert load(ns, boot_file(old)).returncode == 0
        live = live_state(ns).live
        assert live_fingerprint(live) == fingerprint(old) != fingerprint(new)
        txs = transactions(new, live)
        assert len(txs) == 1 and "default/web/" not in txs[0]
        assert load(ns, chunked(txs)).returncode == 0
        assert live_fingerprint(live_state(ns).live) == fingerprint(new)


@root
@pytest.mark.root
def test_rollback_from_the_listing_gives_back_the_table_and_a_failed_transaction_says_which():
    old = compiled("nftables").outputs["node1"].nftables
    new = compiled("nftables", SERVICES[:2]).outputs["node1"].nftables
    with netns() as ns:
        assert load(ns, boot_file(old)).returncode == 0
        # An affinity entry, as traffic would leave it: the listing shows it with "expires".
        aff = next(n for u in old.units for n, _ in u.sets)
        ns_sh(ns, f"nft add element ip svcops {aff} '{{ 203.0.113.9 }}'")
        before = live_state(ns).live
        snapshot = ns_sh(ns, ROLLBACK_FROM_LISTING).stdout
        assert load(ns, chunked(transactions(new, before))).returncode == 0
        assert live_fingerprint(live_state(ns).live) == fingerprint(new)
        assert load(ns, snapshot).returncode == 0
        assert live_fingerprint(live_state(ns).live) == fingerprint(old)
        assert "203.0.113.9" in ns_sh(ns, f"nft list set ip svcops {aff}").stdout
        # A transaction that fails: the loader returns its number; earlier ones stay applied.
        bad = chunked(["add chain ip svcops svmode-test\n", "add rule ip svcops no-such-chain accept\n"])
        assert load(ns, bad).returncode == 2
        assert "svmode-test" in ns_sh(ns, "nft list chains ip").stdout


# --- IPVS push (pure) ------------------------------------------------------------------------


def ipvs_rules(services=SERVICES, node: str = "node1"):
    return compiled("ipvs", services).outputs[node].ipvs


def live_holding(rules) -> IpvsLive:
    """The IPVS facts of a node where `rules` were applied."""
    sets, members = {}, {}
    save = []
    for s in SETS:
        opts = f"range {rules._node_port_range[0]}-{rules._node_port_range[1]}" if s.type == "bitmap:port" else "family inet hashsize 1024 maxelem 262144 bucketsize 12 initval 0x1"
        save.append(f"create {s.name} {s.type} {opts}")
    for name, entries in rules.set_entries().items():
        save.extend(f"add {name} {e}" for e in entries)
    sets, members = parse_ipset_save("\n".join(save))
    return IpvsLive(True, rules.addresses, sets, members, rules.ipvsadm, dict(SYSCTLS), frozenset(ipvs_modules(rules.ipvsadm)))


def simulate_ipvsadm(state: str, edit: str) -> dict:
    """What `ipvsadm -R` with `edit` does to the servers of `state` (ipvsadm-save -n)."""
    vs = parse_ipvsadm_save(state)
    for line in edit.splitlines():
        p = line.split()
        key = f"{p[1]} {p[2]}"
        if p[0] == "-A":
            assert key not in vs, line
            vs[key] = (" ".join(p[3:]), {})
        elif p[0] == "-E":
            vs[key] = (" ".join(p[3:]), vs[key][1])
        elif p[0] == "-D":
            del vs[key]
        elif p[0] in ("-a", "-e"):
            assert (p[4] in vs[key][1]) == (p[0] == "-e"), line
            vs[key][1][p[4]] = " ".join(p[5:])
        elif p[0] == "-d":
            del vs[key][1][p[4]]
    return vs


def test_ipvs_on_a_clean_node_does_every_step_in_order():
    rules = ipvs_rules()
    plan = ipvs_plan(rules, IpvsLive(), parse_iptables_save(""), ipvs_modules(rules.ipvsadm))
    assert "modprobe" in plan.prepare and f"ip link add {DUMMY_INTERFACE} type dummy" in plan.prepare
    assert "net.ipv4.vs.conntrack=1" in plan.prepare
    # Every virtual address in one `ip -batch` input.
    assert plan.addresses == "".join(f"address add {a}/32 dev {DUMMY_INTERFACE}\n" for a in rules.addresses)
    assert "ip addr" not in plan.prepare
    assert plan.ipset == rules.ipset
    assert plan.iptables == restore_payload(rules.iptables_rules, parse_iptables_save(""))
    assert simulate_ipvsadm("", plan.ipvsadm) == parse_ipvsadm_save(rules.ipvsadm)
    # The undo of the virtual servers takes them all away again.
    assert simulate_ipvsadm(rules.ipvsadm, plan.undo_ipvsadm) == {}


def test_ipvs_in_sync_runs_nothing_and_a_change_only_what_differs():
    rules = ipvs_rules()
    live = live_holding(rules)
    ipt = expected_tables(rules.iptables_rules)
    assert in_sync(rules.iptables_rules, ipt)
    assert ipvs_plan(rules, live, ipt, ipvs_modules(rules.ipvsadm)).empty
    # One service gone, one changed: only sets and servers change, and the undo reverts them.
    new = ipvs_rules((SERVICES[0], replace(SERVICES[1], affinity_timeout=300), *SERVICES[2:4]))
    plan = ipvs_plan(new, live, ipt, ipvs_modules(new.ipvsadm))
    assert not plan.prepare and not plan.iptables and plan.ipset
    after = simulate_ipvsadm(rules.ipvsadm, plan.ipvsadm)
    assert after == parse_ipvsadm_save(new.ipvsadm)
    assert simulate_ipvsadm(new.ipvsadm, plan.undo_ipvsadm) == parse_ipvsadm_save(rules.ipvsadm)
    gone = set(rules.addresses) - set(new.addresses)
    assert gone and plan.finish == "".join(f"address del {a}/32 dev {DUMMY_INTERFACE}\n" for a in sorted(gone))


def test_ipvs_leaves_foreign_virtual_servers_alone():
    rules = ipvs_rules()
    foreign = "-A -t 198.51.100.1:443 -s wlc\n-a -t 198.51.100.1:443 -r 10.9.9.9:443 -m -w 1\n"
    live = replace(live_holding(rules), ipvsadm=rules.ipvsadm + foreign)
    plan = ipvs_plan(rules, live, expected_tables(rules.iptables_rules), ipvs_modules(rules.ipvsadm))
    assert plan.empty
    removal = ipvs_removal(live, ("10.0.0.11",))
    assert "198.51.100.1" not in removal.ipvsadm
    assert simulate_ipvsadm(live.ipvsadm, removal.ipvsadm) == parse_ipvsadm_save(foreign)


def test_ipsets_of_another_node_port_range_are_swapped_not_recreated():
    rules = ipvs_rules()
    live = live_holding(rules)
    sets = dict(live.sets)
    sets["SVCOPS-NODE-PORT-TCP"] = "range 31000-31999"
    sets["SVCOPS-NODE-PORT-TCP-T"] = "range 31000-31999"  # left over by an interrupted run
    live = replace(live, sets=sets)
    payload = ipset_payload(rules, live)
    lines = payload.splitlines()
    assert lines[0] == "destroy SVCOPS-NODE-PORT-TCP-T"
    assert "create SVCOPS-NODE-PORT-TCP bitmap:port range 30000-32767 -exist" not in lines
    assert "create SVCOPS-NODE-PORT-TCP-T bitmap:port range 30000-32767 -exist" in lines
    assert "swap SVCOPS-NODE-PORT-TCP-T SVCOPS-NODE-PORT-TCP" in lines
    assert ipvs_plan(rules, live, expected_tables(rules.iptables_rules), ()).ipset == payload


def test_leaving_ipvs_mode_removes_sets_servers_and_the_dummy_interface():
    rules = ipvs_rules()
    live = live_holding(rules)
    removal = ipvs_removal(live, rules.node_addresses)
    destroyed = [ln.split()[1] for ln in removal.ipset.splitlines()]
    assert set(destroyed) == {s.name for s in SETS}
    assert simulate_ipvsadm(rules.ipvsadm, removal.ipvsadm) == {}
    assert removal.link
    assert ipvs_removal(IpvsLive(), ("10.0.0.11",)).empty


def test_ipvs_keeps_the_nodes_own_arp_sysctls_and_leaving_puts_them_back(tmp_path):
    rules = ipvs_rules()
    own = {"net.ipv4.conf.all.arp_ignore": "0", "net.ipv4.conf.all.arp_announce": "0"}
    plan = ipvs_plan(rules, IpvsLive(sysctls=own), parse_iptables_save(""), ())
    keep = plan.prepare.split(" && ")
    # Kept before they are changed, written once and atomically.
    i = next(i for i, c in enumerate(keep) if SYSCTLS_BEFORE in c)
    assert i < next(i for i, c in enumerate(keep) if c.startswith("sysctl -q -w"))
    # What the fact reads back from that file is what the node had.
    f = tmp_path / "before"
    script = " && ".join(keep[i : i + 2]).replace(SYSCTLS_BEFORE, str(f)).replace("mkdir -p /etc/svcops && ", "")
    subprocess.run(["sh", "-ec", script], check=True)
    state = parse_ipvs_state(["before " + ln for ln in f.read_text().splitlines()])
    assert state.live.before == own and state.present
    # Applied again with the values kept: not kept a second time (the node's own stay).
    again = ipvs_plan(rules, replace(live_holding(rules), before=own, sysctls={}), parse_iptables_save(""), ())
    assert SYSCTLS_BEFORE not in again.prepare and "arp_ignore=1" in again.prepare
    # Leaving IPVS mode: back to the node's values, and the file goes.
    removal = ipvs_removal(replace(live_holding(rules), before=own), rules.node_addresses)
    assert removal.sysctls == (
        "sysctl -q -w net.ipv4.conf.all.arp_announce=0 net.ipv4.conf.all.arp_ignore=0 && rm -f " + SYSCTLS_BEFORE
    )
    # A node that had them set already keeps nothing and gets nothing back.
    set_already = {k: SYSCTLS[k] for k in own}
    assert SYSCTLS_BEFORE not in ipvs_plan(rules, IpvsLive(sysctls=set_already), parse_iptables_save(""), ()).prepare
    assert not ipvs_removal(live_holding(rules), rules.node_addresses).sysctls


def test_parse_ipvs_state():
    lines = [
        "missing kernel module ip_vs (IP Virtual Server)",
        "module dummy",
        "sysctl net.ipv4.vs.conntrack 1",
        "link",
        "addr 10.96.0.10/32",
        "ipset create SVCOPS-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 262144",
        "ipset add SVCOPS-CLUSTER-IP 10.96.0.10,tcp:80",
        "vs -A -t 10.96.0.10:80 -s rr",
        "vs -a -t 10.96.0.10:80 -r 10.0.0.11:80 -m -w 1",
    ]
    st = parse_ipvs_state(lines)
    assert st.missing == ("kernel module ip_vs (IP Virtual Server)",)
    assert st.present and st.live.link and st.live.addresses == ("10.96.0.10",)
    assert st.live.members["SVCOPS-CLUSTER-IP"] == frozenset({"10.96.0.10,tcp:80"})
    assert st.live.sysctls == {"net.ipv4.vs.conntrack": "1"} and "dummy" in st.live.modules
    assert parse_ipvsadm_save(st.live.ipvsadm)["-t 10.96.0.10:80"][1] == {"10.0.0.11:80": "-m -w 1"}
    assert not parse_ipvs_state([]).present


def test_ipvsadm_edit_only_touches_what_it_owns():
    have = "-A -t 10.96.0.10:80 -s rr\n-A -t 198.51.100.1:80 -s rr\n"
    assert ipvsadm_edit("", have, lambda a, p: a.startswith("10.96.")) == "-D -t 10.96.0.10:80\n"


# --- boot files per mode ---------------------------------------------------------------------


def files_of(mode: str, node: str = "node1"):
    c = compiled(mode)
    return plan_site(c).node(node).files


def test_boot_files_follow_the_mode_and_the_other_modes_files_go():
    ipt, nft, ipvs = files_of("iptables"), files_of("nftables"), files_of("ipvs")
    assert RULES_FILE in ipt.files and NFT_FILE not in ipt.files
    assert set(ipt.remove) == {NFT_FILE, IPSET_FILE, IPVSADM_FILE, IPVS_ADDRESSES_FILE}
    assert NFT_FILE in nft.files and RULES_FILE in nft.remove
    assert "iptables" not in nft.files[RESTORE_SCRIPT] and "svcops_nft_load /etc/svcops/rules.nft" in nft.files[RESTORE_SCRIPT]
    for f in (RULES_FILE, IPSET_FILE, IPVSADM_FILE, IPVS_ADDRESSES_FILE):
        assert f in ipvs.files
    assert ipvs.remove == (NFT_FILE,)
    script = ipvs.files[RESTORE_SCRIPT]
    order = [script.index(s) for s in ("modprobe", "sysctl -q -p", f"ip link add {DUMMY_INTERFACE}", "ipset restore", "iptables-restore", "ipvsadm -R")]
    assert order == sorted(order)
    assert "net.ipv4.vs.conntrack = 1" in ipvs.files[SYSCTL_FILE]
    for files in (ipt, nft, ipvs):
        r = subprocess.run(["sh", "-n"], input=files.files[RESTORE_SCRIPT], text=True, capture_output=True)
        assert r.returncode == 0, r.stderr


@root
@pytest.mark.root
def test_nftables_restore_script_rebuilds_the_table_and_touches_nothing_else(tmp_path):
    files = files_of("nftables")
    script = files.files[RESTORE_SCRIPT].replace(NFT_FILE, str(tmp_path / "rules.nft"))
    script = script.replace("/etc/svcops/announce", str(tmp_path / "announce"))
    (tmp_path / "rules.nft").write_text(files.files[NFT_FILE])
    rules = compiled("nftables").outputs["node1"].nftables
    with netns() as ns:
        ns_sh(ns, "nft add table inet theirs; nft add chain inet theirs input '{ type filter hook input priority 0; }'")
        for _ in range(2):  # idempotent
            ns_sh(ns, script)
            assert transactions(rules, live_state(ns).live) == []
        assert "table inet theirs" in ns_sh(ns, "nft list tables").stdout


# --- the dry run ---------------------------------------------------------------------------


def test_dry_run_lines_for_nftables_and_ipvs():
    nft_out = compiled("nftables").outputs["node1"]
    from svcops.facts import NftState, IpvsState

    assert mode_changes(nft_out, NftState(True, NftLive()), IpvsState()) == [
        f"nftables: cold start, {len(transactions(nft_out.nftables, NftLive()))} transactions"
    ]
    assert "apply fails" in mode_changes(nft_out, NftState(available=False))[0]
    ipt_out = compiled("iptables").outputs["node1"]
    assert mode_changes(ipt_out, NftState(True, NftLive(exists=True))) == ["nftables: - table ip svcops"]
    ipvs_out = compiled("ipvs").outputs["node1"]
    missing = IpvsState(("kernel module ip_vs (IP Virtual Server)",))
    assert "cannot do IPVS" in mode_changes(ipvs_out, None, missing)[0]
    live = live_holding(ipvs_out.ipvs)
    assert mode_changes(ipt_out, None, IpvsState((), live)) == ["ipvs: - svcops's sets, virtual servers and dummy interface"]
