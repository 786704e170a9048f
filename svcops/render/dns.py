"""Service DNS on every node: the files of the node's DNS server, and its resolv.conf.

What a node resolves (the Kubernetes DNS specification, as CoreDNS serves it; TTL 5 s):

    <svc>.<ns>.svc.<domain>                 A     the cluster IP
                                            A     every endpoint address (headless)
                                            CNAME the outside name (ExternalName), followed:
                                                  the client gets the CNAME *and* the
                                                  target's A records
    _<port>._<proto>.<svc>.<ns>.svc.<domain> SRV  0 100 <port> <svc>.<ns>.svc.<domain>.
                                                  headless: one per endpoint, at
                                                  <a-b-c-d>.<svc>.<ns>.svc.<domain>. (the
                                                  endpoint's dashed address, as Kubernetes
                                                  names endpoints without a hostname),
                                                  with the endpoint's own port;
                                                  ExternalName: at the outside name;
                                                  none for a port name of 63 characters
                                                  (its label would be 64: DNS allows 63)
    <a-b-c-d>.<svc>.<ns>.svc.<domain>        A     that endpoint (headless)
    anything else under <domain>             NXDOMAIN
    every other name                         forwarded to the nameservers the node's
                                             /etc/resolv.conf had before svcops

The server: PowerDNS Recursor (Debian package ``pdns-recursor``), as its own instance
``pdns-recursor@svcops`` listening on a loopback address of its own (`DEFAULT_LISTEN`),
with the cluster domain as an ``auth-zones`` zone file and ``.`` forwarded (with the
recursion-desired bit) to the previous nameservers. Why this one, from what Debian 12
ships, each tried on loopback against a stand-in "outside" server:

* pdns-recursor 4.8: serves the zone file authoritatively, *follows* a CNAME out of it
  as a resolver does (ExternalName works), SRV as written, NXDOMAIN inside the zone,
  forwards the rest. ``rec_control reload-zones`` re-reads the zone and forwarding
  files, swaps them in at once and wipes the cache under them (queries keep being
  answered during the swap: tested with a query loop), keeps the running
  configuration when a file is broken, takes ~15 ms, and needs no restart.
  It binds any 127/8 address without that address being configured on ``lo``.
* dnsmasq: ``cname=`` only points at names dnsmasq itself knows; to an outside name
  it returns the bare CNAME (tested), so ExternalName does not resolve.
* unbound 1.17: ``local-data`` CNAMEs are returned, not followed (tested); an
  ``auth-zone`` with ``for-upstream`` is bypassed by a ``forward-zone "."``
  (NXDOMAIN, tested); also ``reload`` restarts the daemon with default settings when
  the configuration file cannot be read.
* bind9 (primary zone + forwarders): follows the CNAME too (tested), but listens only
  on addresses configured on an interface, sizes its cache to 90% of memory by
  default and needs rndc keys: much more to set up and run per node for the same
  answers.
* knot-resolver 5.6: ``hints`` hold A/AAAA only; ``policy.ANSWER`` synthesises
  records but a CNAME from it is not chased (tested); local zones are a 6.x feature.
* CoreDNS: not packaged in Debian 12.

Settings that matter (see `_config_text`): ``serve-rfc1918=no`` (by default the
recursor would answer private reverse zones itself instead of the node's resolvers),
``security-poll-suffix=`` (no phoning home), ``allow-from`` loopback only,
``dnssec=process-no-validate`` (validation stays the upstream's business).

Files (all pure text from here; the operations write them, temp file + rename):

    /etc/powerdns/recursor-svcops.conf       the instance's settings: restart when changed
    /etc/powerdns/svcops/<domain>.zone       the records:               reload when changed
    /etc/powerdns/svcops/<domain>.zone.index its chunks' digests (`svcops.render.textpatch`):
                                             a records change sends the lines that changed
    /etc/powerdns/svcops/forward-zones       the previous nameservers:  reload when changed
    /etc/systemd/system/pdns-recursor@svcops.service.d/svcops.conf
                                             under systemd: its supervision (`dropin_text`)
    /etc/powerdns/svcops/supervise           without systemd: the same, as a script
                                             (`supervisor_script`): restart when changed
    /etc/resolv.conf                         ``nameserver <listen>``, then the previous
                                             nameservers, the search list
                                             ``svc.<domain> <domain> <previous search>``,
                                             the previous options with svcops's timeout,
                                             and the previous file kept verbatim in
                                             ``#was:`` comments

When the server dies or hangs (issue 10: "no torn nodes"), the node's names must not
go with it, and neither of these is enough alone:

* resolv.conf lists svcops's server first and then the previous nameservers (glibc reads
  three at most), with ``options timeout:1 attempts:2``. glibc asks them in order,
  each query afresh: a dead server's port answers with ICMP port unreachable, so glibc
  moves on at once (measured: no delay); a hung (SIGSTOPped) one costs the timeout,
  1 s, the least glibc allows, per query (measured on the lab, benchmarks/dns_faults.py:
  ``getent hosts`` of an outside name 5 s, its empty AAAA walking the 3-domain search
  list, A alone 1 s; a failing cluster name 8 s; with glibc's defaults, 5 s and 2
  attempts, and svcops's server alone, 40 s and then failure). Outside names keep
  resolving. Cluster names fail meanwhile (NXDOMAIN from the previous nameservers,
  which do not know them: at once when the server is dead, after the timeouts when it
  hangs), and they and the search list's expansions are asked there. While the server
  answers, its NXDOMAIN is final (glibc goes on only on no answer, SERVFAIL, REFUSED):
  it alone decides the cluster domain. ``rotate`` is dropped from the previous options
  (it would start cluster names at the next server), and timeout/attempts are svcops's:
  2 attempts still give a datagram lost to the upstream a second chance.
* the server is supervised, restarted 1 s after it exits, however it exits: under
  systemd by a drop-in for ``pdns-recursor@svcops`` (`dropin_text`; Debian's unit has
  ``Restart=on-failure``, which leaves a clean ``kill`` dead, 100 ms restarts and no
  start limit); without systemd (the lab, containers) by `supervisor_script`, a bash
  loop that runs the daemon in the foreground as the unit does (measured: a cluster
  name answers again 1.3 s after a ``kill -9``).
* a *hung* server is noticed by the next ``svcops apply`` (``svcops apply --dry`` shows it):
  the fact reads it as not answering within 4 s (`PING_DEADLINE`, then KILL), the
  operation kills it by PID (only svcops's instance: the unit's processes, or the PID
  file's process when its command line is ``--config-name=svcops`` in the node's network
  namespace) and starts it again (measured: the whole apply 6.9 s). Nothing on the node
  notices it sooner: pdns-recursor 4.8 sends systemd ``READY=1`` but no ``WATCHDOG=1``
  (checked in the binary; PowerDNS issue 3693 is open), so ``WatchdogSec=`` cannot
  work, and a prober of svcops's own would be one more daemon per node (and one more
  thing to hang); until then the fallback above bounds what it costs.

`dns_action` says which of restart / reload / nothing a set of changed files needs.
`render_zone` is the same on every node (render it once); `dns_files` adds the
per-node part (listen address, upstreams, supervision).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Literal, Mapping, Sequence

from svcops.render import textpatch
from svcops.render.node_files import sha256_text
from svcops.site.model import Allocations, Cluster, HeadlessEndpoints, Service, has_srv_record

__all__ = [
    "rec_control",
    "PACKAGE",
    "INSTANCE",
    "SERVICE_UNIT",
    "DEFAULT_LISTEN",
    "TTL",
    "CONFIG_DIR",
    "CONFIG_FILE",
    "DATA_DIR",
    "FORWARD_FILE",
    "SOCKET_DIR",
    "PID_FILE",
    "DROPIN",
    "SUPERVISOR",
    "SUPERVISOR_PID",
    "PING_DEADLINE",
    "RESOLV_OPTIONS",
    "RESOLV_CONF",
    "Zone",
    "DnsFiles",
    "render_zone",
    "zone_path",
    "zone_index_path",
    "dns_files",
    "render_dns",
    "dns_action",
    "reload_command",
    "reload_succeeded",
    "start_command",
    "daemon_command",
    "deadline",
    "dropin_text",
    "supervisor_script",
    "render_resolv_conf",
    "parse_upstreams",
    "restore_resolv_conf",
    "is_rendered_resolv_conf",
]

PACKAGE = "pdns-recursor"
INSTANCE = "svcops"
SERVICE_UNIT = f"pdns-recursor@{INSTANCE}.service"  # Debian ships the template unit
# A loopback address of its own: 127.0.0.1 often has a resolver already (dnsmasq,
# a default pdns-recursor), 127.0.0.53/54 are systemd-resolved's.
DEFAULT_LISTEN = "127.0.0.153"
TTL = 5  # CoreDNS's default for service records

CONFIG_DIR = "/etc/powerdns"
CONFIG_FILE = f"{CONFIG_DIR}/recursor-{INSTANCE}.conf"  # what --config-name=svcops reads
DATA_DIR = f"{CONFIG_DIR}/svcops"
FORWARD_FILE = f"{DATA_DIR}/forward-zones"
SOCKET_DIR = f"/run/pdns-recursor-{INSTANCE}"  # the template unit's RuntimeDirectory
PID_FILE = f"{SOCKET_DIR}/pdns_recursor-{INSTANCE}.pid"  # without systemd (the unit writes none)
DROPIN = f"/etc/systemd/system/{SERVICE_UNIT}.d/svcops.conf"
SUPERVISOR = f"{DATA_DIR}/supervise"
SUPERVISOR_PID = f"{SOCKET_DIR}/supervise.pid"
RESOLV_CONF = "/etc/resolv.conf"
# A healthy server answers rec_control in milliseconds; a hung one never does, and
# rec_control's own --timeout does not cover a blocked send to its control socket
# (measured: the second ping of a SIGSTOPped server hung until killed). 3 s, rec_control's
# own 2 s inside it: what svcops always gave a ping, ample on a loaded machine.
PING_DEADLINE = 3
# What svcops's resolv.conf sets (see the module's docstring): 1 s is glibc's least.
RESOLV_OPTIONS = ("timeout:1", "attempts:2")

_HEADER = "# Written by svcops; do not edit: svcops rewrites it (change the site instead).\n"


def zone_path(domain: str) -> str:
    return f"{DATA_DIR}/{domain.strip('.')}.zone"


def zone_index_path(domain: str) -> str:
    """The zone's index (`svcops.render.textpatch`), beside it; pdns-recursor never reads it."""
    return zone_path(domain) + ".index"


# --- the zone: the same on every node ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Zone:
    """The cluster domain's records as a zone file, with its sha256 and its index
    (`svcops.render.textpatch`: what lets a node's zone be patched rather than sent
    whole; kept beside it on the node, `zone_index_path`)."""

    domain: str
    text: str
    digest: str
    index: str = ""


def record_counts(zone: Zone) -> dict[str, int]:
    """Record type -> how many the zone holds (SOA left out): what `svcops plan` shows."""
    counts: dict[str, int] = {}
    for line in zone.text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == "IN" and parts[2] != "SOA":
            counts[parts[2]] = counts.get(parts[2], 0) + 1
    return dict(sorted(counts.items()))


def _dashed(ip: str) -> str:
    """An endpoint's name label, as Kubernetes makes it when there is no hostname."""
    return ip.replace(".", "-").replace(":", "-")


def _address_record(ip: str) -> str:
    return "AAAA" if ":" in ip else "A"


def _srv_weights(n: int) -> int:
    """CoreDNS's weight: 100 shared equally among the records of one priority."""
    return max(1, 100 // n) if n else 100


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


def render_zone(
    cluster: Cluster,
    services: Iterable[Service],
    headless: Mapping[str, HeadlessEndpoints],
    allocations: Allocations,
) -> Zone:
    """The zone file of the cluster domain: every service's records, sorted by service.

    `headless` is `svcops.compile.endpoints.headless_endpoints(...)`: the endpoints of the
    headless services (a headless service missing from it has no records). Cluster
    IPs come from `allocations` (or the manifest's own clusterIP). The SOA serial is
    fixed, so the text (and its digest) changes only when a record does.
    """
    domain = cluster.cluster_domain.strip(".")
    origin = domain + "."
    out = [
        "; " + _HEADER[2:],
        f"; The records of {origin}: svcops's services (svcops.dns).\n",
        f"$ORIGIN {origin}\n",
        f"$TTL {TTL}\n",
        f"@ IN SOA ns.dns.{origin} hostmaster.{origin} 1 7200 1800 86400 {TTL}\n",
    ]
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        name = f"{svc.name}.{svc.namespace}.svc"
        fqdn = f"{name}.{origin}"
        if svc.type == "ExternalName":
            if not svc.external_name:
                continue
            target = _absolute(svc.external_name)
            out.append(f"{name} IN CNAME {target}\n")
            for p in svc.ports:
                if has_srv_record(p.name):
                    out.append(f"_{p.name}._{p.protocol.lower()}.{name} IN SRV 0 100 {p.port} {target}\n")
        elif svc.headless:
            h = headless.get(svc.key)
            if h is None:
                continue
            for ip in h.addresses:
                out.append(f"{name} IN {_address_record(ip)} {ip}\n")
            for rp in h.ports:
                if not has_srv_record(rp.port.name):
                    continue
                owner = f"_{rp.port.name}._{rp.port.protocol.lower()}.{name}"
                w = _srv_weights(len(rp.endpoints))
                for e in rp.endpoints:
                    out.append(f"{owner} IN SRV 0 {w} {e.port} {_dashed(e.ip)}.{fqdn}\n")
            for ip in h.addresses:
                out.append(f"{_dashed(ip)}.{name} IN {_address_record(ip)} {ip}\n")
        else:
            ip = allocations.cluster_ips.get(svc.key) or svc.cluster_ip
            if not ip:
                continue
            out.append(f"{name} IN {_address_record(ip)} {ip}\n")
            for p in svc.ports:
                if has_srv_record(p.name):
                    out.append(f"_{p.name}._{p.protocol.lower()}.{name} IN SRV 0 100 {p.port} {fqdn}\n")
    text = "".join(out)
    digest = sha256_text(text)
    return Zone(domain, text, digest, textpatch.index_text(text, digest))


# --- the node's files -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DnsFiles:
    """What one node's DNS server gets.

    files:  path -> text (the settings, the zone, the forwarding file)
    digest: sha256 of all of them (paths included): a node whose digest is unchanged
            needs nothing done
    """

    files: Mapping[str, str]
    digest: str
    listen: str
    upstreams: tuple[str, ...]


def _forward_address(ns: str) -> str:
    """A forwarder as pdns-recursor writes it: IPv6 in brackets with the port."""
    return f"[{ns}]:53" if ":" in ns else ns


def _config_text(listen: str, domain: str, ipv6_upstreams: bool) -> str:
    loopback = "127.0.0.0/8, ::1/128"
    query_from = "0.0.0.0, ::" if ipv6_upstreams else "0.0.0.0"
    return (
        _HEADER
        + "# svcops's DNS server (pdns-recursor@svcops): the cluster domain from a zone file,\n"
        "# every other name forwarded to the node's previous nameservers. A change here needs\n"
        "# a restart, but for auth-zones: it, the zone and the forward-zones files are re-read\n"
        "# by `rec_control reload-zones`.\n"
        f"local-address={listen}\n"
        "local-port=53\n"
        f"allow-from={loopback}\n"
        f"auth-zones={domain}={zone_path(domain)}\n"
        f"forward-zones-file={FORWARD_FILE}\n"
        f"query-local-address={query_from}\n"
        f"socket-dir={SOCKET_DIR}\n"
        "# Private reverse zones go to the previous nameservers, as before svcops.\n"
        "serve-rfc1918=no\n"
        "security-poll-suffix=\n"
        "dnssec=process-no-validate\n"
        "quiet=yes\n"
    )


def dropin_text() -> str:
    """The drop-in for ``pdns-recursor@svcops.service`` that supervises the server under
    systemd (`DROPIN`; ``systemctl daemon-reload`` after writing it, no restart)."""
    return (
        _HEADER
        + "# svcops's DNS server is supervised: Debian's unit restarts it on failure only (a clean\n"
        "# kill leaves it dead), 100 ms after; this restarts it whenever it exits but through\n"
        "# systemctl, 1 s after (the unit's StartLimitInterval=0: it never gives up), and bounds\n"
        "# a stop (a hung server would hold `systemctl restart` for 90 s).\n"
        "[Service]\n"
        "Restart=always\n"
        "RestartSec=1\n"
        "TimeoutStopSec=5\n"
    )


def daemon_command() -> list[str]:
    """The server in the foreground, as the template unit runs it (unprivileged, no
    syslog); `supervisor_script` runs this where systemd does not."""
    return [
        "pdns_recursor",
        f"--config-dir={CONFIG_DIR}",
        f"--config-name={INSTANCE}",
        "--daemon=no",
        "--setuid=pdns",
        "--setgid=pdns",
        "--disable-syslog",
        "--log-timestamp=no",
    ]


def supervisor_script() -> str:
    """`SUPERVISOR`: the server's supervision where systemd does not run the machine,
    as `dropin_text` has it under systemd: the daemon in the foreground, started again
    1 s after it exits, however it exited, for as long as its settings file is there;
    TERM stops both. Started detached (`start_command`); its PID in `SUPERVISOR_PID`,
    the daemon's in `PID_FILE`, its last run's output in ``recursor.log`` beside them."""
    sock = SOCKET_DIR
    return (
        "#!/bin/bash\n"
        + _HEADER
        + "# svcops's DNS server without systemd: what pdns-recursor@svcops.service and svcops's\n"
        "# drop-in do under systemd (Restart=always, RestartSec=1). Started by svcops as\n"
        f"#     setsid -f bash {SUPERVISOR}\n"
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin\n"
        "child=\n"
        f"trap '[ -z \"$child\" ] || kill -TERM \"$child\" 2>/dev/null; rm -f {SUPERVISOR_PID}; exit 0' TERM INT HUP\n"
        f"mkdir -p {sock} && chown pdns:pdns {sock} && chmod 755 {sock} || exit 1\n"
        f"echo $$ > {SUPERVISOR_PID}\n"
        f"while [ -f {CONFIG_FILE} ]; do\n"
        f"    {' '.join(daemon_command())} >{sock}/recursor.log 2>&1 </dev/null &\n"
        "    child=$!\n"
        '    wait "$child"\n'
        "    child=\n"
        "    sleep 1\n"
        "done\n"
        f"rm -f {SUPERVISOR_PID}\n"
    )


def dns_files(zone: Zone, upstreams: Sequence[str], listen: str = DEFAULT_LISTEN, systemd: bool = False) -> DnsFiles:
    """One node's files, from the shared zone and the node's own upstreams.

    `upstreams` are the nameservers the node used before svcops (`parse_upstreams`);
    the listen address itself is left out (a loop). Raises ValueError when none is
    left: with nothing to forward to, the server would recurse from the root servers
    itself, which is not where the node's names went before. `systemd`: whether
    systemd runs the node, which decides the supervision file (`DROPIN` or
    `SUPERVISOR`).
    """
    ups: list[str] = []
    for ns in upstreams:
        if ns != listen and ns not in ups:
            ups.append(ns)
    if not ups:
        raise ValueError(
            f"no upstream nameserver for the DNS server on {listen}: the node's resolv.conf names none but svcops's own"
        )
    forward = (
        _HEADER
        + "# Every name outside the cluster domain: the nameservers of the node's previous resolv.conf.\n"
        + f"+.={';'.join(_forward_address(u) for u in ups)}\n"
    )
    files = {
        CONFIG_FILE: _config_text(listen, zone.domain, any(":" in u for u in ups)),
        zone_path(zone.domain): zone.text,
        FORWARD_FILE: forward,
    }
    if zone.index:
        files[zone_index_path(zone.domain)] = zone.index
    if systemd:
        files[DROPIN] = dropin_text()
    else:
        files[SUPERVISOR] = supervisor_script()
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.encode() + b"\0")
        h.update((zone.digest if path == zone_path(zone.domain) else files[path]).encode() + b"\0")
    return DnsFiles(files, h.hexdigest(), listen, tuple(ups))


def render_dns(
    cluster: Cluster,
    services: Iterable[Service],
    headless: Mapping[str, HeadlessEndpoints],
    allocations: Allocations,
    upstreams: Sequence[str],
    listen: str = DEFAULT_LISTEN,
    systemd: bool = False,
) -> DnsFiles:
    """`dns_files(render_zone(...), upstreams, listen, systemd)`: one node's DNS files in
    one call. For many nodes, render the zone once and call `dns_files` per node.
    """
    return dns_files(render_zone(cluster, services, headless, allocations), upstreams, listen, systemd)


Action = Literal["restart", "reload", "none"]


def only_auth_zones_differ(new_config: str, old_sha: str | None, old_domains: Iterable[str]) -> bool:
    """Whether the node's settings file (its sha256 `old_sha`) differs from `new_config`
    only in the auth-zones line, i.e. the cluster domain changed from one of
    `old_domains` (those whose zone files the node holds). pdns-recursor's
    ``reload-zones`` re-reads that line from the file (4.8, checked), so the server need
    not restart and no query goes unanswered."""
    if not old_sha:
        return False
    for d in old_domains:
        candidate = re.sub(r"(?m)^auth-zones=.*$", f"auth-zones={d}={zone_path(d)}", new_config)
        if sha256_text(candidate) == old_sha:
            return True
    return False


def dns_action(changed: Iterable[str]) -> Action:
    """What the server needs after the files at `changed` paths were rewritten.

    The settings file (listen address, zone list) and the supervisor script need a
    restart; the zone and forwarding files only a `reload_command`; nothing changed
    (or only the systemd drop-in: a ``daemon-reload``), nothing done.
    """
    changed = set(changed)
    if CONFIG_FILE in changed or SUPERVISOR in changed:
        return "restart"
    if any(p == FORWARD_FILE or (p.startswith(DATA_DIR + "/") and p.endswith(".zone")) for p in changed):
        return "reload"
    return "none"


def deadline(seconds: int, kill_after: int = 1) -> str:
    """A shell prefix that ends the command after `seconds` (TERM, then KILL `kill_after`
    s later): coreutils' ``timeout``, on every node-side command that talks to the server."""
    return f"timeout -k {kill_after} {seconds}"


def rec_control(seconds: int = PING_DEADLINE) -> str:
    """The shell prefix that talks to svcops's instance, ended after `seconds` whatever
    happens (rec_control's own timeout, one second less, says why when it can)."""
    return f"{deadline(seconds)} rec_control --config-dir={CONFIG_DIR} --config-name={INSTANCE} --timeout={max(1, seconds - 1)}"


def reload_command() -> list[str]:
    """Re-read the zone and forwarding files; the running server keeps answering.
    Bounded: 10 s (a reload takes ~15 ms)."""
    return [*deadline(10).split(), "rec_control", f"--config-dir={CONFIG_DIR}", f"--config-name={INSTANCE}", "--timeout=8", "reload-zones"]


def reload_succeeded(output: str) -> bool:
    """Whether `reload_command` worked: rec_control exits 0 even when the reload failed
    ("reloading failed, see log"; the server then keeps its previous data)."""
    return output.strip() == "ok"


def start_command(systemd: bool = True) -> list[str]:
    """Start (or restart) the server, supervised: the template unit under systemd
    (bounded: 30 s), else `SUPERVISOR` detached (it returns at once)."""
    if systemd:
        return [*deadline(30, 5).split(), "systemctl", "restart", SERVICE_UNIT]
    return ["setsid", "-f", "bash", SUPERVISOR]


# --- /etc/resolv.conf -------------------------------------------------------------------

_RESOLV_MARK = "# Written by svcops: names go to svcops's DNS server"
_WAS = "#was: "
_NO_NEWLINE = "#was-no-final-newline"  # the previous file's last line had no newline
_NAMESERVERS = 3  # glibc's MAXNS: further nameserver lines are ignored
# Previous options svcops's own replace: rotate would start half the queries at the next
# nameserver (cluster names: NXDOMAIN there).
_REPLACED_OPTIONS = ("timeout:", "attempts:", "rotate")


def is_rendered_resolv_conf(text: str) -> bool:
    return text.startswith(_RESOLV_MARK)


def _lines(text: str) -> list[str]:
    """The lines of `text` as glibc reads them (split at newline only), the last one
    whether or not a newline ends it."""
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def restore_resolv_conf(text: str) -> str:
    """The resolv.conf the node had before svcops, byte for byte (itself, when `text` is
    not svcops's)."""
    if not is_rendered_resolv_conf(text):
        return text
    lines = [ln[len(_WAS) :] if ln.startswith(_WAS) else "" for ln in _lines(text) if ln.startswith(_WAS.rstrip())]
    out = "".join(ln + "\n" for ln in lines)
    return out[:-1] if _NO_NEWLINE in _lines(text) else out


def _directives(text: str) -> list[tuple[str, list[str], str]]:
    """(keyword, arguments, line) of each directive, as glibc reads them (# and ; comment)."""
    out = []
    for line in _lines(text):
        words = line.split()
        if not words or words[0][0] in "#;":
            continue
        args = []
        for w in words[1:]:
            if w[0] in "#;":
                break
            args.append(w)
        out.append((words[0], args, line.strip()))
    return out


def parse_upstreams(previous_text: str, listen: str | None = None) -> list[str]:
    """The nameservers the node used before svcops, in order (glibc uses the first 3).

    Reads through svcops's own resolv.conf to the previous one it keeps. No nameserver
    line means glibc's default, the local one (127.0.0.1). `listen` is left out.
    """
    original = restore_resolv_conf(previous_text)
    found: list[str] = []
    for kw, args, _ in _directives(original):
        if kw == "nameserver" and args and args[0] not in found:
            found.append(args[0])
    found = found[:_NAMESERVERS] or ["127.0.0.1"]
    return [ns for ns in found if ns != listen]


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def render_resolv_conf(
    previous_text: str, listen: str, cluster_domain: str, default_search: Sequence[str] = ()
) -> str:
    """The node's /etc/resolv.conf: svcops's DNS server first, the previous nameservers
    after it (why: the module's docstring, "When the server dies or hangs").

    Nameservers: `listen`, then the first two previous ones (glibc reads three; the
    server forwards to all of them). Search list: ``svc.<domain> <domain>`` (so
    ``web.default`` and ``web.default.svc`` resolve), then the previous one (the last
    ``search`` or ``domain`` line, as glibc takes it; `default_search` when there was
    none: glibc would have used the host name's domain). Options: the previous ones in
    one line, in their order, but ``timeout``, ``attempts`` and ``rotate``, then
    `RESOLV_OPTIONS`; ``sortlist`` lines are kept as they were. The previous file is
    kept verbatim in ``#was:`` comments; rendering from an already-rendered file starts
    from that, so the result is the same (idempotent), and `restore_resolv_conf` gives
    the original back exactly.
    """
    original = restore_resolv_conf(previous_text)
    domain = cluster_domain.strip(".")
    search: list[str] = list(default_search)
    options: list[str] = []
    sortlist: list[str] = []
    for kw, args, line in _directives(original):
        if kw in ("search", "domain"):
            search = args if kw == "search" else args[:1]
        elif kw == "options":
            options += [o for o in args if not o.startswith(_REPLACED_OPTIONS)]
        elif kw == "sortlist":
            sortlist.append(line)
    full = [f"svc.{domain}", domain]
    for s in search:
        s = s.rstrip(".")
        if s and s != "." and s not in full:
            full.append(s)
    upstreams = [ns for ns in parse_upstreams(original, listen) if _valid_ip(ns)]
    previous = _lines(original)
    out = [
        f"{_RESOLV_MARK} ({listen}: pdns-recursor@svcops).\n",
        f"# It answers for {domain} and forwards every other name to the nameservers this file\n",
        f"# had before: {', '.join(upstreams) or 'none'}.\n",
        "# They follow it here: while it is down or hung, other names still resolve and cluster\n",
        "# names fail (NXDOMAIN there); a hung server costs a query 1 s (timeout:1).\n",
        "# The previous file is kept below, verbatim, in '#was:' lines; svcops restores it when\n",
        "# DNS is taken off the node. Do not edit.\n",
        f"nameserver {listen}\n",
        *(f"nameserver {ns}\n" for ns in upstreams[: _NAMESERVERS - 1]),
        f"search {' '.join(full)}\n",
        *(ln + "\n" for ln in sortlist),
        f"options {' '.join([*options, *RESOLV_OPTIONS])}\n",
        *(f"{_WAS}{ln}\n" for ln in previous),
        *([_NO_NEWLINE + "\n"] if original and not original.endswith("\n") else []),
    ]
    return "".join(out)
