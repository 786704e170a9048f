"""Loading a site: svcops.yaml and services/*.yaml in, a checked `Site` (or every error) out.

    site, diags = load_site("examples/walkthrough")

A site folder holds:

    svcops.yaml         the cluster (optional: missing means Kubernetes' defaults)
    services/*.yaml     manifests (and *.yml), read in name order, several documents
                        per file: kind Service and Endpoints (v1), EndpointSlice
                        (discovery.k8s.io/v1), and kind List (as `kubectl get -o yaml`
                        prints) holding any of them

Each document goes through three stages, and every problem of every stage, in every
file, is collected (`load_site` never stops at the first):

1. YAML (`yamlsrc`): syntax, duplicate keys, UTF-8, empty files; every value keeps its line.
2. Schema (`svcops.schemas`): the document's shape, by its kind.
3. Meaning (`validate`): what the API server would refuse, per object, then site-wide.

Files are read through `svcops.site.files`: regular files only (symlinks to them
followed), never blocking; a FIFO, a folder or a dangling symlink named like a
manifest is an error, not skipped.

`load_site` is the shell (it reads the files); `parse_site` is the pure core that
takes their bytes, so tests and benchmarks can feed it without touching a disk.

Stages 1-3 of one file depend only on that file (its name and bytes) and on the
cluster settings (svcops.yaml): `parse_manifest` does them for one file, and what it
gives for a file without errors can be remembered, under `manifest_key`, in a *memo*
that `parse_site` takes (a dict; `load_site` gives it the one kept on disk between
runs, `svcops.site.cache`). A one-service change to a 10,000-service site then reads
one file anew, not 20,000 documents. Errors are never remembered: a file with any is
read and checked again each time, so its messages are always this code's. A
remembered object keeps where it is (its document and path), not its lines: a
site-wide check that names it (a service defined twice...) reads its file again
(`_Refound`), so the message is the same as if nothing had been remembered.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from svcops import schemas
from svcops.gcpause import gc_paused
from svcops.site.diagnostics import Diagnostic, error, has_errors, sort_key
from svcops.site.files import folder_problem, list_folder, read_file
from svcops.site.model import Cluster, ManualEndpoints, Service, Site
from svcops.site.validate import (
    ClusterView,
    Entry,
    Located,
    Trust,
    check_site,
    cluster_from,
    endpoints_from,
    endpointslice_from,
    service_from,
)
from svcops.site.yamlsrc import Document, load_documents

CONFIG_NAME = "svcops.yaml"
SERVICES_DIR = "services"
MANIFEST_SUFFIXES = (".yaml", ".yml")

# (apiVersion, kind) -> the schema that describes it.
KINDS = {
    ("v1", "Service"): "service",
    ("v1", "Endpoints"): "endpoints",
    ("discovery.k8s.io/v1", "EndpointSlice"): "endpointslice",
}
API_VERSION_OF = {kind: api for api, kind in KINDS}
_KIND_LIST = "Service, Endpoints and EndpointSlice (or a List of them)"


# --- the shell ---------------------------------------------------------------------


def load_site(root: str | Path, cache: bool = True) -> tuple[Site | None, list[Diagnostic]]:
    """Read and check a site folder; the Site is None when there is any error.

    Warnings may come with a Site. Diagnostics are sorted by file and line; their
    paths are relative to `root` ("services/web.yaml"). `cache`: remember what each
    file without errors gave, between runs (`svcops.site.cache`; off with
    ``SVCOPS_NO_CACHE=1``); the result is the same either way.
    """
    from svcops.site.cache import disk_memo

    root = Path(root)
    diags: list[Diagnostic] = []
    why = folder_problem(root)
    if why is not None:
        return None, [error(str(root), None, "", f"site folder {why}")]
    config, config_diags = read_file(root / CONFIG_NAME, CONFIG_NAME)
    diags += config_diags
    manifests: list[tuple[str, bytes]] = []
    # A site without services/ has no services; that is valid. A services/ that is no
    # folder, or one svcops may not list, is an error.
    names, dir_diags = list_folder(root / SERVICES_DIR, SERVICES_DIR)
    diags += dir_diags
    for name in names or ():
        if name.startswith(".") or not name.endswith(MANIFEST_SUFFIXES):
            continue
        rel = f"{SERVICES_DIR}/{name}"
        # Every *.yaml is read or is an error: a FIFO, a folder or a dangling symlink
        # named like a manifest is never skipped in silence.
        data, file_diags = read_file(root / SERVICES_DIR / name, rel, missing_ok=False)
        diags += file_diags
        if data is not None:
            manifests.append((rel, data))
    if config_diags:  # checked against defaults it does not hold, the manifests would show false errors
        return None, sorted(diags, key=sort_key)
    site, more = parse_site(str(root), config, manifests, disk_memo("manifests") if cache else None)
    diags += more
    if has_errors(diags):
        site = None
    return site, sorted(diags, key=sort_key)


# --- the pure core ------------------------------------------------------------------


class Memo(Protocol):
    """Where `parse_site` remembers files: a dict will do (`svcops.site.cache.DiskMemo`
    keeps them on disk)."""

    def get(self, key: str) -> "Parsed | None": ...

    def __setitem__(self, key: str, value: "Parsed") -> None: ...


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one manifest file gives on its own (stages 1-3), in a form that can be
    remembered: its diagnostics, and each object it holds as (kind, model value,
    document's position among the file's documents, path of the object inside it,
    metadata.name)."""

    diagnostics: tuple[Diagnostic, ...]
    objects: tuple[tuple[str, Service | ManualEndpoints, int, tuple, str], ...]


def manifest_key(cluster: Cluster, name: str, data: bytes | str) -> str:
    """The memo's key of a manifest file: the sha256 of all `parse_manifest` reads (the
    cluster settings, the file's name as diagnostics give it, its contents)."""
    h = hashlib.sha256()
    h.update(repr(cluster).encode("utf-8", "surrogatepass"))
    h.update(b"\0" + name.encode("utf-8", "surrogatepass") + b"\0")
    # Bytes are decoded (a BOM dropped, UTF-8 checked); text is taken as it is.
    h.update(b"b" + data if isinstance(data, bytes) else b"s" + data.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def parse_manifest(name: str, data: bytes | str, view: ClusterView | None) -> tuple[Parsed, list[Located]]:
    """One manifest file through stages 1-3: what it gives, and each object's place
    (`Parsed.objects`' order) for the site-wide checks."""
    diags: list[Diagnostic] = []
    objs: list[tuple[str, Service | ManualEndpoints, int, tuple, str]] = []
    places: list[Located] = []
    docs, yaml_diags = load_documents(data, name)
    diags += yaml_diags
    for pos, doc in enumerate(docs):
        for obj, schema_name, obj_diags in objects(doc):
            diags += obj_diags
            if schema_name is None:
                continue
            problems = schemas.check_located(schema_name, obj.value, file=doc.file, line_of=doc.line, prefix=obj.prefix)
            diags += [d for _, d in problems]
            # Values the schema refused are not checked again; the rest are.
            trust = Trust(p for p, _ in problems)
            value: Any
            if schema_name == "service":
                value, more = service_from(obj, view, trust)
                kind = "Service"
            elif schema_name == "endpoints":
                value, more = endpoints_from(obj, trust)
                kind = "Endpoints"
            else:
                value, more = endpointslice_from(obj, trust)
                kind = "EndpointSlice"
            diags += more
            if value is not None:
                objs.append((kind, value, pos, obj.prefix, obj.value["metadata"]["name"]))
                places.append(obj)
    return Parsed(tuple(diags), tuple(objs)), places


class _File:
    """A remembered file's documents, composed again only if a message needs a line."""

    __slots__ = ("name", "data", "_docs")

    def __init__(self, name: str, data: bytes | str) -> None:
        self.name, self.data, self._docs = name, data, None

    def located(self, pos: int, prefix: tuple) -> Located:
        if self._docs is None:
            self._docs = load_documents(self.data, self.name)[0]
        doc = self._docs[pos]
        value = doc.value
        for part in prefix:
            value = value[part]
        return Located(doc, prefix, value)


class _Refound:
    """The place of a remembered object, for `check_site`'s messages: the same as its
    `Located` would give, found by reading its file again (only when asked)."""

    __slots__ = ("file", "_src", "_pos", "_prefix")

    def __init__(self, src: _File, pos: int, prefix: tuple) -> None:
        self.file, self._src, self._pos, self._prefix = src.name, src, pos, prefix

    def error(self, path: tuple, message: str) -> Diagnostic:
        return self._src.located(self._pos, self._prefix).error(path, message)

    def warning(self, path: tuple, message: str) -> Diagnostic:
        return self._src.located(self._pos, self._prefix).warning(path, message)

    def where(self, *path: Any) -> str:
        return self._src.located(self._pos, self._prefix).where(*path)


# A site of 10,000 services is some 200,000 YAML nodes, then values, lines and
# Services, none in a cycle: the collector would walk them all, again and again, for
# nothing (a fifth of the load).
@gc_paused()
def parse_site(
    root: str, config: bytes | str | None, manifests: Sequence[tuple[str, bytes | str]], memo: Memo | None = None
) -> tuple[Site | None, list[Diagnostic]]:
    """A site from its files' contents: svcops.yaml (None: absent) and (name, bytes)
    manifests. `memo`: what earlier runs gave for files without errors (see the
    module's docstring); files read now are added to it."""
    diags: list[Diagnostic] = []
    cluster, cluster_diags = parse_config(config)
    diags += cluster_diags
    view = ClusterView(cluster) if cluster is not None else None
    if cluster is None:
        memo = None  # the checks ran without the cluster's settings: nothing to remember

    entries: list[Entry] = []
    for name, data in manifests:
        key = manifest_key(cluster, name, data) if memo is not None else ""
        parsed = memo.get(key) if memo is not None else None
        if parsed is not None:
            src = _File(name, data)
            entries += [Entry(kind, _Refound(src, pos, prefix), value, oname) for kind, value, pos, prefix, oname in parsed.objects]
        else:
            parsed, places = parse_manifest(name, data, view)
            entries += [Entry(kind, place, value, oname) for (kind, value, _, _, oname), place in zip(parsed.objects, places)]
            if memo is not None and not has_errors(parsed.diagnostics):
                memo[key] = parsed
        diags += parsed.diagnostics

    services, endpoints, site_diags = check_site(entries, view)
    diags += site_diags
    diags.sort(key=sort_key)
    if cluster is None or has_errors(diags):
        return None, diags
    return Site(root=root, cluster=cluster, services=services, endpoints=endpoints), diags


def parse_config(config: bytes | str | None):
    """svcops.yaml's contents -> (Cluster | None, diagnostics). Absent or empty: the defaults."""
    if config is None:
        return Cluster(), []
    docs, diags = load_documents(config, CONFIG_NAME)
    if diags and not docs and diags[0].message.startswith("empty file"):
        return Cluster(), []  # a file of comments only: every key takes its default
    if has_errors(diags):
        return None, diags
    if len(docs) > 1:
        return None, [error(CONFIG_NAME, docs[1].line(), "", "svcops.yaml holds one document, not several")]
    doc = docs[0]
    if not isinstance(doc.value, dict):
        return None, [error(CONFIG_NAME, doc.line(), "", f"must be a mapping of settings, not {schemas.describe(doc.value)}")]
    problems = schemas.check_located("svcops", doc.value, file=CONFIG_NAME, line_of=doc.line)
    cluster, more = cluster_from(doc.value, CONFIG_NAME, doc.line, Trust(p for p, _ in problems))
    return cluster, [d for _, d in problems] + more


def objects(doc: Document) -> Iterator[tuple[Located, str | None, list[Diagnostic]]]:
    """The manifest objects of a document, each with the schema that applies to it.

    A kind List yields its items. An object whose apiVersion or kind svcops does not
    read comes with schema None and the error that says so.
    """
    value = doc.value
    if not isinstance(value, dict):
        yield Located(doc, (), {}), None, [
            error(doc.file, doc.line(), "", f"document {doc.index + 1} is {schemas.describe(value)}, not a manifest: a mapping with apiVersion and kind")
        ]
        return
    if value.get("kind") == "List" and value.get("apiVersion") == "v1":
        items = value.get("items")
        if not isinstance(items, list):
            yield Located(doc, (), value), None, [
                error(doc.file, doc.line(("items",)), "items", f"must be a list of manifests, not {schemas.describe(items)}")
            ]
            return
        for i, item in enumerate(items):
            prefix = ("items", i)
            if not isinstance(item, dict):
                yield Located(doc, prefix, {}), None, [
                    error(doc.file, doc.line(prefix), f"items[{i}]", f"must be a manifest (a mapping with apiVersion and kind), not {schemas.describe(item)}")
                ]
                continue
            yield _dispatch(Located(doc, prefix, item))
        return
    yield _dispatch(Located(doc, (), value))


def _dispatch(obj: Located) -> tuple[Located, str | None, list[Diagnostic]]:
    v = obj.value
    diags = []
    for key in ("apiVersion", "kind"):
        if key not in v:
            diags.append(error(obj.file, obj.line(), obj.field(key), "required field is missing: every manifest names its apiVersion and kind"))
        elif not isinstance(v[key], str):
            diags.append(obj.error((key,), f"must be a string, not {schemas.describe(v[key])}"))
    if diags:
        return obj, None, diags
    api, kind = v["apiVersion"], v["kind"]
    schema_name = KINDS.get((api, kind))
    if schema_name is not None:
        return obj, schema_name, []
    if kind in API_VERSION_OF:
        return obj, None, [obj.error(("apiVersion",), f'"{api}" is not the apiVersion of {kind}: use {API_VERSION_OF[kind]}')]
    return obj, None, [obj.error(("kind",), f'unknown kind "{kind}": svcops reads {_KIND_LIST}')]
