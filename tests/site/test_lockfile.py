"""svcops.lock: what survives a round trip, what a bad lock says, how it is written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from svcops.site import lockfile
from svcops.site.lockfile import dump_lock, parse_lock, read_lock, write_lock
from svcops.site.model import Allocations

label = st.from_regex(r"[a-z]([-a-z0-9]{0,8}[a-z0-9])?", fullmatch=True)
service_key = st.builds(lambda ns, n: f"{ns}/{n}", label, label)
ipv4 = st.integers(0, 2**32 - 1).map(lambda v: f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}")
port = st.integers(1, 65535)
node_port_key = st.builds(lambda s, p, proto: f"{s}:{p}/{proto}", service_key, port, st.sampled_from(["TCP", "UDP", "SCTP"]))
# Inventory names can be anything pyinfra accepts: words YAML would read as booleans
# or numbers, addresses, names with spaces or quotes.
node_name = st.one_of(
    st.from_regex(r"[a-z][a-z0-9.-]{0,10}", fullmatch=True),
    st.sampled_from(["yes", "no", "on", "null", "true", "1", "0x1f", "1e3", "10.0.0.1", "12:30", "~", "A\n"]),
    st.text(min_size=1, max_size=12),
)

allocations = st.builds(
    Allocations,
    st.dictionaries(service_key, ipv4, max_size=20),
    st.dictionaries(node_port_key, port, max_size=20),
    st.dictionaries(service_key, ipv4, max_size=5),
    st.dictionaries(node_name, ipv4, max_size=8),
)

EXAMPLE = Allocations(
    {"default/web": "10.96.0.40", "kube-system/dns": "10.96.0.10"},
    {"default/web:80/TCP": 30080, "default/web:53/UDP": 30053},
    {"default/web": "192.0.2.1"},
    {"node2": "10.0.0.12", "node1": "10.0.0.11"},
)


# --- dump and parse -----------------------------------------------------------------


@settings(max_examples=200)
@given(allocations)
def test_dump_then_parse_gives_the_same_allocations(allocs):
    text = dump_lock(allocs)
    parsed, diags = parse_lock(text)
    assert diags == []
    assert parsed == allocs
    assert yaml.safe_load(text)["nodeAddresses"] == dict(allocs.node_addresses)  # plain YAML for any tool


def test_dump_is_human_readable_sorted_one_allocation_a_line():
    text = dump_lock(EXAMPLE)
    lines = text.splitlines()
    assert lines[0].startswith("#")  # a header that says what the file is
    assert lines[-1] == "# end of svcops.lock"  # the closing line, always last
    body = [ln for ln in lines if not ln.startswith("#")]
    assert body[0] == "version: 2"
    sections = {}
    current = None
    for ln in body[1:]:
        if not ln.startswith(" "):
            current = ln.rstrip(":")
            sections[current] = []
        else:
            sections[current].append(ln.strip())
    assert list(sections) == ["clusterIPs", "nodePorts", "loadBalancerIPs", "nodeAddresses"]
    for entries in sections.values():
        keys = [e.rsplit(": ", 1)[0] for e in entries]
        assert keys == sorted(keys)
    assert "  default/web:80/TCP: 30080" in lines
    assert "  kube-system/dns: 10.96.0.10" in lines


def test_dump_does_not_depend_on_insertion_order():
    reordered = Allocations(*(dict(reversed(list(getattr(EXAMPLE, f).items())))
                              for f in ("cluster_ips", "node_ports", "load_balancer_ips", "node_addresses")))
    assert dump_lock(reordered) == dump_lock(EXAMPLE)


def test_empty_allocations_round_trip():
    assert parse_lock(dump_lock(Allocations())) == (Allocations(), [])


# --- malformed locks: every error, with file and line -------------------------------

GOOD_HEAD = "# a comment\nversion: 1\n"

BAD = [
    (GOOD_HEAD + "clusterIPs:\n  default/web: x\n",
     ["svcops.lock:4: clusterIPs.default/web: 'x' is not an IPv4 address"]),
    (GOOD_HEAD + "clusterIPs:\n  default/a: 10.96.0.1\n  default/b: 10.96.0.256\n  default/c: 010.96.0.1\n",
     ["svcops.lock:5: clusterIPs.default/b: '10.96.0.256' is not an IPv4 address",
      "svcops.lock:6: clusterIPs.default/c: '010.96.0.1' is not an IPv4 address"]),
    (GOOD_HEAD + "nodePorts:\n  default/web:80/TCP: '30080'\n  default/web:81/TCP: 70000\n",
     ["svcops.lock:4: nodePorts.default/web:80/TCP: '30080' is not a port number",
      "svcops.lock:5: nodePorts.default/web:81/TCP: 70000 is not a port number"]),
    (GOOD_HEAD + "nodePorts:\n  default/web:80: 30080\n",
     ["svcops.lock:4: nodePorts.default/web:80: 'default/web:80' is not a node-port key "
      "(namespace/name:port/PROTOCOL, e.g. default/web:80/TCP)"]),
    (GOOD_HEAD + "loadBalancerIPs:\n  web: 192.0.2.1\n",
     ["svcops.lock:4: loadBalancerIPs.web: 'web' is not a service key (namespace/name, e.g. default/web)"]),
    (GOOD_HEAD + "clusterIPs:\n  default/web: 10.96.0.1\n  default/web: 10.96.0.2\n",
     ["svcops.lock:5: clusterIPs.default/web: duplicate key"]),
    (GOOD_HEAD + "nodeAddresses: [node1]\n",
     ["svcops.lock:3: nodeAddresses: must be a mapping of key: value ({} when empty)"]),
    (GOOD_HEAD + "clusterIps: {}\n",
     ["svcops.lock:3: clusterIps: unknown key (expected: version, clusterIPs, nodePorts, loadBalancerIPs, nodeAddresses)"]),
    ("version: 3\n", ["svcops.lock:1: version: unsupported lock version 3 (this svcops reads versions 1 and 2)"]),
    ("clusterIPs: {}\n", ["svcops.lock:1: version: missing (write version: 2)"]),
    (GOOD_HEAD + "clusterIPs:\n  default/web: [10.96.0.1\n",
     ["svcops.lock:5: not valid YAML: did not find expected ',' or ']'"]),
    ("- version: 1\n", ["svcops.lock:1: the lock must be a mapping (version, clusterIPs, ...)"]),
    ("# only a comment\n", ["svcops.lock:1: the lock file is empty: restore it from git, or delete it "
                            "to start afresh (every allocation will then be made anew)"]),
    (GOOD_HEAD + "<<<<<<< HEAD\nclusterIPs: {}\n", None),  # a git conflict marker: some YAML error
]


@pytest.mark.parametrize("text,expected", BAD)
def test_a_malformed_lock_is_an_error_with_its_line_never_an_empty_lock(text, expected):
    allocs, diags = parse_lock(text)
    assert allocs is None
    assert diags and all(d.is_error for d in diags)
    if expected is not None:
        assert [str(d) for d in diags] == expected
    else:
        assert all(re.match(r"svcops\.lock:\d+: ", str(d)) for d in diags)


def test_errors_name_the_file_given():
    _, diags = parse_lock("version: 1\nclusterIPs: {default/web: nope}\n", "site/svcops.lock")
    assert str(diags[0]) == "site/svcops.lock:2: clusterIPs.default/web: 'nope' is not an IPv4 address"


def test_the_schema_shipped_with_svcops_accepts_what_dump_writes():
    validator = lockfile._schema_validator()
    if validator is None:
        pytest.skip("schemas/lock.schema.json is not installed")
    data = yaml.safe_load(dump_lock(EXAMPLE))
    assert list(validator.iter_errors(data)) == []


# --- read and write -----------------------------------------------------------------


def test_a_missing_lock_is_an_empty_one(tmp_path):
    assert read_lock(tmp_path / "svcops.lock") == (Allocations(), [])


def test_read_lock_names_the_file_relative_to_the_site(tmp_path):
    path = tmp_path / "svcops.lock"
    path.write_text("version: 1\nnodePorts: {default/a:80/TCP: x}\n")
    allocs, diags = read_lock(path)
    assert allocs is None
    assert [str(d) for d in diags] == ["svcops.lock:2: nodePorts.default/a:80/TCP: 'x' is not a port number"]


def test_a_lock_that_is_not_utf8_is_an_error(tmp_path):
    path = tmp_path / "svcops.lock"
    path.write_bytes(b"version: 1\nclusterIPs:\n  default/a: \xff\n")
    allocs, diags = read_lock(path)
    assert allocs is None and [str(d) for d in diags] == ["svcops.lock:3: not UTF-8 text"]


def test_write_then_read_round_trips(tmp_path):
    path = tmp_path / "svcops.lock"
    assert write_lock(path, EXAMPLE) is True
    assert read_lock(path) == (EXAMPLE, [])
    assert path.read_text() == dump_lock(EXAMPLE)


def test_write_lock_does_nothing_when_unchanged(tmp_path):
    path = tmp_path / "svcops.lock"
    write_lock(path, EXAMPLE)
    before = os.stat(path)
    assert write_lock(path, EXAMPLE) is False
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_write_lock_replaces_atomically_through_a_temporary_file_in_the_same_folder(tmp_path, monkeypatch):
    path = tmp_path / "svcops.lock"
    write_lock(path, EXAMPLE)
    os.chmod(path, 0o640)
    replaced = []
    real_replace, real_fsync = os.replace, os.fsync
    synced = []

    def spy_replace(src, dst):
        # At the moment of the rename, the old lock is still whole and the new text is on disk.
        assert path.read_text() == dump_lock(EXAMPLE)
        replaced.append((os.path.dirname(src), os.fspath(dst), open(src).read()))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    changed = Allocations({"default/web": "10.96.0.41"})
    assert write_lock(path, changed) is True
    assert replaced == [(str(tmp_path), str(path), dump_lock(changed))]
    assert synced, "the new content was not fsynced before the rename"
    assert read_lock(path) == (changed, [])
    assert os.stat(path).st_mode & 0o777 == 0o640  # the lock keeps its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svcops.lock"]  # no temporary left


def test_a_failed_write_leaves_the_old_lock_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "svcops.lock"
    write_lock(path, EXAMPLE)

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(lockfile.LockWriteError) as e:
        write_lock(path, Allocations())
    assert str(e.value) == "svcops.lock: cannot write: no space left on the device (svcops.lock is unchanged)"
    assert read_lock(path) == (EXAMPLE, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svcops.lock"]


# --- a lock cut short ---------------------------------------------------------------

V1_LOCK = Path(__file__).with_name("v1.svcops.lock")  # the example's lock as svcops 0.1 wrote it


def test_the_writer_always_ends_with_the_closing_line_and_a_newline():
    for allocs in (EXAMPLE, Allocations()):
        assert dump_lock(allocs).endswith("\n" + lockfile.CLOSING_LINE + "\n")


@pytest.mark.parametrize("allocs", [EXAMPLE, Allocations()], ids=["example", "empty"])
def test_every_cut_of_a_lock_is_an_error_never_fewer_allocations(allocs):
    """Cut the file after any byte: at a line boundary (still valid YAML, entries lost)
    or inside a line, it is refused, with one error that says it was cut short."""
    text = dump_lock(allocs)
    for n in range(len(text)):
        parsed, diags = parse_lock(text[:n])
        assert parsed is None, f"a lock cut after {n} bytes was accepted: {text[:n]!r}"
        assert len(diags) == 1 and diags[0].is_error
        if text[:n].count("\n") > 4:  # past the header and version: the cut is recognised as one
            assert str(diags[0]).endswith("it was cut short (restore it from git)"), str(diags[0])


def test_a_cut_at_a_line_boundary_names_the_file_and_the_missing_closing_line():
    text = dump_lock(EXAMPLE)
    cut = "".join(text.splitlines(keepends=True)[:9])
    assert [str(d) for d in parse_lock(cut, "site/svcops.lock")[1]] == [
        "site/svcops.lock:9: ends without its closing line ('# end of svcops.lock'): it was cut short (restore it from git)"
    ]
    assert [str(d) for d in parse_lock(text[:-1])[1]] == [
        f"svcops.lock:{text.count(chr(10))}: ends in the middle of a line: it was cut short (restore it from git)"
    ]


def test_blank_lines_after_the_closing_line_are_harmless_anything_else_is_not():
    text = dump_lock(EXAMPLE)
    assert parse_lock(text + "\n\n") == (EXAMPLE, [])
    assert [str(d) for d in parse_lock(text + "  other/svc: 10.96.0.9\n")[1]] == [
        f"svcops.lock:{text.count(chr(10)) + 1}: comes after the closing line ('# end of svcops.lock'), which must be the last line"
    ]


def test_a_version_1_lock_still_loads():
    allocs, diags = read_lock(V1_LOCK)
    assert diags == []
    assert allocs.cluster_ips["default/my-deploy"] == "10.1.11.83"
    assert allocs.node_addresses == {"node1": "192.168.36.11", "node2": "192.168.36.12", "node3": "192.168.36.13"}


def test_a_version_1_lock_cut_before_its_last_section_is_an_error():
    """svcops always wrote all four sections: one missing from a lock with svcops's
    header means the file was cut (a cut inside the last section cannot be seen)."""
    lines = V1_LOCK.read_text().splitlines(keepends=True)
    cut = "".join(lines[:8])
    assert [str(d) for d in parse_lock(cut)[1]] == [
        "svcops.lock:8: ends without the sections nodePorts, loadBalancerIPs, nodeAddresses "
        "(svcops writes all four): it was cut short (restore it from git)"
    ]
    # Hand-written version 1 locks (no svcops header) may leave sections out.
    assert parse_lock("version: 1\nclusterIPs: {default/a: 10.96.0.1}\n")[1] == []


def test_a_version_1_lock_is_left_alone_until_its_allocations_change(tmp_path):
    path = tmp_path / "svcops.lock"
    path.write_bytes(V1_LOCK.read_bytes())
    allocs, _ = read_lock(path)
    before = os.stat(path)
    assert write_lock(path, allocs) is False  # same allocations: not rewritten (a read-only checkout plans)
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns and path.read_bytes() == V1_LOCK.read_bytes()
    more = Allocations({**allocs.cluster_ips, "default/new": "10.1.0.9"}, allocs.node_ports, allocs.load_balancer_ips, allocs.node_addresses)
    assert write_lock(path, more) is True  # the next change writes version 2
    text = path.read_text()
    assert "version: 2\n" in text and text.endswith("# end of svcops.lock\n")
    assert read_lock(path) == (more, [])



def test_a_version_2_lock_is_checked_for_its_closing_line_however_version_is_written():
    body = dump_lock(EXAMPLE).replace("version: 2\n", '"version": 2\n')
    assert parse_lock(body) == (EXAMPLE, [])
    cut = body.removesuffix(lockfile.CLOSING_LINE + "\n")
    assert str(parse_lock(cut)[1][0]).endswith("ends without its closing line ('# end of svcops.lock'): it was cut short (restore it from git)")


def test_a_version_1_lock_cut_inside_a_line_is_an_error():
    text = V1_LOCK.read_text()
    assert [str(d) for d in parse_lock(text[:-4])[1]] == [
        f"svcops.lock:{text.count(chr(10))}: ends in the middle of a line: it was cut short (restore it from git)"
    ]
