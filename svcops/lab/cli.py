"""`svcops lab ...`: the command-line face of the lab (argparse), kept apart from svcops/cli.py.

The main CLI wires it in with one call::

    from .lab.cli import register as register_lab
    register_lab(subparsers)      # adds "lab"; each sub-command sets func=handler

Each handler takes the parsed ``argparse.Namespace`` and returns the exit status (0 ok,
1 error; ``lab exec`` returns the command's own status). ``python -m svcops.lab.cli``
runs the same commands without the main CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from . import plan

EXIT_OK, EXIT_ERROR = 0, 1

LAB_HELP = f"""\
The lab: N Debian nodes (node1..nodeN) and a client on one machine, each in its own
network, mount and UTS namespaces: its own address on a shared bridge, its own /etc
(an overlay of the machine's), fresh /root, /run and /tmp, its own hostname, its own
sshd (key login with a key the lab generates; host keys in the lab's known_hosts), and
on every node a demo HTTP backend on port 80 that answers with its address and the
client address it saw. inventory/lab.py lists the nodes for pyinfra and svcops.

addresses ({plan.SUBNET}; nothing leaves the machine):
  {plan.GATEWAY:<16} the machine (link {plan.HOST_LINK}); the nodes' default gateway
  {plan.CLIENT_ADDRESS:<16} client
  192.168.36.10+K  nodeK

Needs root, iproute2, util-linux, openssh-server, openssh-client, nftables, python3.
Files: {plan.DEFAULT_DIR}/ (or ${plan.DIR_ENV}): state.json, id_ed25519 (the lab key),
known_hosts, ssh_config, hosts/NAME/ (each host's /etc changes, boot script and log).
"""

LAB_EPILOG = """\
examples:
  svcops lab up                       # 3 nodes and the client
  svcops lab up --nodes 20            # grow (or shrink) a running lab to 20 nodes
  svcops lab status
  svcops lab exec client -- curl -s http://192.168.36.11/
  svcops lab exec node1 -- iptables-save
  ssh -F /run/svcops-lab/ssh_config node1 hostname
  pyinfra -y inventory/lab.py deploys/services.py
  svcops lab down
"""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _error(e: Exception) -> int:
    print(f"svcops lab: error: {e}", file=sys.stderr)
    return EXIT_ERROR


def cmd_up(args: argparse.Namespace) -> int:
    from .shell import LabError, up

    try:
        state = up(args.nodes, say=_say)
    except LabError as e:
        return _error(e)
    except KeyboardInterrupt:
        print("svcops lab: interrupted; `svcops lab down` removes what was made", file=sys.stderr)
        return 130
    _print_hosts(state)
    print()
    print("Try:")
    print(f"  svcops lab exec client -- curl -s http://{plan.node_address(1)}/")
    print(f"  ssh -F {state['ssh_config']} node1 hostname")
    print("  svcops lab status")
    print("  pyinfra -y inventory/lab.py deploys/services.py")
    return EXIT_OK


def _print_hosts(state: dict[str, Any]) -> None:
    print(f"{'HOST':<8} {'ADDRESS':<16} {'NETNS':<14} SSH")
    for name, rec in sorted(state["hosts"].items(), key=lambda kv: kv[1].get("index", 0)):
        ssh = f"root@{rec['address']}" if rec.get("role") == "node" else "-"
        print(f"{name:<8} {rec['address']:<16} {rec['netns']:<14} {ssh}")
    print(f"key: {state['key']}   known_hosts: {state['known_hosts']}")


def cmd_down(args: argparse.Namespace) -> int:
    from .shell import LabError, down

    try:
        result = down(say=_say, everything=args.all)
    except LabError as e:
        return _error(e)
    return EXIT_ERROR if result.get("left_alone") else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .shell import status

    st = status()
    if args.json:
        json.dump(st, sys.stdout, indent=2, sort_keys=True)
        print()
        return EXIT_OK if st["up"] else EXIT_ERROR
    if not st["hosts"]:
        msg = f"lab: down (no state in {st['dir']})"
        if st.get("leftovers"):
            msg += f"; leftover namespaces: {', '.join(st['leftovers'])} (`svcops lab down --all` removes them)"
        print(msg)
        return EXIT_ERROR

    def mark(v: Any) -> str:
        return "-" if v is None else ("yes" if v else "NO")

    print(f"lab: {'up' if st['up'] else 'NOT healthy'} ({st['status']}), {st['subnet']} via {st['gateway']}, files in {st['dir']}")
    print(f"{'HOST':<8} {'ADDRESS':<16} {'NETNS':<14} {'RUNNING':<8} {'SSHD':<5} {'HTTP':<5} ANSWER")
    for r in st["hosts"]:
        print(
            f"{r['name']:<8} {r['address']:<16} {r['netns']:<14} {mark(r['keeper']):<8} "
            f"{mark(r.get('sshd')):<5} {mark(r.get('backend')):<5} {r.get('backend_answer') or ''}"
        )
    return EXIT_OK if st["up"] else EXIT_ERROR


def cmd_exec(args: argparse.Namespace) -> int:
    from .shell import LabError, run_in

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    try:
        return run_in(args.host, argv)
    except LabError as e:
        return _error(e)


def _lab_help(parser: argparse.ArgumentParser):
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_ERROR

    return show


def _node_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    err = plan.check_node_count(n)
    if err:
        raise argparse.ArgumentTypeError(err)
    return n


def register(subparsers: Any) -> None:
    """Add the ``lab`` command (up, down, status, exec) to an argparse subparsers object."""
    raw = argparse.RawDescriptionHelpFormatter
    lab = subparsers.add_parser(
        "lab",
        help="bring up a local lab of Debian nodes (namespaces, sshd, demo backends) to try svcops on",
        description=LAB_HELP,
        epilog=LAB_EPILOG,
        formatter_class=raw,
    )
    lab.set_defaults(func=_lab_help(lab))
    sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND")

    p = sub.add_parser(
        "up",
        help="create the lab (or converge a running one to --nodes)",
        description=(
            "Create node1..nodeN and the client, each with its own namespaces, sshd and demo\n"
            "backend, and wait until every sshd and backend answers. On a running lab: the\n"
            "same N changes nothing; another N adds or removes nodes (the others stay as they\n"
            "are); broken hosts (a dead sshd, backend or keeper) are replaced."
        ),
        epilog="examples:\n  svcops lab up\n  svcops lab up --nodes 20\n\nexit status: 0 up, 1 error (the message names what to install or fix)",
        formatter_class=raw,
    )
    p.add_argument("--nodes", "-n", type=_node_count, default=plan.DEFAULT_NODES, metavar="N", help=f"number of nodes (default {plan.DEFAULT_NODES}, at most {plan.MAX_NODES})")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "down",
        help="remove every namespace, link, process and file of the lab",
        description=(
            "End the lab's processes (recorded PIDs, and anything else living in its namespaces),\n"
            "remove its namespaces, its link on the machine and its files. Works after a failed\n"
            "`lab up` too; on a lab that is down it does nothing. Lab namespaces (svl-*) that\n"
            "processes live in but the state does not record (another lab folder, a lost state)\n"
            "are left alone (exit 1, named) unless --all."
        ),
        epilog="examples:\n  svcops lab down\n  svcops lab down --all     # every lab namespace on the machine, recorded or not\n\nexit status: 0 removed (or nothing to remove), 1 something was left alone or an error",
        formatter_class=raw,
    )
    p.add_argument("--all", action="store_true", help="also remove lab namespaces (svl-*) this state does not record, and what lives in them")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser(
        "status",
        help="show the lab's hosts and whether their sshd and backend answer",
        description="Show every host, its address and namespace, whether it runs, and (nodes) whether\nits sshd sends a banner and its backend answers over HTTP.",
        epilog="examples:\n  svcops lab status\n  svcops lab status --json | jq '.hosts[].backend_answer'\n\nexit status: 0 up and every host answers, 1 down or something does not answer",
        formatter_class=raw,
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "exec",
        help="run a command inside a host's namespaces (network, mount, hostname)",
        description=(
            "Run COMMAND inside HOST's network, mount and UTS namespaces (nsenter, as root), with\n"
            "the host's own /etc, /root, /run and /tmp; without COMMAND, a shell. Exits with the\n"
            "command's own status. The machine's virtualenv is not visible there (fresh /root)."
        ),
        epilog=(
            "examples:\n"
            "  svcops lab exec client -- curl -s --max-time 2 http://192.168.36.11/\n"
            "  svcops lab exec node1 -- iptables-save\n"
            "  svcops lab exec node2 -- ip -br addr\n"
            "  svcops lab exec node1"
        ),
        formatter_class=raw,
    )
    p.add_argument("host", metavar="HOST", help="node1..nodeN or client")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and its arguments")
    p.set_defaults(func=cmd_exec)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="svcops")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_ERROR
    try:
        return args.func(args)
    except BrokenPipeError:  # `... | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
