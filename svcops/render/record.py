"""What svcops last applied on a node, kept on the node in buckets: its `RecordIndex`.

An apply at 10,000 services must not read the whole live state back (``nft list table``
takes about a minute there, ``iptables-save`` 6-16 s) nor send the whole boot file
again for a one-service change. So each mode keeps, on the node, the *record* of what
svcops applied last: the boot file itself, cut into up to 256 bucket files by a hash of
each unit's name (a unit: one service port's objects; ``bucket_of``), plus one small
index naming every bucket with the digest of its content (from its units' own
digests: `bucket_digests`, so that no text is built to compare) and of its file::

    /etc/svcops/nft.d/index      svcops-record 1 nftables FINGERPRINT EXTRA
                                 3f 8c1e... 77d0...   (bucket, content digest, file digest)
    /etc/svcops/nft.d/3f         the units hashed into bucket 3f, as boot text

The fingerprint sums the index up; the mode also writes it into the kernel state as
its *canary* (an element of a set of svcops's table, a rule of a svcops chain), which
the node's boot script puts back from the record, and which anything that flushes,
deletes or re-makes svcops's objects removes. An apply reads the canary and the index
(a few kilobytes, milliseconds): when they agree, the record is what the node holds,
and only the buckets whose digest differs from the render's are read and compared
(`changed_buckets`): a one-service change reads one bucket and sends one. When they
disagree, or on ``--verify``, the whole live state is read, as before.

A bucket file's digest (computed on the node) is checked against its index line when
it is read (`verify_bucket`): a file edited or truncated by hand reads as "no record".

Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import sha256
from typing import Iterable, Mapping

__all__ = [
    "BUCKETS",
    "RECORD_VERSION",
    "RecordIndex",
    "bucket_digests",
    "make_index",
    "bucket_of",
    "fingerprint",
    "index_text",
    "parse_index",
    "changed_buckets",
    "verify_bucket",
    "digest_text",
    "canary_fingerprint",
]

BUCKETS = 256
RECORD_VERSION = "1"
_HEAD = "svcops-record"


_BUCKET_OF: dict[str, str] = {}  # unit name -> its bucket: every node and pass asks again


def bucket_of(key: str) -> str:
    """The bucket ("00".."ff") a unit named `key` goes into.

    Remembered: an apply at 10,000 services asks it about 45,000 times per node (the
    index, the changed buckets, their texts), nearly always for names asked before."""
    b = _BUCKET_OF.get(key)
    if b is None:
        b = f"{sha256(key.encode()).digest()[0]:02x}"
        if len(_BUCKET_OF) > 400_000:
            _BUCKET_OF.clear()
        _BUCKET_OF[key] = b
    return b


def digest_text(text: str) -> str:
    return sha256(text.encode()).hexdigest()[:32]


def bucket_digests(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """bucket -> the digest of its content, from its units' (key, digest) pairs: what
    an apply compares, without rendering any text (the text of a bucket is a function
    of its units' digests, for one `RECORD_VERSION`)."""
    lines: dict[str, list[str]] = {}
    for key, digest in items:
        lines.setdefault(bucket_of(key), []).append(f"{key} {digest}\n")
    return {b: digest_text("".join(sorted(v))) for b, v in lines.items()}


@dataclass(frozen=True, slots=True)
class RecordIndex:
    """A record's index: mode, fingerprint, extra digest, bucket -> content digest
    (`bucket_digests`), bucket -> digest of its file's text (to check a file read back)."""

    mode: str
    fingerprint: str
    extra: str
    digests: Mapping[str, str]
    files: Mapping[str, str] = field(default_factory=dict)


def make_index(mode: str, extra: str, digests: Mapping[str, str], files: Mapping[str, str]) -> RecordIndex:
    return RecordIndex(mode, fingerprint(mode, extra, digests), extra, dict(digests), dict(files))


def fingerprint(mode: str, extra: str, digests: Mapping[str, str]) -> str:
    h = sha256(f"{_HEAD} {RECORD_VERSION} {mode} {extra}\n".encode())
    for b in sorted(digests):
        h.update(f"{b} {digests[b]}\n".encode())
    return h.hexdigest()[:32]


def index_text(index: RecordIndex) -> str:
    lines = [f"{_HEAD} {RECORD_VERSION} {index.mode} {index.fingerprint} {index.extra}\n"]
    lines.extend(f"{b} {index.digests[b]} {index.files.get(b, '-')}\n" for b in sorted(index.digests))
    return "".join(lines)


def parse_index(lines: Iterable[str], mode: str) -> RecordIndex | None:
    """The index from its file's lines; None when it is missing, of another mode or
    version, or not consistent with its own fingerprint (edited, truncated)."""
    it = iter(lines)
    head = next(it, "").split()
    if len(head) not in (4, 5) or head[0] != _HEAD or head[1] != RECORD_VERSION or head[2] != mode:
        return None
    extra = head[4] if len(head) == 5 else ""
    digests: dict[str, str] = {}
    files: dict[str, str] = {}
    for line in it:
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or len(parts[0]) != 2 or parts[0] in digests:
            return None
        digests[parts[0]] = parts[1]
        files[parts[0]] = parts[2]
    if fingerprint(mode, extra, digests) != head[3]:
        return None
    return RecordIndex(mode, head[3], extra, digests, files)


def changed_buckets(have: RecordIndex, want: RecordIndex) -> list[str]:
    """The buckets whose text differs between two indexes (added, removed or changed)."""
    names = set(have.digests) | set(want.digests)
    return sorted(b for b in names if have.digests.get(b) != want.digests.get(b))


def verify_bucket(index: RecordIndex, bucket: str, file_digest: str) -> bool:
    """Whether a bucket file read from the node (`file_digest`: the sha256 of its text
    as the node computed it, "" when there is no such file) is the one the index names."""
    return file_digest == index.files.get(bucket, "")


def canary_fingerprint(lines: Iterable[str], prefix: str) -> str | None:
    """The fingerprint a canary's listing carries after `prefix` (in a comment, up to
    the closing quote); None when there is none, or more than one."""
    found = []
    for line in lines:
        i = line.find(prefix)
        if i >= 0:
            found.append(line[i + len(prefix) :].split('"', 1)[0].strip())
    return found[0] if len(found) == 1 and found[0] else None
