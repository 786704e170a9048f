"""`svcops check`: does every node hold what the site renders? Reads, never changes.

    svcops check -i inventory/prod.py sites/prod            # one line a node, one a drift item
    svcops check -i inventory/prod.py --json sites/prod     # the same as a JSON document

What happens, in order:
1. the inventory is loaded with pyinfra's own loader and the site compiled for all of
   its hosts as `svcops plan` does, but nothing is written: allocations svcops.lock
   lacks are made in memory (and said on stderr), the site is not locked;
2. every selected node is connected to (strict host-key checking unless the inventory
   says otherwise) and its *whole* live state read, always: svcops's iptables chains
   and jumps (iptables-save), its nftables table with every chain's rules (nft list
   table), its IPVS footprint, its files, addresses, ip_forward and DNS server
   (`SvcopsIptables`, `SvcopsNodeState`, `SvcopsNftables`, `SvcopsIpvs`, `SvcopsDns`);
   never a cheaper summary that could miss a hand edit;
3. each node's state is compared with the render and what differs is said per service
   port (`svcops.drift`);
4. the report: text (`report_text`) or JSON (`report_json`, shape `JSON_VERSION`),
   and the exit status (`exit_status`): 0 every node in sync, 2 drift on any node,
   1 an error (the site or inventory, or a node that could not be read).

The pure helpers (the report, the exit status) are tested on their own; `run` is the
shell. gevent must be monkey-patched before pyinfra is imported (`svcops.cli` does it).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Sequence, TextIO

from svcops.drift import NodeCheck

__all__ = ["JSON_VERSION", "CheckOptions", "exit_status", "report_text", "report_json", "run"]

# The version of `report_json`'s shape: raised when a field changes meaning or goes.
JSON_VERSION = 1
EXIT_IN_SYNC, EXIT_ERROR, EXIT_DRIFT = 0, 1, 2


# --- pure helpers ----------------------------------------------------------------------


def exit_status(checks: Sequence[NodeCheck]) -> int:
    """0 when every node is in sync, 1 when any node could not be checked (then the
    fleet's state is not known, whatever the others say), else 2 when any drifted."""
    if any(c.status == "error" for c in checks):
        return EXIT_ERROR
    return EXIT_DRIFT if any(c.status == "drift" for c in checks) else EXIT_IN_SYNC


def _verdict(checks: Sequence[NodeCheck]) -> str:
    return {EXIT_IN_SYNC: "in-sync", EXIT_DRIFT: "drift", EXIT_ERROR: "error"}[exit_status(checks)]


def report_text(checks: Sequence[NodeCheck], site: str, mode: str) -> str:
    """The report: a header, every node's lines (each starting "NODE: "), a last line
    counting the nodes by status. Stable: the same state gives the same text."""
    out = [f"svcops check: site {site}, proxy mode {mode}, {len(checks)} node{'s' if len(checks) != 1 else ''}"]
    for c in checks:
        out += c.lines()
    counts = []
    for status, word in (("in-sync", "in sync"), ("drift", "drift"), ("error", "error")):
        names = [c.node for c in checks if c.status == status]
        if names:
            counts.append(f"{len(names)} {word}" + ("" if status == "in-sync" else f" ({', '.join(names)})"))
    out.append(f"svcops check: {', '.join(counts) or 'no node'}")
    return "".join(line + "\n" for line in out)


def report_json(checks: Sequence[NodeCheck], site: str, inventory: str, mode: str | None, error: str | None = None) -> dict:
    """The report as JSON (documented in `svcops check --help` and the README)::

        {"version": 1, "site": ..., "inventory": ..., "proxyMode": "iptables",
         "status": "in-sync" | "drift" | "error", "error": null | "why (site or inventory)",
         "counts": {"in-sync": 1, "drift": 1, "error": 0},
         "nodes": [{"node": "node1", "status": "in-sync" | "drift" | "error",
                    "error": null | "why", "items": [{"service": "default/web" | null,
                    "port": "80/TCP" | null, "what": "missing" | "extra" | "differs",
                    "detail": "..."}]}]}

    `error` without nodes: the site or inventory could not be used at all."""
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("in-sync", "drift", "error")}
    return {
        "version": JSON_VERSION,
        "site": site,
        "inventory": inventory,
        "proxyMode": mode,
        "status": "error" if error else _verdict(checks),
        "error": error,
        "counts": counts,
        "nodes": [c.as_json() for c in checks],
    }


# --- the shell -----------------------------------------------------------------------


@dataclass
class CheckOptions:
    inventory: str
    site: str | None = None
    json: bool = False
    limit: str | None = None
    node_timeout: float | None = None
    command_timeout: int | None = None


def _fail(opts: CheckOptions, site: str, why: str, out: TextIO, err: TextIO) -> int:
    print(f"svcops check: {why}", file=err)
    if opts.json:
        json.dump(report_json([], site, opts.inventory, None, why), out, indent=2)
        print(file=out)
    return EXIT_ERROR


def run(opts: CheckOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """The `svcops check` command; returns the exit status (see `exit_status`)."""
    import logging

    from pyinfra.api.state import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory
    from pyinfra_cli.log import setup_logging

    from svcops.apply import select_hosts
    from svcops.deploy import SiteError, compile_from_hosts
    from svcops.site.files import folder_problem
    from svcops.site.hostdata import common_data

    site = opts.site or "."
    if not os.path.isfile(opts.inventory):
        return _fail(opts, site, f"{opts.inventory}: inventory file not found", out, err)
    from pyinfra import logger

    if not logger.handlers:
        setup_logging(logging.WARNING)  # pyinfra's errors (a node's failed connection) on stderr, no chatter
    try:
        with ctx_state.use(State()):
            inventory = make_inventory(opts.inventory, cwd=os.getcwd())
    except Exception as e:
        cause = getattr(e, "exception", None) or e
        return _fail(opts, site, f"{opts.inventory}: cannot load the inventory: {type(cause).__name__}: {cause}", out, err)
    hosts = [(h.name, h.data.dict()) for h in inventory]
    if not hosts:
        return _fail(opts, site, f"{opts.inventory}: the inventory has no hosts", out, err)
    site = opts.site or common_data(hosts).get("svcops_site") or "."
    why = folder_problem(site)
    if why is not None:
        return _fail(opts, site, f"{site}: site folder {why}", out, err)
    try:
        plan = compile_from_hosts(site, hosts, opts.inventory, write=False)  # svcops.lock is never written
    except SiteError as e:
        return _fail(opts, site, str(e).removeprefix("svcops: ").replace("; nothing was pushed", ""), out, err)
    for d in plan.diagnostics:
        print(d, file=err)
    _unrecorded(site, plan, err)
    names, unmatched = select_hosts([n for n, _ in hosts], opts.limit)
    if unmatched or not names:
        return _fail(opts, site, f"--limit {opts.limit!r} matches no host of {opts.inventory}" if unmatched else "no host selected", out, err)
    names = [n for n in names if n in plan.compiled.outputs]
    checks = _check_nodes(opts, plan, names)
    if opts.json:
        json.dump(report_json(checks, site, opts.inventory, plan.compiled.mode), out, indent=2)
        print(file=out)
    else:
        out.write(report_text(checks, site, plan.compiled.mode))
    return exit_status(checks)


def _unrecorded(site: str, plan, err: TextIO) -> None:
    """Say so when svcops.lock lacks allocations the check made in memory: the nodes
    cannot hold those yet, and `svcops plan` or `apply` records them."""
    from pathlib import Path

    from svcops.compile.pipeline import allocation_changes
    from svcops.deploy import LOCK_NAME
    from svcops.site.lockfile import read_lock

    lock, _ = read_lock(Path(site) / LOCK_NAME)
    changes = allocation_changes(lock, plan.compiled.allocations) if lock is not None else []
    if changes:
        print(
            f"svcops check: {os.path.join(site, LOCK_NAME)} lacks {len(changes)} allocation change{'s' if len(changes) != 1 else ''} "
            "(made in memory for this check; `svcops plan` or `svcops apply` records them)",
            file=err,
        )


def _connect_errors():
    """A pyinfra state callback keeping why each host could not be connected to
    (`.why`: name -> pyinfra's message), for the report."""
    from pyinfra.api.state import BaseStateCallback

    class ConnectErrors(BaseStateCallback):
        def __init__(self) -> None:
            self.why: dict[str, str] = {}

        def host_connect_error(self, state, host, error) -> None:  # type: ignore[override]
            why = str(error.args[0] if error.args else error)
            if why.startswith("Could not connect (") and why.endswith(")"):
                why = why[len("Could not connect (") : -1]  # the report says "could not connect" itself
            self.why[host.name] = why

    return ConnectErrors()


def _check_nodes(opts: CheckOptions, plan, names: list[str]) -> list[NodeCheck]:
    """Connect to `names`, read each one's whole state in parallel, compare; one
    NodeCheck per name, in order."""
    from svcops.apply import _connect, _disconnect, _make_state
    from svcops.deploy import TxnOptions
    from svcops.drift import ServiceIndex

    d = TxnOptions()
    node_timeout = opts.node_timeout or d.node_timeout
    timeout = opts.command_timeout or d.deadline
    state, _ = _make_state(opts.inventory, names)
    errors = _connect_errors()
    state.add_callback_handler(errors)
    try:
        _connect(state)
        got = _read_all(state, plan, ServiceIndex(plan.compiled.ports), node_timeout, timeout)
    finally:
        _disconnect(state)
    out = []
    for n in names:
        if n in got:
            out.append(got[n])
        else:
            why = errors.why.get(n)
            out.append(NodeCheck.failed(n, f"unreachable: could not connect{': ' + why if why else ''}"))
    return out


def _read_all(state, plan, index, node_timeout: float, timeout: int) -> dict[str, NodeCheck]:
    """Every connected host's whole state, read in parallel and compared: name -> NodeCheck.
    A node silent for `node_timeout` s while it is read is cut off and reported."""
    import gevent
    from pyinfra.context import ctx_host, ctx_state

    from svcops.drift import node_check
    from svcops.facts.dns import SvcopsDns
    from svcops.facts.iptables import SvcopsIptables
    from svcops.facts.ipvs import SvcopsIpvs
    from svcops.facts.nftables import SvcopsNftables
    from svcops.facts.node import SvcopsNodeState
    from svcops.operations.txn import Pulse

    # Each fact on its own, never svcops.facts.cache (whatever apply reads, check reads
    # everything): a fact that fails is named.
    full = (SvcopsIptables, SvcopsNodeState, SvcopsNftables, SvcopsIpvs, SvcopsDns)

    def read(h) -> NodeCheck:
        facts = {}
        with ctx_state.use(state), ctx_host.use(h):
            for cls in full:
                facts[cls] = h.get_fact(cls, _timeout=timeout)
        failed = [cls.__name__ for cls, v in facts.items() if v is None]
        if failed:
            return NodeCheck.failed(h.name, f"could not read {', '.join(failed)} (see pyinfra's error above)")
        session = h.data.get("ssh_hostname") or h.name
        return node_check(plan.node(h.name), index, *(facts[cls] for cls in full), session)

    def watched(h) -> NodeCheck:
        try:
            pulse = Pulse(h, node_timeout)
        except Exception as e:
            return NodeCheck.failed(h.name, f"could not read the node's state: {type(e).__name__}: {e}")
        try:
            got = read(h)
        finally:
            pulse.stop()
        return NodeCheck.failed(h.name, f"unreachable: it stopped answering for {node_timeout:g} s while its state was read") if pulse.lost else got

    hosts = [h for h in state.inventory if h in state.active_hosts]
    greenlets = {state.pool.spawn(watched, h): h for h in hosts}
    gevent.joinall(list(greenlets))
    return {
        h.name: g.value if g.successful() else NodeCheck.failed(h.name, f"could not read its state: {type(g.exception).__name__}: {g.exception}")
        for g, h in greenlets.items()
    }
