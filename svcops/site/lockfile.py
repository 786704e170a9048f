"""svcops.lock: the allocations of a site, as a reviewable, mergeable text file.

The lock lives in the site folder and is committed with it. It is YAML, one
allocation a line, every section sorted by key, so that a diff shows exactly what
`svcops plan` added or released and two branches merge cleanly::

    # svcops.lock: allocations made by svcops (...)
    version: 2
    clusterIPs:
      default/web: 10.96.38.122
    nodePorts:
      default/web:80/TCP: 31012
    loadBalancerIPs:
      default/web: 192.0.2.3
    nodeAddresses:
      node1: 10.0.0.57
    # end of svcops.lock

A lock that does not parse is an error naming the file and line, never silently
rebuilt: rebuilding it would move every cluster IP and node port of the site.

A lock cut short is an error too. A file cut at a line boundary is still valid
YAML, and each lost entry would be allocated again, so the writer always ends the
file with the closing line above: a version 2 lock without it as its last line (or
without a final newline) was cut short, and nothing is allocated, written or
pushed until it is restored from git. A closing line, not an entry count or a
checksum in the header: two branches that add different services change different
lines, and a count or a checksum would make every such pair of branches conflict.

Version 1 locks (svcops before the closing line) still load: the version says
which kind a file is, so a version 2 lock cut short cannot pass for an old one.
Such a lock is left as it is while its allocations stay the same (a read-only
checkout still plans), and written as version 2 by the next `plan` that changes
it. A version 1 lock with svcops's header must still hold all four sections and
end with a newline (svcops always wrote them): that catches a cut before the last
section or inside a line, not one at a line boundary inside the last section.

`parse_lock` and `dump_lock` are pure; `read_lock` and `write_lock` are the shell.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import importlib.resources
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import netaddr
import yaml

from svcops.site.diagnostics import Diagnostic, error
from svcops.site.files import read_file
from svcops.site.model import Allocations

__all__ = ["parse_lock", "dump_lock", "read_lock", "write_lock", "LockWriteError", "LOCK_VERSION", "CLOSING_LINE"]

LOCK_VERSION = 2  # what write_lock writes
READ_VERSIONS = (1, 2)  # what parse_lock reads: 1 has no closing line

# The last line of every version 2 lock.
CLOSING_LINE = "# end of svcops.lock"
RESTORE = "it was cut short (restore it from git)"

HEADER_V1 = """\
# svcops.lock: allocations made by svcops (cluster IPs, node ports, load-balancer
# addresses, node addresses). Commit it with the site. An allocation recorded here
# never moves; delete a line to let `svcops plan` allocate that one anew.
"""
HEADER = HEADER_V1 + "# Its last line is `# end of svcops.lock`: a lock without it was cut short.\n"

# section in the file -> (attribute of Allocations, what a value is)
SECTIONS = {
    "clusterIPs": ("cluster_ips", "address"),
    "nodePorts": ("node_ports", "port"),
    "loadBalancerIPs": ("load_balancer_ips", "address"),
    "nodeAddresses": ("node_addresses", "address"),
}

# Whole keys (fullmatch): with match, a $ would let a key end in a newline.
_SERVICE_KEY = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z]([-a-z0-9]*[a-z0-9])?$")
_NODE_PORT_KEY = re.compile(r"^(?P<svc>[^:]+):(?P<port>[0-9]+)/(?P<proto>TCP|UDP|SCTP)$")

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --- parsing ------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _schema_validator() -> Any | None:
    """The validator of schemas/lock.schema.json, compiled once; None if it is absent."""
    try:
        resource = importlib.resources.files("svcops.schemas").joinpath("lock.schema.json")
        if not resource.is_file():
            return None
        schema = json.loads(resource.read_text(encoding="utf-8"))
    except (ModuleNotFoundError, OSError, ValueError):
        return None
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(schema)
    # Inline the schema's local "$ref"s: a lock has one entry per allocation, and
    # resolving a reference per entry is most of jsonschema's time on a big lock.
    try:
        return Draft202012Validator(_inline_refs(schema, schema))
    except RecursionError:  # a recursive schema: keep its references
        return Draft202012Validator(schema)


@functools.lru_cache(maxsize=1)
def _schema_check() -> Callable[[Any], bool] | None:
    """True proves a lock's data valid to `_schema_validator`, without jsonschema.

    Generated from the validator's own schema (`svcops.schemas.fastcheck`): a lock of
    10,000 services is 13,000 entries, 0.1 s of jsonschema, and almost always valid;
    anything this does not prove goes to jsonschema, which words the errors.
    """
    validator = _schema_validator()
    if validator is None:
        return None
    from svcops.schemas.fastcheck import compile_check

    return compile_check(validator.schema, fallback=lambda sub: validator.evolve(schema=sub).is_valid, name="lock")


def _inline_refs(node: Any, root: dict) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/") and len(node) == 1:
            target: Any = root
            for part in ref[2:].split("/"):
                target = target[part]
            return _inline_refs(target, root)
        return {k: _inline_refs(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, root) for v in node]
    return node


def _is_ipv4(text: object) -> bool:
    """Whether `text` is an IPv4 address in its usual form (svcops is IPv4 only)."""
    if not isinstance(text, str):
        return False
    try:
        # Strict (inet_pton): "010.0.0.1", "1.2.3" and "167772161" are refused.
        netaddr.IPAddress(text, 4)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return False
    return True


def _check_key(section: str, key: str) -> str | None:
    """Why a key of `section` is malformed, or None."""
    if section == "nodeAddresses":
        return None if key else "a node name must not be empty"
    if section == "nodePorts":
        m = _NODE_PORT_KEY.fullmatch(key)
        if not m or not _SERVICE_KEY.fullmatch(m["svc"]) or not 0 < int(m["port"]) <= 65535:
            return f"{key!r} is not a node-port key (namespace/name:port/PROTOCOL, e.g. default/web:80/TCP)"
        return None
    if not _SERVICE_KEY.fullmatch(key):
        return f"{key!r} is not a service key (namespace/name, e.g. default/web)"
    return None


def _construct(constructor: yaml.constructor.SafeConstructor, node: yaml.Node) -> Any:
    """The value of a node; its text when it is no plain value (e.g. an unknown tag)."""
    try:
        return constructor.construct_object(node, deep=True)
    except yaml.YAMLError:
        return getattr(node, "value", None) if isinstance(node, yaml.ScalarNode) else node.tag


_VERSION_LINE = re.compile(r"^version:[ \t]*([0-9]+)[ \t]*(?:#.*)?$", re.M)


def _cut_short(text: str, file: str, version: object = None) -> Diagnostic | None:
    """The error of a lock cut short, or None: a version 2 lock must end with its
    closing line and a newline, a version 1 lock with svcops's header with a newline.

    Checked on the text, before YAML (the version read from its line): a cut inside
    an entry would otherwise show as a YAML error or a bad value, hiding what
    happened. Checked again once YAML gave the `version` (written some other way).
    """
    if version is None:
        m = _VERSION_LINE.search(text)
        version = int(m[1]) if m else None
    if isinstance(version, bool) or version not in READ_VERSIONS:
        return None  # no version or an unknown one: parse says
    # Version 1 without svcops's header: written by hand, no final newline required.
    if not text.endswith("\n") and (version == 2 or text.startswith(HEADER_V1)):
        return error(file, text.count("\n") + 1, "", f"ends in the middle of a line: {RESTORE}")
    if version == 1:
        return None  # no closing line
    lines = text.rstrip().split("\n")  # blank lines after the closing line are harmless
    if lines[-1].rstrip() == CLOSING_LINE:
        return None
    closing = next((i for i, ln in enumerate(lines) if ln.rstrip() == CLOSING_LINE), None)
    if closing is not None:
        return error(file, closing + 2, "", f"comes after the closing line ({CLOSING_LINE!r}), which must be the last line")
    return error(file, len(lines), "", f"ends without its closing line ({CLOSING_LINE!r}): {RESTORE}")


def parse_lock(text: str, file: str = "svcops.lock") -> tuple[Allocations | None, list[Diagnostic]]:
    """The allocations a lock file holds, or None with every error found.

    Errors name the file, the line and the entry, e.g.
    ``svcops.lock:7: clusterIPs.default/web: 'x' is not an IPv4 address``.
    A lock cut short is one error that says so, whatever else the cut broke.
    """
    cut = _cut_short(text, file)
    if cut is not None:
        return None, [cut]
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        return None, [error(file, line, "", f"not valid YAML: {problem}")]
    finally:
        loader.dispose()

    if root is None:
        return None, [
            error(file, 1, "", "the lock file is empty: restore it from git, or delete it to start afresh "
                  "(every allocation will then be made anew)")
        ]
    if not isinstance(root, yaml.MappingNode):
        return None, [error(file, root.start_mark.line + 1, "", "the lock must be a mapping (version, clusterIPs, ...)")]

    diags: list[Diagnostic] = []
    constructor = yaml.constructor.SafeConstructor()
    data: dict[str, Any] = {}  # what the file says, once checked: for the schema
    lines: dict[tuple[str, ...], int] = {}  # path -> line, for the schema's errors
    sections: dict[str, dict[str, Any]] = {attr: {} for attr, _ in SECTIONS.values()}
    seen_top: set[str] = set()
    version_seen = False
    for knode, vnode in root.value:
        key = knode.value if isinstance(knode, yaml.ScalarNode) else None
        kline = knode.start_mark.line + 1
        lines[(str(key),)] = kline
        if key in seen_top:
            diags.append(error(file, kline, str(key), "duplicate key"))
            continue
        seen_top.add(str(key))
        if key == "version":
            version_seen = True
            value = _construct(constructor, vnode)
            data["version"] = value
            if value not in READ_VERSIONS or isinstance(value, bool):
                diags.append(
                    error(file, vnode.start_mark.line + 1, "version",
                          f"unsupported lock version {value!r} (this svcops reads versions 1 and {LOCK_VERSION})")
                )
            continue
        if key not in SECTIONS:
            known = ", ".join(["version", *SECTIONS])
            diags.append(error(file, kline, str(key), f"unknown key (expected: {known})"))
            continue
        attr, kind = SECTIONS[key]
        if not isinstance(vnode, yaml.MappingNode):
            diags.append(
                error(file, vnode.start_mark.line + 1, key, "must be a mapping of key: value ({} when empty)")
            )
            continue
        entries = data[key] = sections[attr]
        seen: set[str] = set()
        for enode, evnode in vnode.value:
            eline = evnode.start_mark.line + 1
            if not isinstance(enode, yaml.ScalarNode) or enode.tag != "tag:yaml.org,2002:str":
                ekey = enode.value if isinstance(enode, yaml.ScalarNode) else "?"
                diags.append(error(file, enode.start_mark.line + 1, f"{key}.{ekey}", "a key must be a string"))
                continue
            ekey = enode.value
            fld = f"{key}.{ekey}"
            lines[(key, ekey)] = eline
            if ekey in seen:
                diags.append(error(file, enode.start_mark.line + 1, fld, "duplicate key"))
                continue
            seen.add(ekey)
            why = _check_key(key, ekey)
            if why:
                diags.append(error(file, enode.start_mark.line + 1, fld, why))
                continue
            if kind == "port":
                value = _construct(constructor, evnode)
                if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
                    diags.append(error(file, eline, fld, f"{value!r} is not a port number"))
                    continue
            else:
                is_str = evnode.tag == "tag:yaml.org,2002:str"
                value = evnode.value if is_str else _construct(constructor, evnode)
                if not _is_ipv4(value):
                    diags.append(error(file, eline, fld, f"{value!r} is not an IPv4 address"))
                    continue
            entries[ekey] = value
    if not version_seen:
        diags.append(error(file, root.start_mark.line + 1, "version", f"missing (write version: {LOCK_VERSION})"))
    elif not diags and (cut := _cut_short(text, file, data.get("version"))) is not None:
        diags.append(cut)
    elif data.get("version") == 1 and text.startswith(HEADER_V1) and not diags:
        # Written by svcops before the closing line: every section is there.
        missing = [section for section in SECTIONS if section not in seen_top]
        if missing:
            last = text.count("\n", 0, len(text.rstrip())) + 1
            diags.append(
                error(file, last, "", f"ends without the sections {', '.join(missing)} (svcops writes all four): {RESTORE}")
            )

    # The schema (schemas/lock.schema.json, what editors use) says nothing the checks
    # above do not; it is a second opinion, heard only when they found nothing.
    validator, proven = _schema_validator(), _schema_check()
    if validator is not None and proven is not None and not diags and not proven(data):
        for e in validator.iter_errors(data):
            path = tuple(str(p) for p in e.absolute_path)
            line = next((lines[path[:n]] for n in range(len(path), 0, -1) if path[:n] in lines), None)
            message = e.schema.get("errorMessage", e.message) if isinstance(e.schema, dict) else e.message
            diags.append(error(file, line, ".".join(path), message))

    if diags:
        return None, diags
    return Allocations(**{attr: dict(sorted(v.items())) for attr, v in sections.items()}), []


# --- dumping ------------------------------------------------------------------------

# Keys written without quotes: those YAML reads back as the same string. Service
# keys always are ("ns/name", "ns/name:80/TCP"); a node name is when it starts with a
# letter and is no YAML word (yes, off, null...); anything else is quoted.
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*(:[0-9]+/[A-Z]+)?$")
_YAML_WORDS = {"yes", "no", "on", "off", "true", "false", "null"}


def _key(key: str) -> str:
    plain = _PLAIN_KEY.fullmatch(key) and (
        "/" in key or (key[0].isalpha() and key.lower() not in _YAML_WORDS)
    )
    if plain:
        return key
    # Anything else (rare: odd inventory names) is quoted by YAML's own emitter.
    return yaml.safe_dump(key, default_style='"', width=1 << 30, allow_unicode=True).rstrip("\n").removesuffix("\n...")


def _value(value: object) -> str:
    text = str(value)
    return text if ":" not in text else json.dumps(text)  # IPv6 (never from svcops): quoted


def dump_lock(allocs: Allocations, version: int = LOCK_VERSION) -> str:
    """The lock file's text: a header comment, each section sorted by key, and (from
    version 2) the closing line. Version 1 is only for telling an old lock unchanged."""
    out = [HEADER if version >= 2 else HEADER_V1, f"version: {version}\n"]
    for section, (attr, _) in SECTIONS.items():
        entries = getattr(allocs, attr)
        if not entries:
            out.append(f"{section}: {{}}\n")
            continue
        out.append(f"{section}:\n")
        out.extend(f"  {_key(k)}: {_value(entries[k])}\n" for k in sorted(entries))
    if version >= 2:
        out.append(CLOSING_LINE + "\n")
    return "".join(out)


# --- the shell ----------------------------------------------------------------------


def read_lock(path: str | os.PathLike[str], file: str | None = None, cache: bool = True) -> tuple[Allocations | None, list[Diagnostic]]:
    """Read a lock file; a missing file is an empty lock (a site's first plan).

    `file` is the name diagnostics give it; by default its base name ("svcops.lock"),
    as the lock sits at the root of the site and diagnostics name files relative to it.
    `cache`: a lock that parsed without a problem is remembered under its digest, for
    the next run (`svcops.site.cache`: 13,000 entries parse in 0.28 s, load in 0.02 s).
    """
    from svcops.site.cache import disk_memo

    name = file if file is not None else os.path.basename(os.fspath(path))
    raw, diags = read_file(path, name)
    if diags:
        return None, diags
    if raw is None:
        return Allocations(), []
    memo = disk_memo("lock") if cache else None
    key = hashlib.sha256(name.encode("utf-8", "surrogatepass") + b"\0" + raw).hexdigest()
    known = memo.get(key) if memo is not None else None
    if isinstance(known, Allocations):
        return known, []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        return None, [error(name, line, "", "not UTF-8 text")]
    allocs, diags = parse_lock(text, name)
    if memo is not None and allocs is not None and not diags:
        memo[key] = allocs
    return allocs, diags


class LockWriteError(Exception):
    """The lock could not be written; the old one is untouched, no temporary file is left.

    `diagnostic` says which file and why (``svcops.lock: cannot write: read-only file
    system (svcops.lock is unchanged)``); str() is the same line.
    """

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(str(diagnostic))
        self.diagnostic = diagnostic


_WRITE_ERRORS = {
    errno.EROFS: "the site folder is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
}


def write_lock(path: str | os.PathLike[str], allocs: Allocations, file: str | None = None) -> bool:
    """Write the lock atomically; return whether its content changed.

    Nothing is written when the file already holds exactly this text, or is a
    version 1 lock of exactly these allocations (its modification time stays, so a
    second `plan` touches nothing, and a read-only checkout plans). Otherwise the
    text goes to a temporary file in the same folder, is fsynced, and replaces the
    lock in one rename: a crash leaves the old lock or the new one, never half of
    one. Any failure (read-only folder, full disk...) raises LockWriteError, with the
    old lock untouched and the temporary file removed.
    """
    path = Path(path)
    name = file if file is not None else path.name
    text = dump_lock(allocs)
    old, diags = read_file(path, name)
    if diags:  # a FIFO, a folder...: never replaced by a rename
        raise LockWriteError(diags[0])
    if old is not None and old in (text.encode(), dump_lock(allocs, 1).encode()):
        return False
    tmp: str | None = None
    try:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        why = _WRITE_ERRORS.get(e.errno, e.strerror or str(e))
        raise LockWriteError(error(name, None, "", f"cannot write: {why} ({name} is unchanged)")) from e
    finally:
        if tmp is not None:  # any failure, an interrupt too: no temporary left behind
            try:
                os.unlink(tmp)
            except OSError:
                pass
    # Make the rename itself durable.
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return True
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
    return True
