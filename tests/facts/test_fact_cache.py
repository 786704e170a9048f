"""svcops.facts.cache: every svcops fact in one round trip, reused only while nothing can
have changed the node.

The decision is tested with stand-ins for pyinfra's state and host (which operation
runs, in which order, what each fact read returns); the combined command against the
real tools, in a throwaway network namespace: each of its parts gives what the fact
alone gives.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from netns import netns
from pyinfra.context import ctx_host, ctx_state

from svcops.facts.cache import SvcopsFacts, _fact_classes, marks_changes, node_fact
from svcops.facts.dns import SvcopsDns
from svcops.facts.iptables import SvcopsIptables, SvcopsIptablesCanary
from svcops.facts.ipvs import SvcopsIpvs, SvcopsIpvsCanary
from svcops.facts.nftables import SvcopsNftCanary
from svcops.facts.node import SvcopsNodeState


class FakeState:
    def __init__(self, order: list[str], host: "FakeHost", executing: bool = True) -> None:
        self.is_executing = executing
        # The host's own operations, in order ("elsewhere..." ones are for other hosts only).
        host.op_hash_order = [h for h in order if not h.startswith("elsewhere")]


class FakeHost:
    """Counts fact reads; SvcopsFacts gives every svcops fact as "<name>-combined"."""

    def __init__(self, name: str = "node1") -> None:
        self.name, self.current_op_hash, self.reads, self.op_hash_order = name, None, [], []

    def get_fact(self, cls, full_iptables: bool = False):
        self.reads.append(cls.__name__ + ("(full)" if full_iptables else ""))
        if cls is SvcopsFacts:
            return {c.__name__: f"{c.__name__}-combined" for c in _fact_classes(full_iptables)}
        return f"{cls.__name__}-alone"


def run_ops(state: FakeState, host: FakeHost, ops: list[tuple], writes: dict | None = None) -> list:
    """Run each (op hash, facts it asks for, whether it yields a command) in order;
    `writes`: op hash -> the areas that operation says it changes (else: all)."""
    got = []

    def body(facts, changes):
        for cls, keep in facts:
            got.append(node_fact(host, cls, keep=keep))
        if changes:
            yield "a command"

    anything = marks_changes(body)
    with ctx_state.use(state), ctx_host.use(host):
        for op_hash, facts, changes in ops:
            host.current_op_hash = op_hash
            op = marks_changes(body, writes=frozenset(writes[op_hash])) if writes and op_hash in writes else anything
            list(op(facts, changes))
    return got


NODE = (SvcopsNodeState, True)


def test_a_run_that_changes_nothing_reads_every_fact_once():
    host = FakeHost()
    order = ["ipt", "nft", "ipvs", "lb", "addr", "fwd", "files", "dns"]
    state = FakeState(order, host)
    got = run_ops(state, host, [
        ("ipt", [(SvcopsIptables, False)], False), ("nft", [(SvcopsNftCanary, False)], False),
        ("ipvs", [(SvcopsIpvsCanary, False)], False), ("lb", [NODE], False), ("addr", [NODE], False),
        ("fwd", [NODE], False), ("files", [NODE], False), ("dns", [(SvcopsDns, False)], False),
    ])  # fmt: skip
    assert host.reads == ["SvcopsFacts(full)"]
    assert all(v.endswith("-combined") for v in got)


def test_iptables_mode_reads_the_canary_with_the_rest_and_the_whole_tables_only_when_asked():
    host = FakeHost()
    order = ["ipt", "nft", "lb"]
    got = run_ops(FakeState(order, host), host, [
        ("ipt", [(SvcopsIptablesCanary, False), (SvcopsIptables, False)], False),
        ("nft", [(SvcopsNftCanary, False)], False),
        ("lb", [NODE], False),
    ])  # fmt: skip
    assert host.reads == ["SvcopsFacts", "SvcopsIptables"]
    assert got == ["SvcopsIptablesCanary-combined", "SvcopsIptables-alone", "SvcopsNftCanary-combined", "SvcopsNodeState-combined"]


def test_after_a_change_the_next_operations_read_afresh_and_share_again():
    host = FakeHost()
    order = ["ipt", "nft", "lb", "addr"]
    state = FakeState(order, host)
    got = run_ops(state, host, [
        ("ipt", [(SvcopsIptables, False)], True),  # changes the node
        ("nft", [(SvcopsNftCanary, False)], False),
        ("lb", [NODE], True),  # changes it too
        ("addr", [NODE], False),
    ])  # fmt: skip
    assert host.reads == ["SvcopsFacts(full)", "SvcopsNftCanary", "SvcopsNodeState", "SvcopsNodeState"]
    assert got == ["SvcopsIptables-combined", "SvcopsNftCanary-alone", "SvcopsNodeState-alone", "SvcopsNodeState-alone"]


def test_a_change_drops_only_the_facts_of_the_areas_it_may_have_changed():
    """nftables mode's one-service change: the table changes, and the operations after
    it still take the iptables, IPVS, node and DNS facts from the one read; the node's
    addresses change, and the node state is read again for the operation after."""
    host = FakeHost()
    order = ["nft", "ipt", "ipvs", "lb", "addr", "dns", "nft-again"]
    got = run_ops(FakeState(order, host), host, [
        ("nft", [(SvcopsNftCanary, True)], True),
        ("ipt", [(SvcopsIptablesCanary, False)], False),
        ("ipvs", [(SvcopsIpvsCanary, False)], False),
        ("lb", [NODE], True),
        ("addr", [NODE], False),
        ("dns", [(SvcopsDns, False)], False),
        ("nft-again", [(SvcopsNftCanary, False)], False),
    ], writes={"nft": {"nftables"}, "lb": {"node"}})  # fmt: skip
    assert host.reads == ["SvcopsFacts", "SvcopsNodeState", "SvcopsNftCanary"]
    assert got == [
        "SvcopsNftCanary-combined", "SvcopsIptablesCanary-combined", "SvcopsIpvsCanary-combined",
        "SvcopsNodeState-combined", "SvcopsNodeState-alone", "SvcopsDns-combined", "SvcopsNftCanary-alone",
    ]  # fmt: skip


def test_every_operation_named_in_writes_is_one_of_svcops_and_reads_only_known_areas():
    import importlib

    from svcops.facts.cache import EVERYTHING, READS, WRITES

    for name, areas in WRITES.items():
        module, _, func = name.rpartition(".")
        assert callable(getattr(importlib.import_module(module), func)), name
        assert areas <= EVERYTHING, name
    assert {c.__name__ for c in _fact_classes(False) + _fact_classes(True)} <= set(READS)


def test_a_fact_already_taken_or_an_operation_in_between_means_a_fresh_read():
    host = FakeHost()
    order = ["ipt", "elsewhere", "nft", "other-op", "lb", "ipvs"]
    state = FakeState(order, host)
    run_ops(state, host, [
        ("ipt", [(SvcopsIptables, False)], False),
        ("nft", [(SvcopsNftCanary, False)], False),  # an operation on other hosts only: shared
        ("lb", [NODE], False),  # a foreign operation ran before this one: fresh
        ("ipvs", [(SvcopsIptables, False)], False),  # taken already by "ipt": fresh
    ])  # fmt: skip
    assert host.reads == ["SvcopsFacts(full)", "SvcopsNodeState", "SvcopsIptables"]


def test_a_new_state_or_the_change_check_before_execution_reads_everything_again():
    host = FakeHost()
    order = ["ipt", "nft"]
    run_ops(FakeState(order, host, executing=False), host, [("ipt", [(SvcopsIptables, False)], False)])
    run_ops(FakeState(order, host), host, [("ipt", [(SvcopsIptables, False)], False)])
    run_ops(FakeState(order, host), host, [("ipt", [(SvcopsIptables, False)], False)])
    assert host.reads == ["SvcopsFacts(full)"] * 3


def test_outside_a_pyinfra_run_the_host_is_simply_asked():
    host = FakeHost()
    assert node_fact(host, SvcopsIptables) == "SvcopsIptables-alone" and host.reads == ["SvcopsIptables"]


def test_a_part_that_failed_is_left_out_so_it_is_read_on_its_own():
    out = SvcopsFacts().process([
        "@@svcops-fact SvcopsIptables", "*nat", ":SVCOPS-SERVICES - [0:0]", "COMMIT", "@@svcops-fact-rc 0",
        "@@svcops-fact SvcopsNftCanary", "oops", "@@svcops-fact-rc 1",
    ])  # fmt: skip
    assert "SvcopsNftCanary" not in out
    assert "SVCOPS-SERVICES" in out["SvcopsIptables"].table("nat").chains


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("iptables-save"), reason="needs root and iptables")
def test_the_combined_command_gives_what_each_fact_gives_alone():
    def sh(ns: str, script: str) -> list[str]:
        r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", script], capture_output=True, text=True, timeout=60)
        return r.stdout.splitlines()

    with netns() as ns:
        subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "--noflush"], check=True, text=True,
                       input="*nat\n:SVCOPS-SERVICES - [0:0]\n-A OUTPUT -j SVCOPS-SERVICES\nCOMMIT\n")  # fmt: skip
        combined = SvcopsFacts().process(sh(ns, SvcopsFacts().command(full_iptables=True)))
        for cls in (SvcopsIptables, SvcopsNftCanary, SvcopsIpvsCanary):
            alone = cls().process(sh(ns, cls().command()))
            assert combined[cls.__name__] == alone, cls.__name__
        assert "SVCOPS-SERVICES" in combined["SvcopsIptables"].table("nat").chains
        cheap = SvcopsFacts().process(sh(ns, SvcopsFacts().command()))
        assert "SvcopsIptables" not in cheap
        assert cheap["SvcopsIptablesCanary"] == SvcopsIptablesCanary().process(sh(ns, SvcopsIptablesCanary().command()))
        assert cheap["SvcopsIptablesCanary"].jumps["nat"] == ("-A OUTPUT -j SVCOPS-SERVICES",)
