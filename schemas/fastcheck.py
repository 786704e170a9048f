"""A yes-or-no check generated from a JSON Schema: does this value certainly pass it?

jsonschema interprets a schema anew for every value it validates: one descent, one
evolved validator and one type lookup per keyword per value, about 0.1 ms per Service,
a second at 10,000 services, where every document is almost always valid. This
module turns a schema into the source of one plain Python function (nested ifs and
loops, precompiled patterns, frozensets) and compiles it once::

    accepts = compile_check(schema, fallback=lambda sub: Draft202012Validator(sub).is_valid)
    accepts({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}})  # True

The answer is one-sided. True means jsonschema finds no error in the value. False
means only "not proven": the caller then runs jsonschema, whose errors (and so the
messages users read) are the ones reported, exactly as without this check. So the
check may be stricter than the schema wherever exactness would cost: it takes only
plain JSON-like values (dict, list, str, int, float, bool, None, no subclasses), 80.0
is no integer to it, and an exception inside it is a False. Where it must be exact,
under ``not`` (whose answer inverts), it asks jsonschema (`fallback`) unless the
inner schema is the empty one (``"not": {}``, a field svcops does not support).

Each keyword reads as jsonschema's Draft 2020-12 implementation reads it: pattern by
``re.search``, additionalProperties against the patternProperties joined with ``|``,
const and enum without taking true for 1, minimum and maximum only on numbers, the
object, array and string keywords only on values of their type. A subschema holding a
keyword this module does not translate (``oneOf``, ``format``, ``uniqueItems``, a
remote ``$ref``...) goes to jsonschema whole, through `fallback`: a schema that grows
a new keyword stays right, only slower there. The schema given must have its local
``$ref``s inlined already (`svcops.schemas.validator` validates with such a schema).

`generate` gives the source, to read or to test; `compile_check` the function.
"""

from __future__ import annotations

import numbers
import re
from typing import Any, Callable

__all__ = ["compile_check", "generate"]

Check = Callable[[Any], bool]
Fallback = Callable[[Any], Check]  # subschema -> jsonschema's is_valid for it

# Keywords that say nothing about validity (errorMessage is svcops's, for messages).
ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples",
     "errorMessage", "markdownDescription", "deprecated", "readOnly", "writeOnly"}
)
TRANSLATED = frozenset(
    {"type", "const", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum",
     "items", "minItems", "maxItems", "properties", "required", "additionalProperties",
     "patternProperties", "propertyNames", "allOf", "anyOf", "not"}
)

# JSON type -> the test of a plain value of it ({v}: the value's variable).
_PLAIN = {
    "string": "type({v}) is str",
    "integer": "type({v}) is int",
    "number": "(type({v}) is int or type({v}) is float)",
    "boolean": "type({v}) is bool",
    "null": "{v} is None",
    "object": "type({v}) is dict",
    "array": "type({v}) is list",
}
# The keywords that apply only to one type (jsonschema: `if not is_type(...): return`),
# by the type, with the test of any value jsonschema takes for that type.
_FAMILIES = (
    ("string", ("pattern", "minLength", "maxLength"), "isinstance({v}, str)"),
    ("number", ("minimum", "maximum"), "(isinstance({v}, _Number) and not isinstance({v}, bool))"),
    ("array", ("items", "minItems", "maxItems"), "isinstance({v}, list)"),
    ("object", ("properties", "required", "additionalProperties", "patternProperties", "propertyNames"), "isinstance({v}, dict)"),
)
# Bound keyword -> (what it bounds, the comparison that fails).
_BOUNDS = {
    "minLength": ("len({v})", "<"), "maxLength": ("len({v})", ">"),
    "minItems": ("len({v})", "<"), "maxItems": ("len({v})", ">"),
    "minimum": ("{v}", "<"), "maximum": ("{v}", ">"),
}
_MEMBERS = {"string": {"string"}, "number": {"integer", "number"}, "array": {"array"}, "object": {"object"}}

# Python refuses more than 20 nested loops, and deep indentation: past these, a block
# becomes a function of its own.
_MAX_LOOPS = 12
_MAX_DEPTH = 40


def is_trivial(sch: Any) -> bool:
    """The schema every value passes: true, {} or annotations only."""
    return sch is True or (isinstance(sch, dict) and not (sch.keys() - ANNOTATIONS))


class _Gen:
    """Source lines of the check functions, and the constants they use."""

    def __init__(self, fallback: Fallback) -> None:
        self.fallback = fallback
        self.functions: list[list[str]] = []
        self.names: dict[str, Any] = {"_Number": numbers.Number, "_MISSING": _MISSING}
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"_{hint}{self.count}"

    def const(self, value: Any, hint: str) -> str:
        name = self.name(hint)
        self.names[name] = value
        return name

    def search(self, pattern: str) -> str:
        return self.const(re.compile(pattern).search, "re")

    def function(self, sch: Any) -> str:
        """A function of its own for `sch`: name(value) -> bool."""
        name = self.name("f")
        body: list[str] = [f"def {name}(v0):"]
        self.functions.append(body)  # before the block: nested functions come after it
        self.block(sch, "v0", 1, 0, body)
        body.append("    return True")
        return name

    def under(self, sch: Any, v: str, ind: int, loops: int, out: list[str]) -> None:
        """`block`, as the body of an if or a for: never empty."""
        start = len(out)
        self.block(sch, v, ind, loops, out)
        if len(out) == start:
            out.append(f"{'    ' * ind}pass")

    def block(self, sch: Any, v: str, ind: int, loops: int, out: list[str]) -> None:
        """Lines that `return False` unless the value in variable `v` passes `sch`."""
        pad = "    " * ind
        if is_trivial(sch):
            return
        if sch is False or not isinstance(sch, dict):
            out.append(f"{pad}return False")  # false, or no schema at all: never proven
            return
        if ind > _MAX_DEPTH or loops > _MAX_LOOPS:
            out.append(f"{pad}if not {self.function(sch)}({v}): return False")
            return
        keys = sch.keys() - ANNOTATIONS
        if keys - TRANSLATED or not self.translatable(sch):
            out.append(f"{pad}if not {self.const(self.fallback(sch), 'js')}({v}): return False")
            return

        known: set[str] | None = None
        if "type" in sch:
            types = sch["type"] if isinstance(sch["type"], list) else [sch["type"]]
            out.append(f"{pad}if not ({' or '.join(_PLAIN[t].format(v=v) for t in types)}): return False")
            known = set(types)
        if "const" in sch:
            out.append(f"{pad}if {self.differs(v, [sch['const']])}: return False")
        if "enum" in sch:
            out.append(f"{pad}if {self.differs(v, sch['enum'])}: return False")

        for family, words, broad in _FAMILIES:
            present = [w for w in words if w in sch]
            if not present or (known is not None and not known & _MEMBERS[family]):
                continue  # no keyword of it, or a value the type test let through is never of it
            inner = ind
            if known is None or not known <= _MEMBERS[family]:
                out.append(f"{pad}if {_PLAIN[family].format(v=v)}:")
                inner = ind + 1
            start = len(out)
            getattr(self, f"_{family}")(sch, v, inner, loops, out)
            if inner != ind:
                if len(out) == start:
                    out.append(f"{pad}    pass")
                # A subclass (a str subclass, a Mapping...) jsonschema would check: not proven.
                out.append(f"{pad}elif {broad.format(v=v)}: return False")

        for sub in sch.get("allOf", ()):
            self.block(sub, v, ind, loops, out)
        if "anyOf" in sch:
            calls = " or ".join(f"{self.function(sub)}({v})" for sub in sch["anyOf"])
            out.append(f"{pad}if not ({calls}): return False")
        if "not" in sch:
            inner = sch["not"]
            if is_trivial(inner):
                out.append(f"{pad}return False")
            else:  # exactness needed: jsonschema's own answer
                out.append(f"{pad}if {self.const(self.fallback(inner), 'js')}({v}): return False")

    @staticmethod
    def translatable(sch: dict) -> bool:
        """Whether the values of the translated keywords are of forms translated here."""
        if "type" in sch:
            types = sch["type"] if isinstance(sch["type"], list) else [sch["type"]]
            if not types or any(t not in _PLAIN for t in types):
                return False
        for word in ("const", "enum"):
            if word in sch:
                values = [sch[word]] if word == "const" else sch[word]
                if not isinstance(values, list) or _kind(values) is None:
                    return False
        if not all(isinstance(sch.get(w, []), list) for w in ("allOf", "anyOf", "required")):
            return False
        if not all(isinstance(sch.get(w, {}), dict) for w in ("properties", "patternProperties")):
            return False
        for w in ("minLength", "maxLength", "minItems", "maxItems"):
            if w in sch and type(sch[w]) is not int:
                return False
        return all(type(sch.get(w, 0)) in (int, float) for w in ("minimum", "maximum"))

    def differs(self, v: str, values: list) -> str:
        """A test true when the value is none of `values` (const, enum)."""
        kind = _kind(values)
        if kind is type(None) or kind is bool:
            return " and ".join(f"{v} is not {value!r}" for value in values)
        return f"(type({v}) is not {kind.__name__} or {v} not in {self.const(frozenset(values), 'enum')})"

    # --- the families: `v` holds a value of the family's type --------------------------

    def bounds(self, sch: dict, v: str, pad: str, out: list[str], words: tuple[str, ...]) -> None:
        """The lines of the bound keywords `words` (minLength, maximum...) that `sch` has."""
        for word in words:
            if word in sch:
                of, op = _BOUNDS[word]
                bound = sch[word]  # an int is written as it is; a float (inf...) by name
                shown = str(bound) if type(bound) is int else self.const(bound, "bound")
                out.append(f"{pad}if {of.format(v=v)} {op} {shown}: return False")

    def _string(self, sch: dict, v: str, ind: int, loops: int, out: list[str]) -> None:
        pad = "    " * ind
        if "pattern" in sch:
            out.append(f"{pad}if not {self.search(sch['pattern'])}({v}): return False")
        self.bounds(sch, v, pad, out, ("minLength", "maxLength"))

    def _number(self, sch: dict, v: str, ind: int, loops: int, out: list[str]) -> None:
        self.bounds(sch, v, "    " * ind, out, ("minimum", "maximum"))

    def _array(self, sch: dict, v: str, ind: int, loops: int, out: list[str]) -> None:
        pad = "    " * ind
        self.bounds(sch, v, pad, out, ("minItems", "maxItems"))
        items = sch.get("items", True)
        if not is_trivial(items):
            x = self.name("v")
            out.append(f"{pad}for {x} in {v}:")
            self.under(items, x, ind + 1, loops + 1, out)

    def _object(self, sch: dict, v: str, ind: int, loops: int, out: list[str]) -> None:
        pad = "    " * ind
        required = sch.get("required", [])
        if required:
            out.append(f"{pad}if not ({' and '.join(f'{k!r} in {v}' for k in required)}): return False")
        props = sch.get("properties", {})
        for key, sub in props.items():
            if is_trivial(sub):
                continue
            x = self.name("v")
            out.append(f"{pad}{x} = {v}.get({key!r}, _MISSING)")
            out.append(f"{pad}if {x} is not _MISSING:")
            self.under(sub, x, ind + 1, loops, out)
        patterns = sch.get("patternProperties", {})
        for pattern, sub in patterns.items():
            if is_trivial(sub):
                continue
            k, x = self.name("k"), self.name("v")
            out.append(f"{pad}for {k}, {x} in {v}.items():")
            out.append(f"{pad}    if {self.search(pattern)}({k}):")
            self.under(sub, x, ind + 2, loops + 1, out)
        extra = sch.get("additionalProperties", True)
        names = sch.get("propertyNames", True)
        if extra is False and not patterns:
            out.append(f"{pad}if not {v}.keys() <= {self.const(frozenset(props), 'props')}: return False")
            extra = True
        if is_trivial(extra) and is_trivial(names):
            return
        # One loop over the entries for both the keys' schema and the extra values'.
        k, x = self.name("k"), self.name("v")
        out.append(f"{pad}for {k}, {x} in {v}.items():")
        start = len(out)
        self.block(names, k, ind + 1, loops + 1, out)
        if not is_trivial(extra):
            # jsonschema's find_additional_properties: one search of the patterns joined.
            tests = [f"{k} not in {self.const(frozenset(props), 'props')}"] if props else []
            tests += [f"not {self.search('|'.join(patterns))}({k})"] if patterns else []
            if tests:
                out.append(f"{pad}    if {' and '.join(tests)}:")
            self.under(extra, x, ind + 2 if tests else ind + 1, loops + 1, out)
        if len(out) == start:
            out.append(f"{pad}    pass")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "_MISSING"


_MISSING = _Missing()


def _kind(values: list) -> type | None:
    """The one type all `values` are of, when it is one the check compares exactly:
    str, int (not bool), bool or None; else None (the schema goes to jsonschema)."""
    kinds = {type(x) for x in values}
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    return kind if kind in (str, int, bool, type(None)) else None


def generate(schema: Any, fallback: Fallback) -> tuple[str, dict[str, Any]]:
    """The source of the check of `schema` (its function is ``check``) and its globals."""
    gen = _Gen(fallback)
    main: list[str] = ["def check(v0):"]
    gen.block(schema, "v0", 1, 0, main)
    main.append("    return True")
    source = "\n".join(line for body in [main, *gen.functions] for line in body) + "\n"
    return source, gen.names


def compile_check(schema: Any, fallback: Fallback, name: str = "schema") -> Check:
    """A function value -> True when jsonschema would find no error (see the module's doc)."""
    source, names = generate(schema, fallback)
    code = compile(source, f"<fastcheck {name}>", "exec")
    exec(code, names)  # noqa: S102 - our own generated source, from the schema's structure
    check = names["check"]

    def accepts(value: Any) -> bool:
        try:
            return check(value)
        except Exception:  # noqa: BLE001 - e.g. a pattern searched in a key that is no string
            return False

    accepts.__doc__ = f"True when the value passes {name} (generated by svcops.schemas.fastcheck)."
    accepts.source = source  # type: ignore[attr-defined]
    return accepts
