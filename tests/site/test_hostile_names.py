"""Hostile names in every field: each refused at its file, line and field, or carried
harmlessly (in nothing a node gets).

The corpus (`HOSTILE`) is what broke a node or could: a trailing newline (Python's
``$`` matched before it, and pdns-recursor then refused its settings), a newline with a
command after it (an ``up`` line in the ifupdown file: a root command at boot), shell
syntax, quotes, a semicolon, a space, a backslash, unicode look-alikes and
bidirectional controls, NUL, names too long for their field. Every value of the corpus
is refused by every name, address and label field of a site and of host data; the
free-form fields (annotation values, the ignored hostnames of Endpoints and
EndpointSlices) take any of them, and no node ever sees one.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from paths import ROOT

from svcops.cli import main
from svcops.compile.nodeplan import plan_site
from svcops.compile.pipeline import compile_site
from svcops.render.dns import dns_files
from svcops.site.hostdata import nodes_from_hosts
from svcops.site.load import load_site
from svcops.site.model import Allocations

HOSTILE = {
    "trailing-newline": "web\n",
    "newline-command": "web\nup touch /tmp/pwned",
    "command-substitution": "$(touch /tmp/pwned)",
    "backticks": "`touch /tmp/pwned`",
    "double-quote": 'web"x',
    "single-quote": "web'x",
    "semicolon": "web;reboot",
    "space": "web x",
    "tab": "web\tx",
    "carriage-return": "web\r",
    "backslash": "web\\",
    "nul": "web\x00",
    "cyrillic-look-alike": "w\u0435b",  # the "e" is Cyrillic
    "rtl-override": "web\u202etxt",
    "rtl-mark": "\u200fweb",
    "zero-width-space": "we\u200bb",
    "dots": "..",
    "too-long": "a" * 254,
}

# --- a site with a placeholder in every field ----------------------------------------

SVCOPS_YAML = """\
serviceCIDR: {service_cidr}
nodePortRange: {node_port_range}
proxyMode: {proxy_mode}
clusterDomain: {cluster_domain}
ipvsScheduler: {ipvs_scheduler}
loadBalancerPools:
  - name: {pool_name}
    addresses: [{pool_address}]
nodeNetwork:
  cidr: {node_cidr}
  gateway: {gateway}
  dnsServers: [{dns_server}]
"""

WEB = """\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    {label_key}: {label_value}
  annotations:
    {annotation_key}: {annotation_value}
    svcops.io/address-pool: {pool_annotation}
    svcops.io/ipvs-scheduler: {scheduler_annotation}
spec:
  type: LoadBalancer
  selector:
    {selector_key}: {selector_value}
  ports:
    - name: {port_name}
      port: 80
      targetPort: {target_port}
  externalIPs: [{external_ip}]
  loadBalancerIP: {lb_ip}
  loadBalancerSourceRanges: [{source_range}]
"""

EXT = """\
apiVersion: v1
kind: Service
metadata:
  name: ext
spec:
  type: ExternalName
  externalName: {external_name}
---
apiVersion: v1
kind: Service
metadata:
  name: fixed
spec:
  clusterIP: {cluster_ip}
  selector: {{app: web}}
  ports: [{{port: 81}}]
"""


def _selectorless(name: str) -> str:
    """A Service without selector, as a template (its braces doubled), and a separator."""
    return f"apiVersion: v1\nkind: Service\nmetadata: {{{{name: {name}}}}}\nspec:\n  ports: [{{{{name: http, port: 80}}}}]\n---\n"


MANUAL = _selectorless("manual") + """\
apiVersion: v1
kind: Endpoints
metadata:
  name: {ep_name}
subsets:
  - addresses:
      - ip: {ep_ip}
        nodeName: {ep_node}
        hostname: {ep_hostname}
    ports:
      - name: {ep_port_name}
        port: 80
"""

SLICE = _selectorless("sliced") + """\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {slice_name}
  labels:
    kubernetes.io/service-name: {slice_service}
addressType: IPv4
endpoints:
  - addresses: [{slice_ip}]
    nodeName: {slice_node}
    hostname: {slice_hostname}
ports:
  - name: {slice_port_name}
    port: 80
"""

FILES = {
    "svcops.yaml": SVCOPS_YAML,
    "services/web.yaml": WEB,
    "services/ext.yaml": EXT,
    "services/manual.yaml": MANUAL,
    "services/slice.yaml": SLICE,
}

GOOD = {
    "service_cidr": "10.96.0.0/12",
    "node_port_range": "30000-32767",
    "proxy_mode": "iptables",
    "cluster_domain": "cluster.local",
    "ipvs_scheduler": "rr",
    "pool_name": "default",
    "pool_address": "192.0.2.0/28",
    "node_cidr": "10.0.0.0/24",
    "gateway": "10.0.0.1",
    "dns_server": "10.0.0.1",
    "name": "web",
    "namespace": "default",
    "label_key": "app",
    "label_value": "web",
    "annotation_key": "example.com/note",
    "annotation_value": "x",
    "pool_annotation": "default",
    "scheduler_annotation": "rr",
    "selector_key": "app",
    "selector_value": "web",
    "port_name": "http",
    "target_port": "http",
    "external_ip": "198.51.100.7",
    "lb_ip": "192.0.2.5",
    "source_range": "203.0.113.0/24",
    "external_name": "docs.example.org",
    "cluster_ip": "10.96.0.50",
    "ep_name": "manual",
    "ep_ip": "10.0.0.12",
    "ep_node": "node2",
    "ep_hostname": "manual-1",
    "ep_port_name": "http",
    "slice_name": "sliced-1",
    "slice_service": "sliced",
    "slice_ip": "10.0.0.11",
    "slice_node": "node1",
    "slice_hostname": "sliced-1",
    "slice_port_name": "http",
}

# placeholder -> the field a diagnostic names (a key's field ends in the key itself).
FIELD = {
    "service_cidr": "serviceCIDR",
    "node_port_range": "nodePortRange",
    "proxy_mode": "proxyMode",
    "cluster_domain": "clusterDomain",
    "ipvs_scheduler": "ipvsScheduler",
    "pool_name": "loadBalancerPools[0].name",
    "pool_address": "loadBalancerPools[0].addresses[0]",
    "node_cidr": "nodeNetwork.cidr",
    "gateway": "nodeNetwork.gateway",
    "dns_server": "nodeNetwork.dnsServers[0]",
    "name": "metadata.name",
    "namespace": "metadata.namespace",
    "label_key": "metadata.labels",
    "label_value": "metadata.labels",
    "annotation_key": "metadata.annotations",
    "pool_annotation": "metadata.annotations[svcops.io/address-pool]",
    "scheduler_annotation": "metadata.annotations[svcops.io/ipvs-scheduler]",
    "selector_key": "spec.selector",
    "selector_value": "spec.selector.app",
    "port_name": "spec.ports[0].name",
    "target_port": "spec.ports[0].targetPort",
    "external_ip": "spec.externalIPs[0]",
    "lb_ip": "spec.loadBalancerIP",
    "source_range": "spec.loadBalancerSourceRanges[0]",
    "external_name": "spec.externalName",
    "cluster_ip": "spec.clusterIP",
    "ep_name": "metadata.name",
    "ep_ip": "subsets[0].addresses[0].ip",
    "ep_node": "subsets[0].addresses[0].nodeName",
    "ep_port_name": "subsets[0].ports[0].name",
    "slice_name": "metadata.name",
    "slice_service": "metadata.labels[kubernetes.io/service-name]",
    "slice_ip": "endpoints[0].addresses[0]",
    "slice_node": "endpoints[0].nodeName",
    "slice_port_name": "ports[0].name",
}
FREE_FORM = ("annotation_value", "ep_hostname", "slice_hostname")
assert set(FIELD) | set(FREE_FORM) == set(GOOD)


def _where(placeholder: str) -> tuple[str, int]:
    """The file and line a placeholder is written on."""
    for file, template in FILES.items():
        for n, line in enumerate(template.splitlines(), 1):
            if "{" + placeholder + "}" in line:
                return file, n
    raise KeyError(placeholder)


def write_site(root: Path, **values: str) -> Path:
    """The site with GOOD values, but `values`; each as a JSON string (a YAML double-quoted
    scalar: every character of the corpus, NUL included, written as an escape)."""
    given = {**GOOD, **values}
    for file, template in FILES.items():
        path = root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**{k: json.dumps(v) for k, v in given.items()}), "utf-8")
    return root


def host(name: str, address: str, **data) -> tuple[str, dict]:
    return (
        name,
        {
            "ssh_hostname": address,
            "svcops_address": address,
            "svcops_interface": "eth0",
            "svcops_labels": {"zone": "a"},
            "svcops_workloads": [{"name": f"web-{name}", "labels": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}],
            **data,
        },
    )


HOSTS = [host("node1", "10.0.0.11"), host("node2", "10.0.0.12")]


def one_line(d) -> bool:
    text = str(d)
    return text.isprintable() and "\n" not in text


def test_the_good_site_is_valid(tmp_path):
    site, diags = load_site(write_site(tmp_path))
    assert [d for d in diags if d.is_error] == []
    assert site is not None and len(site.services) == 5


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("placeholder", sorted(FIELD))
def test_hostile_value_is_refused_at_its_file_line_and_field(tmp_path, placeholder, kind):
    value = HOSTILE[kind]
    site, diags = load_site(write_site(tmp_path, **{placeholder: value}))
    file, line = _where(placeholder)
    field = FIELD[placeholder]
    assert site is None
    ours = [d for d in diags if d.is_error and d.file == file and d.line == line and d.field.startswith(field)]
    assert ours, [str(d) for d in diags]
    # Each diagnostic is one printable line: the value shown escaped, never raw.
    assert all(one_line(d) for d in diags), [str(d) for d in diags]


def _everything_a_node_gets(site, hosts=HOSTS) -> list[str]:
    """Every file each node gets in each proxy mode (rules, boot script, ifupdown,
    announcements, DNS settings and zone)."""
    nodes, diags = nodes_from_hosts(hosts, "inventory.py")
    assert diags == []
    texts = []
    for mode in ("iptables", "nftables", "ipvs"):
        compiled, diags = compile_site(site, nodes, Allocations(), mode=mode)
        assert compiled is not None, [str(d) for d in diags]
        plan = plan_site(compiled)
        for node in nodes:
            np = plan.node(node.name)
            texts += list(np.files.files.values())
            if np.dns_zone is not None:
                texts += list(dns_files(np.dns_zone, ["192.0.2.53"]).files.values())
    return texts


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("placeholder", FREE_FORM)
def test_free_form_fields_carry_any_value_and_no_node_sees_it(tmp_path, placeholder, kind):
    value = HOSTILE[kind]
    site, diags = load_site(write_site(tmp_path, **{placeholder: value}))
    assert [str(d) for d in diags if d.is_error] == []
    texts = _everything_a_node_gets(site)
    assert texts
    probe = "pwned" if "pwned" in value else value
    assert not any(probe in t for t in texts)


# --- the longest names Kubernetes allows: accepted, and each one longer refused ------

LABEL_63 = "l" + "x" * 61 + "l"
PREFIX_253 = ".".join(["p" * 63] * 3 + ["p" * 61])
LONGEST = {
    "name": "s" + "x" * 62,
    "namespace": "n" + "x" * 62,
    "label_key": f"{PREFIX_253}/{LABEL_63}",
    "label_value": LABEL_63,
    "annotation_key": f"{PREFIX_253.upper()}/{LABEL_63}",
    "selector_key": f"{PREFIX_253}/{LABEL_63}",
    "selector_value": LABEL_63,
    "target_port": "http-" + "x" * 10,
    "external_name": ".".join(["e" * 63] * 3 + ["e" * 61]) + ".",
    "cluster_domain": "c" * 20 + "." + "d" * 30,
    "pool_name": "p" + "x" * 62,
    "pool_annotation": "p" + "x" * 62,
    "ep_port_name": "http",  # must name the service's port
    "slice_name": ".".join(["s" * 63] * 3 + ["s" * 61]),
    "ep_node": "node2",
    "slice_node": "node1",
}
TOO_LONG = {
    "name": LONGEST["name"] + "x",
    "namespace": LONGEST["namespace"] + "x",
    "label_key": f"p{PREFIX_253}/{LABEL_63}",
    "label_value": LABEL_63 + "x",
    "annotation_key": f"{PREFIX_253}/x{LABEL_63}",
    "selector_key": f"{PREFIX_253}/x{LABEL_63}",
    "selector_value": LABEL_63 + "x",
    "target_port": "http-" + "x" * 11,
    "external_name": "x" + LONGEST["external_name"],
    "cluster_domain": LONGEST["cluster_domain"] + "x",
    "pool_name": LONGEST["pool_name"] + "x",
    "port_name": "p" + "x" * 63,
    "ep_port_name": "p" + "x" * 63,
    "slice_port_name": "p" + "x" * 63,
    "slice_name": "x" + LONGEST["slice_name"],
    "ep_node": "x" + ".".join(["n" * 63] * 3 + ["n" * 61]),
    "slice_node": "x" + ".".join(["n" * 63] * 3 + ["n" * 61]),
}


def test_lengths_are_what_they_say():
    assert len(LONGEST["external_name"].rstrip(".")) == 253
    assert len(PREFIX_253) == 253 and len(LABEL_63) == 63 and len(LONGEST["cluster_domain"]) == 51
    assert all(len(x) <= 63 for x in LONGEST["external_name"].split("."))


@pytest.mark.parametrize("placeholder", sorted(TOO_LONG))
def test_one_character_too_long_is_refused_at_its_field(tmp_path, placeholder):
    pool = {"pool_annotation": TOO_LONG[placeholder]} if placeholder == "pool_name" else {}
    site, diags = load_site(write_site(tmp_path, **{placeholder: TOO_LONG[placeholder], **pool}))
    file, line = _where(placeholder)
    assert site is None
    assert any(d.is_error and (d.file, d.line) == (file, line) and d.field.startswith(FIELD[placeholder]) for d in diags), [
        str(d) for d in diags
    ]


def test_the_longest_names_are_accepted_and_rendered(tmp_path):
    site, diags = load_site(write_site(tmp_path, **LONGEST))
    assert [str(d) for d in diags if d.is_error] == []
    texts = _everything_a_node_gets(site)
    zone = next(t for t in texts if "IN SOA" in t)
    # The longest service name fits DNS: <63>.<63>.svc.<51>.
    owner = f"{LONGEST['name']}.{LONGEST['namespace']}.svc"
    assert re.search(rf"^{owner} IN A 10\.", zone, re.M)
    assert len(f"{owner}.{LONGEST['cluster_domain']}") <= 253
    assert f"ext.default.svc IN CNAME {LONGEST['external_name']}\n" in zone


def test_a_port_name_of_63_characters_is_accepted_without_an_srv_record(tmp_path):
    long_name, fits = "p" * 63, "q" * 62
    site, diags = load_site(write_site(tmp_path, port_name=long_name))
    (warning,) = [d for d in diags if d.field == "spec.ports[0].name"]
    assert not warning.is_error and (warning.file, warning.line) == _where("port_name")
    assert "no SRV record" in warning.message
    zone = next(t for t in _everything_a_node_gets(site) if "IN SOA" in t)
    assert "web.default.svc IN A" in zone and long_name not in zone
    site, diags = load_site(write_site(tmp_path, port_name=fits))
    assert not [d for d in diags if d.field == "spec.ports[0].name"]
    zone = next(t for t in _everything_a_node_gets(site) if "IN SOA" in t)
    assert f"_{fits}._tcp.web.default.svc IN SRV" in zone


def test_annotations_are_limited_to_256_kib_in_all(tmp_path):
    site, diags = load_site(write_site(tmp_path, annotation_value="\u00e9" * (128 * 1024)))
    assert site is None
    (d,) = [d for d in diags if d.is_error]
    assert (d.file, d.field) == ("services/web.yaml", "metadata.annotations")
    assert "262144" in d.message


# --- host data ------------------------------------------------------------------------

# field of host data -> how to put a value there (on node1, whose other data is good).
HOST_FIELDS = {
    "ssh_hostname": lambda v: host("node1", "10.0.0.11", ssh_hostname=v),
    "svcops_interface": lambda v: host("node1", "10.0.0.11", svcops_interface=v),
    "svcops_address": lambda v: host("node1", "10.0.0.11", svcops_address=v),
    "svcops_labels": lambda v: host("node1", "10.0.0.11", svcops_labels={v: "a"}),
    "svcops_labels.zone": lambda v: host("node1", "10.0.0.11", svcops_labels={"zone": v}),
    "svcops_workloads[0].name": lambda v: host("node1", "10.0.0.11", svcops_workloads=[{"name": v}]),
    "svcops_workloads[0].address": lambda v: host("node1", "10.0.0.11", svcops_workloads=[{"name": "w", "address": v}]),
    "svcops_workloads[0].labels": lambda v: host("node1", "10.0.0.11", svcops_workloads=[{"name": "w", "labels": {v: "a"}}]),
    "svcops_workloads[0].labels.app": lambda v: host("node1", "10.0.0.11", svcops_workloads=[{"name": "w", "labels": {"app": v}}]),
    "svcops_workloads[0].ports[0].name": lambda v: host(
        "node1", "10.0.0.11", svcops_workloads=[{"name": "w", "ports": [{"name": v, "port": 80}]}]
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize("field", sorted(HOST_FIELDS))
def test_hostile_host_data_is_refused_at_its_node_and_field(field, kind):
    nodes, diags = nodes_from_hosts([HOST_FIELDS[field](HOSTILE[kind]), HOSTS[1]], "inventory/prod.py")
    assert [n.name for n in nodes] == ["node2"]  # the other node is unaffected
    assert any(d.file == "inventory/prod.py" and d.field.startswith(f"node1: {field}") for d in diags), [str(d) for d in diags]
    assert all(d.is_error and one_line(d) for d in diags)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_host_name_is_refused_and_shown_escaped(kind):
    name = HOSTILE[kind]
    nodes, diags = nodes_from_hosts([host(name, "10.0.0.11"), HOSTS[1]], "inventory/prod.py")
    assert [n.name for n in nodes] == ["node2"]
    assert any(d.field == json.dumps(name) and "is not a host name svcops can carry" in d.message for d in diags)
    assert all(one_line(d) for d in diags)


@pytest.mark.parametrize(
    "field, value",
    [
        ("svcops_interface", "eth0:1"),  # ':' is the address label's
        ("svcops_interface", "a" * 16),  # IFNAMSIZ: 15 bytes and the NUL
        ("svcops_interface", "-eth0"),  # an option to ip and arping
        ("svcops_interface", "eth/0"),
        ("svcops_interface", "\u0435th0"),
        ("ssh_hostname", "-oProxyCommand=touch"),
        ("svcops_workloads[0].ports[0].name", "a" * 16),  # IANA_SVC_NAME: 15
    ],
)
def test_other_names_linux_or_kubernetes_refuse(field, value):
    nodes, diags = nodes_from_hosts([HOST_FIELDS[field](value)], "inventory/prod.py")
    assert nodes == ()
    assert any(d.field == f"node1: {field}" for d in diags), [str(d) for d in diags]


def test_the_longest_host_names_are_accepted():
    name = ".".join(["h" * 63] * 3 + ["h" * 61])
    hosts = [
        (name, {"ssh_hostname": "10.0.0.11", "svcops_interface": "enx001122334455", "svcops_workloads": [
            {"name": ".".join(["w" * 63] * 3 + ["w" * 61]), "ports": [{"name": "metrics-http-01", "port": 9100}]}
        ]}),
        ("@local", {"ssh_hostname": "fe80::1%eth0"}),
    ]
    nodes, diags = nodes_from_hosts(hosts, "inventory/prod.py")
    assert diags == []
    assert [n.name for n in nodes] == [name, "@local"] and nodes[0].interface == "enx001122334455"


def test_a_workload_without_an_address_on_a_node_reached_by_name_is_an_error(tmp_path):
    site, _ = load_site(write_site(tmp_path))
    hosts = [("node1", {"ssh_hostname": "node1.example.com", "svcops_workloads": [{"name": "w", "labels": {"app": "web"}}]})]
    nodes, diags = nodes_from_hosts(hosts, "inventory/prod.py")
    assert diags == []
    # Without nodeNetwork nothing gives the node an address: "node1.example.com" would
    # have gone into the rules as the endpoint's address.
    cluster = replace(site.cluster, node_network=None)
    compiled, diags = compile_site(replace(site, cluster=cluster), nodes, Allocations())
    assert compiled is None
    (d,) = [d for d in diags if d.is_error]
    assert (d.file, d.line, d.field) == ("inventory/prod.py", None, "node1: svcops_workloads[0].address")
    assert '"node1.example.com" is a name, not an IPv4 address' in d.message
    # With nodeNetwork, the node's allocated address is the workload's.
    compiled, diags = compile_site(site, nodes, Allocations())
    assert compiled is not None, [str(d) for d in diags]


# --- the commands ---------------------------------------------------------------------


def test_validate_and_plan_exit_1_with_one_line_per_problem_and_write_nothing(tmp_path, capsys):
    root = write_site(tmp_path / "site", name="web\nup touch /tmp/pwned", cluster_domain="cluster.local\n")
    inventory = tmp_path / "inventory.py"
    inventory.write_text(
        "nodes = [('node1\\nup touch /tmp/pwned', {'ssh_hostname': '10.0.0.11', 'svcops_interface': 'eth0; reboot'})]\n"
    )
    before = sorted(p.name for p in root.rglob("*"))
    for argv in (["validate", str(root)], ["validate", "-i", str(inventory), str(root)], ["plan", "-i", str(inventory), str(root)]):
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 1, (argv, out, err)
        lines = err.splitlines()
        assert 'services/web.yaml:4: metadata.name: "web\\nup touch /tmp/pwned" is not a valid name' in err
        assert 'svcops.yaml:4: clusterDomain: "cluster.local\\n" must be a DNS domain' in err
        assert not any(ln.startswith("up ") for ln in lines)
        if "-i" in argv:
            assert f'{inventory}: "node1\\nup touch /tmp/pwned": is not a host name svcops can carry' in err
            assert f'{inventory}: "node1\\nup touch /tmp/pwned": svcops_interface: "eth0; reboot" must be a network interface name' in err
    assert sorted(p.name for p in root.rglob("*")) == before  # no lock written
    shutil.rmtree(root)


# --- the rules themselves ------------------------------------------------------------


def _patterns(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "pattern":
                out.append(v)
            elif k == "patternProperties":
                out.extend(v)
            _patterns(v, out)
    elif isinstance(node, list):
        for v in node:
            _patterns(v, out)
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "schemas").glob("*.schema.json")), ids=lambda p: p.name)
def test_every_schema_pattern_ends_strings_in_both_regex_dialects(path):
    # jsonschema (Python) applies patterns with re.search, where $ also matches before a
    # final newline; ECMA-262 (editors, check-jsonschema) does not. $(?!\n) is the end
    # of the string in both.
    patterns = _patterns(json.loads(path.read_text()), [])
    assert patterns
    for p in patterns:
        assert "$" not in p.replace("$(?!\\n)", ""), p


ACCEPTED_INTERFACES = ["eth0", "ens3", "enp0s31f6", "enx001122334455", "eth0.100", "br-1a2b3c4d5e6f", "wg_0", "_x"]
REFUSED_INTERFACES = ["", ".", "..", "-x", ".x", "eth0:1", "a" * 16, "eth 0", "eth0\n", "eth/0", "\u0435th0", "eth0;", "$(x)"]


def test_the_interface_rule_is_the_schemas():
    from svcops import schemas
    from svcops.site.model import INTERFACE_NAME

    pattern = re.compile(schemas.schema("hostdata")["properties"]["svcops_interface"]["pattern"])
    for name in ACCEPTED_INTERFACES:
        assert INTERFACE_NAME.fullmatch(name) and pattern.search(name), name
    for name in REFUSED_INTERFACES:
        assert not INTERFACE_NAME.fullmatch(name) and not pattern.search(name), name


def test_is_ipv4_says_which_family_and_refuses_the_rest():
    from svcops.site.model import is_ipv4

    assert is_ipv4("10.0.0.1") and not is_ipv4(None) and not is_ipv4("") and not is_ipv4("fd00::1")
    for bad in ("10.0.0.1 -j ACCEPT", "10.0.0.1\n", "node1.example.com", "10.0.0.1;reboot"):
        with pytest.raises(ValueError):
            is_ipv4(bad)


_ECMA = """
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
console.log(JSON.stringify(cases.map(([p, s]) => new RegExp(p, 'u').test(s))));
"""


@pytest.mark.skipif(not shutil.which("node"), reason="needs node (an ECMA-262 regex engine, as editors have)")
def test_every_schema_pattern_accepts_the_same_strings_in_python_and_ecma():
    import subprocess

    patterns = [p for path in sorted((ROOT / "schemas").glob("*.schema.json")) for p in _patterns(json.loads(path.read_text()), [])]
    strings = [*HOSTILE.values(), *GOOD.values(), *LONGEST.values(), *TOO_LONG.values(), "svcops_interface", "svcops_interface\n", "eth0"]
    cases = [(p, s) for p in dict.fromkeys(patterns) for s in strings]
    out = subprocess.run(["node", "-e", _ECMA], input=json.dumps(cases), capture_output=True, text=True, timeout=60, check=True)
    ecma = json.loads(out.stdout)
    python = [re.search(p, s) is not None for p, s in cases]
    assert [c for c, e, py in zip(cases, ecma, python) if e != py] == []
