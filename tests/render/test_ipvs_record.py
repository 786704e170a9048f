"""IPVS mode's fast path, its pure core (`svcops.render.ipvs_record`, issue 11): the record
(buckets, index, fingerprint), the canary and `fast_plan`, against the whole read's plan
(`ipvs_plan`); the boot loader with stand-ins for ipset, ipvsadm and ip. (This kernel
has no ip_vs: tests/qemu/test_ipvs_qemu_ssh.py runs the same in a real one.)"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import render_fixtures as F
from modes_fixtures import SERVICES, compiled
from test_ipvs_sync import simulate_ipvsadm

from svcops.facts.ipvs import parse_ipvs_canary
from svcops.render.iptables_sync import expected_tables
from svcops.render.ipvs import DUMMY_INTERFACE, ipvs_modules, parse_ipvsadm_save
from svcops.render.ipvs_record import (
    BOOT_LOADER,
    CANARY_MARK,
    STATE_SET,
    canary_set_commands,
    fast_buckets,
    fast_plan,
    fingerprint_of,
    parse_bucket,
    parse_canary,
    record_files,
)
from svcops.render.ipvs_sync import applied_state, ipvs_plan
from svcops.render.record import digest_text, parse_index

OLD = compiled("ipvs").outputs["node1"].ipvs
# One service changed: ClientIP affinity on "web" (its cluster IP's and node ports' servers).
CHANGED = tuple(
    F.service("web", F.HTTP, type="NodePort", session_affinity="ClientIP", affinity_timeout=60) if s.name == "web" else s
    for s in SERVICES
)
NEW = compiled("ipvs", CHANGED).outputs["node1"].ipvs
# One service added: new servers, set entries and a dummy address.
ADDED = compiled("ipvs", (*SERVICES, F.service("extra", F.HTTP))).outputs["node1"].ipvs


def index_of(rules):
    return parse_index(record_files(rules)["index"].splitlines(), "ipvs")


def read_back(files: dict, names) -> dict:
    """What `SvcopsIpvsBuckets` gives for `names` of a node holding `files`."""
    out = {}
    for b in names:
        t = files.get(b)
        out[b] = (digest_text(t), t) if t else ("", "")
    return out


def test_the_record_holds_every_server_entry_and_address_once_and_names_itself():
    files = record_files(OLD)
    index = parse_index(files["index"].splitlines(), "ipvs")
    assert index is not None and index.fingerprint == fingerprint_of(OLD)
    servers, entries, addresses = {}, set(), set()
    for b, text in files.items():
        if b in ("index", "sk") or text is None:
            continue
        assert index.files[b] == digest_text(text)
        units = parse_bucket(text)
        assert units is not None
        assert not set(units.servers) & set(servers)
        servers.update(units.servers)
        entries |= units.entries
        addresses |= units.addresses
    assert parse_ipvsadm_save("".join(servers.values())) == parse_ipvsadm_save(OLD.ipvsadm)
    assert addresses == set(OLD.addresses)
    want = {f"add {n} {e}" for n, es in OLD.set_entries().items() for e in es}
    assert entries == want
    # The counts the canary compares: one per set and the addresses.
    assert f"a={len(OLD.addresses)}" in index.extra.split(",")
    assert f"SVCOPS-CLUSTER-IP={len(OLD.set_entries()['SVCOPS-CLUSTER-IP'])}" in index.extra.split(",")


def test_a_record_in_sync_reads_no_bucket_and_sends_nothing():
    assert fast_buckets(index_of(OLD), OLD) == []
    fast = fast_plan(OLD, index_of(OLD), {})
    assert fast.plan.empty and fast.files == {}


def test_a_one_service_change_through_the_record_is_the_whole_reads_plan():
    files = record_files(OLD)
    have = index_of(OLD)
    names = fast_buckets(have, NEW)
    assert names and len(names) <= 3  # the cluster IP's and the node ports' servers
    fast = fast_plan(NEW, have, read_back(files, names))
    assert fast is not None
    whole = ipvs_plan(NEW, applied_state(OLD, ipvs_modules(OLD.ipvsadm)), expected_tables(OLD.iptables_rules), ipvs_modules(NEW.ipvsadm))
    # The same servers edited, the same way back; no address or set entry changes.
    assert sorted(fast.plan.ipvsadm.splitlines()) == sorted(whole.ipvsadm.splitlines())
    assert sorted(fast.plan.undo_ipvsadm.splitlines()) == sorted(whole.undo_ipvsadm.splitlines())
    assert all(line.startswith("-E ") for line in fast.plan.ipvsadm.splitlines())
    assert not (fast.plan.addresses or fast.plan.finish or fast.plan.ipset or fast.plan.iptables)
    # The node's record afterwards is NEW's record.
    assert fast.fingerprint == fingerprint_of(NEW)
    after = {**files, **fast.files}
    assert after["index"] == record_files(NEW)["index"]
    assert {b: t for b, t in after.items() if t} == {b: t for b, t in record_files(NEW).items() if t}


def test_an_added_service_adds_its_servers_entries_and_address_and_goes_back_exactly():
    files = record_files(OLD)
    have = index_of(OLD)
    names = fast_buckets(have, ADDED)
    fast = fast_plan(ADDED, have, read_back(files, names))
    servers = simulate_ipvsadm(OLD.ipvsadm, fast.plan.ipvsadm)
    assert servers == parse_ipvsadm_save(ADDED.ipvsadm)
    assert simulate_ipvsadm(ADDED.ipvsadm, fast.plan.undo_ipvsadm) == parse_ipvsadm_save(OLD.ipvsadm)
    new_vip = (set(ADDED.addresses) - set(OLD.addresses)).pop()
    assert fast.plan.addresses == f"address replace {new_vip}/32 dev {DUMMY_INTERFACE}\n"
    assert f"address del {new_vip}/32 dev {DUMMY_INTERFACE}\n" in fast.undo_addresses

    def entries(rules):
        return {(n, e) for n, es in rules.set_entries().items() for e in es}

    def restore(state, text):
        for line in text.splitlines():
            op, name, entry, *_ = line.split()
            (state.add if op == "add" else state.discard)((name, entry))
        return state

    assert restore(entries(OLD), fast.plan.ipset) == entries(ADDED)
    assert restore(entries(ADDED), fast.undo_ipset) == entries(OLD)
    assert {b: t for b, t in {**files, **fast.files}.items() if t} == {b: t for b, t in record_files(ADDED).items() if t}


def test_a_bucket_that_is_not_the_one_the_index_names_means_the_whole_read():
    files = record_files(OLD)
    have = index_of(OLD)
    names = fast_buckets(have, NEW)
    old = read_back(files, names)
    b = next(n for n in names if n != "sk")
    edited = old[b][1].replace("-s rr", "-s wlc", 1)
    assert fast_plan(NEW, have, {**old, b: (digest_text(edited), edited)}) is None
    assert fast_plan(NEW, have, {**old, b: ("", "")}) is None  # the file is gone
    assert fast_plan(NEW, have, {**old, b: (old[b][0], "garbage\n")}) is None


def canary_output(rules, **changes) -> list[str]:
    """What `SvcopsIpvsCanary` prints on a node holding `rules` and their record."""
    fp = fingerprint_of(rules)
    counts = {n: len(set(es)) for n, es in rules.set_entries().items()}  # the kernel holds each once
    lines = ["link", f"addresses {changes.get('addresses', len(rules.addresses))}"]
    from svcops.render.ipvs import SETS

    for s in SETS:
        if s.name not in changes.get("destroyed", ()):
            lines.append(f"count {s.name} {changes.get(s.name, counts.get(s.name, 0))}")
    lines.append(f"count {STATE_SET} 1")
    lines.append("@@svcops-ipvs canary")
    if changes.get("canary", True):
        lines.append(f'127.0.0.1 comment "svcops-state {fp}"')
    if changes.get("mark", True):
        lines.append("mark")
    lines += ["servers", "@@svcops-ipvs index", *record_files(rules)["index"].splitlines()]
    return lines


def test_the_canary_is_trusted_only_when_every_part_agrees_with_the_record():
    assert parse_ipvs_canary(canary_output(OLD)).trusted
    assert parse_canary([f'127.0.0.1 comment "svcops-state {fingerprint_of(OLD)}"']) == fingerprint_of(OLD)
    # ipvsadm -C, a flushed dummy interface, a flushed or destroyed set, no canary entry.
    for drill in ({"mark": False}, {"addresses": 0}, {"SVCOPS-CLUSTER-IP": 0}, {"destroyed": ("SVCOPS-IPVS-IPS",)}, {"canary": False}):
        c = parse_ipvs_canary(canary_output(OLD, **drill))
        assert not c.trusted, drill
        assert c.present
    # A record another one replaced (the index of NEW, the kernel of OLD).
    lines = canary_output(OLD)
    i = lines.index("@@svcops-ipvs index")
    assert not parse_ipvs_canary(lines[: i + 1] + record_files(NEW)["index"].splitlines()).trusted
    assert not parse_ipvs_canary([]).present


def test_the_boot_loader_feeds_the_record_to_the_tools_and_sets_the_canary_last(tmp_path):
    record = tmp_path / "ipvs.d"
    record.mkdir()
    for b, t in record_files(NEW).items():
        if t is not None:
            (record / b).write_text(t)
    log = _boot(tmp_path, record)
    fed = log.read_text()
    assert parse_ipvsadm_save(_part(fed, "ipvsadm -R")) == parse_ipvsadm_save(NEW.ipvsadm)
    ipset = _part(fed, "ipset restore")
    entries = {tuple(line.split()[1:3]) for line in ipset.splitlines() if line.startswith("add ")}
    assert entries == {(n + "-T", e) for n, es in NEW.set_entries().items() for e in es}
    assert ipset.index("create SVCOPS-CLUSTER-IP ") < ipset.index("add SVCOPS-CLUSTER-IP-T ") < ipset.index("swap SVCOPS-CLUSTER-IP-T SVCOPS-CLUSTER-IP")
    assert sorted(_part(fed, "ip -batch -").splitlines()) == sorted(f"address replace {a}/32 dev {DUMMY_INTERFACE}" for a in NEW.addresses)
    assert f'ipset add {STATE_SET} 127.0.0.1 comment svcops-state {fingerprint_of(NEW)}' in fed.splitlines()
    assert fed.rindex("ipset add SVCOPS-STATE") > fed.rindex("ipvsadm -R")
    assert f"ipvsadm -A -f {CANARY_MARK} -s rr" in fed
    # A bucket edited by hand: loaded as it is, and no canary.
    b = next(n for n in sorted(os.listdir(record)) if n not in ("index", "sk"))
    (record / b).write_text((record / b).read_text() + "address 10.96.9.9\n")
    fed = _boot(tmp_path, record).read_text()
    assert "ipset add SVCOPS-STATE" not in fed and f"ipset flush {STATE_SET}" in fed
    assert "address replace 10.96.9.9/32" in fed


def _part(log: str, command: str) -> str:
    return log.split(f"== {command}\n", 1)[1].split("== ", 1)[0]


def _boot(tmp: Path, record: Path) -> Path:
    """Run the boot loader with stand-ins for ip, ipset, ipvsadm(-save) that log what
    they are given (IPVS empty: ipvsadm-save prints nothing)."""
    bin_ = tmp / "bin"
    bin_.mkdir(exist_ok=True)
    log = tmp / "log"
    log.write_text("")
    for name in ("ip", "ipset", "ipvsadm"):
        stub = bin_ / name
        stub.write_text(
            f'#!/bin/sh\nif [ "$1" = -L ]; then exit 1; fi\n'
            f'if [ "$*" = "-batch -" ] || [ "$*" = restore ] || [ "$*" = -R ]; then echo "== {name} $*" >> {log}; cat >> {log}; else echo "{name} $*" >> {log}; fi\n'
            f'if [ "$1" = list ]; then exit 1; fi\n'
        )
        stub.chmod(0o755)
    (bin_ / "ipvsadm-save").write_text("#!/bin/sh\n")
    (bin_ / "ipvsadm-save").chmod(0o755)
    script = BOOT_LOADER.replace("/run/svcops-ipvs-boot", str(tmp / "boot")) + f"set -e\nsvcops_ipvs_boot {record}\necho '== end' >> {log}\n"
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"}
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return log


def test_the_canary_commands_set_the_fingerprint_after_making_the_set_and_the_mark():
    lines = canary_set_commands("abc").splitlines()
    assert lines[0].startswith(f"ipset create {STATE_SET} hash:ip comment")
    assert f'ipset add {STATE_SET} 127.0.0.1 comment "svcops-state abc"' in lines
