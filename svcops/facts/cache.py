"""Every svcops fact in one round trip, reused by svcops's consecutive operations.

pyinfra runs a fact's command each time an operation asks for it, and svcops's
operations on a node ask for five facts (`svcops.facts`, `svcops.facts.dns.SvcopsDns`),
some of them several times: eight SSH round trips a node when nothing changes (2.5 s
for 20 lab nodes, most of a no-op apply). Here the first svcops operation on a host
reads all of them with one command (`SvcopsFacts`), and the next operation uses those
values again as long as nothing can have changed what they say since:

* the operation that read (or last used) them is the one that ran right before on
  this host (pyinfra's operation order: no other operation ran in between), and
* the operations since changed nothing the fact reads: each fact reads one *area* of
  the node (`READS`: iptables, nftables, ipvs, node, dns) and each svcops operation
  says which areas its commands may change (`WRITES`); `marks_changes` wraps svcops's
  operations to notice the first command. So in nftables mode a one-service change
  (the table's operation changes the table) still takes the iptables, IPVS, node
  and DNS facts from the one read: four round trips a node fewer.

Anything else (an area written, a foreign operation in between, an operation that
says nothing of what it writes) reads the fact afresh on its own, as pyinfra would
(only the first svcops operation of a run reads everything at once). A fact whose
part of the combined command failed is read on its own too, so that pyinfra reports
the failure as it always has.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field

from pyinfra.api import FactBase
from pyinfra.context import ctx_host, ctx_state

__all__ = ["SvcopsFacts", "node_fact", "marks_changes", "reads_only", "READS", "EVERYTHING"]

_MARK = "@@svcops-fact"


def _fact_classes(full_iptables: bool = False) -> tuple[type[FactBase], ...]:
    from svcops.facts.dns import SvcopsDns
    from svcops.facts.iptables import SvcopsIptables, SvcopsIptablesCanary
    from svcops.facts.ipvs import SvcopsIpvsCanary
    from svcops.facts.nftables import SvcopsNftCanary
    from svcops.facts.node import SvcopsNodeState

    # Every mode's canary (the whole state is read when one disagrees; IPVS: and when
    # another mode finds something of IPVS mode to remove), unless iptables is asked whole.
    iptables = SvcopsIptables if full_iptables else SvcopsIptablesCanary
    return (iptables, SvcopsNodeState, SvcopsNftCanary, SvcopsIpvsCanary, SvcopsDns)


class SvcopsFacts(FactBase):
    """
    Every svcops fact at once: class name -> its processed value, for those whose
    command succeeded (each runs in its own subshell, in turn).

    + full_iptables: read iptables whole (`SvcopsIptables`, seconds at 10,000
      services) rather than its canary (`SvcopsIptablesCanary`, milliseconds): for
      IPVS mode, whose operation reads its small iptables part whole, and ``svcops
      apply --dry``
    + iptables_want: the iptables canary's ``want`` (the render's bucket digests: the
      changed buckets come back in the same round trip)
    + areas: only the facts of these areas (`READS`; empty: all), for a run of some of
      svcops's operations (`reads_only`: the watch's readiness pushes)
    """

    def command(self, full_iptables: bool = False, iptables_want=(), areas=()) -> str:
        from svcops.facts.iptables import SvcopsIptablesCanary

        parts = []
        for cls in _fact_classes(full_iptables):
            if areas and READS[cls.__name__] not in areas:
                continue
            cmd = cls().command(want=iptables_want) if cls is SvcopsIptablesCanary else cls().command()
            parts.append(f"echo '{_MARK} {cls.__name__}'\n( {cmd}\n)\necho \"{_MARK}-rc $?\"\n")
        return "".join(parts)

    @staticmethod
    def default() -> dict:
        return {}

    def process(self, output: list[str]) -> dict:
        classes = {cls.__name__: cls for full in (False, True) for cls in _fact_classes(full)}
        out: dict[str, object] = {}
        name, lines = None, []
        for line in output:
            if line.startswith(_MARK + "-rc "):
                if name in classes and line.split()[-1] == "0":
                    fact = classes[name]()
                    out[name] = fact.process(lines) if lines else fact.default()
                name, lines = None, []
            elif line.startswith(_MARK + " "):
                name, lines = line.split(" ", 1)[1].strip(), []
            else:
                lines.append(line)
        return out


# The area of the node each fact reads.
READS = {
    "SvcopsIptables": "iptables",
    "SvcopsIptablesCanary": "iptables",
    "SvcopsNftables": "nftables",
    "SvcopsNftCanary": "nftables",
    "SvcopsIpvs": "ipvs",
    "SvcopsIpvsCanary": "ipvs",
    "SvcopsNodeState": "node",
    "SvcopsDns": "dns",
}
EVERYTHING = frozenset(READS.values())
# The areas each of svcops's operations may change (an operation not named here: all).
# The rule tables are separate: `table ip svcops` is not iptables-nft's `ip nat` and
# `ip filter`, and each mode's record folder is its own operation's. IPVS mode's
# operation has iptables chains of its own and addresses on its dummy interface (which
# the node state lists); the boot files are read by the rule facts (old modes' files).
WRITES: dict[str, frozenset[str]] = {
    "svcops.operations.iptables.rules": frozenset({"iptables"}),
    "svcops.operations.nftables.rules": frozenset({"nftables"}),
    "svcops.operations.ipvs.rules": frozenset({"ipvs", "iptables", "node"}),
    "svcops.operations.ipvs.absent": frozenset({"ipvs", "node"}),
    "svcops.operations.node.lb_addresses": frozenset({"node"}),
    "svcops.operations.node.static_address": frozenset({"node"}),
    "svcops.operations.node.ip_forward": frozenset({"node"}),
    "svcops.operations.node.files": EVERYTHING - {"dns"},
    "svcops.operations.dns.server": frozenset({"dns"}),
    "svcops.operations.dns.absent": frozenset({"dns"}),
}


@dataclass
class _Memo:
    state: weakref.ref  # the pyinfra state the facts were read in (not kept alive by this)
    executing: bool  # read while executing (not in the change check before it)
    op: str | None  # the operation that used them last
    dirty: set = field(default_factory=set)  # ...and the areas it (or this one) may have changed since
    facts: dict = field(default_factory=dict)


_MEMO: dict[str, _Memo] = {}
# host name -> the areas its run's operations read (`reads_only`); absent: all of them.
_AREAS: dict[str, frozenset[str]] = {}


def reads_only(host_name: str, areas: frozenset[str] | None) -> None:
    """The run on `host_name` has only operations reading `areas` (None: all): its
    one shared read leaves the other facts out (in nftables mode a readiness push
    reads the table's canary, 8 ms of a node's CPU, not all five facts' 69 ms)."""
    if areas is None:
        _AREAS.pop(host_name, None)
    else:
        _AREAS[host_name] = frozenset(areas)


def _previous_op(host, current: str | None) -> str | None:
    """The operation before `current` in `host`'s own order (None: it is the first).
    (`host.op_hash_order`: the state's global order would cost hosts x operations.)"""
    order = getattr(host, "op_hash_order", ())
    if current is None or current not in order:
        return None
    i = order.index(current)
    return order[i - 1] if i > 0 else None


def node_fact(via, cls: type[FactBase], keep: bool = False, **args):
    """``host.get_fact(cls, **args)`` for svcops's facts, from the shared read when it
    is still good (see the module's docstring). The value is dropped from the shared
    read once taken (at 10,000 services a table's state is large) unless `keep`: a
    later operation that asks again reads it afresh. `via`: the operation's ``host``
    (outside a pyinfra run, e.g. a test's stand-in, it is simply asked for the fact).

    `args` go to the shared read too when this is the first fact asked for (only
    `SvcopsIptablesCanary` takes any: ``want``); a value the shared read made without
    them is what it is (the caller reads what it lacks)."""
    state, host = ctx_state.get(), ctx_host.get()
    if state is None or host is None or getattr(via, "name", None) != host.name:
        return via.get_fact(cls, **args)
    current = host.current_op_hash
    executing = bool(state.is_executing)
    m = _MEMO.get(host.name)
    if m is None or m.state() is not state or m.executing != executing:
        # The first svcops operation on this host in this run: everything, one round trip.
        from svcops.facts.iptables import SvcopsIptables

        # The first fact asked for says which iptables read the run needs (IPVS mode's
        # operation comes first and reads its iptables part whole).
        full = cls is SvcopsIptables
        want = {"iptables_want": args["want"]} if "want" in args else {}
        if host.name in _AREAS:
            want["areas"] = tuple(sorted(_AREAS[host.name]))
        m = _Memo(weakref.ref(state), executing, current, set(), host.get_fact(SvcopsFacts, full_iptables=full, **want) or {})
        _MEMO[host.name] = m
    elif current is None or m.op not in (current, _previous_op(host, current)):
        m.facts = {}  # another operation came in between: nothing read before holds
    elif m.dirty:
        m.facts = {k: v for k, v in m.facts.items() if READS.get(k, "?") not in m.dirty}
    m.op, m.dirty = current, set()
    name = cls.__name__
    if name not in m.facts:
        m.facts[name] = host.get_fact(cls, **args)
    return m.facts[name] if keep else m.facts.pop(name)


def marks_changes(func=None, *, writes: frozenset[str] | None = None):
    """Wrap an operation's generator so that its first command marks the areas it may
    change (`writes`; default: its entry in `WRITES`, else every area) as no longer
    current in the node's shared facts (put it under ``@operation()``). Either
    ``@marks_changes`` or ``@marks_changes(writes=frozenset({"dns"}))``."""
    if func is None:
        return lambda f: marks_changes(f, writes=writes)
    areas = writes if writes is not None else WRITES.get(f"{func.__module__}.{func.__qualname__}", EVERYTHING)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        marked = False
        for command in func(*args, **kwargs):
            if not marked:
                h = ctx_host.get()
                m = _MEMO.get(h.name) if h is not None else None
                if m is not None:
                    m.dirty |= areas
                marked = True
            yield command

    return wrapper
