"""Loading and validating a site: what a user reads when a file is wrong, and what a
good site turns into."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
from jsonschema import Draft202012Validator
from paths import TESTS

from svcops import schemas
from svcops.site.load import load_site, parse_site
from svcops.site.model import Cluster, Pool
from svcops.site.yamlsrc import load_documents

ROOT = TESTS.parent
BAD = TESTS / "bad"
GOOD = TESTS / "good"
EXAMPLE = ROOT / "examples" / "walkthrough"
SCHEMA_FILES = sorted((ROOT / "schemas").glob("*.schema.json"))

CASES = sorted(p.name for p in BAD.iterdir() if (p / "expected.txt").is_file())


def lines(diags) -> list[str]:
    return [str(d) for d in diags]


# --- the bad-input corpus -------------------------------------------------------------


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES)
def test_corpus(case):
    site, diags = load_site(BAD / case)
    expected = (BAD / case / "expected.txt").read_text("utf-8").splitlines()
    assert lines(diags) == expected
    assert site is None
    assert any(d.is_error for d in diags)


# --- good sites -------------------------------------------------------------------------


def test_example_site_loads_as_written():
    site, diags = load_site(EXAMPLE)
    assert diags == []
    assert site is not None
    c = site.cluster
    assert (c.service_cidr, c.node_port_range, c.proxy_mode) == ("10.1.0.0/16", (30000, 32767), "iptables")
    assert c.load_balancer_pools == (Pool("default", ("192.168.36.240/28",)),)
    assert c.node_network is not None and c.node_network.gateway == "192.168.36.1"
    by_key = {s.key: s for s in site.services}
    assert list(by_key) == ["default/my-deploy", "default/nginx-nodeport", "default/web-lb", "default/docs"]
    deploy = by_key["default/my-deploy"]
    assert deploy.cluster_ip == "10.1.11.83" and dict(deploy.selector) == {"app": "web"}
    (port,) = deploy.ports
    assert (port.name, port.port, port.protocol, port.target_port, port.node_port) == ("", 8000, "TCP", 80, None)
    assert by_key["default/nginx-nodeport"].ports[0].node_port == 30001
    assert by_key["default/nginx-nodeport"].ports[0].target_port == "http"
    assert by_key["default/docs"].external_name == "docs.example.org"
    assert by_key["default/docs"].selector is None
    # Each service remembers where it was written: file and line of its document.
    assert by_key["default/web-lb"].source.file == "services/nginx.yaml"
    assert by_key["default/web-lb"].source.line == 19


def test_kubectl_exported_manifests_load_with_their_noise():
    site, diags = load_site(GOOD / "kubectl-export")
    assert diags == []
    assert site is not None
    by_key = {s.key: s for s in site.services}
    assert set(by_key) == {"shop/web", "shop/shop-lb", "db/postgres", "db/legacy"}
    web = by_key["shop/web"]
    assert web.cluster_ip == "10.96.12.34" and web.session_affinity == "None"
    assert web.labels["app.kubernetes.io/name"] == "web"
    lb = by_key["shop/shop-lb"]
    assert lb.type == "LoadBalancer" and lb.load_balancer_ip == "192.0.2.3"
    assert lb.external_traffic_policy == "Local" and lb.session_affinity == "ClientIP"
    assert lb.affinity_timeout == 10800 and lb.load_balancer_source_ranges == ("203.0.113.0/24",)
    assert lb.ports[0].node_port == 31443 and lb.ports[0].target_port == "https"
    assert by_key["db/postgres"].headless
    endpoints = {e.key: e for e in site.endpoints}
    # Not-ready addresses are not endpoints, in Endpoints and in EndpointSlices alike.
    (pg,) = endpoints["db/postgres"].subsets
    assert [(a.ip, a.node) for a in pg.addresses] == [("10.0.0.21", "node1"), ("10.0.0.22", None)]
    assert [(p.name, p.port, p.protocol) for p in pg.ports] == [("pg", 5432, "TCP")]
    (legacy,) = endpoints["db/legacy"].subsets
    assert [a.ip for a in legacy.addresses] == ["10.0.0.31"]


def test_several_documents_per_file_and_empty_documents_between_them():
    text = (
        "---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {selector: {app: a}, ports: [{port: 80}]}\n"
        "---\n"
        "---\n"
        "# only a comment\n"
        "---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: other}\nspec:\n  type: ExternalName\n  externalName: b.example.org.\n"
    )
    site, diags = parse_site("site", None, [("services/two.yaml", text)])
    assert diags == []
    assert [(s.key, s.source.line) for s in site.services] == [("default/a", 2), ("other/b", 10)]


def test_missing_or_commented_svcops_yaml_means_kubernetes_defaults():
    manifest = [("services/a.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n")]
    for config in (None, b"# every key takes its default\n"):
        site, diags = parse_site("site", config, manifest)
        assert diags == []
        assert site.cluster == Cluster()
        assert site.cluster.service_cidr == "10.96.0.0/12"
        assert site.cluster.node_port_range == (30000, 32767)
        assert site.cluster.cluster_domain == "cluster.local"


def test_site_without_services_folder_is_empty(tmp_path):
    (tmp_path / "svcops.yaml").write_text("proxyMode: ipvs\nipvsScheduler: wlc\n")
    site, diags = load_site(tmp_path)
    assert diags == []
    assert site.services == () and site.cluster.proxy_mode == "ipvs" and site.cluster.ipvs_scheduler == "wlc"


def test_yml_files_are_read_in_name_order_and_other_files_are_not(tmp_path):
    services = tmp_path / "services"
    services.mkdir()
    doc = "apiVersion: v1\nkind: Service\nmetadata: {{name: {}}}\nspec: {{ports: [{{port: 80}}]}}\n"
    (services / "b.yml").write_text(doc.format("b"))
    (services / "a.yaml").write_text(doc.format("a"))
    (services / "notes.txt").write_text("not yaml: [")
    (services / ".c.yaml").write_text("editor backup: [")
    site, diags = load_site(tmp_path)
    assert diags == []
    assert [s.name for s in site.services] == ["a", "b"]


def test_warnings_come_with_a_site():
    text = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: docs}\n"
        "spec:\n  type: ExternalName\n  externalName: docs.example.org\n  selector: {app: docs}\n"
    )
    site, diags = parse_site("site", None, [("services/docs.yaml", text)])
    assert site is not None
    assert lines(diags) == ["services/docs.yaml:7: warning: spec.selector: has no effect on an ExternalName service"]


def test_every_error_of_every_file_is_reported_at_once():
    bad = "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports:\n    - port: {}\n"
    site, diags = parse_site(
        "site", b"proxyMode: userspace\n", [("services/a.yaml", bad.format("eighty")), ("services/b.yaml", bad.format(0))]
    )
    assert site is None
    assert lines(diags) == [
        'services/a.yaml:7: spec.ports[0].port: must be an integer, not the string "eighty"',
        "services/b.yaml:7: spec.ports[0].port: 0 is out of range 1-65535",
        'svcops.yaml:1: proxyMode: "userspace" is not one of: "iptables", "ipvs", "nftables"',
    ]


# --- YAML with lines -----------------------------------------------------------------


def test_yaml_values_keep_their_lines():
    text = "a: 1\nb:\n  c:\n    - x\n    - {d: 2024-01-01T00:00:00Z}\n"
    (doc,), diags = load_documents(text.encode(), "f.yaml")
    assert diags == []
    assert doc.value == {"a": 1, "b": {"c": ["x", {"d": "2024-01-01T00:00:00Z"}]}}  # dates stay strings
    assert doc.line(("b", "c", 1, "d")) == 5
    assert doc.line(("b", "c", 0)) == 4
    assert doc.line(("b", "missing", "deeper")) == 2  # the closest ancestor's line


def test_yaml_merge_keys_work_as_in_kubectl():
    text = "base: &base {app: web, tier: front}\nsel:\n  <<: *base\n  tier: back\n"
    (doc,), diags = load_documents(text, "f.yaml")
    assert diags == []
    assert doc.value["sel"] == {"app": "web", "tier": "back"}


def test_yaml_syntax_error_keeps_the_documents_before_it():
    docs, diags = load_documents(b"a: 1\n---\nb: [\n", "f.yaml")
    assert [d.value for d in docs] == [{"a": 1}]
    assert [d.line for d in diags] == [4]


# --- the schemas ----------------------------------------------------------------------


def test_schemas_are_all_there():
    assert [p.name for p in SCHEMA_FILES] == sorted(f"{n}.schema.json" for n in schemas.NAMES)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_every_schema_is_a_valid_2020_12_schema_with_an_id(path):
    doc = json.loads(path.read_text("utf-8"))
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["$id"] == f"https://svcops.dev/schemas/{path.name}"
    # What the package ships is the file itself.
    assert json.loads(files("svcops.schemas").joinpath(path.name).read_text("utf-8")) == doc


def test_shared_definitions_are_the_same_in_every_schema():
    docs = [json.loads(p.read_text("utf-8")) for p in SCHEMA_FILES]
    for name in ("labels", "ipv4", "annotations"):
        versions = [d["$defs"][name] for d in docs if name in d.get("$defs", {})]
        assert len(versions) >= 2 and all(v == versions[0] for v in versions), name


def test_validators_are_compiled_once():
    assert schemas.validator("service") is schemas.validator("service")


def _corpus_documents():
    for case in CASES:
        for path in sorted((BAD / case).rglob("*.y*ml")):
            docs, diags = load_documents(path.read_bytes(), path.name)
            for doc in docs:
                if isinstance(doc.value, dict) and doc.value.get("kind") in ("Service", "Endpoints", "EndpointSlice"):
                    yield f"{case}/{path.name}#{doc.index}", doc.value


def test_schema_files_as_they_are_judge_like_the_loader():
    """An editor or check-jsonschema using the raw files accepts and refuses what svcops does."""
    raw = {n: Draft202012Validator(json.loads((ROOT / "schemas" / f"{n}.schema.json").read_text())) for n in schemas.NAMES}
    kinds = {"Service": "service", "Endpoints": "endpoints", "EndpointSlice": "endpointslice"}
    checked = 0
    for where, value in _corpus_documents():
        name = kinds[value["kind"]]
        assert raw[name].is_valid(value) == schemas.validator(name).is_valid(value), where
        assert sorted(e.message for e in raw[name].iter_errors(value)) == sorted(
            e.message for e in schemas.validator(name).iter_errors(value)
        ), where
        checked += 1
    assert checked > 30
    example = [d for p in sorted(EXAMPLE.rglob("*.yaml")) if p.parent.name == "services" for d in load_documents(p.read_bytes(), p.name)[0]]
    assert example and all(raw["service"].is_valid(d.value) for d in example)
    (config,), _ = load_documents((EXAMPLE / "svcops.yaml").read_bytes(), "svcops.yaml")
    assert raw["svcops"].is_valid(config.value)


def test_lock_schema_describes_the_lock():
    v = schemas.validator("lock")
    good = {
        "version": 1,
        "clusterIPs": {"default/web": "10.96.0.10"},
        "nodePorts": {"default/web:8000/TCP": 30001},
        "loadBalancerIPs": {"default/web": "192.0.2.1"},
        "nodeAddresses": {"node1": "10.0.0.11"},
    }
    assert v.is_valid(good)
    assert v.is_valid({**good, "version": 2})  # the closing line is text, not data
    assert not v.is_valid({**good, "version": 3})
    assert not v.is_valid({**good, "nodePorts": {"default/web:8000": 30001}})
    assert not v.is_valid({**good, "clusterIPs": {"web": "10.96.0.10"}})
    assert not v.is_valid({**good, "nodeAddresses": {"node1": "10.0.0"}})
