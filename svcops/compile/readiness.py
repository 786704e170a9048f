"""Readiness from what the nodes say: probe reports and node liveness in, `Readiness` out.

The watch feeds a `Tracker` with what each node's agent writes (`svcops.watch.agent`)
and with the clock; the tracker says which workloads are ready now:

* a workload with a readinessProbe is ready when its node is not lost and the last
  report of its probe (the agent applies the thresholds) said ready; before its first
  report it keeps what the previous readiness said (`start`: a restarted watch takes
  over the one it left), else it is not ready, as in Kubernetes;
* a workload without one is ready while its node is not lost;
* a node is lost once it has said nothing (not even a heartbeat) for `grace` seconds,
  or has not answered at all for `grace` seconds since the watch started; it is back
  once it answers again and its agent has probed every workload once (``synced``).

Pure: the clock is an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from svcops.site.model import Node, Readiness

__all__ = ["Tracker", "Change"]


@dataclass(frozen=True, slots=True)
class Change:
    """One transition, for the watch's log line and metrics."""

    kind: str  # "probe" | "lost" | "back"
    node: str
    workload: str | None = None
    ready: bool | None = None
    why: str = ""

    def line(self) -> str:
        if self.kind == "probe":
            return f"{self.node}/{self.workload}: {'ready' if self.ready else 'not ready'} ({self.why})"
        if self.kind == "lost":
            return f"{self.node}: lost ({self.why}): its workloads are out"
        return f"{self.node}: back ({self.why})"


@dataclass
class _NodeState:
    seen: float  # when it last said anything (or when the watch started)
    answered: bool = False  # said anything since the watch (re)connected it
    synced: bool = False  # its agent has a first result for every probe
    lost: bool = False
    results: dict[str, tuple[bool, str]] = field(default_factory=dict)


class Tracker:
    """The readiness of every workload of `nodes`, kept up to date by the node events."""

    def __init__(self, nodes: Sequence[Node], grace: float, now: float, start: Readiness | None = None):
        self.grace = grace
        self.nodes: dict[str, Node] = {}
        self.state: dict[str, _NodeState] = {}
        self.start = start or Readiness()
        self.set_nodes(nodes, now)

    # --- the inventory ------------------------------------------------------------------

    def set_nodes(self, nodes: Sequence[Node], now: float) -> None:
        """A new inventory (the watch reloaded it): known nodes keep their state."""
        self.nodes = {n.name: n for n in nodes}
        self.state = {n: self.state.get(n) or _NodeState(seen=now, lost=n in self.start.lost) for n in self.nodes}
        for n, st in self.state.items():
            probed = {w.name for w in self.nodes[n].workloads if w.readiness_probe is not None}
            st.results = {w: r for w, r in st.results.items() if w in probed}

    # --- what the nodes say ------------------------------------------------------------

    def heard(self, node: str, now: float) -> list[Change]:
        """Any line from `node` (a heartbeat included)."""
        st = self.state.get(node)
        if st is None:
            return []
        st.seen = now
        st.answered = True
        return self._maybe_back(node, st)

    def report(self, node: str, workload: str, ready: bool, why: str, now: float) -> list[Change]:
        """A probe result the agent reported (a first result or a transition)."""
        st = self.state.get(node)
        if st is None or workload not in {w.name for w in self.nodes[node].workloads}:
            return []
        changes = self.heard(node, now)
        before = self._probe_ready(node, st, workload)
        st.results[workload] = (ready, why)
        if before != ready and not st.lost:
            changes.append(Change("probe", node, workload, ready, why))
        return changes

    def synced(self, node: str, now: float) -> list[Change]:
        st = self.state.get(node)
        if st is None:
            return []
        st.synced = True
        return self.heard(node, now)

    def disconnected(self, node: str) -> None:
        """The node's agent or connection ended: it has to answer and sync again."""
        st = self.state.get(node)
        if st is not None:
            st.answered = st.synced = False

    def tick(self, now: float) -> list[Change]:
        """Nodes silent for longer than the grace period are lost."""
        out = []
        for name, st in self.state.items():
            if not st.lost and now - st.seen > self.grace:
                st.lost = True
                st.synced = st.answered = False
                out.append(Change("lost", name, why=f"silent for {now - st.seen:.1f} s"))
        return out

    def _maybe_back(self, node: str, st: _NodeState) -> list[Change]:
        if st.lost and st.answered and st.synced:
            st.lost = False
            return [Change("back", node, why="answering, probes run")]
        return []

    # --- the answer ------------------------------------------------------------------------

    def _probe_ready(self, node: str, st: _NodeState, workload: str) -> bool:
        got = st.results.get(workload)
        if got is not None:
            return got[0]
        # No report yet: what the previous watch left, else not ready (Kubernetes'
        # initial Failure).
        key = f"{node}/{workload}"
        return key in self.start.why and key not in self.start.not_ready

    def readiness(self) -> Readiness:
        not_ready: set[str] = set()
        why: dict[str, str] = {}
        lost = frozenset(n for n, st in self.state.items() if st.lost)
        for n, node in self.nodes.items():
            st = self.state[n]
            for w in node.workloads:
                if w.readiness_probe is None:
                    continue
                key = f"{n}/{w.name}"
                got = st.results.get(w.name)
                if not self._probe_ready(n, st, w.name):
                    not_ready.add(key)
                why[key] = got[1] if got is not None else self.start.why.get(key, "not probed yet")
        return Readiness(frozenset(not_ready), lost, why)

    def all_synced(self) -> bool:
        """Every node either lost or synced: the first push may go."""
        return all(st.lost or st.synced for st in self.state.values())
