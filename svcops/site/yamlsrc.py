"""YAML with line numbers: every value of a manifest, and the line it was written on.

PyYAML's constructors throw positions away, so this module composes the node tree
(libyaml's C composer when available) and walks it once, building plain JSON-like
values (dict, list, str, int, float, bool, None) and, beside them, a map from each
value's path to its 1-based line::

    doc = load_documents(b"apiVersion: v1\\nkind: Service\\nspec:\\n  ports:\\n  - port: 80\\n", "web.yaml")[0][0]
    doc.value["spec"]["ports"][0]["port"]   # 80
    doc.line(("spec", "ports", 0, "port"))  # 5

What Kubernetes' strict decoding rejects is rejected here too, as a Diagnostic rather
than an exception: syntax errors, duplicate keys in a mapping, bytes that are not UTF-8,
non-scalar keys, tags other than YAML's core ones. Timestamps stay strings (JSON has
no dates, and neither do manifests once the API server has read them).

Pure: bytes in, values and diagnostics out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from svcops.site.diagnostics import Diagnostic, error

try:  # libyaml: about ten times faster than the pure-Python composer
    _Safe: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Safe = yaml.SafeLoader

# Distinct scalars remembered by `_Loader.resolve`; past this many, it starts afresh.
_MAX_TAGS = 100_000
_tags: dict = {}


class _Loader(_Safe):  # type: ignore[misc, valid-type]
    """PyYAML's safe loader, asking its Python resolver once per distinct scalar.

    Even libyaml's composer calls back into Python for the tag of every node: for a
    plain scalar, a few regular-expression matches (is "80" an int, "yes" a bool?),
    and a descend and an ascend for path resolvers that SafeLoader does not have.
    That is a fifth of composing a site, and the answer depends only on the scalar's
    text and whether it was quoted, so it is looked up in `_tags` (manifests repeat
    "name", "port", "TCP", "http"... on every page). The tags are exactly the
    resolver's: it computes each one the first time.
    """

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass  # path resolvers only (SafeLoader has none: checked below)

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: Any, value: Any, implicit: Any, _resolve=_Safe.resolve) -> str:
        if kind is not ScalarNode:
            return _resolve(self, kind, value, implicit)
        key = (value, implicit)
        tag = _tags.get(key)
        if tag is None:
            if len(_tags) >= _MAX_TAGS:
                _tags.clear()
            tag = _tags[key] = _resolve(self, kind, value, implicit)
        return tag


if _Safe.yaml_path_resolvers:  # pragma: no cover - someone gave SafeLoader path resolvers
    _Loader = _Safe  # noqa: F811 - their tags depend on where a node is: no memo

Path = tuple  # a path into a document: keys (str) and list indexes (int)

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"

# One constructor, used only for its scalar conversions (ints in 0x/0o/1_000 forms, .inf...).
_scalars = yaml.SafeLoader("")


def format_path(path: Path) -> str:
    """A path as Kubernetes prints field paths: ``spec.ports[0].port``, ``metadata.labels[app.kubernetes.io/name]``.

    A key that is not printable ASCII is shown JSON-quoted (``metadata.labels["\\u0430pp"]``):
    a look-alike letter or a control character in a key is then plain to see.
    """
    out = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        elif not (part.isascii() and part.isprintable()):
            out.append(f"[{json.dumps(part)}]")
        elif part.replace("_", "a").replace("-", "a").isalnum() and part[:1].isalpha():
            out.append(f".{part}" if out else part)
        else:
            out.append(f"[{part}]")
    return "".join(out)


@dataclass(slots=True)
class Document:
    """One YAML document of a file: its value and the line of every path in it."""

    file: str
    index: int  # 0-based position among the file's documents
    value: Any
    lines: dict  # path tuple -> 1-based line (of the key, for mapping entries)

    def line(self, path: Path = ()) -> int:
        """The line of `path`, or of its closest ancestor that has one."""
        lines = self.lines
        path = tuple(path)
        while path:
            ln = lines.get(path)
            if ln is not None:
                return ln
            path = path[:-1]
        return lines[()]


class _Walker:
    """Turns a composed node tree into values + lines, collecting problems."""

    __slots__ = ("file", "lines", "diags")

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict = {}
        self.diags: list[Diagnostic] = []

    def problem(self, node: Any, path: Path, message: str) -> None:
        self.diags.append(error(self.file, node.start_mark.line + 1, format_path(path), message))

    def scalar(self, node: ScalarNode, path: Path) -> Any:
        tag = node.tag
        if tag == _STR or tag == _TIMESTAMP:
            return node.value
        if tag == _INT:
            return _scalars.construct_yaml_int(node)
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return _scalars.construct_yaml_bool(node)
        if tag == _FLOAT:
            return _scalars.construct_yaml_float(node)
        self.problem(node, path, f"unsupported YAML tag {tag}")
        return node.value

    def walk(self, node: Any, path: Path) -> Any:
        # Iterative over mappings and sequences' items would be faster still, but
        # manifests are shallow (depth < 10), so recursion costs nothing here.
        if isinstance(node, ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, MappingNode):
            if node.tag != _MAP:
                self.problem(node, path, f"unsupported YAML tag {node.tag}")
            return self.mapping(node, path)
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                self.problem(node, path, f"unsupported YAML tag {node.tag}")
            lines = self.lines
            out = []
            for i, item in enumerate(node.value):
                p = path + (i,)
                lines[p] = item.start_mark.line + 1
                out.append(self.walk(item, p))
            return out
        raise TypeError(f"unexpected YAML node {node!r}")  # pragma: no cover

    def mapping(self, node: MappingNode, path: Path) -> dict:
        out: dict = {}
        lines = self.lines
        merges = []
        for knode, vnode in node.value:
            if not isinstance(knode, ScalarNode):
                self.problem(knode, path, "a mapping key must be a plain value, not a list or mapping")
                continue
            if knode.tag == _MERGE:
                merges.append(vnode)
                continue
            # Keys are strings once Kubernetes has converted YAML to JSON (`80: x` -> "80").
            key = knode.value
            p = path + (key,)
            if key in out:  # merged keys come after this loop: `out` holds this mapping's own
                self.problem(knode, p, f'duplicate key "{key}" (first on line {lines[p]})')
                continue
            lines[p] = knode.start_mark.line + 1
            if vnode.__class__ is ScalarNode and vnode.tag == _STR:
                out[key] = vnode.value  # most values: a string, without two calls
            else:
                out[key] = self.walk(vnode, p)
        # `<<: *anchor` merges keys the mapping does not set itself (YAML 1.1, as kubectl).
        for vnode in merges:
            sources = vnode.value if isinstance(vnode, SequenceNode) else [vnode]
            for src in sources:
                if not isinstance(src, MappingNode):
                    self.problem(vnode, path, "a merge key (<<) takes a mapping or a list of mappings")
                    continue
                sub = _Walker(self.file)
                value = sub.mapping(src, ())
                self.diags += sub.diags
                for key, v in value.items():
                    if key not in out:
                        out[key] = v
                        for sp, ln in sub.lines.items():
                            if sp[0] == key:
                                lines[path + sp] = ln
        return out


def decode(data: bytes, file: str) -> tuple[str | None, list[Diagnostic]]:
    """Bytes to text: UTF-8 (an optional BOM is dropped), else an error naming the line."""
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return None, [
            error(file, line, "", f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}): manifests must be UTF-8")
        ]


def load_documents(data: bytes | str, file: str) -> tuple[list[Document], list[Diagnostic]]:
    """Every non-empty document of a YAML stream, with its lines; problems as Diagnostics.

    Empty documents (``---`` with nothing after it) are skipped, as kubectl does; a file
    with no document at all is an error. Documents before a syntax error are returned.
    """
    if isinstance(data, bytes):
        text, diags = decode(data, file)
        if text is None:
            return [], diags
    else:
        text, diags = data, []
    docs: list[Document] = []
    loader = _Loader(text)
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:  # pragma: no cover - check_node said there was one
                break
            # `---` followed by nothing (or only comments) composes to an empty null scalar.
            if isinstance(node, ScalarNode) and node.tag == _NULL and node.value == "":
                index += 1
                continue
            walker = _Walker(file)
            walker.lines[()] = _first_line(node)
            value = walker.walk(node, ())
            diags += walker.diags
            docs.append(Document(file, index, value, walker.lines))
            index += 1
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = e.problem or "invalid YAML"
        context = f" ({e.context})" if e.context else ""
        diags.append(error(file, line, "", f"YAML syntax error: {problem}{context}"))
    except yaml.reader.ReaderError as e:  # characters YAML forbids (control characters...)
        char = e.character if isinstance(e.character, int) else ord(e.character)
        line = text.count("\n", 0, e.position) + 1
        diags.append(error(file, line, "", f"YAML error: character #x{char:04x} is not allowed ({e.reason})"))
    except yaml.YAMLError as e:  # pragma: no cover - every other error is marked
        diags.append(error(file, None, "", f"YAML error: {e}"))
    finally:
        loader.dispose()
    if not docs and not diags:
        diags.append(error(file, 1, "", "empty file: no YAML document in it"))
    return docs, diags


def _first_line(node: Any) -> int:
    """A document's line: its first key's, so that errors about it land on real text."""
    if isinstance(node, MappingNode) and node.value:
        return node.value[0][0].start_mark.line + 1
    return node.start_mark.line + 1

