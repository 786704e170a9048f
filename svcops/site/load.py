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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

from svcops import schemas
from svcops.gcpause import gc_paused
from svcops.site.diagnostics import Diagnostic, error, has_errors, sort_key
from svcops.site.files import folder_problem, list_folder, read_file
from svcops.site.model import Cluster, Site
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


def load_site(root: str | Path) -> tuple[Site | None, list[Diagnostic]]:
    """Read and check a site folder; the Site is None when there is any error.

    Warnings may come with a Site. Diagnostics are sorted by file and line; their
    paths are relative to `root` ("services/web.yaml").
    """
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
    site, more = parse_site(str(root), config, manifests)
    diags += more
    if has_errors(diags):
        site = None
    return site, sorted(diags, key=sort_key)


# --- the pure core ------------------------------------------------------------------


# A site of 10,000 services is some 200,000 YAML nodes, then values, lines and
# Services, none in a cycle: the collector would walk them all, again and again, for
# nothing (a fifth of the load).
@gc_paused()
def parse_site(
    root: str, config: bytes | str | None, manifests: Sequence[tuple[str, bytes | str]]
) -> tuple[Site | None, list[Diagnostic]]:
    """A site from its files' contents: svcops.yaml (None: absent) and (name, bytes) manifests."""
    diags: list[Diagnostic] = []
    cluster, cluster_diags = parse_config(config)
    diags += cluster_diags
    view = ClusterView(cluster) if cluster is not None else None

    entries: list[Entry] = []
    for name, data in manifests:
        docs, yaml_diags = load_documents(data, name)
        diags += yaml_diags
        for doc in docs:
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
                    entries.append(Entry(kind, obj, value))

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
