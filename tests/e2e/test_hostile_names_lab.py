"""End to end: names as odd as Kubernetes allows, and hostile ones, against a real
3-node lab through `svcops apply` (issue 10's hostile names).

The accepted site is as long and as odd as the rules let it be: a 51-character
cluster domain, a service of 63 characters in a namespace of 63, label keys with a
253-character prefix, a port name of 62 (its SRV label is 63: served) and one of 63
(no SRV record: its label would be 64), annotations holding newlines, shell syntax
and bidirectional controls, a hand-written endpoint whose (ignored) hostname is a
command, an ExternalName of 253 characters, and a node whose inventory name is 253.
On every node DNS must still answer, traffic must reach the backends, the ifupdown
file must hold svcops's one stanza, and no command of any value may have run.

Then each hostile value (a trailing newline in a name or the cluster domain, an
``up`` line in a host name or an interface, shell syntax in ssh_hostname...) is
applied on its own: `svcops apply` exits 1 naming its file and field, and nothing on
any node changes.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

import pytest
from labkit import ADDRESS, LAB_DIR, NODES, SVCOPS, backends, curl, lab_exec, make_site, run, sh

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab")]

PYTHON = "/usr/bin/python3"  # the machine's: the venv's interpreter does not run inside nodes
DNSQUERY = Path(__file__).resolve().parents[1] / "dnsquery.py"
LISTEN = "127.0.0.153"
ALL = set(ADDRESS.values())

# A file no value may ever create: unique to this run, checked on every node and here.
PWNED = f"/tmp/svcops-pwned-{secrets.token_hex(4)}"
SHELL = f"$(touch {PWNED})"

DOMAIN = "c" * 20 + "." + "d" * 30  # 51 characters: the longest clusterDomain
NAME = "s" + "x" * 62  # a DNS-1035 label of 63
NAMESPACE = "n" + "x" * 62
LABEL_63 = "l" + "x" * 61 + "l"
PREFIX_253 = ".".join(["p" * 63] * 3 + ["p" * 61])
PORT_62, PORT_63 = "q" + "x" * 61, "r" + "x" * 62
EXTERNAL = ".".join(["e" * 63] * 3 + ["e" * 61]) + "."
LONG_HOST = ".".join(["h" * 63] * 3 + ["h" * 61])  # node1's inventory name
CLUSTER_IP = "10.1.77.7"
MANUAL_IP = "10.1.77.8"


# Annotation values: free-form, and no node ever sees them.
NOTE = f"line one\nup {SHELL}\n`touch {PWNED}`; \u202eevil \u0430pp \x00"
QUOTES = "'; reboot; echo '" + SHELL


def q(text: str) -> str:
    """A YAML double-quoted scalar holding `text` exactly (JSON's escapes are YAML's)."""
    return json.dumps(text)


ODD = f"""\
apiVersion: v1
kind: Service
metadata:
  name: {NAME}
  namespace: {NAMESPACE}
  labels:
    {PREFIX_253}/{LABEL_63}: {LABEL_63}
  annotations:
    {PREFIX_253.upper()}/{LABEL_63}: {q(NOTE)}
    example.com/note: {q(QUOTES)}
spec:
  clusterIP: {CLUSTER_IP}
  selector:
    app: web
  ports:
    - {{name: {PORT_62}, port: 8000, targetPort: http}}
    - {{name: {PORT_63}, port: 8001, targetPort: 80}}
---
apiVersion: v1
kind: Service
metadata: {{name: manual, namespace: {NAMESPACE}}}
spec:
  clusterIP: {MANUAL_IP}
  ports: [{{name: http, port: 8080, targetPort: 80}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: manual, namespace: {NAMESPACE}}}
subsets:
  - addresses: [{{ip: {ADDRESS['node2']}, hostname: {q(SHELL)}}}]
    ports: [{{name: http, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: far, namespace: {NAMESPACE}}}
spec:
  type: ExternalName
  externalName: {EXTERNAL}
"""


INVENTORY = """\
# The lab's nodes (its state file), with the changes a test asks for.
import json

_CHANGES = json.loads({changes!r})
_state = json.load(open({state!r}))
nodes = []
for _name in _state["nodes"]:
    _data = dict(_state["hosts"][_name]["inventory"])
    _data.update(_CHANGES.get("data", {{}}).get(_name, {{}}))
    nodes.append((_CHANGES.get("names", {{}}).get(_name, _name), _data))
"""


def inventory(tmp: Path, names: dict | None = None, data: dict | None = None) -> str:
    path = tmp / "inventory.py"
    changes = json.dumps({"names": names or {}, "data": data or {}})
    path.write_text(INVENTORY.format(changes=changes, state=f"{LAB_DIR}/state.json"))
    return str(path)


def set_domain(site: Path, domain: str) -> None:
    path = site / "svcops.yaml"
    text = re.sub(r"(?m)^clusterDomain:.*\n", "", path.read_text())
    path.write_text(text + f"clusterDomain: {q(domain)}\n")


def apply(site: Path, inv: str) -> "run":
    return run([SVCOPS, "apply", "-i", inv, "-y", str(site)], timeout=300)


def ask(host: str, name: str, rtype: str = "A") -> tuple[int, list]:
    out = sh(host, f"{PYTHON} /tmp/dnsquery.py ask {LISTEN} {name} {rtype}")
    return eval(out)  # the repr of (rcode, [(name, type, value)]) from tests/dnsquery.py


NODE_STATE = (
    "cat /etc/network/interfaces.d/svcops /etc/resolv.conf; "
    "sha256sum /etc/svcops/* /etc/powerdns/recursor-svcops.conf /etc/powerdns/svcops/* 2>&1; "
    "iptables-save | grep -e SVCOPS- | grep -v '^#'; "
    "ip -o addr show; ls /etc/network/interfaces.d"
)


def node_state() -> dict[str, str]:
    return {n: sh(n, NODE_STATE, check=False) for n in NODES}


def no_pwned_anywhere() -> None:
    for host in (*NODES, "client"):
        assert lab_exec(host, "test", "-e", PWNED).returncode == 1, f"{PWNED} on {host}"
    assert not Path(PWNED).exists()


@pytest.fixture(scope="module")
def odd(lab, tmp_path_factory):
    """The odd site applied, with node1 under a 253-character inventory name."""
    tmp = tmp_path_factory.mktemp("names")
    for node in NODES:
        r = lab_exec(node, "sh", "-c", "cat > /tmp/dnsquery.py", input=DNSQUERY.read_text())
        assert r.returncode == 0, r.stderr
    site = make_site(tmp, {"odd.yaml": ODD}, lock_from_walkthrough=False)
    set_domain(site, DOMAIN)
    inv = inventory(tmp, names={"node1": LONG_HOST})
    r = apply(site, inv)
    assert r.returncode == 0, r.stdout + r.stderr
    return {"site": site, "inventory": inv, "tmp": tmp, "apply": r}


def test_01_the_odd_site_applies_and_says_which_port_has_no_srv_record(odd):
    err = odd["apply"].stderr
    assert f"services/odd.yaml:17: warning: spec.ports[1].name: 63 characters" in err, err
    assert "no SRV record" in err
    no_pwned_anywhere()


def test_02_dns_answers_the_longest_names_on_every_node(odd):
    fqdn = f"{NAME}.{NAMESPACE}.svc.{DOMAIN}"
    assert len(fqdn) == 183
    for node in NODES:
        assert lab_exec(node, "getent", "hosts", fqdn).stdout.split()[:1] == [CLUSTER_IP], node
        # The search list carries the long domain: the short form works too.
        assert lab_exec(node, "getent", "hosts", f"{NAME}.{NAMESPACE}").stdout.split()[:1] == [CLUSTER_IP], node
        rcode, answers = ask(node, f"_{PORT_62}._tcp.{fqdn}", "SRV")
        assert rcode == 0 and answers == [(f"_{PORT_62}._tcp.{fqdn}.", "SRV", f"0 100 8000 {fqdn}.")], answers
        rcode, answers = ask(node, f"far.{NAMESPACE}.svc.{DOMAIN}", "CNAME")
        assert rcode == 0 and [a[2] for a in answers] == [EXTERNAL], answers
        # The walkthrough's services are there too: the zone loaded whole.
        assert lab_exec(node, "getent", "hosts", f"my-deploy.default.svc.{DOMAIN}").stdout.split()[:1] == ["10.1.11.83"]
        assert lab_exec(node, "getent", "hosts", f"nope.default.svc.{DOMAIN}").returncode == 2


def test_03_traffic_reaches_the_backends_of_the_longest_service(odd):
    got = backends(curl("node1", f"http://{CLUSTER_IP}:8000/", 24))
    assert set(got) == ALL and sum(got.values()) == 24, got
    got = backends(curl("node3", f"http://{MANUAL_IP}:8080/", 6))
    assert set(got) == {ADDRESS["node2"]}, got


def test_04_each_ifupdown_file_holds_svcops_stanza_and_nothing_else(odd):
    for node in NODES:
        lines = sh(node, "cat /etc/network/interfaces.d/svcops").splitlines()
        assert [ln for ln in lines if ln.startswith("#")] == lines[:2]
        assert [ln.split()[0] for ln in lines[2:]] == ["auto", "iface", "address", "gateway", "dns-nameservers"], lines
        assert lines[2:5] == ["auto eth0", "iface eth0 inet static", f"    address {ADDRESS[node]}/24"]
    assert LONG_HOST in sh("node1", "head -1 /etc/network/interfaces.d/svcops")
    assert sh("node1", "ls /etc/network/interfaces.d").split() == ["svcops"]


def test_05_no_value_reached_a_node_s_files_or_ran(odd):
    for node in NODES:
        # /etc/svcops holds the records' folders too: every file under it.
        files = sh(node, "find /etc/svcops -type f -exec cat {} + && cat /etc/powerdns/recursor-svcops.conf /etc/powerdns/svcops/* /etc/resolv.conf")
        assert PWNED not in files and "reboot" not in files and "\u202e" not in files
    no_pwned_anywhere()


# --- refused: each hostile value alone, nothing changes --------------------------------

REFUSED = {
    "service-name-trailing-newline": ("service", {"name": "web\n"}, "services/bad.yaml:4: metadata.name"),
    "namespace-command": ("service", {"namespace": f"default\nup {SHELL}"}, "services/bad.yaml:5: metadata.namespace"),
    "port-name-shell": ("service", {"port": SHELL}, "services/bad.yaml:9: spec.ports[0].name"),
    "external-name-trailing-newline": ("external", {"target": "docs.example.org\n"}, "services/bad.yaml:7: spec.externalName"),
    "cluster-domain-trailing-newline": ("domain", "cluster.local\n", 'clusterDomain: "cluster.local\\n" must be'),
    "host-name-up-line": ("names", {"node2": f"node2\niface lo inet loopback\n    up touch {PWNED}"}, '"node2\\niface lo'),
    "interface-up-line": ("data", {"node2": {"svcops_interface": f"eth0\n    up touch {PWNED}"}}, "svcops_interface"),
    "ssh-hostname-shell": ("data", {"node3": {"ssh_hostname": f"{ADDRESS['node3']};touch {PWNED}"}}, "node3: ssh_hostname"),
    "workload-label-rtl": ("data", {"node1": {"svcops_workloads": [{"name": "w", "labels": {"app": "w\u202eb"}}]}}, "svcops_workloads[0].labels.app"),
}

BAD_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector: {{app: web}}
  ports:
    - name: {port}
      port: 9000
      targetPort: http
"""
BAD_EXTERNAL = """\
apiVersion: v1
kind: Service
metadata:
  name: outside
spec:
  type: ExternalName
  externalName: {target}
"""


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_06_a_hostile_value_is_refused_and_changes_nothing(odd, case, tmp_path):
    what, value, where = REFUSED[case]
    site = make_site(tmp_path, {"odd.yaml": ODD}, lock_from_walkthrough=False)
    set_domain(site, DOMAIN)
    # The odd site's lock: the cluster IPs and addresses stay as they are on the nodes.
    (site / "svcops.lock").write_text((odd["site"] / "svcops.lock").read_text())
    names, data = {"node1": LONG_HOST}, {}
    if what == "service":
        fields = {"name": "hostile", "namespace": "default", "port": "web", **value}
        (site / "services" / "bad.yaml").write_text(BAD_SERVICE.format(**{k: q(v) for k, v in fields.items()}))
    elif what == "external":
        (site / "services" / "bad.yaml").write_text(BAD_EXTERNAL.format(target=q(value["target"])))
    elif what == "domain":
        set_domain(site, value)
    elif what == "names":
        names.update(value)
    else:
        data = value
    inv = inventory(tmp_path, names=names, data=data)
    before = node_state()
    lock = (site / "svcops.lock").read_text()
    r = apply(site, inv)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert any(where in ln for ln in lines), r.stderr
    assert "nothing was changed" in r.stderr or "nothing was pushed" in r.stderr, r.stderr
    assert not any(ln.lstrip().startswith("up ") for ln in lines)  # the value is shown escaped
    assert node_state() == before
    assert (site / "svcops.lock").read_text() == lock
    no_pwned_anywhere()
