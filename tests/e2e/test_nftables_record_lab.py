"""End to end: the fast path's record and canary (issue 11), nftables mode, on a real
3-node lab.

After an apply each node holds the record of what it got (``/etc/svcops/nft.d``: an
index and bucket files) and its table a canary naming the record. A second apply trusts
it; a one-service change goes through it and leaves each table exactly as the whole
read says it should be (``svcops check``: in sync). Each way the record can be wrong is
drilled on node1: the table deleted, the canary flushed, the record deleted, a bucket
file edited (then a reboot), the index edited, a reboot (the table gone and the boot
script run: nothing to do then): the next apply notices
(the canary or a digest disagrees), reads the whole table, repairs node1 alone and
rewrites its record; traffic through the cluster IP reaches every backend after.

Its own lab (module scope), brought up and down around this module.
"""

from __future__ import annotations

import pytest
from labkit import ADDRESS, INVENTORY, NODES, SVCOPS, apply, backends, curl, make_site, results, run, sh

from svcops.render.nftables_record import parse_canary
from svcops.render.record import parse_index

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.usefixtures("lab")]

CLUSTER_IP = "10.1.11.83"  # the walkthrough's my-deploy, port 8000 -> 80
URL = f"http://{CLUSTER_IP}:8000/"
ALL = set(ADDRESS.values())
RECORD = "/etc/svcops/nft.d"

EXTRA = """\
apiVersion: v1
kind: Service
metadata: {name: extra, namespace: default}
spec:
  selector: {app: my-deploy}
  ports: [{port: 8081, targetPort: 80}]
"""


def canary(node: str) -> str | None:
    return parse_canary(sh(node, "nft list set ip svcops state", check=False).splitlines())


def index_fingerprint(node: str) -> str | None:
    index = parse_index(sh(node, f"cat {RECORD}/index", check=False).splitlines(), "nftables")
    return index.fingerprint if index else None


def check(site) -> int:
    return run([SVCOPS, "check", "-i", INVENTORY, str(site)], timeout=180).returncode


def serves_everywhere() -> None:
    sh("node1", "conntrack -D -p tcp --orig-port-dst 8000 >/dev/null 2>&1; true")
    lines = curl("node1", URL, 30)
    assert set(backends(lines)) == ALL, "\n".join(lines)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = make_site(tmp_path_factory.mktemp("record"), {}, mode="nftables")
    apply(s)
    return s


def test_every_node_holds_its_record_and_a_canary_naming_it(site):
    for n in NODES:
        fp = index_fingerprint(n)
        assert fp is not None and canary(n) == fp, n
    assert results(apply(site)) == {n: "unchanged" for n in NODES}
    assert check(site) == 0


def test_a_one_service_change_goes_through_the_record_and_equals_the_whole_read(site, tmp_path):
    before = {n: index_fingerprint(n) for n in NODES}
    (site / "services" / "extra.yaml").write_text(EXTRA)
    try:
        assert results(apply(site)) == {n: "changed" for n in NODES}
        for n in NODES:
            assert index_fingerprint(n) not in (None, before[n]) and canary(n) == index_fingerprint(n), n
        assert check(site) == 0  # the whole table, read back, is what the site renders
    finally:
        (site / "services" / "extra.yaml").unlink()
    assert results(apply(site)) == {n: "changed" for n in NODES}
    assert {n: index_fingerprint(n) for n in NODES} == before
    assert check(site) == 0
    serves_everywhere()


DRILLS = {
    "table deleted": "nft delete table ip svcops",
    "canary flushed": "nft flush set ip svcops state",
    "record deleted": f"rm -rf {RECORD}",
    # An edited bucket is only read when its services change; at boot its digest is
    # checked: loaded as it is, but the canary is left out.
    "bucket file edited, then rebooted": (
        f"f=$(ls {RECORD}/[0-9a-f][0-9a-f] | head -n 1); echo '# edited' >> $f && "
        "nft delete table ip svcops && /etc/svcops/restore"
    ),
    "index edited": f"sed -i '2d' {RECORD}/index",
    "rebooted": "nft delete table ip svcops && /etc/svcops/restore",
}


@pytest.mark.parametrize("name", list(DRILLS))
def test_a_wrong_record_is_noticed_and_repaired(site, name):
    sh("node1", DRILLS[name])
    r = apply(site)
    if name == "rebooted":
        # The boot script put back exactly the record, canary last: nothing to do.
        assert results(r) == {n: "unchanged" for n in NODES}, r.stdout
    else:
        assert results(r) == {"node1": "changed", "node2": "unchanged", "node3": "unchanged"}, r.stdout
    fp = index_fingerprint("node1")
    assert fp is not None and canary("node1") == fp
    assert check(site) == 0
    assert results(apply(site)) == {n: "unchanged" for n in NODES}
    serves_everywhere()
