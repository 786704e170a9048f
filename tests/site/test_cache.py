"""The parse cache (`svcops.site.cache`, `svcops.site.load`'s memo): a site loads to
the same services and the same messages whether its files were remembered or not;
nothing with an error is remembered; an edited file, another cluster setting or
another svcops is read afresh; nothing is trusted from a folder or file anyone else
could have written."""

from __future__ import annotations

import os
import pickle
import shutil
import time

import pytest
from paths import ROOT, TESTS

from svcops.site import cache
from svcops.site.cache import DiskMemo, cache_root, disk_memo
from svcops.site.load import load_site, parse_site
from svcops.site.lockfile import read_lock

BAD = TESTS / "bad"
SITES = [*sorted(p for p in BAD.iterdir() if (p / "expected.txt").is_file()), TESTS / "good" / "kubectl-export", ROOT / "examples" / "walkthrough"]

WEB = "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  type: NodePort\n  selector: {{app: web}}\n  ports: [{{port: {port}, nodePort: 30080}}]\n"


def _texts(diags) -> list[str]:
    return [str(d) for d in diags]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("SVCOPS_CACHE_DIR", str(d))
    monkeypatch.delenv("SVCOPS_NO_CACHE", raising=False)
    return d


def _site(tmp_path, config: str = "", **files: str):
    root = tmp_path / "site"
    (root / "services").mkdir(parents=True, exist_ok=True)
    (root / "svcops.yaml").write_text(config or "proxyMode: nftables\n")
    for name, text in files.items():
        (root / "services" / f"{name}.yaml").write_text(text)
    return root


@pytest.mark.parametrize("site", SITES, ids=lambda p: p.name)
def test_every_case_loads_the_same_from_the_cache(site, cache_dir):
    """Each bad case and good site: loaded without the cache, then twice with it (the
    second time from what the first remembered), the same site and the same lines,
    those that name another file's object included (found again in its file)."""
    plain = load_site(site, cache=False)
    first = load_site(site)
    again = load_site(site)
    assert _texts(first[1]) == _texts(again[1]) == _texts(plain[1])
    assert first[0] == again[0] == plain[0]


def test_site_wide_errors_name_remembered_objects_by_their_lines(tmp_path, cache_dir):
    """Each file is valid alone; together, b repeats a's service and c a's node port.
    Whichever files come from the cache, the messages are the ones without it."""
    api = WEB.format(port=81).replace("name: web", "name: api")
    root = _site(tmp_path, a=WEB.format(port=80), b="# again\n" + WEB.format(port=82), c=api)
    expected = [
        "services/b.yaml:4: metadata.name: service default/web is already defined at services/a.yaml:3",
        "services/c.yaml:7: spec.ports[0].nodePort: nodePort 30080/TCP is already used by service default/web (services/a.yaml:7)",
    ]
    assert _texts(load_site(root)[1]) == expected  # every file read, and remembered
    assert _texts(load_site(root)[1]) == expected  # every file from the cache
    (root / "services" / "a.yaml").write_text("\n" + WEB.format(port=80))  # a anew, b and c remembered
    shifted = [line.replace("a.yaml:3", "a.yaml:4").replace("a.yaml:7", "a.yaml:8") for line in expected]
    assert _texts(load_site(root)[1]) == shifted == _texts(load_site(root, cache=False)[1])


def test_objects_inside_a_list_are_found_again_at_their_item(tmp_path):
    """A kind List (as kubectl exports): a remembered item is named at its own lines."""
    items = "apiVersion: v1\nkind: List\nitems:\n" + "".join(
        f"- apiVersion: v1\n  kind: Service\n  metadata: {{name: {n}}}\n  spec: {{selector: {{app: x}}, ports: [{{port: 80}}]}}\n"
        for n in ("a", "b")
    )
    dup = "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {selector: {app: x}, ports: [{port: 80}]}\n"
    files = [("services/0.yaml", dup), ("services/1.yaml", items)]
    memo: dict = {}
    expected = ["services/1.yaml:10: items[1].metadata.name: service default/b is already defined at services/0.yaml:3"]
    assert _texts(parse_site("site", None, files, memo)[1]) == expected
    assert len(memo) == 2 and _texts(parse_site("site", None, files, memo)[1]) == expected


def test_only_files_without_errors_are_remembered(tmp_path):
    memo: dict = {}
    good, bad = WEB.format(port=80), WEB.format(port="eighty").replace("web", "other")
    _, diags = parse_site("site", None, [("services/a.yaml", good), ("services/b.yaml", bad)], memo)
    assert any(d.is_error and d.file == "services/b.yaml" for d in diags)
    assert [p.objects[0][1].name for p in memo.values()] == ["web"]
    # The bad file is checked again, and says the same again.
    assert _texts(parse_site("site", None, [("services/a.yaml", good), ("services/b.yaml", bad)], memo)[1]) == _texts(diags)


def test_a_remembered_file_keeps_its_warnings():
    memo: dict = {}
    long_port = WEB.format(port=80).replace("ports: [{", "ports: [{name: " + "p" * 63 + ", ")
    first = parse_site("site", None, [("services/a.yaml", long_port)], memo)[1]
    assert memo and [d.severity for d in first] == ["warning"]
    assert _texts(parse_site("site", None, [("services/a.yaml", long_port)], memo)[1]) == _texts(first)


def test_an_edited_file_or_another_setting_is_read_afresh(tmp_path, cache_dir):
    root = _site(tmp_path, a=WEB.format(port=80))
    site, _ = load_site(root)
    assert site.services[0].ports[0].port == 80
    (root / "services" / "a.yaml").write_text(WEB.format(port=8080))
    site, _ = load_site(root)
    assert site.services[0].ports[0].port == 8080
    # The node port is checked against the cluster's range: a new range checks it again.
    (root / "svcops.yaml").write_text("proxyMode: nftables\nnodePortRange: 31000-32000\n")
    site, diags = load_site(root)
    assert site is None and _texts(diags) == ["services/a.yaml:7: spec.ports[0].nodePort: 30080 is outside nodePortRange 31000-32000"]


def test_another_svcops_has_a_folder_of_its_own(tmp_path, cache_dir, monkeypatch):
    root = _site(tmp_path, a=WEB.format(port=80))
    load_site(root)
    monkeypatch.setattr(cache, "code_digest", lambda: "f" * 64)
    memo = disk_memo("manifests")
    load_site(root)
    assert memo.folder.name == "manifests-" + "f" * 16
    assert sorted(p.name.split("-")[0] for p in cache_dir.iterdir() if p.is_dir()) == ["manifests", "manifests"]


def test_the_site_folder_is_never_written(tmp_path, cache_dir):
    root = _site(tmp_path, a=WEB.format(port=80))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    load_site(root)
    load_site(root)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert any(cache_dir.rglob("*"))


def test_a_damaged_or_misplaced_entry_is_a_miss(tmp_path, cache_dir):
    memo = DiskMemo(tmp_path / "m")
    memo["a" * 64] = {"value": 1}
    memo["b" * 64] = {"value": 2}
    assert memo.get("a" * 64) == {"value": 1}
    # An entry copied under another key holds the wrong key: not taken.
    shutil.copy(memo._path("a" * 64), memo._path("b" * 64))
    assert memo.get("b" * 64) is None
    memo._path("a" * 64).write_bytes(b"cut sho")
    assert memo.get("a" * 64) is None
    memo._path("a" * 64).write_bytes(pickle.dumps(("another format", "a" * 64, 1)))
    assert memo.get("a" * 64) is None


def test_nothing_is_taken_that_someone_else_could_have_written(tmp_path, cache_dir):
    memo = DiskMemo(tmp_path / "m")
    memo["a" * 64] = 1
    path = memo._path("a" * 64)
    os.chmod(path, 0o664)  # group-writable
    assert memo.get("a" * 64) is None
    os.chmod(path, 0o600)
    assert memo.get("a" * 64) == 1
    link = memo._path("c" * 64)
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(path)
    assert memo.get("c" * 64) is None
    # The cache folder itself must be this user's alone, or there is no cache.
    cache_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(cache_dir, 0o777)
    assert disk_memo("manifests") is None
    os.chmod(cache_dir, 0o700)
    assert disk_memo("manifests") is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_cache_folder_of_another_user_is_not_used(cache_dir):
    cache_dir.mkdir(mode=0o700)
    os.chown(cache_dir, 65534, 65534)
    assert disk_memo("manifests") is None


def test_where_the_cache_lives(tmp_path):
    home = os.path.expanduser("~")
    assert cache_root({}) == cache_root({"XDG_CACHE_HOME": "relative/ignored"}) == type(tmp_path)(home) / ".cache" / "svcops"
    assert cache_root({"XDG_CACHE_HOME": "/var/cache/me"}) == type(tmp_path)("/var/cache/me/svcops")
    assert cache_root({"SVCOPS_CACHE_DIR": str(tmp_path), "XDG_CACHE_HOME": "/x"}) == tmp_path
    assert cache_root({"SVCOPS_CACHE_DIR": str(tmp_path), "SVCOPS_NO_CACHE": "1"}) is None
    assert disk_memo("manifests", {"SVCOPS_NO_CACHE": "1"}) is None


def test_a_read_only_cache_costs_the_speed_not_the_run(tmp_path, cache_dir):
    root = _site(tmp_path, a=WEB.format(port=80))
    assert disk_memo("manifests") is not None
    for d in [cache_dir, *cache_dir.rglob("*")]:
        if d.is_dir():
            os.chmod(d, 0o500)
    try:
        site, diags = load_site(root)
        assert site is not None and diags == []
    finally:
        for d in [cache_dir, *cache_dir.rglob("*")]:
            if d.is_dir():
                os.chmod(d, 0o700)


def test_the_lock_is_remembered_by_its_digest(tmp_path, cache_dir):
    lock = ROOT / "examples" / "walkthrough" / "svcops.lock"
    path = tmp_path / "svcops.lock"
    shutil.copy(lock, path)
    plain = read_lock(path, cache=False)
    assert read_lock(path) == read_lock(path) == plain and plain[0] is not None
    assert list(disk_memo("lock").folder.rglob("*"))
    # One character off: read afresh, and its error is the same as without the cache.
    path.write_text(path.read_text().replace("# end of svcops.lock", "# end of svcops.loc"))
    assert read_lock(path) == read_lock(path, cache=False) and read_lock(path)[0] is None


def test_old_entries_and_old_versions_go(tmp_path, cache_dir):
    memo = disk_memo("manifests")
    memo["a" * 64] = 1
    memo["b" * 64] = 2
    other = cache_dir / "manifests-0123456789abcdef"
    (other / "aa").mkdir(parents=True)
    old = time.time() - (cache.MAX_AGE_DAYS + 1) * 86400
    os.utime(memo._path("a" * 64), (old, old))
    os.utime(other, (old, old))
    (cache_dir / "pruned").unlink()
    disk_memo("manifests")
    assert memo.get("a" * 64) is None and memo.get("b" * 64) == 2
    assert not other.exists()
