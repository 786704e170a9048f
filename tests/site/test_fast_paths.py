"""The fast paths of loading a site say what the slow ones say.

Three things skip work on the common, valid input; each must never change a result:

- the check generated from each schema (`svcops.schemas.fastcheck`, through
  `schemas.accepts`): a document it proves valid skips jsonschema, so it must prove
  nothing jsonschema refuses, and should prove what jsonschema accepts;
- the same check on svcops.lock (`lockfile._schema_check`);
- the YAML loader's memo of scalar tags (`yamlsrc._Loader`): the same tags as
  PyYAML's resolver, the first time and every time after.
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from paths import ROOT, TESTS

from svcops import schemas
from svcops.schemas.fastcheck import compile_check
from svcops.site import lockfile, yamlsrc
from svcops.site.load import load_site
from svcops.site.yamlsrc import load_documents

BAD = TESTS / "bad"
SITES = [*sorted(p for p in BAD.iterdir() if (p / "expected.txt").is_file()), TESTS / "good" / "kubectl-export", ROOT / "examples" / "walkthrough"]
KINDS = {"Service": "service", "Endpoints": "endpoints", "EndpointSlice": "endpointslice"}


def _objects(value):
    """The manifests of a document: itself, or the items of a kind List."""
    if isinstance(value, dict) and value.get("kind") == "List" and isinstance(value.get("items"), list):
        yield from (v for v in value["items"] if isinstance(v, dict))
    elif isinstance(value, dict):
        yield value


def _documents() -> list[tuple[str, str, object]]:
    """(where, schema, value) of every document the corpus, tests/good and the example hold."""
    out = []
    for site in SITES:
        for path in sorted(site.rglob("*.y*ml")):
            docs, _ = load_documents(path.read_bytes(), path.name)
            for doc in docs:
                where = f"{path.relative_to(ROOT)}#{doc.index}"
                if path.name == "svcops.yaml":
                    out.append((where, "svcops", doc.value))
                    continue
                out += [(where, KINDS[o["kind"]], o) for o in _objects(doc.value) if o.get("kind") in KINDS]
    return out


DOCUMENTS = _documents()
LOCK = yaml.safe_load((ROOT / "examples" / "walkthrough" / "svcops.lock").read_text())
HOST = {
    "svcops_interface": "eth0",
    "svcops_address": "10.0.0.11",
    "svcops_labels": {"zone": "a"},
    "svcops_site": "sites/prod",
    "svcops_workloads": [
        {"name": "web-1", "address": "10.244.1.5", "labels": {"app": "web"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        {"name": "dns-1", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]},
    ],
}
# Valid documents of every kind to mutate: most fields of a Service, as kubectl exports them.
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app.kubernetes.io/name": "web"},
                 "annotations": {"svcops.io/address-pool": "default"}, "uid": "x"},
    "spec": {
        "type": "LoadBalancer", "selector": {"app": "web"}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
        "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "externalIPs": ["192.0.2.1"], "loadBalancerIP": "192.0.2.2",
        "loadBalancerSourceRanges": ["203.0.113.0/24"], "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}, "externalTrafficPolicy": "Local",
        "allocateLoadBalancerNodePorts": True, "publishNotReadyAddresses": False,
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30080},
                  {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}],
    },
    "status": {"loadBalancer": {}},
}
SEEDS = {
    "service": [SERVICE] + [v for _, n, v in DOCUMENTS if n == "service"],
    "endpoints": [v for _, n, v in DOCUMENTS if n == "endpoints"],
    "endpointslice": [v for _, n, v in DOCUMENTS if n == "endpointslice"],
    "svcops": [v for _, n, v in DOCUMENTS if n == "svcops" and isinstance(v, dict)],
    "hostdata": [HOST],
    "lock": [LOCK],
}


def _property_names(sch) -> set[str]:
    if isinstance(sch, list):
        return set().union(*map(_property_names, sch)) if sch else set()
    if not isinstance(sch, dict):
        return set()
    return set(sch.get("properties", {})) | set().union(*(_property_names(v) for v in sch.values()))


# Values a mutation puts in: JSON's, with the strings the schemas care about. No float
# with an integral value: 80.0 is an integer to JSON Schema, and the fast check leaves
# such a value to jsonschema on purpose (it proves fewer documents then, never more).
_STRINGS = [
    "", "web", "http", "v1", "Service", "Endpoints", "EndpointSlice", "discovery.k8s.io/v1", "ClusterIP", "NodePort",
    "LoadBalancer", "ExternalName", "None", "TCP", "UDP", "tcp", "10.0.0.1", "10.0.0.300", "10.96.0.0/12", "IPv4", "IPv6",
    "192.0.2.10-192.0.2.20", "ClientIP", "Local", "a b", "-x", "x-", "app", "app.kubernetes.io/name", "a/b/c", "web\n",
    "A" * 64, "default/web", "default/web:80/TCP", "eth0", "rr", "nftables", "svcops_other",
]
_KEYS = sorted(set().union(*(_property_names(schemas.schema(n)) for n in schemas.NAMES)) | {"x", "Name", "svcops_other"})
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70000), st.sampled_from(_STRINGS),
    st.floats().filter(lambda f: not f.is_integer()),
)
_any = st.recursive(
    _scalar, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS + _STRINGS), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def mutants(draw, value):
    """`value`, a little changed: about one part in ten replaced, dropped or added."""
    if draw(st.integers(0, 19)) == 0:
        return draw(_any)
    if isinstance(value, dict):
        out = {k: draw(mutants(v)) for k, v in value.items() if draw(st.integers(0, 9)) != 0}
        if draw(st.integers(0, 9)) == 0:
            out.setdefault(draw(st.sampled_from(_KEYS)), draw(_any))
        return out
    if isinstance(value, list):
        items = [draw(mutants(v)) for v in value]
        if value and draw(st.integers(0, 9)) == 0:
            items.append(draw(mutants(draw(st.sampled_from(value)))))
        return items
    return draw(_scalar) if draw(st.integers(0, 9)) == 0 else value


# --- the generated schema checks ----------------------------------------------------


def test_the_corpus_documents_are_judged_alike():
    """Every document jsonschema refuses (each tests/bad case's) is refused; every one
    it accepts (good sites, and bad ones whose fault is in their meaning) is proven."""
    refused = 0
    for where, name, value in DOCUMENTS:
        valid = schemas.validator(name).is_valid(value)
        assert schemas.accepts(name)(value) == valid, where
        refused += not valid
    assert refused >= 20 and len(DOCUMENTS) - refused >= 20


@pytest.mark.parametrize("name", schemas.NAMES)
@settings(max_examples=250, deadline=None)
@given(data=st.data())
def test_the_fast_check_agrees_with_jsonschema(name, data):
    value = data.draw(mutants(data.draw(st.sampled_from(SEEDS[name]))))
    assert schemas.accepts(name)(value) == schemas.validator(name).is_valid(value)


def test_values_jsonschema_takes_in_other_forms_are_left_to_it():
    # Never proven, never refused: they go to jsonschema, which accepts them.
    port = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80.0}]}}
    assert not schemas.accepts("service")(port) and schemas.validator("service").is_valid(port)
    host = {"svcops_workloads": ({"name": "web-1"},)}  # pyinfra data holds tuples
    assert not schemas.accepts("hostdata")(host)
    assert schemas.check("hostdata", {"svcops_workloads": [{"name": "web-1"}]}, file="inv.py", line_of=lambda p: None) == []


# Every keyword the check translates, and some it leaves to jsonschema (oneOf,
# uniqueItems, prefixItems, a `not` of something), in one schema.
SYNTHETIC = {
    "type": "object",
    "required": ["a"],
    "properties": {
        "a": {"type": ["integer", "string"], "minimum": 2, "maximum": 9, "pattern": "^x", "minLength": 2, "maxLength": 4},
        "b": {"type": "array", "minItems": 1, "maxItems": 3, "items": {"enum": [1, 2, 3]}, "uniqueItems": True},
        "c": {"oneOf": [{"type": "string"}, {"const": True}]},
        "d": {"not": {"type": "string"}},
        "e": {"anyOf": [{"const": None}, {"type": "object", "additionalProperties": {"type": "boolean"}, "propertyNames": {"maxLength": 2}}]},
        "f": {"allOf": [{"minimum": 0.5}, {"maximum": 1.5}]},
        "g": {"prefixItems": [{"type": "string"}], "items": False},
        "h": False,
        "i": {"enum": ["x", "y"], "not": {}},
        "j": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer"}},
    },
    "patternProperties": {"^p": {"type": "null"}, "^q": {"const": 0}},
    "additionalProperties": {"type": "number"},
}
_synthetic = Draft202012Validator(SYNTHETIC)
_synthetic_check = compile_check(SYNTHETIC, fallback=lambda sub: _synthetic.evolve(schema=sub).is_valid)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "p1", "q", "z", "ab"]), _any, max_size=4))
def test_every_keyword_reads_as_jsonschema_reads_it(value):
    assert _synthetic_check(value) == _synthetic.is_valid(value)


def test_every_keyword_on_chosen_values():
    cases = [
        ({"a": "xy"}, True), ({"a": 5}, True), ({"a": 10}, False), ({"a": 1}, False), ({"a": "y"}, False), ({"a": True}, False),
        ({"a": "x"}, False), ({"a": "xyzab"}, False), ({"a": 5, "j": [1, 2]}, True), ({"a": 5, "j": [1, 2, 3]}, False),
        ({"a": 5, "j": []}, False), ({"a": 5, "j": [1, "2"]}, False), ({"a": 5, "j": [1, True]}, False),
        ({"a": 5, "b": [1, 2]}, True), ({"a": 5, "b": [1, 1]}, False), ({"a": 5, "b": []}, False), ({"a": 5, "b": [True]}, False),
        ({"a": 5, "c": "s"}, True), ({"a": 5, "c": True}, True), ({"a": 5, "c": 1}, False),
        ({"a": 5, "d": 1}, True), ({"a": 5, "d": "s"}, False),
        ({"a": 5, "e": None}, True), ({"a": 5, "e": {"k": True}}, True), ({"a": 5, "e": {"kkk": True}}, False),
        ({"a": 5, "f": 1}, True), ({"a": 5, "f": 2}, False), ({"a": 5, "f": "any"}, True), ({"a": 5, "f": True}, True),
        ({"a": 5, "f": Fraction(3)}, False),  # a number to jsonschema, though no int or float
        ({"a": 5, "g": ["s"]}, True), ({"a": 5, "g": ["s", "t"]}, False),
        ({"a": 5, "h": 1}, False), ({"a": 5, "i": "x"}, False),
        ({"a": 5, "p1": None}, True), ({"a": 5, "p1": 0}, False), ({"a": 5, "q": 0}, True), ({"a": 5, "q": False}, False),
        ({"a": 5, "z": 1.5}, True), ({"a": 5, "z": "s"}, False), ({}, False), ([], False),
    ]
    for value, valid in cases:
        assert _synthetic.is_valid(value) == valid, value  # the cases are right...
        assert _synthetic_check(value) == valid, value  # ...and the check says the same


def test_a_deep_schema_compiles():
    # Python allows 20 nested loops and 100 indents: deeper blocks become functions.
    sch, good, bad = {"type": "object", "properties": {"n": {"type": "integer"}}}, {"n": 1}, {"n": "1"}
    for _ in range(40):
        sch, good, bad = {"type": "array", "items": sch}, [good], [bad]
    check = compile_check(sch, fallback=lambda sub: Draft202012Validator(sub).is_valid)
    assert check(good) and not check(bad)


def test_every_bad_case_reports_the_same_without_the_fast_paths(monkeypatch):
    """The golden files were written by jsonschema alone; with every document sent to
    it, each case (and each good site) loads to exactly the same diagnostics."""
    # Without the cache (svcops.site.cache): a remembered file would skip the schemas.
    fast = {site: [str(d) for d in load_site(site, cache=False)[1]] for site in SITES}
    monkeypatch.setattr(schemas, "accepts", lambda name: lambda value: False)
    monkeypatch.setattr(lockfile, "_schema_check", lambda: lambda value: False)
    for site in SITES:
        assert [str(d) for d in load_site(site, cache=False)[1]] == fast[site], site.name


def test_the_lock_check_agrees_with_its_validator():
    check, validator = lockfile._schema_check(), lockfile._schema_validator()
    assert check(LOCK) and validator.is_valid(LOCK)
    for bad in ({**LOCK, "version": 3}, {**LOCK, "clusterIPs": {"web": "10.96.0.10"}}, {**LOCK, "nodeAddresses": {"": "10.0.0.1"}}):
        assert not validator.is_valid(bad) and not check(bad), bad


# --- the YAML tag memo ------------------------------------------------------------------

TRICKY = """\
a: yes
b: 'yes'
c: "80"
d: 80
e: 0x1F
f: 1_000
g: .inf
h: ~
i: null
j: 2001-12-14
k: 1.5e3
l: on
m: !!str 12
n: [true, True, TRUE, "true", 0o17, 017, -0, +1, .NaN, '', ""]
o: {p: 1:20, q: x}
"""


def _tags(node) -> list[tuple[str, object]]:
    if isinstance(node, yaml.ScalarNode):
        return [(node.tag, node.value)]
    if isinstance(node, yaml.SequenceNode):
        return [(node.tag, "seq")] + [t for n in node.value for t in _tags(n)]
    return [(node.tag, "map")] + [t for k, v in node.value for t in _tags(k) + _tags(v)]


def test_memoised_tags_are_the_resolvers():
    stock = _tags(yaml.compose(TRICKY, Loader=yaml.SafeLoader))
    for _ in range(2):  # the second time from the memo
        loader = yamlsrc._Loader(TRICKY)
        try:
            assert _tags(loader.get_single_node()) == stock
        finally:
            loader.dispose()
    (doc,), diags = load_documents(TRICKY, "t.yaml")
    assert diags == []
    expected = yaml.safe_load(TRICKY)
    expected["j"] = "2001-12-14"  # timestamps stay strings (JSON has no dates)
    assert json.dumps(doc.value, default=str) == json.dumps(expected, default=str)
