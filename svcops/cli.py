"""The `svcops` command line: the imperative shell around the pure pipeline.

Exit status, for scripts and CI:
  0  success (plan --detailed-exitcode: nothing would change; check: every node in sync)
  1  errors (bad input, bad usage, a failed node); nothing was changed
  2  plan --detailed-exitcode: something would change; check: a node drifted
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Sequence

from svcops import __version__
from svcops.site.diagnostics import Diagnostic, has_errors, sort_key

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2

LOCK_NAME = "svcops.lock"

# What `svcops render --only` can print, and the mode a part belongs to (None: any mode).
RENDER_PARTS = ("iptables", "nftables", "ipset", "ipvsadm", "addresses", "sysctls", "interfaces")
_PART_MODE = {"nftables": "nftables", "ipset": "ipvs", "ipvsadm": "ipvs", "addresses": "ipvs", "sysctls": "ipvs"}

MAIN_HELP = """\
svcops gives plain Debian machines what Kubernetes Services give pods: stable
cluster IPs, node ports, load-balancer addresses and service DNS names in front of
backends that come and go. You keep a site folder in git:

  SITE/svcops.yaml        the cluster: serviceCIDR, nodePortRange, proxyMode, pools...
  SITE/services/*.yaml    Kubernetes Service (and Endpoints) manifests
  SITE/svcops.lock        allocations made by svcops (commit it)

and a pyinfra inventory whose host data names each node's workloads (backends).

typical flow:
  svcops validate examples/walkthrough                  # in CI, on every change
  svcops plan -i inventory/example.py examples/walkthrough
  svcops render -i inventory/example.py --node node1 examples/walkthrough
  svcops apply -i inventory/lab.py -y                    # push with pyinfra over SSH
  svcops check -i inventory/lab.py                       # from cron: exit 2 when a node drifted
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1, never 2: 2 means "changes" to `plan --detailed-exitcode`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def _float_between(low: float, high: float, unit: str = ""):
    """An argparse type: a number from `low` to `high` (`unit` for the message)."""

    def parse(text: str) -> float:
        try:
            n = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}{unit}, not {text}")
        return n

    return parse


_percent = _float_between(0, 100)
_seconds = _float_between(0, 86400, " seconds")


def _add_lock_timeout(p: argparse.ArgumentParser, what: str = "the site") -> None:
    p.add_argument(
        "--lock-timeout",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help=f"wait at most this long while another plan or apply holds {what}, then fail naming it (default 30)",
    )


def _add_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", metavar="NODE[,NODE]", help="only these nodes: names or globs, comma-separated")


def _add_timeouts(p: argparse.ArgumentParser, command: str) -> None:
    """--node-timeout and --command-timeout (`command`: what the latter bounds)."""
    p.add_argument(
        "--node-timeout",
        type=_float_between(0.5, 3600, " seconds"),
        metavar="SECONDS",
        help="a node that does not answer for this long is reported unreachable; the others go on (default 10)",
    )
    p.add_argument("--command-timeout", type=_positive_int, metavar="SECONDS", help=f"{command} (default 300)")


def _add_site(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "site",
        nargs="?",
        help="the site folder (default: svcops_site from the inventory's data, else the current folder)",
    )


def _add_inventory(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "-i",
        "--inventory",
        required=required,
        metavar="INVENTORY",
        help="a pyinfra inventory file (e.g. inventory/example.py); its host data names the nodes' workloads",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="svcops",
        description=MAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `svcops COMMAND --help` for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"svcops {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "validate",
        help="check a site's files against the schemas and their meaning",
        description=(
            "Check svcops.yaml, every manifest in services/ and svcops.lock: schema, then meaning\n"
            "(names, ports, ranges, conflicts with existing allocations). Every problem is printed\n"
            "as file:line: field: message. Never writes anything.\n\n"
            "With -i, the inventory's host data is checked too, and selectors that match no\n"
            "workload or named target ports a workload lacks are reported as warnings."
        ),
        epilog="examples:\n  svcops validate examples/walkthrough\n  svcops validate -i inventory/example.py examples/walkthrough\n\nexit status: 0 valid (warnings allowed), 1 errors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_inventory(p, required=False)
    _add_site(p)

    p = sub.add_parser(
        "plan",
        help="allocate addresses and ports (updating svcops.lock) and show what each node gets",
        description=(
            "Allocate cluster IPs, node ports, load-balancer and node addresses (existing ones\n"
            "never move; new ones are written to SITE/svcops.lock), resolve endpoints, render every\n"
            "node's rules, and show the allocation changes and what each node would get.\n"
            "Nothing is written when there is any error."
        ),
        epilog=(
            "examples:\n"
            "  svcops plan -i inventory/example.py examples/walkthrough\n"
            "  svcops plan -i inventory/example.py --json examples/walkthrough | jq .nodes\n"
            "  svcops plan -i inventory/example.py --detailed-exitcode examples/walkthrough || echo changed\n\n"
            "exit status: 0 ok, 1 errors; with --detailed-exitcode: 0 no changes, 1 errors, 2 changes"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_inventory(p, required=True)
    p.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 2 when something changed (an allocation was added, moved or released)",
    )
    _add_lock_timeout(p)
    _add_site(p)

    p = sub.add_parser(
        "render",
        help="print exactly what one node gets",
        description=(
            "Print the exact payloads that NODE gets in the site's proxy mode (or --mode), each\n"
            "as it would be loaded on a node without svcops's rules yet, and its ifupdown file:\n\n"
            "  iptables   iptables-restore --noflush input\n"
            "  nftables   nft -f input: the whole table ip svcops in one transaction\n"
            "  ipvs       sysctls, the addresses of the dummy interface svcops-ipvs0, ipset restore\n"
            "             input, iptables-restore --noflush input, ipvsadm -R input\n\n"
            "Does not write svcops.lock: allocations that the lock lacks are made in memory, with a\n"
            "warning to run `svcops plan`."
        ),
        epilog=(
            "examples:\n"
            "  svcops render -i inventory/example.py --node node1 examples/walkthrough\n"
            "  svcops render -i inventory/example.py --node node1 --only iptables examples/walkthrough > rules\n"
            "  iptables-restore --test --noflush < rules\n"
            "  svcops render -i inventory/example.py --node node1 --mode nftables --only nftables examples/walkthrough | nft -c -f -\n"
            "  svcops render -i inventory/example.py --node node1 --mode ipvs examples/walkthrough"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_inventory(p, required=True)
    p.add_argument("--node", required=True, help="the node's name in the inventory")
    p.add_argument(
        "--mode",
        choices=("iptables", "nftables", "ipvs"),
        help="render for this proxy mode instead of the site's proxyMode",
    )
    p.add_argument(
        "--only",
        choices=RENDER_PARTS,
        help="print only this part, raw (no section headers), ready for a pipe; nftables implies "
        "--mode nftables, ipset/ipvsadm/addresses/sysctls imply --mode ipvs",
    )
    _add_site(p)

    p = sub.add_parser(
        "apply",
        help="push the site to the nodes with pyinfra (atomic, idempotent, never cutting SSH)",
        description=(
            "Allocate like `plan` (writing SITE/svcops.lock), then push every selected node's rules\n"
            "over SSH with pyinfra: one `iptables-restore --noflush` of the svcops chains that differ,\n"
            "the load-balancer addresses it announces, its static address, ip_forward, and the files\n"
            "that restore all of it at boot (svcops-rules.service). A node already in sync gets no\n"
            "command. Each node is one transaction: after the change svcops logs in afresh and\n"
            "commits; if it cannot, or anything fails, the node's previous state comes back (the\n"
            "node itself does it when svcops is killed or cut off).\n\n"
            "Without -y: with a terminal, the per-node diff is shown and svcops asks; without one,\n"
            "it refuses. Host keys are checked strictly unless the inventory says otherwise."
        ),
        epilog=(
            "examples:\n"
            "  svcops apply -i inventory/lab.py --dry                  # per-node diff, changes nothing\n"
            "  svcops apply -i inventory/lab.py -y                     # the site named by svcops_site\n"
            "  svcops apply -i inventory/prod.py -y sites/prod --limit 'web-*,db1'\n"
            "  svcops apply -i inventory/prod.py -y --serial 5 --fail-percent 10\n\n"
            "Each node is changed as one transaction: svcops holds the node's lock (a second apply\n"
            "waits --lock-timeout, then fails naming the holder), every step leaves its undo on the\n"
            "node, and a fresh SSH login commits. A failure, Ctrl-C, a killed svcops or a cut\n"
            "connection undoes the node's steps on the node itself: it ends wholly old or wholly new.\n\n"
            "exit status: 0 every node ok, 1 errors or any node failed (or was not reached),\n"
            "130 interrupted (the report says which nodes finished and which were rolled back)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_inventory(p, required=True)
    p.add_argument("--dry", action="store_true", help="show per node what would change (reads the nodes' live state); change nothing")
    p.add_argument("--json", action="store_true", help="with --dry: print the per-node diff as JSON on stdout")
    _add_limit(p)
    p.add_argument("--serial", type=_positive_int, metavar="N", help="rolling batches of N nodes, one pyinfra run each")
    p.add_argument(
        "--fail-percent",
        type=_percent,
        default=0.0,
        metavar="P",
        help="with --serial: stop starting batches once more than P%% of the nodes done failed (default 0)",
    )
    p.add_argument("-y", "--yes", action="store_true", help="apply without asking")
    p.add_argument(
        "--rollback-after",
        type=_positive_int,
        metavar="SECONDS",
        help="a node undoes the apply by itself after this long without a word from svcops (cut off, hung) (default 60)",
    )
    _add_lock_timeout(p, "the site or a node")
    _add_timeouts(p, "the longest any one remote command or step may run")
    p.add_argument(
        "--verify",
        action="store_true",
        help=(
            "read each node's whole live state and repair any drift, even when the record of the last "
            "apply says the node holds it (by default a cheap canary decides; svcops check reports drift "
            "without changing anything)"
        ),
    )
    _add_site(p)

    p = sub.add_parser(
        "check",
        help="compare every node's live state with the site, per service; change nothing (for cron and CI)",
        description=(
            "Read every node's whole live state over SSH, as `svcops apply --dry` does (svcops's\n"
            "iptables chains and jumps, its nftables table with every chain's rules, its IPVS\n"
            "footprint, its files, addresses, ip_forward and DNS server), compare it with what the\n"
            "site renders for that node, and say what differs, per node and per service port:\n\n"
            "  missing   the site has it, the node does not\n"
            "  extra     the node has it, the site does not\n"
            "  differs   both have it, not the same\n\n"
            "Changes nothing: no command that changes a node, svcops.lock is not written\n"
            "(allocations it lacks are made in memory, with a warning), the site is not locked.\n\n"
            "Output (stdout): a header, then per node one line \"NODE: in sync\", \"NODE: drift: ...\"\n"
            "or \"NODE: error: why\", each drift item on its own line starting with the node's name,\n"
            "\"NODE: SERVICE port PORT: WHAT: DETAIL\" (\"(node)\" for what belongs to no service), and\n"
            "a last line counting the nodes. The same state always gives the same text.\n\n"
            "--json: {\"version\": 1, \"site\", \"inventory\", \"proxyMode\", \"status\": in-sync|drift|error,\n"
            "\"error\", \"counts\", \"nodes\": [{\"node\", \"status\": in-sync|drift|error, \"error\",\n"
            "\"items\": [{\"service\": \"ns/name\"|null, \"port\": \"80/TCP\"|null,\n"
            "\"what\": missing|extra|differs, \"detail\"}]}]}"
        ),
        epilog=(
            "examples:\n"
            "  svcops check -i inventory/lab.py                       # the site named by svcops_site\n"
            "  svcops check -i inventory/prod.py sites/prod | grep ': drift'\n"
            "  svcops check -i inventory/prod.py --json sites/prod | jq '.nodes[] | select(.status != \"in-sync\")'\n\n"
            "a cron line (mail the report when a node drifted or could not be read):\n"
            "  */15 * * * *  cd /srv/ops && svcops check -i inventory/prod.py sites/prod >/tmp/svcops-check.txt 2>&1"
            " || mail -s 'svcops: drift' ops@example.com </tmp/svcops-check.txt\n\n"
            "exit status: 0 every node in sync, 2 drift on any node, 1 errors: the site or inventory,\n"
            "or a node that could not be read (unreachable, a failed read: the report names it)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_inventory(p, required=True)
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout (shape above)")
    _add_limit(p)
    _add_timeouts(p, "the longest reading one node's state may take")
    _add_site(p)

    p = sub.add_parser(
        "status",
        help="the services as `kubectl get svc -o wide` shows them, with endpoints and their readiness",
        description=(
            "One row per service (type, cluster IP, external addresses, ports as kubectl prints\n"
            "them, ready/total endpoints), each port's endpoints indented below with their node\n"
            "and whether they are ready, and why not (the probe's last word, or \"node lost\").\n\n"
            "The readiness is the running watch's (`svcops watch` for this site on this controller);\n"
            "without one, each node runs its workloads' probes once (a node that cannot be reached\n"
            "counts as lost). Changes nothing (svcops.lock is not written)."
        ),
        epilog=(
            "examples:\n"
            "  svcops status -i inventory/lab.py\n"
            "  svcops status -i inventory/prod.py --json sites/prod | jq '.services[] | select(.type == \"LoadBalancer\")'\n\n"
            "--json: {\"version\": 1, \"readiness\": where it came from, \"services\": [{\"name\", \"namespace\",\n"
            "\"type\", \"clusterIP\", \"external\": [...], \"ports\": [{\"name\", \"port\", \"protocol\", \"nodePort\",\n"
            "\"targetPort\", \"endpoints\": [{\"ip\", \"port\", \"node\", \"ready\", \"inRules\", \"why\"}]}]}]}\n\n"
            "exit status: 0 shown, 1 errors (the site or the inventory)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_inventory(p, required=True)
    p.add_argument("--json", action="store_true", help="print it as JSON on stdout (shape above)")
    _add_site(p)

    p = sub.add_parser(
        "watch",
        help="keep the endpoints to what is ready: node-side readiness probes, pushes of what changes",
        description=(
            "The long-running controller (run it under systemd: --unit prints a unit). It keeps one\n"
            "SSH connection to every node; each node probes its own workloads (their readinessProbe,\n"
            "Kubernetes' fields and defaults) and reports transitions; a workload that is not ready\n"
            "leaves its services' rules (and headless DNS) on every node, unless the service has\n"
            "publishNotReadyAddresses. A workload without a probe is ready while its node answers;\n"
            "a node silent for --grace seconds has all its workloads taken out everywhere else, and\n"
            "comes back once it answers and its probes have run.\n\n"
            "Each push is `svcops apply` of the site with that readiness, over the same connections:\n"
            "each node one transaction, only the changed services' rules sent. Events that come\n"
            "together go in one push. A file of the site or the inventory changing, or SIGHUP,\n"
            "applies them. While it runs, `svcops apply`, `plan`, `check` and `status` on this\n"
            "controller use its readiness: a plain apply never puts back an endpoint that is down.\n\n"
            "Fail static: when the watch stops (SIGTERM, a crash) or loses every node, the rules\n"
            "stay on the nodes as last pushed. One line per transition and per push on stdout."
        ),
        epilog=(
            "examples:\n"
            "  svcops watch -i inventory/lab.py                        # the site named by svcops_site\n"
            "  svcops watch -i inventory/prod.py sites/prod --grace 3 --metrics 127.0.0.1:9753\n"
            "  svcops watch -i inventory/prod.py sites/prod --unit > /etc/systemd/system/svcops-watch.service\n\n"
            "host data (a workload's probe, as a container's):\n"
            "  svcops_workloads:\n"
            "    - name: web-1\n"
            "      labels: {app: web}\n"
            "      ports: [{name: http, port: 80}]\n"
            "      readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 2, failureThreshold: 2}\n\n"
            "The nodes need python3 (the probe agent is a Python script sent over SSH; it changes\n"
            "nothing and leaves when the watch goes).\n\n"
            "exit status: 0 stopped by a signal, 1 could not start (site, inventory, another watch)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_inventory(p, required=True)
    p.add_argument(
        "--grace",
        type=_float_between(0.5, 600, " seconds"),
        default=2.0,
        metavar="SECONDS",
        help="a node silent this long is lost: its workloads leave every other node's rules (default 2)",
    )
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics there (e.g. 127.0.0.1:9753)")
    p.add_argument("--unit", action="store_true", help="print a systemd unit that runs this watch, and exit")
    p.add_argument("--once", action="store_true", help="leave after the first push (a one-shot apply with the probes' readiness)")
    p.add_argument("--max-seconds", type=_float_between(0.1, 10**9, " seconds"), metavar="SECONDS", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="pyinfra's own lines too, per operation")
    _add_lock_timeout(p, "the site (held by an apply)")
    _add_timeouts(p, "the longest any one remote command or step of a push may run")
    _add_site(p)

    p = sub.add_parser(
        "explain",
        help="say where a packet to IP:PORT goes on a node, and why",
        description=(
            "Work out, from the site and the inventory, where a new connection to IP:PORT[/PROTO]\n"
            "goes on NODE: which service address it is (cluster IP, external IP, load-balancer IP,\n"
            "node port), which traffic policy applies, and the verdict: the endpoints it may reach\n"
            "with each one's share, or refused (no endpoints), or dropped (Local policy without a\n"
            "local endpoint; a source outside loadBalancerSourceRanges). Writes nothing."
        ),
        epilog=(
            "examples:\n"
            "  svcops explain -i inventory/lab.py --node node1 10.1.11.83:8000 examples/walkthrough\n"
            "  svcops explain -i inventory/lab.py --node node2 192.168.36.12:30001 examples/walkthrough\n"
            "  svcops explain -i inventory/lab.py --node node1 --from 203.0.113.9 192.168.36.252:80 examples/walkthrough\n"
            "  svcops explain -i inventory/lab.py --node node1 --json 10.96.0.10:53/udp site\n\n"
            "exit status: 0 explained (whatever the verdict), 1 errors"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_inventory(p, required=True)
    p.add_argument("--node", required=True, help="the node's name in the inventory")
    p.add_argument("--from", dest="source", metavar="IP", help="the client's address (decides source ranges; a node's own address means the node itself sends it)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument("target", metavar="IP:PORT[/PROTO]", help="the destination, e.g. 10.96.0.10:53/udp (default protocol TCP)")
    _add_site(p)

    from svcops.lab.cli import register as register_lab

    register_lab(sub)
    return parser


# --- shell helpers -------------------------------------------------------------------


def _print_diags(diags: Sequence[Diagnostic]) -> None:
    for d in sorted(diags, key=sort_key):
        print(d, file=sys.stderr)
    errors = sum(1 for d in diags if d.is_error)
    if errors:
        print(f"svcops: {errors} error{'s' if errors != 1 else ''}; nothing was changed", file=sys.stderr)


def _load(args: argparse.Namespace, need_inventory: bool, hold: ExitStack | None = None):
    """Load inventory, site and lock; returns (site, nodes, lock, lock_path, site_root, diags).

    With `hold`, the site is locked (svcops.site.sitelock) before it is read, until
    `hold` closes; SiteLockError when another svcops keeps it past --lock-timeout.
    """
    from svcops.site.files import folder_problem
    from svcops.site.hostdata import load_inventory
    from svcops.site.load import load_site
    from svcops.site.lockfile import read_lock

    diags: list[Diagnostic] = []
    nodes: tuple = ()
    data: dict = {}
    if args.inventory:
        nodes, inv_diags, data = load_inventory(args.inventory)
        diags += inv_diags
    site_root = args.site or data.get("svcops_site") or "."
    why = folder_problem(site_root)
    if why is not None:
        diags.append(Diagnostic(str(site_root), None, "", f"site folder {why}"))
        return None, nodes, None, None, site_root, diags
    if hold is not None:
        from svcops.site.sitelock import site_lock

        hold.enter_context(site_lock(site_root, args.lock_timeout, on_wait=lambda m: print(f"svcops: {m}", file=sys.stderr)))
    site, site_diags = load_site(site_root)
    diags += site_diags
    lock_path = Path(site_root) / LOCK_NAME
    lock, lock_diags = read_lock(lock_path)
    diags += lock_diags
    return site, nodes, lock, lock_path, site_root, diags


def cmd_validate(args: argparse.Namespace) -> int:
    from svcops.compile.allocate import allocate
    from svcops.compile.endpoints import resolve

    site, nodes, lock, lock_path, _, diags = _load(args, need_inventory=False)
    if site is not None and lock is not None and not has_errors(diags):
        # Conflicts with the lock are part of a site's meaning; allocate in memory only.
        allocations, alloc_diags = allocate(site.cluster, site.services, nodes, lock, LOCK_NAME)
        diags += alloc_diags
        if args.inventory and not has_errors(diags):
            diags += resolve(site, nodes, allocations)[1]
    _print_diags(diags)
    if has_errors(diags):
        return EXIT_ERROR
    services = len(site.services) if site else 0
    print(f"{args.site or '.'}: valid ({services} service{'s' if services != 1 else ''})")
    return EXIT_OK


def _compile(args: argparse.Namespace, mode: str | None = None, hold: ExitStack | None = None):
    from svcops.compile.pipeline import compile_site

    site, nodes, lock, lock_path, site_root, diags = _load(args, need_inventory=True, hold=hold)
    if site is None or lock is None or has_errors(diags):
        return None, lock, lock_path, diags
    from svcops.site.watchstate import running_watch

    watch = running_watch(site_root)  # a running watch's readiness holds here too
    if watch is not None:
        print(f"svcops: {watch.summary()}", file=sys.stderr)
    compiled, more = compile_site(site, nodes, lock, LOCK_NAME, mode=mode, readiness=watch.readiness if watch else None)
    return compiled, lock, lock_path, diags + more


def _node_summaries(compiled) -> list[dict]:
    ports = compiled.ports
    endpoints = sum(len(p.endpoints) for p in ports)
    local: dict[str | None, int] = {}
    for p in ports:
        for e in p.endpoints:
            local[e.node] = local.get(e.node, 0) + 1
    memo: dict[int, int] = {}  # fragments are shared between nodes: count each once
    return [_node_summary(compiled, n.name, endpoints, local.get(n.name, 0), memo) for n in compiled.nodes]


def _node_summary(compiled, name: str, endpoints: int, local: int, memo: dict[int, int]) -> dict:
    out = compiled.outputs[name]
    chains, rules = out.iptables.counts(memo)
    return {
        "node": name,
        "sshHost": out.node.ssh_host,
        "address": out.address,
        "interface": out.node.interface,
        "servicePorts": len(compiled.ports),
        "endpoints": endpoints,
        "localEndpoints": local,
        "iptables": {"chains": chains, "rules": rules + len(out.iptables.jumps)},
        "proxyMode": out.mode,
        **({"nftables": {"units": len(out.nftables.units), "chains": sum(len(u.chains) for u in out.nftables.units)}} if out.nftables else {}),
        **({"ipvs": {"virtualServers": sum(1 for ln in out.ipvs.ipvsadm.splitlines() if ln.startswith("-A ")), "addresses": len(out.ipvs.addresses)}} if out.ipvs else {}),
        "interfacesFile": bool(out.interfaces),
    }


def cmd_plan(args: argparse.Namespace) -> int:
    from svcops.site.sitelock import SiteLockError

    # The site stays locked from reading svcops.lock to writing it: one plan or apply at a time.
    with ExitStack() as hold:
        try:
            return _plan(args, hold)
        except SiteLockError as e:
            print(f"svcops plan: {e}", file=sys.stderr)
            return EXIT_ERROR


def _plan(args: argparse.Namespace, hold: ExitStack) -> int:
    from svcops.compile.pipeline import allocation_changes
    from svcops.site.lockfile import LockWriteError, write_lock

    compiled, lock, lock_path, diags = _compile(args, hold=hold)
    _print_diags(diags)
    if compiled is None:
        return EXIT_ERROR
    changes = allocation_changes(lock, compiled.allocations)
    try:
        write_lock(lock_path, compiled.allocations)
    except LockWriteError as e:
        _print_diags([e.diagnostic])
        return EXIT_ERROR
    nodes = _node_summaries(compiled)
    dns = _dns_summary(compiled)
    if args.json:
        doc = {
            "site": str(compiled.site.root),
            "lockFile": str(lock_path),
            "allocationChanges": [
                {"kind": c.kind, "key": c.key, "action": c.action, "old": c.old, "new": c.new}
                for c in changes
            ],
            "services": len(compiled.site.services),
            "nodes": {n["node"]: n for n in nodes},
            "dns": dns,
        }
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        _print_plan(compiled, changes, nodes, lock_path, dns)
    if args.detailed_exitcode and changes:
        return EXIT_CHANGES
    return EXIT_OK


_SIGN = {"add": "+", "release": "-", "change": "~"}


def _dns_summary(compiled) -> dict | None:
    """The cluster domain's zone, as every node serves it (None: serviceDNS false)."""
    if not compiled.site.cluster.service_dns:
        return None
    from svcops.compile.nodeplan import site_zone
    from svcops.render.dns import record_counts

    zone = site_zone(compiled)
    return {"domain": zone.domain, "records": record_counts(zone), "sha256": zone.digest}


def _print_plan(compiled, changes, nodes, lock_path, dns: dict | None = None) -> None:
    print(f"Allocations ({lock_path}):")
    if not changes:
        print("  no change")
    width = max((len(c.key) for c in changes), default=0)
    for c in changes:
        value = c.new if c.action == "add" else c.old if c.action == "release" else f"{c.old} -> {c.new}"
        note = " (released)" if c.action == "release" else ""
        print(f"  {_SIGN[c.action]} {c.kind:<15} {c.key:<{width}}  {value}{note}")
    print()
    print(f"Nodes ({len(nodes)}):")
    for n in nodes:
        ipt = n["iptables"]
        addr = f"; static {n['address']} on {n['interface']}" if n["interfacesFile"] else ""
        if "nftables" in n:
            rules = f"nftables {n['nftables']['units']} service ports, {n['nftables']['chains']} chains"
        elif "ipvs" in n:
            rules = f"ipvs {n['ipvs']['virtualServers']} virtual servers, {n['ipvs']['addresses']} addresses"
        else:
            rules = f"iptables {ipt['chains']} chains, {ipt['rules']} rules"
        print(
            f"  {n['node']} ({n['sshHost']}): {n['servicePorts']} service ports, "
            f"{n['endpoints']} endpoints ({n['localEndpoints']} local); {rules}{addr}"
        )
    print()
    if dns is None:
        print("DNS: off (serviceDNS: false)")
    else:
        counts = ", ".join(f"{n} {t}" for t, n in dns["records"].items()) or "no records"
        print(f"DNS: zone {dns['domain']} on every node: {counts}")
    print()
    print("See what a node gets: svcops render -i INVENTORY --node NODE SITE")


def render_sections(out, node: str) -> list[tuple[str, str, str]]:
    """(part, heading, text) of everything `node` gets, in the order it is applied."""
    from svcops.render import ipvs as R_ipvs
    from svcops.render import nftables as R_nft
    from svcops.render.iptables import restore_payload

    iface = out.interfaces
    iface_text = ("interfaces", f"/etc/network/interfaces.d/svcops for {node}", iface)
    if out.mode == "nftables":
        return [
            ("nftables", f"nft -f payload for {node} (table {R_nft.TABLE}, the whole table in one transaction)", R_nft.full_payload(out.nftables)),
            iface_text,
        ]
    if out.mode == "ipvs":
        rules = out.ipvs
        return [
            ("sysctls", f"sysctl settings for {node}", "".join(f"{k} = {v}\n" for k, v in R_ipvs.SYSCTLS.items())),
            ("addresses", f"addresses of the dummy interface {R_ipvs.DUMMY_INTERFACE} on {node} (each a /32)", "".join(a + "\n" for a in rules.addresses)),
            ("ipset", f"ipset restore payload for {node}", rules.ipset),
            ("iptables", f"iptables-restore --noflush payload for {node}", rules.iptables),
            ("ipvsadm", f"ipvsadm -R payload for {node} (virtual and real servers)", rules.ipvsadm),
            iface_text,
        ]
    return [("iptables", f"iptables-restore --noflush payload for {node}", restore_payload(out.iptables)), iface_text]


def cmd_render(args: argparse.Namespace) -> int:
    from svcops.compile.pipeline import allocation_changes

    mode = args.mode
    implied = _PART_MODE.get(args.only or "")
    if implied and mode and mode != implied:
        print(f"svcops render: --only {args.only} is part of {implied} mode, not of --mode {mode}", file=sys.stderr)
        return EXIT_ERROR
    mode = mode or implied
    compiled, lock, lock_path, diags = _compile(args, mode)
    if compiled is not None and args.node not in compiled.outputs:
        known = ", ".join(sorted(compiled.outputs)) or "none"
        diags.append(
            Diagnostic(args.inventory, None, "--node", f"no node {args.node!r} in the inventory (nodes: {known})")
        )
        compiled = None
    if compiled is not None and allocation_changes(lock, compiled.allocations):
        diags.append(
            Diagnostic(
                str(lock_path), None, "", "not up to date; shown with allocations made in memory: run `svcops plan` to record them", "warning"
            )
        )
    _print_diags(diags)
    if compiled is None:
        return EXIT_ERROR
    out = compiled.outputs[args.node]
    sections = render_sections(out, args.node)
    if args.only:
        part = next((text for name, _, text in sections if name == args.only), None)
        if part is None:
            # The iptables part in nftables mode: svcops has no iptables rules there.
            from svcops.render.iptables import restore_payload

            part = restore_payload(out.iptables) if args.only == "iptables" else ""
        sys.stdout.write(part)
        return EXIT_OK
    print(f"# svcops render: node {args.node}, proxy mode {out.mode}")
    for i, (name, heading, text) in enumerate(sections):
        if i:
            print()
        print(f"# ==> {heading} <==")
        if name == "interfaces" and not text:
            text = "# (no static address: svcops.yaml has no nodeNetwork)\n"
        sys.stdout.write(text)
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    _patch_gevent()
    from svcops.apply import ApplyOptions, run

    if args.json and not args.dry:
        print("svcops apply: --json goes with --dry", file=sys.stderr)
        return EXIT_ERROR
    opts = ApplyOptions(
        inventory=args.inventory,
        site=args.site,
        dry=args.dry,
        limit=args.limit,
        serial=args.serial,
        fail_percent=args.fail_percent,
        yes=args.yes,
        json=args.json,
        rollback_after=args.rollback_after,
        lock_timeout=args.lock_timeout,
        node_timeout=args.node_timeout,
        command_timeout=args.command_timeout,
        verify=args.verify,
    )
    return run(opts)


def _patch_gevent() -> None:
    # gevent first: pyinfra must see the patched socket and threading modules (connecting
    # to 60 hosts: 4.8 s without, 0.6 s with).
    import gevent.monkey

    if not gevent.monkey.is_module_patched("socket"):
        gevent.monkey.patch_all()


def cmd_check(args: argparse.Namespace) -> int:
    _patch_gevent()
    from dataclasses import fields

    from svcops.check import CheckOptions, run

    return run(CheckOptions(**{f.name: getattr(args, f.name) for f in fields(CheckOptions)}))


def cmd_explain(args: argparse.Namespace) -> int:
    from svcops.compile.explain import explain, parse_target

    try:
        ip, port, proto = parse_target(args.target)
        if args.source:
            parse_target(f"{args.source}:1")
    except ValueError as e:
        print(f"svcops explain: {e}", file=sys.stderr)
        return EXIT_ERROR
    compiled, lock, lock_path, diags = _compile(args)
    if compiled is not None and args.node not in compiled.outputs:
        known = ", ".join(sorted(compiled.outputs)) or "none"
        diags.append(Diagnostic(args.inventory, None, "--node", f"no node {args.node!r} in the inventory (nodes: {known})"))
        compiled = None
    _print_diags([d for d in diags if d.is_error])
    if compiled is None:
        return EXIT_ERROR
    from svcops.compile.announce import announcements

    out = compiled.outputs[args.node]
    # The node's own addresses: its address, and the load-balancer addresses it announces
    # (local there, so node ports answer on them too).
    announced = [a.address for a in announcements(compiled.ports, compiled.nodes).get(args.node, ())]
    addresses = tuple(dict.fromkeys(a for a in (out.address, out.node.ssh_host, *announced) if a))
    answer = explain(compiled.ports, args.node, addresses, ip, port, proto, args.source)
    if args.json:
        json.dump(answer.to_json(), sys.stdout, indent=2)
        print()
    else:
        sys.stdout.write(answer.text())
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    _patch_gevent()
    from svcops.status import StatusOptions, run

    return run(StatusOptions(args.inventory, args.site, args.json))


def cmd_watch(args: argparse.Namespace) -> int:
    from svcops.watch.controller import WatchOptions, unit_text

    if args.unit:
        argv = [a for a in (sys.argv[2:] if len(sys.argv) > 2 and sys.argv[1] == "watch" else []) if a != "--unit"]
        inv = os.path.abspath(args.inventory)
        if not argv:
            argv = ["-i", inv] + ([os.path.abspath(args.site)] if args.site else [])
        sys.stdout.write(unit_text(argv, os.getcwd()))
        return EXIT_OK
    _patch_gevent()
    from svcops.watch.controller import run

    opts = WatchOptions(
        inventory=args.inventory,
        site=args.site,
        grace=args.grace,
        metrics=args.metrics,
        lock_timeout=args.lock_timeout if args.lock_timeout is not None else 30.0,
        node_timeout=args.node_timeout,
        command_timeout=args.command_timeout,
        verbose=args.verbose,
        once=args.once,
        max_seconds=args.max_seconds,
    )
    return run(opts)


COMMANDS = {
    "validate": cmd_validate, "plan": cmd_plan, "render": cmd_render, "apply": cmd_apply,
    "check": cmd_check, "explain": cmd_explain, "watch": cmd_watch, "status": cmd_status,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_ERROR
    try:
        if getattr(args, "func", None):  # subcommands that carry their own handler (lab)
            return args.func(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("svcops: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `svcops render ... | head`: the reader went away; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
