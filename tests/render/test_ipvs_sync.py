"""Pushing IPVS mode, its pure parts (`svcops.render.ipvs_sync`): each step from the node's
facts, in kube-proxy's order; leaving IPVS mode. (This kernel has no ip_vs: a real kernel
runs the same steps in tests/qemu/.)
"""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest
from golden import check_golden
from modes_fixtures import SERVICES, compiled, live_holding
from paths import GOLDEN

from svcops.facts.ipvs import parse_ipvs_state
from svcops.render.iptables import parse_iptables_save, restore_payload
from svcops.render.iptables_sync import expected_tables, in_sync, live_text
from svcops.render.ipvs import DUMMY_INTERFACE, SETS, SYSCTLS, SYSCTLS_BEFORE, ipvs_modules, parse_ipvsadm_save
from svcops.render.ipvs_sync import (
    IpvsLive,
    ipset_payload,
    ipvs_plan,
    ipvs_removal,
    ipvsadm_edit,
)


def ipvs_rules(services=SERVICES, node: str = "node1"):
    return compiled("ipvs", services).outputs[node].ipvs


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


def test_ipvsadm_edit_only_touches_what_it_owns():
    have = "-A -t 10.96.0.10:80 -s rr\n-A -t 198.51.100.1:80 -s rr\n"
    assert ipvsadm_edit("", have, lambda a, p: a.startswith("10.96.")) == "-D -t 10.96.0.10:80\n"


# --- drift: every svcops-owned object compared (golden texts) --------------------------

IPVS_DRIFT = {
    # name: (what was done by hand, a function of the live state)
    "real-server-deleted": (
        "ipvsadm -d -t 10.96.0.10:80 -r 10.244.2.7:8080",
        lambda live: replace(live, ipvsadm=live.ipvsadm.replace("-a -t 10.96.0.10:80 -r 10.244.2.7:8080 -m -w 1\n", "")),
    ),
    "weight-changed": (
        "ipvsadm -e -t 10.96.0.10:80 -r 10.244.2.7:8080 -m -w 5",
        lambda live: replace(live, ipvsadm=live.ipvsadm.replace("-r 10.244.2.7:8080 -m -w 1\n-A -t 10.96.0.14", "-r 10.244.2.7:8080 -m -w 5\n-A -t 10.96.0.14")),
    ),
    "forwarding-method-changed": (
        "ipvsadm -e -t 10.96.0.12:80 -r 10.0.0.11:80 -g -w 1",
        lambda live: replace(live, ipvsadm=live.ipvsadm.replace("-a -t 10.96.0.12:80 -r 10.0.0.11:80 -m -w 1", "-a -t 10.96.0.12:80 -r 10.0.0.11:80 -g -w 1")),
    ),
    "scheduler-changed": (
        "ipvsadm -E -t 10.96.0.10:80 -s wlc",
        lambda live: replace(live, ipvsadm=live.ipvsadm.replace("-A -t 10.96.0.10:80 -s rr", "-A -t 10.96.0.10:80 -s wlc")),
    ),
    "persistence-removed": (
        "ipvsadm -E -t 10.96.0.11:80 -s rr",
        lambda live: replace(live, ipvsadm=live.ipvsadm.replace("-A -t 10.96.0.11:80 -s rr -p 600", "-A -t 10.96.0.11:80 -s rr")),
    ),
    "virtual-server-deleted": (
        "ipvsadm -D -t 10.0.0.11:30080",
        lambda live: replace(live, ipvsadm="".join(ln + "\n" for ln in live.ipvsadm.splitlines() if "10.0.0.11:30080" not in ln)),
    ),
    "foreign-real-server": (
        "ipvsadm -a -t 10.96.0.10:80 -r 10.9.9.9:80 -m -w 1",
        lambda live: replace(live, ipvsadm=live.ipvsadm + "-a -t 10.96.0.10:80 -r 10.9.9.9:80 -m -w 1\n"),
    ),
    "foreign-virtual-server-on-a-svcops-address": (
        "ipvsadm -A -t 10.96.0.10:8080 -s rr",
        lambda live: replace(live, ipvsadm=live.ipvsadm + "-A -t 10.96.0.10:8080 -s rr\n"),
    ),
    "ipset-member-deleted": (
        "ipset del SVCOPS-CLUSTER-IP 10.96.0.10,tcp:80",
        lambda live: replace(live, members={**live.members, "SVCOPS-CLUSTER-IP": live.members["SVCOPS-CLUSTER-IP"] - {"10.96.0.10,tcp:80"}}),
    ),
    "ipset-member-added": (
        "ipset add SVCOPS-NO-ENDPOINTS 10.96.0.10,tcp:80",
        lambda live: replace(live, members={**live.members, "SVCOPS-NO-ENDPOINTS": live.members["SVCOPS-NO-ENDPOINTS"] | {"10.96.0.10,tcp:80"}}),
    ),
    "dummy-address-deleted": (
        "ip addr del 10.96.0.11/32 dev svcops-ipvs0",
        lambda live: replace(live, addresses=tuple(a for a in live.addresses if a != "10.96.0.11")),
    ),
    "foreign-dummy-address": (
        "ip addr add 10.96.0.99/32 dev svcops-ipvs0",
        lambda live: replace(live, addresses=(*live.addresses, "10.96.0.99")),
    ),
}


def _ipt_drifted(rules):
    """svcops's iptables chains with SVCOPS-POSTROUTING flushed by hand."""
    ipt = expected_tables(rules.iptables_rules)
    nat = ipt.table("nat")
    return replace(ipt, tables={**ipt.tables, "nat": replace(nat, chains={**nat.chains, "SVCOPS-POSTROUTING": ()})})


@pytest.mark.parametrize("name", sorted(IPVS_DRIFT) + ["iptables-chain-flushed"])
def test_golden_ipvs_drift_is_named_and_its_edit_puts_it_right(name):
    rules = ipvs_rules()
    live = live_holding(rules)
    ipt = expected_tables(rules.iptables_rules)
    if name == "iptables-chain-flushed":
        what, ipt = "iptables -t nat -F SVCOPS-POSTROUTING", _ipt_drifted(rules)
    else:
        what, drill = IPVS_DRIFT[name]
        live = drill(live)
        assert live != live_holding(rules), "the drill changed nothing"
    plan = ipvs_plan(rules, live, ipt, ipvs_modules(rules.ipvsadm))
    assert not plan.empty
    check_golden(
        GOLDEN / "ipvs-drift" / f"{name}.txt",
        f"# by hand: {what}\n## svcops apply --dry\n" + "".join(ln + "\n" for ln in plan.summary())
        + "## ipvsadm -R\n" + plan.ipvsadm + "## iptables-restore --noflush\n" + plan.iptables,
    )  # fmt: skip
    # What the plan sends gives back the render: servers, sets, addresses, chains.
    assert simulate_ipvsadm(live.ipvsadm, plan.ipvsadm) == parse_ipvsadm_save(rules.ipvsadm)
    if plan.ipset:
        assert plan.ipset == ipset_payload(rules, live)
    assert set(live.addresses) | {ln.split()[2].split("/")[0] for ln in plan.addresses.splitlines()} >= set(rules.addresses)
    assert not (set(live.addresses) - {ln.split()[2].split("/")[0] for ln in plan.finish.splitlines()}) - set(rules.addresses)
    if plan.iptables:
        assert in_sync(rules.iptables_rules, parse_iptables_save(live_text(ipt) + plan.iptables))
