"""What reading a site's files gave, kept between runs under each file's content digest.

    memo = disk_memo("manifests")                        # None when caching is off
    site, diags = parse_site(root, config, manifests, memo)

Why: `svcops apply` of a one-service change to a 10,000-service site composed and
checked all 20,000 documents again (1.5 s of the controller's 3 s) for an edit of one
file. With the memo, the files that did not change are taken as they were (0.2 s).

Where, as the XDG base directory spec has it (pip, mypy and ruff do the same):
``$SVCOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/svcops``, else ``~/.cache/svcops``.
Never inside the site folder: a git checkout, where it would have to be ignored, and
which CI may mount read-only. ``SVCOPS_NO_CACHE=1`` turns it off. Deleting the folder
at any time is safe: it is only ever a shortcut.

Trust:
- an entry is found by a key that digests everything its value depends on
  (`svcops.site.load.manifest_key`: the file's bytes and name, the cluster's
  settings), inside a folder named after svcops's own code (`code_digest`: the source
  of the site layer and the schemas, PyYAML's, netaddr's, jsonschema's and Python's
  versions): an edited file, another setting or another svcops reads afresh. The key
  is stored inside the entry again and compared: a file renamed or copied in its
  place is a miss;
- only results without errors are stored (the callers decide), so every error is
  found and worded by the code that runs;
- the values are pickles, and unpickling runs code: entries are read only from a
  folder owned by this user that nobody else may write, and only files owned by this
  user that nobody else may write (as ssh treats its keys); anything else, an entry
  that does not load or holds another key, is a miss;
- writing is best effort: a read-only home or a full disk costs the speed, never the
  run. Each entry is written to a temporary file and renamed, so two runs at once
  never see half of one.

Old entries go: at most once a day, entries not used for `MAX_AGE_DAYS` and the
folders of other svcops versions not written to for as long are removed.
"""

from __future__ import annotations

import copyreg
import dataclasses
import hashlib
import io
import os
import pickle
import shutil
import stat
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["cache_root", "code_digest", "disk_memo", "DiskMemo", "MAX_AGE_DAYS"]

FORMAT = 2  # the layout of an entry: (FORMAT, key, value), values by constructor
MAX_AGE_DAYS = 30
_DAY = 86400.0


def cache_root(env: Mapping[str, str] | None = None) -> Path | None:
    """svcops's cache folder, or None when caching is off (see the module's docstring)."""
    env = os.environ if env is None else env
    if env.get("SVCOPS_NO_CACHE", "") not in ("", "0"):
        return None
    own = env.get("SVCOPS_CACHE_DIR")
    if own:
        return Path(own)
    xdg = env.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the spec: a relative value is invalid and ignored
        return Path(xdg) / "svcops"
    home = os.path.expanduser("~")
    return Path(home) / ".cache" / "svcops" if os.path.isabs(home) else None


@lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of the code whose results the cache keeps: the site layer's and the
    schemas' files, and the versions of what they call (once per process: 1 ms)."""
    from importlib import metadata

    import svcops.schemas
    import svcops.site

    h = hashlib.sha256(f"{FORMAT} {sys.version}".encode())
    for name in ("PyYAML", "netaddr", "jsonschema"):
        try:
            h.update(f" {name} {metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f" {name} -".encode())
    for folder in (Path(svcops.site.__file__).parent, Path(svcops.schemas.__file__).parent):
        for f in sorted(folder.iterdir()):
            if f.suffix in (".py", ".json") and f.is_file():
                h.update(f"\0{folder.name}/{f.name}\0".encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def _proxy(d: dict) -> MappingProxyType:
    return MappingProxyType(d)


class _Pickler(pickle.Pickler):
    """The model's values as their constructor calls: a frozen dataclass pickles by
    default through its ``__setstate__``, which looks its fields up for every object
    (a 10,000-service site loaded in 0.37 s that way, 0.15 s this way); its read-only
    mappings (labels, selectors) as the dicts they wrap."""

    dispatch_table = copyreg.dispatch_table.copy()
    dispatch_table[MappingProxyType] = lambda m: (_proxy, (dict(m),))

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        names = _init_fields(cls)
        if names is None:
            return NotImplemented
        return cls, tuple(getattr(obj, n) for n in names)


@lru_cache(maxsize=None)
def _init_fields(cls: type) -> tuple[str, ...] | None:
    """The fields a dataclass's constructor takes, in order, when they are all of its
    fields (else None: pickled the default way)."""
    if not dataclasses.is_dataclass(cls):
        return None
    fs = dataclasses.fields(cls)
    return tuple(f.name for f in fs) if all(f.init for f in fs) else None


def _dumps(value: Any) -> bytes:
    f = io.BytesIO()
    _Pickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return f.getvalue()


def _private(st: os.stat_result) -> bool:
    """Owned by this user, and nobody else may write it."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


class DiskMemo:
    """A memo (`get`, ``memo[key] = value``) kept in one folder of the cache: one file
    an entry, ``KEY[:2]/KEY[2:]``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hits = self.misses = self.stored = 0

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / key[2:]

    def get(self, key: str) -> Any | None:
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            self.misses += 1
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not _private(st):
                self.misses += 1
                return None
            with os.fdopen(fd, "rb", closefd=False) as f:
                entry = pickle.load(f)
        except Exception:  # cut short, another format, a class since renamed: a miss
            self.misses += 1
            return None
        finally:
            os.close(fd)
        if not (isinstance(entry, tuple) and len(entry) == 3 and entry[0] == FORMAT and entry[1] == key):
            self.misses += 1
            return None
        if time.time() - st.st_mtime > _DAY:
            try:  # in use: kept from the pruning
                os.utime(path)
            except OSError:
                pass
        self.hits += 1
        return entry[2]

    def __setitem__(self, key: str, value: Any) -> None:
        path = self._path(key)
        try:
            data = _dumps((FORMAT, key, value))
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".new-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
            self.stored += 1
        except Exception:
            pass  # best effort: the run goes on without it


def disk_memo(kind: str, env: Mapping[str, str] | None = None) -> DiskMemo | None:
    """The memo of `kind` ("manifests", "lock") for this svcops, or None when caching
    is off or the cache folder is not private to this user."""
    root = cache_root(env)
    if root is None:
        return None
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(os.lstat(root)) or not root.is_dir():
            return None
        folder = root / f"{kind}-{code_digest()[:16]}"
        folder.mkdir(mode=0o700, exist_ok=True)
        if not _private(os.lstat(folder)):
            return None
    except OSError:
        return None
    _prune(root)
    return DiskMemo(folder)


def _prune(root: Path, now: float | None = None) -> None:
    """At most once a day: entries unused for MAX_AGE_DAYS go, and the folders of
    other svcops versions that long untouched."""
    now = time.time() if now is None else now
    mark = root / "pruned"
    try:
        if now - mark.stat().st_mtime < _DAY:
            return
    except OSError:
        pass
    try:
        mark.touch()
    except OSError:
        return
    limit = now - MAX_AGE_DAYS * _DAY
    current = code_digest()[:16]
    for folder in root.iterdir():
        try:
            if not folder.is_dir() or folder.is_symlink():
                continue
            if not folder.name.endswith(current):
                if folder.stat().st_mtime < limit:
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            for sub in folder.iterdir():
                for entry in sub.iterdir():
                    if entry.stat().st_mtime < limit:
                        entry.unlink()
        except OSError:
            continue
