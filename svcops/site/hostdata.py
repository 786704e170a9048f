"""Nodes and their workloads, from a pyinfra inventory's host data.

svcops reads these keys of each host's data (``schemas/hostdata.schema.json``); they
are top-level keys, so pyinfra's group_data files merge them as they merge any data::

    svcops_interface: "eth0"              the interface the static address goes on
    svcops_address:   "10.0.0.11"         the node's address: where its workloads without
                                          their own address and its node ports are; with
                                          nodeNetwork, svcops configures it (absent: allocated)
    svcops_labels:    {zone: a}           the node's labels
    svcops_workloads:                     the backends the node runs
      - {name: web-1, address: 10.244.1.5, labels: {app: web},
         ports: [{name: http, port: 80, protocol: TCP}],
         readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 2}}
    svcops_site:      "sites/prod"        the site folder (for the pyinfra path)

`ssh_hostname` is pyinfra's own: svcops reaches the node there (default: the host name).

Every value here ends up in a node's files or commands (the interface in the ifupdown
file and in ``ip`` commands, addresses in the rules, the host name in a comment), so
each is checked whole: the svcops_* keys by the schema, the host name and
`ssh_hostname` here (`svcops.site.model.HOST_NAME`, `SSH_HOST`), and a workload's
address once the allocations are known (`workload_address_problems`). A name with a
newline, a quote, ``$``, ``;`` or a space is refused with the field it is in, never
written anywhere.

`nodes_from_hosts` is the pure part: (name, data) pairs in, `Node`s and diagnostics
out. `load_inventory` is the shell around it: it loads the inventory file with
pyinfra's own loader (`pyinfra_cli.inventory.make_inventory`), so groups, group_data
folders and data tuples mean exactly what they mean to ``pyinfra INVENTORY deploy.py``.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from svcops import schemas
from svcops.gcpause import gc_paused
from svcops.site.diagnostics import Diagnostic, error
from svcops.site.model import EMPTY, HOST_NAME, Allocations, Node, Probe, Source, Workload, WorkloadPort
from svcops.site.validate import TRUSTED, Trust

PREFIX = "svcops_"
DEFAULT_INTERFACE = "eth0"

# The host name is written into files (a comment of the ifupdown file, the lock):
# `HOST_NAME` (svcops.site.model).
HOST_NAME_RULE = "1-253 letters, digits, '-', '_', '.', ':', '/' and '@' (a DNS name, an IPv4 address or a pyinfra connector such as @local)"
# ssh_hostname: what SSH connects to, a DNS name or an IP address ("fe80::1%eth0").
SSH_HOST = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.:%]{0,252}")
SSH_HOST_RULE = "1-253 letters, digits, '-', '_', '.', ':' and '%' (a DNS name or an IP address)"


def shown_name(name: Any) -> str:
    """A host name as diagnostics name it: as it is when it is one, else JSON-quoted."""
    return name if isinstance(name, str) and HOST_NAME.fullmatch(name) else json.dumps(name)


# --- the pure part -------------------------------------------------------------------


@gc_paused()  # 100,000 workloads and their ports, in no cycle: nothing for the collector
def nodes_from_hosts(
    hosts: Iterable[tuple[str, Mapping]], source: str
) -> tuple[tuple[Node, ...], list[Diagnostic]]:
    """Host data -> Nodes, checked against the host-data schema and for meaning.

    Meaning: workload names unique on a node, port names and (port, protocol) unique
    in a workload, a node address used by one node only, a workload's own address
    used on one node only. Diagnostics name `source` (the inventory file) and a field
    such as ``node1: svcops_workloads[0].ports[1].port``; host data has no lines.
    Every problem of every host is reported; a host with any is left out of the nodes.
    """
    nodes: list[Node] = []
    diags: list[Diagnostic] = []
    seen_nodes: set[str] = set()
    node_addresses: dict[str, str] = {}  # address -> node
    workload_addresses: dict[str, str] = {}  # address -> node
    port_values: dict[tuple, WorkloadPort] = {}

    for name, data in hosts:
        shown = shown_name(name)
        where = f"{shown}: "

        def bad(field: str, message: str) -> None:
            diags.append(error(source, None, where + field, message))

        if name in seen_nodes:
            diags.append(error(source, None, shown, "the inventory names this host twice"))
            continue
        seen_nodes.add(name)
        named = isinstance(name, str) and HOST_NAME.fullmatch(name) is not None
        if not named:
            diags.append(error(source, None, shown, f"is not a host name svcops can carry: {HOST_NAME_RULE}"))
        own = {k: v for k, v in data.items() if isinstance(k, str) and k.startswith(PREFIX)}
        trust = TRUSTED
        if not _fast_valid(own):
            own = _plain(own)
            problems = schemas.check_located("hostdata", own, file=source, line_of=_no_line, field_prefix=where)
            diags += [d for _, d in problems]
            # What the schema refused is not checked again; the rest is.
            trust = Trust(p for p, _ in problems)
        ok = trust.whole
        ssh_host = data.get("ssh_hostname") or name
        # Without ssh_hostname, the host name is it (checked above).
        ssh_ok = ssh_host is name or (isinstance(ssh_host, str) and SSH_HOST.fullmatch(ssh_host) is not None)
        if not isinstance(ssh_host, str):
            bad("ssh_hostname", f"must be a string, not {schemas.describe(ssh_host)}")
        elif not ssh_ok:
            bad("ssh_hostname", f"{json.dumps(ssh_host)} is not a host name or address svcops can carry: {SSH_HOST_RULE}")

        address = own.get("svcops_address") if ok("svcops_address") else None
        if address is not None:
            other = node_addresses.get(address)
            if other is not None:
                bad("svcops_address", f"{address} is already the address of node {other}")
            else:
                node_addresses[address] = name

        workloads = []
        names: dict[str, int] = {}
        W = "svcops_workloads"
        for i, w in enumerate((own.get(W) or ()) if trust.known(W) else ()):
            if not trust.known(W, i):
                continue
            wname = w.get("name")
            if ok(W, i, "name"):
                if wname in names:
                    bad(f"{W}[{i}].name", f'duplicate workload name "{wname}" (also {W}[{names[wname]}])')
                else:
                    names[wname] = i
            waddr = w.get("address") if ok(W, i, "address") else None
            if waddr is not None:
                other = workload_addresses.setdefault(waddr, name)
                if other != name:
                    bad(f"{W}[{i}].address", f"{waddr} is already the address of a workload on node {other}")
            ports = []
            pnames: dict[str, int] = {}
            pkeys: dict[tuple, int] = {}
            for j, p in enumerate((w.get("ports") or ()) if trust.known(W, i, "ports") else ()):
                if not trust.known(W, i, "ports", j):
                    continue
                pname = p.get("name")
                protocol = p.get("protocol", "TCP")
                if ok(W, i, "ports", j, "name"):
                    if pname in pnames:
                        bad(f"{W}[{i}].ports[{j}].name", f'duplicate port name "{pname}" (also {W}[{i}].ports[{pnames[pname]}])')
                    else:
                        pnames[pname] = j
                if not (ok(W, i, "ports", j, "port") and ok(W, i, "ports", j, "protocol")):
                    continue
                number = int(p["port"])  # 80.0 is an integer to JSON Schema
                key = (number, protocol)
                if key in pkeys:
                    bad(f"{W}[{i}].ports[{j}].port", f"duplicate port {number}/{protocol} (also {W}[{i}].ports[{pkeys[key]}])")
                else:
                    pkeys[key] = j
                # Frozen values are shared: a fleet has many workloads with the same port.
                wp = port_values.get((pname, number, protocol))
                if wp is None:
                    wp = port_values[(pname, number, protocol)] = WorkloadPort(pname, number, protocol)
                ports.append(wp)
            probe = None
            if "readinessProbe" in w and ok(W, i, "readinessProbe"):
                probe = probe_of(w["readinessProbe"], ports, f"{W}[{i}].readinessProbe", bad)
            if trust:
                labels = w.get("labels")
                workloads.append(
                    Workload(
                        name=wname,
                        node=name,
                        address=waddr,
                        labels=MappingProxyType(dict(labels)) if labels else EMPTY,
                        ports=tuple(ports),
                        readiness_probe=probe,
                    )
                )
        if not trust or not named or not ssh_ok:
            continue  # reported above; a node is only made of well-formed data
        labels = own.get("svcops_labels")
        nodes.append(
            Node(
                name=name,
                ssh_host=ssh_host,
                interface=own.get("svcops_interface", DEFAULT_INTERFACE),
                address=address,
                labels=MappingProxyType(dict(labels)) if labels else EMPTY,
                workloads=tuple(workloads),
                source=Source(source),
            )
        )
    return tuple(nodes), diags


_HANDLERS = ("httpGet", "tcpSocket", "exec")


def probe_of(p: Mapping, ports: Iterable[WorkloadPort], where: str, bad) -> Probe | None:
    """A readinessProbe (schema-valid) as a `Probe`, Kubernetes' way: exactly one
    handler, a 0 or absent count is its default (SetDefaults_Probe), a named port is
    one of the workload's TCP ports (the kubelet resolves it in the container's).
    Problems go to `bad(field, message)`; None then."""
    handlers = [h for h in _HANDLERS if h in p]
    if len(handlers) != 1:
        bad(where, "must specify exactly one handler: httpGet, tcpSocket or exec" + (f" (it has {' and '.join(handlers)})" if handlers else ""))
        return None
    kind = handlers[0]
    h = p[kind]
    port = None
    if kind != "exec":
        port = h["port"]
        if isinstance(port, str):
            number = next((wp.port for wp in ports if wp.name == port and wp.protocol == "TCP"), None)
            if number is None:
                bad(f"{where}.{kind}.port", f'the workload has no TCP port named "{port}"')
                return None
            port = number
        port = int(port)
    counts = {k: int(p.get(k) or 0) or d for k, d in _PROBE_DEFAULTS.items()}
    return Probe(
        kind=kind,  # type: ignore[arg-type]
        port=port,
        host=h.get("host") if kind != "exec" else None,
        path=(h.get("path") or "/") if kind == "httpGet" else "/",
        scheme=h.get("scheme") or "HTTP" if kind == "httpGet" else "HTTP",
        headers=tuple((x["name"], x["value"]) for x in h.get("httpHeaders") or ()) if kind == "httpGet" else (),
        command=tuple(h["command"]) if kind == "exec" else (),
        initial_delay=int(p.get("initialDelaySeconds") or 0),
        period=counts["periodSeconds"],
        timeout=counts["timeoutSeconds"],
        success_threshold=counts["successThreshold"],
        failure_threshold=counts["failureThreshold"],
    )


# Kubernetes' defaults for a probe's counts left 0 or unset (SetDefaults_Probe).
_PROBE_DEFAULTS = {"periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3}


def workload_address_problems(nodes: Iterable[Node], allocations: Allocations) -> list[Diagnostic]:
    """Workloads that would have no address: no address of their own on a node that has
    none either (no svcops_address, none allocated from nodeNetwork) and whose SSH host
    is a name. Such a name would go into the rules as if it were an address."""
    diags: list[Diagnostic] = []
    allocated = allocations.node_addresses
    for node in nodes:
        if allocated.get(node.name) or node.address or _IPV4(node.ssh_host):
            continue
        for i, w in enumerate(node.workloads):
            if w.address is None:
                diags.append(
                    error(
                        node.source.file,
                        None,
                        f"{shown_name(node.name)}: svcops_workloads[{i}].address",
                        f'required: the node has no svcops_address (nor nodeNetwork in svcops.yaml to allocate one) '
                        f'and its SSH host {json.dumps(node.ssh_host)} is a name, not an IPv4 address',
                    )
                )
    return diags


def common_data(hosts: Iterable[tuple[str, Mapping]]) -> dict[str, Any]:
    """The svcops_* values every host has, with the same value (e.g. svcops_site)."""
    common: dict[str, Any] | None = None
    for _, data in hosts:
        mine = {k: v for k, v in data.items() if isinstance(k, str) and k.startswith(PREFIX)}
        if common is None:
            common = mine
        else:
            common = {k: v for k, v in common.items() if k in mine and mine[k] == v}
    return common or {}


def _no_line(path: tuple) -> None:
    return None


def _plain(value: Any) -> Any:
    """Python inventory values as JSON values: tuples are lists, mappings are dicts."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


# An IPv4 address, as the schema spells it (an SSH host that is one is the node's address).
_IPV4 = re.compile(schemas.schema("hostdata")["$defs"]["ipv4"]["pattern"]).search


def _fast_valid(own: dict) -> bool:
    """True proves `own` valid: the check generated from the schema (`schemas.accepts`).

    jsonschema takes about 0.05 ms a workload, 5 s per 100,000; this a twentieth of
    that. Anything it does not prove goes to jsonschema (made plain JSON-like values
    first), which finds and words the problems.
    """
    return schemas.accepts("hostdata")(own)


# --- the shell -----------------------------------------------------------------------


def load_inventory(path: str) -> tuple[tuple[Node, ...], list[Diagnostic], dict]:
    """Load a pyinfra inventory file; returns its nodes, diagnostics and common svcops data.

    The common data holds the svcops_* values that every host has alike (such as
    svcops_site). A missing or broken inventory is a Diagnostic, never a traceback.
    """
    if not Path(path).is_file():
        # pyinfra would take a name that is not a file for a host name; svcops wants a file.
        return (), [error(path, None, "", "inventory file not found")], {}
    try:
        hosts = _pyinfra_hosts(path)
    except SyntaxError as e:
        return (), [error(path, e.lineno, "", f"Python syntax error: {e.msg}")], {}
    except Exception as e:  # the inventory is user code: anything can go wrong in it
        cause = getattr(e, "exception", None) or e  # pyinfra wraps user errors: UnexpectedExternalError
        return (), [error(path, _line_in(cause, path), "", f"cannot load the inventory: {type(cause).__name__}: {cause}")], {}
    if not hosts:
        return (), [error(path, None, "", "the inventory has no hosts")], {}
    nodes, diags = nodes_from_hosts(hosts, path)
    return nodes, diags, common_data(hosts)


def _pyinfra_hosts(path: str) -> list[tuple[str, dict]]:
    """(name, data) of every host, as pyinfra's CLI loads them (groups and group_data merged)."""
    from pyinfra.api.state import State
    from pyinfra.context import ctx_state
    from pyinfra_cli.inventory import make_inventory

    # pyinfra records the file it executes in the current State: give it one.
    with ctx_state.use(State()):
        inventory = make_inventory(path, cwd=os.getcwd())
    return [(host.name, host.data.dict()) for host in inventory]


def _line_in(exc: BaseException, path: str) -> int | None:
    """The line of `path` where `exc` was raised, if it was raised there."""
    target = os.path.realpath(path)
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.realpath(frame.filename) == target:
            line = frame.lineno
    return line
