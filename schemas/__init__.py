"""The JSON Schemas of svcops's inputs, compiled once, and their errors as Diagnostics.

This folder is both what editors and ``check-jsonschema`` use as it is, and the
package ``svcops.schemas`` (see pyproject.toml), so the schemas ship with svcops:

    service.schema.json        kind Service (v1)
    endpoints.schema.json      kind Endpoints (v1)
    endpointslice.schema.json  kind EndpointSlice (discovery.k8s.io/v1)
    svcops.schema.json         svcops.yaml
    hostdata.schema.json       the svcops_* keys of a pyinfra host's data
    lock.schema.json           svcops.lock
    fastcheck.py               a schema -> a fast yes-or-no check of values (see below)

A schema says what shape a document has; `check` turns jsonschema's errors into
Diagnostics that name the file, the line the value was written on and the field path
(``spec.ports[0].port``), in words a Kubernetes user knows:

    check("service", doc.value, file=doc.file, line_of=doc.line)
    # [Diagnostic("services/web.yaml", 12, "spec.ports[0].port", "70000 is out of range 1-65535")]

Checking is in two steps. `accepts(name)` is a function generated from the schema
(``fastcheck.py``) that proves a valid document valid about twenty times faster than
jsonschema walks it; only a document it does not prove goes to jsonschema, so every
error, and every message, is jsonschema's, as if the fast check were not there.

A schema may give a field its own message with the keyword ``errorMessage`` (the
convention of ajv-errors and yaml-language-server); otherwise the message is built from
the failing keyword. A Kubernetes field svcops does not support is declared with
``"not": {}`` and such a message, so that editors and svcops both name it.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from importlib.resources import files
from typing import Any, Callable, Iterable

from typing import TYPE_CHECKING

from svcops.schemas.fastcheck import compile_check
from svcops.site.diagnostics import Diagnostic, error
from svcops.site.yamlsrc import format_path

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

# jsonschema itself is imported only when a document is not proven valid by the fast
# check (`accepts`): most runs never need it, and importing it costs 0.1 s.

NAMES = ("service", "endpoints", "endpointslice", "svcops", "hostdata", "lock")

LineOf = Callable[[tuple], "int | None"]


def _file_name(name: str) -> str:
    return name if name.endswith(".json") else f"{name}.schema.json"


@cache
def schema(name: str) -> dict:
    """The schema document `name` ("service" or "service.schema.json")."""
    return json.loads(files("svcops.schemas").joinpath(_file_name(name)).read_text("utf-8"))


@cache
def validator(name: str) -> Draft202012Validator:
    """The compiled validator of schema `name`; built once per process.

    Local references (``#/$defs/...``) are inlined first: the schemas have no
    recursion, and following a $ref is most of jsonschema's time on a Service.
    """
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_inlined(name))


@cache
def _inlined(name: str) -> dict:
    """Schema `name` with its local references inlined (what `validator` validates with)."""
    return _inline(schema(name))


@cache
def accepts(name: str) -> Callable[[Any], bool]:
    """The fast check of schema `name`: True when jsonschema would find no error.

    Generated from the very schema `validator(name)` validates with
    (`svcops.schemas.fastcheck`); False only means "not proven", and the caller asks
    jsonschema then. About twenty times faster than jsonschema on a valid Service.
    """
    # The fallback asks jsonschema only when a value reaches a part the check could not
    # compile (so that jsonschema is imported only then).
    return compile_check(_inlined(name), fallback=lambda sub: lambda value: validator(name).evolve(schema=sub).is_valid(value), name=name)


def iter_errors(name: str, value: Any) -> Iterable[ValidationError]:
    """jsonschema's errors for `value` against schema `name`; none at once for a value
    the fast check proves valid (most of them), so only invalid ones are walked."""
    if accepts(name)(value):
        return ()
    return validator(name).iter_errors(value)


_ANNOTATIONS = {"description", "default", "title", "markdownDescription"}


def _inline(sch: Any, defs: dict | None = None) -> Any:
    """`sch` with every local ``$ref`` replaced by what it points at (same meaning)."""
    if defs is None and isinstance(sch, dict):
        defs = sch.get("$defs", {})
    if isinstance(sch, list):
        return [_inline(x, defs) for x in sch]
    if not isinstance(sch, dict):
        return sch
    out = {k: _inline(v, defs) for k, v in sch.items() if k != "$ref"}
    ref = sch.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/") and defs is not None:
        target = _inline(defs[ref[len("#/$defs/"):]], defs)
        if set(out) - _ANNOTATIONS:
            # Other keywords beside $ref apply too: keep both, as allOf.
            return {**{k: v for k, v in out.items() if k in _ANNOTATIONS}, "allOf": [target, {k: v for k, v in out.items() if k not in _ANNOTATIONS}]}
        return {**target, **out}
    elif ref is not None:
        out["$ref"] = ref
    return out


# --- errors -> diagnostics ---------------------------------------------------------

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def describe(value: Any) -> str:
    """A value as a message shows it: JSON's spelling, with what kind of value it is."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {json.dumps(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)  # pragma: no cover


def show(value: Any) -> str:
    """A scalar value as it reads in a message: "web", 80, true."""
    if isinstance(value, (str, bool)) or value is None:
        return json.dumps(value)
    if isinstance(value, (dict, list)):
        return describe(value)
    return str(value)


def _extras(instance: dict, sch: dict) -> list[str]:
    props = sch.get("properties", {})
    patterns = sch.get("patternProperties", {})
    return [k for k in instance if k not in props and not any(re.search(p, k) for p in patterns)]


def _message(e: ValidationError) -> str:
    """The words of one error (its location is added by the caller)."""
    kw, sch, value = e.validator, e.schema, e.instance
    custom = sch.get("errorMessage") if isinstance(sch, dict) else None
    if kw == "type":
        want = e.validator_value
        want = " or ".join(_TYPE_NAMES.get(t, t) for t in (want if isinstance(want, list) else [want]))
        return f"must be {want}, not {describe(value)}"
    if custom:
        if custom.startswith(("is ", "must ")):
            return f"{show(value)} {custom}"
        return custom
    if kw == "enum":
        return f"{show(value)} is not one of: {', '.join(str(show(v)) for v in e.validator_value)}"
    if kw == "const":
        return f"must be {show(e.validator_value)}, not {show(value)}"
    if kw in ("minimum", "maximum"):
        lo, hi = sch.get("minimum"), sch.get("maximum")
        if lo is not None and hi is not None:
            return f"{value} is out of range {lo}-{hi}"
        return f"{value} is {'below the minimum' if kw == 'minimum' else 'above the maximum'} {e.validator_value}"
    if kw == "minItems":
        return "must not be empty" if e.validator_value == 1 else f"needs at least {e.validator_value} items"
    if kw == "maxItems":
        return f"has {len(value)} items; at most {e.validator_value} allowed"
    if kw == "minLength":
        return "must not be empty" if e.validator_value == 1 else f"needs at least {e.validator_value} characters"
    if kw == "maxLength":
        return f"is {len(value)} characters long; at most {e.validator_value} allowed"
    if kw == "pattern":
        return f"{show(value)} does not match {e.validator_value}"
    if kw == "uniqueItems":
        return "has duplicate items"
    if kw == "not":
        return "is not allowed here"
    if kw in ("anyOf", "oneOf") and e.context:
        from jsonschema.exceptions import best_match

        return _message(best_match(e.context))
    return e.message  # pragma: no cover - every keyword the schemas use is handled above


def to_diagnostics(
    errors: Iterable[ValidationError],
    *,
    file: str,
    line_of: LineOf,
    prefix: tuple = (),
    field_prefix: str = "",
) -> list[Diagnostic]:
    """jsonschema errors as Diagnostics: one per problem, each at its own line and field.

    `prefix` is the path of the validated value inside its document (``("items", 3)``
    for an item of a kind List); `field_prefix` is put before every field
    (``"node1: "`` for host data, whose lines are unknown).
    """
    return [d for _, d in located(errors, file=file, line_of=line_of, prefix=prefix, field_prefix=field_prefix)]


def located(
    errors: Iterable[ValidationError],
    *,
    file: str,
    line_of: LineOf,
    prefix: tuple = (),
    field_prefix: str = "",
) -> list[tuple[tuple, Diagnostic]]:
    """As `to_diagnostics`, each with the path (inside the validated value) it is about.

    The paths tell later checks which values they cannot trust.
    """
    out: list[tuple[tuple, Diagnostic]] = []
    seen_required: set = set()

    def emit(path: tuple, message: str) -> None:
        full = prefix + path
        out.append((path, error(file, line_of(full), field_prefix + format_path(full), message)))

    for e in errors:
        path = tuple(e.absolute_path)
        kw = e.validator
        if kw == "required":
            missing = [p for p in e.validator_value if isinstance(e.instance, dict) and p not in e.instance]
            for prop in missing:
                if (path, prop) not in seen_required:
                    seen_required.add((path, prop))
                    # The line is the parent's: the missing key has none.
                    full = prefix + path
                    out.append(
                        (path + (prop,), error(file, line_of(full), field_prefix + format_path(full + (prop,)), "required field is missing"))
                    )
            continue
        if kw == "additionalProperties" and e.validator_value is False:
            props = {p.lower(): p for p in e.schema.get("properties", {})}
            for key in _extras(e.instance, e.schema):
                close = difflib.get_close_matches(key.lower(), props, n=1, cutoff=0.75)
                hint = f' (did you mean "{props[close[0]]}"?)' if close else ""
                emit(path + (key,), f"unknown field{hint}")
            continue
        if "propertyNames" in e.relative_schema_path:
            # The error is about a key: point at the key itself.
            emit(path + (e.instance,), _message(e))
            continue
        emit(path, _message(e))
    return out


def check_located(
    name: str,
    value: Any,
    *,
    file: str,
    line_of: LineOf,
    prefix: tuple = (),
    field_prefix: str = "",
) -> list[tuple[tuple, Diagnostic]]:
    """Validate `value` against schema `name`: (path, Diagnostic) for every problem."""
    return located(
        iter_errors(name, value), file=file, line_of=line_of, prefix=prefix, field_prefix=field_prefix
    )


def check(
    name: str,
    value: Any,
    *,
    file: str,
    line_of: LineOf,
    prefix: tuple = (),
    field_prefix: str = "",
) -> list[Diagnostic]:
    """Validate `value` against schema `name`; every problem as a Diagnostic."""
    return to_diagnostics(
        iter_errors(name, value), file=file, line_of=line_of, prefix=prefix, field_prefix=field_prefix
    )
