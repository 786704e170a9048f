"""End to end, iptables mode: the record and its canary (issue 11) on a real 3-node lab.

A one-service change goes through the fast path (only its bucket is read and
restored: a chain of another service flushed by hand beforehand stays flushed) and
leaves the same svcops rules as a cold apply; ``--verify`` reads everything and
repairs that chain. Each way the record can stop being the truth is caught by the
canary and repaired by the next plain apply: the rules flushed, the nat table wiped by
another tool's restore, a reboot (the svcops chains gone; with the boot script the
canary comes back and the node is in sync; without it the next apply repairs), the
record folder deleted.

Its own lab (module scope), brought up and down around this module.
"""

from __future__ import annotations

import re

import pytest
from labkit import ADDRESS, NODES, apply, backends, curl, make_site, results, sh, svcops_rules

from svcops.render.chains import port_hash
from svcops.render.iptables_record import INDEX_FILE, RECORD_DIR, STATE
from svcops.render.record import bucket_of

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab")]

URL = "http://10.1.11.83:8000/"  # the walkthrough's my-deploy
ALL = set(ADDRESS.values())
MY_DEPLOY = port_hash("default/my-deploy", "TCP")
NGINX = "SVCOPS-SVC-" + port_hash("default/nginx-nodeport:http", "TCP")

AFFINITY = """\
apiVersion: v1
kind: Service
metadata:
  name: my-deploy
  namespace: default
spec:
  type: ClusterIP
  clusterIP: 10.1.11.83
  sessionAffinity: ClientIP
  selector:
    app: web
  ports:
    - port: 8000
      targetPort: 80
"""

# Every svcops chain and jump gone, as after a reboot (the tables start empty).
WIPE_SVCOPS = (
    "for t in filter nat; do iptables-save -t $t | grep -v -e '^#' -e SVCOPS- > /tmp/svcops-wipe.$t; "
    "iptables-restore -T $t < /tmp/svcops-wipe.$t; rm -f /tmp/svcops-wipe.$t; done"
)


def canary(node: str) -> dict[str, str]:
    """table -> the value its canary rule carries ("" when there is none)."""
    out = {}
    for t in ("filter", "nat"):
        m = re.search(r'"svcops-state (\S+)"', sh(node, f"iptables -t {t} -S {STATE} 2>/dev/null", check=False))
        out[t] = m.group(1) if m else ""
    return out


def fingerprint(node: str) -> str:
    return sh(node, f"head -n 1 {INDEX_FILE}").split()[3]


def canary_matches(node: str) -> bool:
    """Whether both canaries carry the index's values (nat: the fingerprint; filter:
    the digest of bucket s0)."""
    s0 = sh(node, f"awk '$1 == \"s0\" {{print $2}}' {INDEX_FILE}").strip()  # bucket, content digest, file digest
    return canary(node) == {"filter": s0, "nat": fingerprint(node)}


def serves(host: str = "node1") -> bool:
    lines = curl(host, URL, 30)
    return set(backends(lines)) == ALL


@pytest.fixture
def applied(tmp_path):
    site = make_site(tmp_path, {}, mode="iptables")
    # A node left by another module or test: start from nothing of svcops's.
    for n in NODES:
        sh(n, f"{WIPE_SVCOPS}; rm -rf {RECORD_DIR}")
    apply(site)
    return site


def test_the_first_apply_writes_the_record_and_the_canary_and_no_rules_v4(applied):
    for n in NODES:
        assert canary_matches(n)
        assert sh(n, "ls /etc/svcops/rules.v4 2>/dev/null; true") == ""
    assert results(apply(applied)) == {n: "unchanged" for n in NODES}


def test_a_one_service_change_reads_its_bucket_only_and_ends_as_a_cold_apply(applied, tmp_path):
    assert bucket_of(MY_DEPLOY) != bucket_of(NGINX[len("SVCOPS-SVC-") :])
    sh("node1", f"iptables -t nat -F {NGINX}")  # not a bucket the change touches
    changed = make_site(tmp_path, {"my-deploy.yaml": AFFINITY}, mode="iptables")
    assert results(apply(changed)) == {n: "changed" for n in NODES}
    # The fast path trusted the record: the chain flushed by hand is still empty.
    assert f"-A {NGINX} " not in sh("node1", f"iptables -t nat -S {NGINX}")
    assert "--rcheck" in sh("node1", f"iptables -t nat -S SVCOPS-SVC-{MY_DEPLOY}")
    fast = {n: svcops_rules(n) for n in ("node2", "node3")}
    # --verify reads everything: node1 is repaired, the others are in sync.
    r = apply(changed, "--verify")
    assert results(r) == {"node1": "changed", "node2": "unchanged", "node3": "unchanged"}, r.stdout
    assert f"-A {NGINX} " in sh("node1", f"iptables -t nat -S {NGINX}")
    # A cold apply of the same site gives the same rules as the fast path did.
    for n in ("node2", "node3"):
        sh(n, f"{WIPE_SVCOPS}; rm -rf {RECORD_DIR}")
    assert results(apply(changed)) == {"node1": "unchanged", "node2": "changed", "node3": "changed"}
    assert {n: svcops_rules(n) for n in ("node2", "node3")} == fast
    # ClientIP affinity: every answer from one backend.
    got = backends(curl("node1", URL, 10))
    assert sum(got.values()) == 10 and len(got) == 1, got


@pytest.mark.parametrize(
    "what,script",
    [
        ("rules flushed", "iptables -t nat -F && iptables -t filter -F SVCOPS-STATE"),
        ("nat flushed", "iptables -t nat -F"),
        ("nat table wiped by another tool's restore", "printf '*nat\\nCOMMIT\\n' | iptables-restore"),
        ("canary chain deleted", f"iptables -t filter -F {STATE} && iptables -t filter -X {STATE}"),
        ("rebooted without the boot script", WIPE_SVCOPS),
    ],
)
def test_the_canary_catches_it_and_the_next_apply_repairs(applied, what, script):
    before = svcops_rules("node1")
    sh("node1", script)
    assert svcops_rules("node1") != before
    r = apply(applied)
    assert results(r) == {"node1": "changed", "node2": "unchanged", "node3": "unchanged"}, r.stdout
    assert svcops_rules("node1") == before
    assert serves()
    assert results(apply(applied)) == {n: "unchanged" for n in NODES}


def test_a_reboot_with_the_boot_script_gives_the_same_fingerprint_back(applied):
    before, fp = svcops_rules("node1"), fingerprint("node1")
    sh("node1", f"{WIPE_SVCOPS}; sh /etc/svcops/restore")
    assert canary_matches("node1") and fingerprint("node1") == fp
    assert sorted(svcops_rules("node1").splitlines()) == sorted(before.splitlines())
    assert results(apply(applied)) == {n: "unchanged" for n in NODES}
    assert serves()


def test_the_record_deleted_by_hand_is_read_whole_and_written_again(applied):
    fp = fingerprint("node1")
    files = sh("node1", f"cd {RECORD_DIR} && sha256sum *")
    sh("node1", f"rm -rf {RECORD_DIR}")
    r = apply(applied)
    assert results(r) == {"node1": "changed", "node2": "unchanged", "node3": "unchanged"}, r.stdout
    assert sh("node1", f"cd {RECORD_DIR} && sha256sum *") == files and fingerprint("node1") == fp
    # A bucket edited by hand: its digest no longer matches, and --verify rewrites it.
    sh("node1", f"echo '# edited' >> {RECORD_DIR}/s1")
    assert results(apply(applied, "--verify"))["node1"] == "changed"
    assert sh("node1", f"cd {RECORD_DIR} && sha256sum *") == files
