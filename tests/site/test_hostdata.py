"""Nodes from a pyinfra inventory: host data as an operator writes it, and what is wrong with it."""

from __future__ import annotations

import textwrap

from hypothesis import given, settings
from hypothesis import strategies as st
from paths import ROOT

from svcops import schemas
from svcops.site.hostdata import _fast_valid, load_inventory, nodes_from_hosts

EXAMPLE_INVENTORY = ROOT / "inventory" / "example.py"


def lines(diags) -> list[str]:
    return [str(d) for d in diags]


# --- nodes_from_hosts: the pure part ------------------------------------------------------


def test_host_data_becomes_nodes_with_defaults():
    hosts = [
        (
            "node1",
            {
                "ssh_hostname": "192.168.36.79",
                "svcops_interface": "ens3",
                "svcops_address": "192.168.36.79",
                "svcops_labels": {"zone": "a"},
                "svcops_workloads": [
                    {"name": "web-1", "labels": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
                    {"name": "dns-1", "address": "10.244.1.5", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]},
                ],
                "some_other_tool": {"anything": ["goes"]},  # not svcops's: not checked
            },
        ),
        ("node2", {}),
    ]
    (n1, n2), diags = nodes_from_hosts(hosts, "inventory/prod.py")
    assert diags == []
    assert (n1.name, n1.ssh_host, n1.interface, n1.address, dict(n1.labels)) == (
        "node1", "192.168.36.79", "ens3", "192.168.36.79", {"zone": "a"},
    )
    web, dns = n1.workloads
    assert (web.name, web.node, web.address, dict(web.labels)) == ("web-1", "node1", None, {"app": "web"})
    assert [(p.name, p.port, p.protocol) for p in web.ports] == [("http", 80, "TCP")]
    assert dns.address == "10.244.1.5" and dns.ports[0].protocol == "UDP"
    # Nothing set: reached by its name, on eth0, address allocated, no workloads.
    assert (n2.ssh_host, n2.interface, n2.address, n2.workloads) == ("node2", "eth0", None, ())


def test_python_tuples_in_host_data_are_lists():
    hosts = [("node1", {"svcops_workloads": ({"name": "db", "ports": ({"name": "pg", "port": 5432},)},)})]
    (node,), diags = nodes_from_hosts(hosts, "inv.py")
    assert diags == []
    assert node.workloads[0].ports[0].port == 5432


def test_bad_host_data_names_inventory_node_and_field_and_reports_everything():
    hosts = [
        ("node1", {"ssh_hostname": "10.0.0.11", "svcops_address": "10.0.0.11", "svcops_workloads": [
            {"name": "web-1", "labels": {"app": "web"}, "ports": [{"name": "http", "port": 80}, {"name": "http", "port": "eighty"}]},
            {"name": "web-1", "address": "10.0.0.300", "ports": [{"name": "metrics", "port": 9100}, {"name": "alt", "port": 9100}]},
        ]}),
        ("node2", {"svcops_address": "10.0.0.11", "svcops_adress": "x", "svcops_interface": "eth0 ", "svcops_labels": {"zone": 1}}),
        ("node3", {"svcops_workloads": [{"name": "db", "address": "10.1.0.5", "ports": [{"name": "pg", "port": 5432, "protocol": "tcp"}]}]}),
        ("node4", {"svcops_workloads": [
            {"name": "db", "address": "10.1.0.5", "ports": [{"name": "pg", "port": 5432}, {"name": "pg", "port": 70000}]},
            {"name": "x", "port": 80},
        ]}),
        ("node5", {"svcops_workloads": {"name": "not-a-list"}, "ssh_hostname": 42}),
    ]
    nodes, diags = nodes_from_hosts(hosts, "inventory/prod.py")
    assert nodes == ()
    assert lines(diags) == [
        'inventory/prod.py: node1: svcops_workloads[0].ports[1].port: must be an integer, not the string "eighty"',
        'inventory/prod.py: node1: svcops_workloads[1].address: "10.0.0.300" must be an IPv4 address such as 10.0.0.1',
        'inventory/prod.py: node1: svcops_workloads[0].ports[1].name: duplicate port name "http" (also svcops_workloads[0].ports[0])',
        'inventory/prod.py: node1: svcops_workloads[1].name: duplicate workload name "web-1" (also svcops_workloads[0])',
        "inventory/prod.py: node1: svcops_workloads[1].ports[1].port: duplicate port 9100/TCP (also svcops_workloads[1].ports[0])",
        "inventory/prod.py: node2: svcops_interface: \"eth0 \" must be a network interface name: 1-15 letters, digits, '-', '_' and '.', starting with a letter, a digit or '_'",
        "inventory/prod.py: node2: svcops_labels.zone: must be a string, not the integer 1",
        "inventory/prod.py: node2: svcops_adress: unknown svcops host-data key (svcops reads svcops_interface, svcops_address, svcops_labels, svcops_workloads, svcops_site)",
        "inventory/prod.py: node2: svcops_address: 10.0.0.11 is already the address of node node1",
        'inventory/prod.py: node3: svcops_workloads[0].ports[0].protocol: "tcp" is not one of: "TCP", "UDP", "SCTP"',
        "inventory/prod.py: node4: svcops_workloads[0].ports[1].port: 70000 is out of range 1-65535",
        'inventory/prod.py: node4: svcops_workloads[1].port: unknown field (did you mean "ports"?)',
        "inventory/prod.py: node4: svcops_workloads[0].address: 10.1.0.5 is already the address of a workload on node node3",
        'inventory/prod.py: node4: svcops_workloads[0].ports[1].name: duplicate port name "pg" (also svcops_workloads[0].ports[0])',
        "inventory/prod.py: node5: svcops_workloads: must be a list, not a mapping",
        "inventory/prod.py: node5: ssh_hostname: must be a string, not the integer 42",
    ]
    assert all(d.line is None and d.file == "inventory/prod.py" for d in diags)


def test_only_the_bad_node_is_left_out():
    hosts = [("good", {"svcops_address": "10.0.0.1"}), ("bad", {"svcops_address": "10.0.0"})]
    nodes, diags = nodes_from_hosts(hosts, "inv.py")
    assert [n.name for n in nodes] == ["good"]
    assert lines(diags) == ['inv.py: bad: svcops_address: "10.0.0" must be an IPv4 address such as 10.0.0.1']


# The fast check skips jsonschema for host data it accepts: it must never accept what the
# schema refuses (else a bad inventory would pass silently).
_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70000), st.floats(allow_nan=False),
    st.sampled_from(["", "web", "http", "10.0.0.1", "10.0.0.300", "eth0", "TCP", "tcp", "UDP", "a b", "-x", "app"]),
)
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["name", "port", "protocol", "labels", "app", "address", "ports", "x"]), inner, max_size=4)), max_leaves=12)
_port = st.fixed_dictionaries({"name": st.one_of(st.just("http"), _scalar), "port": st.one_of(st.just(80), _scalar)}, optional={"protocol": st.one_of(st.just("UDP"), _scalar), "extra": _value})
_probe_port = st.one_of(st.just(80), st.just("http"), st.just("Http"), _scalar)
_probe = st.fixed_dictionaries(
    {},
    optional={
        "httpGet": st.one_of(st.fixed_dictionaries({"port": _probe_port}, optional={"path": st.one_of(st.just("/h"), st.just("/a b"), _scalar), "scheme": st.one_of(st.just("HTTPS"), _scalar), "host": _scalar,
                  "httpHeaders": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["X-A", "X A", ""]), "value": st.sampled_from(["v", "a\nb", "a\n"])}), max_size=2)}), _value),
        "tcpSocket": st.one_of(st.fixed_dictionaries({"port": _probe_port}), _value),
        "exec": st.one_of(st.fixed_dictionaries({"command": st.lists(st.sampled_from(["true", "a\x00"]), max_size=2)}), _value),
        "grpc": _value, "periodSeconds": _scalar, "failureThreshold": _scalar, "terminationGracePeriodSeconds": _scalar,
    },
)
_workload = st.fixed_dictionaries(
    {"name": st.one_of(st.just("web-1"), _scalar)},
    optional={"address": st.one_of(st.just("10.1.2.3"), _scalar), "readinessProbe": st.one_of(_probe, _value), "labels": st.one_of(st.dictionaries(st.sampled_from(["app", "-x", "a/b", "k8s.io/x"]), st.one_of(st.just("web"), _scalar), max_size=3), _value),
              "ports": st.one_of(st.lists(_port, max_size=3), _value), "extra": _value},
)
_host = st.fixed_dictionaries(
    {},
    optional={"svcops_interface": st.one_of(st.just("eth0"), _scalar), "svcops_address": st.one_of(st.just("10.0.0.1"), _scalar),
              "svcops_labels": st.one_of(st.dictionaries(st.sampled_from(["zone", "-x"]), st.one_of(st.just("a"), _scalar), max_size=2), _value),
              "svcops_workloads": st.one_of(st.lists(_workload, max_size=3), _value), "svcops_site": _scalar, "svcops_other": _value},
)


@settings(max_examples=400, deadline=None)
@given(_host)
def test_fast_host_check_accepts_nothing_the_schema_refuses(host):
    if _fast_valid(host):
        assert schemas.validator("hostdata").is_valid(host)


# --- readinessProbe: Kubernetes' fields, defaults and checks ------------------------------


def _one(workload: dict):
    nodes, diags = nodes_from_hosts([("node1", {"svcops_address": "10.0.0.1", "svcops_workloads": [workload]})], "inv.py")
    return (nodes[0].workloads[0].readiness_probe if nodes and nodes[0].workloads else None), lines(diags)


HTTP_PORT = [{"name": "http", "port": 8080}]


def test_a_probe_gets_kubernetes_defaults_and_its_named_port_resolved():
    probe, diags = _one({"name": "web", "ports": HTTP_PORT, "readinessProbe": {"httpGet": {"port": "http"}}})
    assert diags == []
    assert (probe.kind, probe.port, probe.path, probe.scheme, probe.host) == ("httpGet", 8080, "/", "HTTP", None)
    assert (probe.initial_delay, probe.period, probe.timeout, probe.success_threshold, probe.failure_threshold) == (0, 10, 1, 1, 3)


def test_zero_counts_are_the_defaults_as_the_api_server_sets_them():
    probe, diags = _one({"name": "web", "readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 0, "timeoutSeconds": 0, "failureThreshold": 0, "successThreshold": 0}})
    assert diags == [] and (probe.period, probe.timeout, probe.failure_threshold, probe.success_threshold) == (10, 1, 3, 1)


def test_a_probe_keeps_what_it_says():
    probe, diags = _one({"name": "web", "readinessProbe": {
        "httpGet": {"port": 81, "path": "/healthz", "scheme": "HTTPS", "host": "10.1.1.1", "httpHeaders": [{"name": "Host", "value": "web.example"}]},
        "initialDelaySeconds": 5, "periodSeconds": 1, "timeoutSeconds": 2, "successThreshold": 2, "failureThreshold": 1}})
    assert diags == []
    assert probe.headers == (("Host", "web.example"),) and probe.host == "10.1.1.1" and probe.scheme == "HTTPS"
    assert (probe.initial_delay, probe.period, probe.timeout, probe.success_threshold, probe.failure_threshold) == (5, 1, 2, 2, 1)
    probe, _ = _one({"name": "web", "readinessProbe": {"exec": {"command": ["test", "-e", "/run/ready"]}}})
    assert probe.kind == "exec" and probe.command == ("test", "-e", "/run/ready") and probe.port is None


def test_bad_probes_name_the_field_and_say_why():
    W = "inv.py: node1: svcops_workloads[0].readinessProbe"
    assert _one({"name": "web", "readinessProbe": {"periodSeconds": 2}})[1] == [f"{W}: must specify exactly one handler: httpGet, tcpSocket or exec"]
    assert _one({"name": "web", "readinessProbe": {"tcpSocket": {"port": 80}, "exec": {"command": ["true"]}}})[1] == [
        f"{W}: must specify exactly one handler: httpGet, tcpSocket or exec (it has tcpSocket and exec)"]
    assert _one({"name": "web", "ports": HTTP_PORT, "readinessProbe": {"httpGet": {"port": "htp"}}})[1] == [
        f'{W}.httpGet.port: the workload has no TCP port named "htp"']
    assert _one({"name": "web", "readinessProbe": {"grpc": {"port": 80}}})[1] == [
        f"{W}.grpc: svcops does not run gRPC probes: use httpGet, tcpSocket or exec"]
    assert _one({"name": "web", "readinessProbe": {"tcpSocket": {"port": 80}, "terminationGracePeriodSeconds": 3}})[1] == [
        f"{W}.terminationGracePeriodSeconds: 3 must not be set in a readinessProbe (Kubernetes allows it on liveness and startup probes only)"]
    assert _one({"name": "web", "readinessProbe": {"exec": {"command": []}, "failureThreshold": -1}})[1] == [
        f"{W}.exec.command: must not be empty", f"{W}.failureThreshold: -1 is below the minimum 0"]
    assert _one({"name": "web", "readinessProbe": {"httpGet": {"port": 0}}})[1] == [
        f"{W}.httpGet.port: 0 must be a port number (1-65535) or the name of one of the workload's ports"]
    got = _one({"name": "web", "readinessProbe": {"httpGet": {"port": 80, "httpHeaders": [{"name": "X Y", "value": "a\r\nEvil: 1"}]}}})[1]
    assert got == [f'{W}.httpGet.httpHeaders[0].name: "X Y" is not an HTTP header name (RFC 7230 token characters)',
                   f'{W}.httpGet.httpHeaders[0].value: "a\\r\\nEvil: 1" must be an HTTP header value: no line breaks']


# --- load_inventory: pyinfra's own loader --------------------------------------------------


def test_example_inventory_loads_through_pyinfra():
    nodes, diags, data = load_inventory(str(EXAMPLE_INVENTORY))
    assert diags == []
    assert [(n.name, n.ssh_host, n.address) for n in nodes] == [
        ("node1", "192.168.36.11", "192.168.36.11"),
        ("node2", "192.168.36.12", "192.168.36.12"),
        ("node3", "192.168.36.13", "192.168.36.13"),
    ]
    assert [w.name for w in nodes[0].workloads] == ["my-deploy-node1"]
    # What every host shares, alike; per-host values (addresses) are not "common".
    assert data == {"svcops_interface": "eth0", "svcops_labels": {"zone": "lab"}}


def test_group_data_merges_as_in_pyinfra(tmp_path):
    inv = tmp_path / "prod.py"
    inv.write_text(textwrap.dedent("""
        web = [("web1", {"ssh_hostname": "10.0.0.11"}), ("web2", {"svcops_interface": "ens4"})]
        db = ["db1"]
    """))
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text('svcops_site = "sites/prod"\nsvcops_interface = "eth1"\n')
    (tmp_path / "group_data" / "web.py").write_text(
        'svcops_workloads = [{"name": "web", "labels": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}]\n'
    )
    nodes, diags, data = load_inventory(str(inv))
    assert diags == []
    by_name = {n.name: n for n in nodes}
    assert set(by_name) == {"web1", "web2", "db1"}
    assert by_name["web1"].ssh_host == "10.0.0.11" and by_name["web1"].interface == "eth1"
    assert by_name["web2"].interface == "ens4"  # host data beats group data
    assert [w.name for w in by_name["web2"].workloads] == ["web"]
    assert by_name["db1"].workloads == ()
    assert data == {"svcops_site": "sites/prod"}


def test_missing_inventory_is_a_diagnostic(tmp_path):
    missing = str(tmp_path / "nope.py")
    nodes, diags, data = load_inventory(missing)
    assert (nodes, data) == ((), {})
    assert lines(diags) == [f"{missing}: inventory file not found"]


def test_broken_inventory_is_a_diagnostic_with_its_line(tmp_path):
    syntax = tmp_path / "syntax.py"
    syntax.write_text('nodes = [\n    ("node1", {"ssh_hostname": "10.0.0.1"}\n]\n')
    nodes, diags, _ = load_inventory(str(syntax))
    assert nodes == ()
    assert len(diags) == 1 and diags[0].file == str(syntax) and diags[0].line in (2, 3)
    assert "syntax error" in diags[0].message

    raises = tmp_path / "raises.py"
    raises.write_text('import os\n\nnodes = [("node1", {"svcops_address": os.environ["SVCOPS_NO_SUCH_VARIABLE"]})]\n')
    nodes, diags, _ = load_inventory(str(raises))
    assert nodes == ()
    assert lines(diags) == [f"{raises}:3: cannot load the inventory: KeyError: 'SVCOPS_NO_SUCH_VARIABLE'"]


def test_bad_host_data_in_an_inventory_file(tmp_path):
    inv = tmp_path / "lab.py"
    inv.write_text('nodes = [("node1", {"svcops_workloads": [{"name": "web", "ports": [{"name": "http", "port": "80"}]}]})]\n')
    nodes, diags, _ = load_inventory(str(inv))
    assert nodes == ()
    assert lines(diags) == [f'{inv}: node1: svcops_workloads[0].ports[0].port: must be an integer, not the string "80"']
