"""What is really in the replica: one seam for S3 (bucket.client) and local-directory replicas.

Litestream 0.5 lays an S3 replica out as `<prefix>/<level, 4 hex digits>/<minTXID>-<maxTXID>.ltx`
and a file replica as `<dir>/ltx/<level, decimal>/<minTXID>-<maxTXID>.ltx` (TXIDs 16 hex
digits), so keys sort by TXID and "what is new since key K" is one listing that starts after K.
Litestream 0.3 (what most existing setups wrote) used `<root>/generations/<id>/snapshots|wal/...`
for both kinds; 0.5 restores that layout too, so it counts as a backup. Keys handed out here are
relative to the replica root. Every call is bounded in time and in requests.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sidecar.config import Replica
from sidecar.errors import ReplicaUnreachable

LTX_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")


@dataclass(frozen=True)
class LtxObject:
    key: str
    level: int
    min_txid: int
    max_txid: int
    size: int
    last_modified: float  # unix seconds


S3_KEY = re.compile(r"^([0-9a-f]{4})/([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")
# Litestream 0.3: generations/<16 hex>/snapshots/<index>.snapshot.lz4 and wal/<index>_<offset>.wal.lz4
V3_KEY = re.compile(r"^generations/[0-9a-f]{16}/(?:snapshots|wal)/[^/]+$")
LAYOUT_NAMES = {"0.5": "Litestream 0.5", "0.3": "Litestream 0.3 (generations/)"}


@dataclass(frozen=True)
class Contents:
    """What a replica root holds: `layout` is 0.5, 0.3, empty (no object at all) or unknown
    (objects that are neither layout; `keys` names a few of them)."""

    layout: str
    keys: tuple[str, ...] = ()

    @property
    def has_backups(self) -> bool:
        return self.layout in LAYOUT_NAMES


def _parse_key(key: str, level: int, size: int, mtime: float) -> LtxObject | None:
    m = LTX_NAME.match(key.rsplit("/", 1)[-1])
    if not m:
        return None
    return LtxObject(key=key, level=level, min_txid=int(m.group(1), 16),
                     max_txid=int(m.group(2), 16), size=size, last_modified=mtime)


class Store:
    """A replica to read from. `requests` counts the remote calls made (for bounds and metrics)."""

    requests = 0

    def list_ltx(self, level: int, start_after: str | None = None,
                 max_keys: int = 1000) -> list[LtxObject]:
        raise NotImplementedError

    def list_level(self, level: int) -> list[LtxObject]:
        """Every LTX file of a level, however many pages that takes."""
        return self.list_ltx(level, max_keys=2**62)

    def contents(self) -> Contents:
        raise NotImplementedError

    def has_backups(self) -> bool:
        return self.contents().has_backups


class DirStore(Store):
    def __init__(self, root: Path):
        self.root = root

    def list_ltx(self, level: int, start_after: str | None = None,
                 max_keys: int = 1000) -> list[LtxObject]:
        self.requests += 1
        d = self.root / "ltx" / str(level)
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ReplicaUnreachable("unreachable", f"cannot read {d}: {exc.strerror}") from None
        out = []
        for name in names:
            key = f"ltx/{level}/{name}"
            if start_after is not None and key <= start_after:
                continue
            try:
                st = (d / name).stat()
            except FileNotFoundError:  # compacted away while we listed
                continue
            obj = _parse_key(key, level, st.st_size, st.st_mtime)
            if obj:
                out.append(obj)
            if len(out) >= max_keys:
                break
        return out

    def contents(self) -> Contents:
        self.requests += 1
        try:
            if not self.root.exists():
                return Contents("empty")
            if not self.root.is_dir():
                return Contents("unknown", (self.root.name,))
            ltx = self.root / "ltx"
            for level in (_levels_in(ltx) if ltx.is_dir() else []):
                if self.list_ltx(level, max_keys=1):
                    return Contents("0.5")
            gens = self.root / "generations"
            if gens.is_dir():
                for key in _files_under(self.root, gens, 100):
                    if V3_KEY.match(key):
                        return Contents("0.3")
            found = _files_under(self.root, self.root, 5)
        except PermissionError as exc:
            raise ReplicaUnreachable("denied", f"cannot read {exc.filename or self.root}: "
                                     "permission denied") from None
        except OSError as exc:
            raise ReplicaUnreachable("unreachable", f"cannot read {self.root}: "
                                     f"{exc.strerror}") from None
        # Empty directories are not data (Litestream creates some before the first upload).
        return Contents("unknown", tuple(found)) if found else Contents("empty")


def _files_under(root: Path, top: Path, limit: int) -> list[str]:
    """Up to `limit` file paths below `top`, relative to `root`, in sorted order."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(top, onerror=_raise):
        dirnames.sort()
        for name in sorted(filenames):
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
            if len(out) >= limit:
                return out
    return out


def _raise(exc: OSError) -> None:
    raise exc


def _levels_in(ltx: Path) -> list[int]:
    return sorted(int(p.name) for p in ltx.iterdir() if p.name.isdigit())


class S3Store(Store):
    """A replica in a bucket, read through bucket.client.Client (boto3 with a deadline on
    each call, a cap on each answer, and the meaning of every error)."""

    def __init__(self, replica: Replica, timeout: float = 5.0, client: Any = None):
        from sidecar.bucket.client import Client

        assert replica.s3 is not None
        self.s3 = replica.s3
        self.bucket = replica.s3.bucket
        self.prefix = replica.s3.prefix.strip("/") + "/"
        self.label = replica.endpoint_label
        self._client = client or Client(replica, timeout)

    def _call(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """One request, counted. The client raises ReplicaUnreachable for every failure."""
        self.requests += 1
        return fn(**kwargs)

    def head(self, key: str) -> dict[str, Any]:
        """One object's headers and metadata (`key` relative to the prefix); kind "missing"
        when it was deleted since it was listed."""
        return self._call(self._client.head_object, Bucket=self.bucket, Key=self.prefix + key)

    def list_level(self, level: int) -> list[LtxObject]:
        """Every LTX file of a level: pages follow the server's IsTruncated and continuation
        token, never the count of parsed names (a stray key in a full page would end the
        listing early, and a plan made from it restores an older state without a word)."""
        prefix = f"{self.prefix}{level:04x}/"
        out: list[LtxObject] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._call(self._client.list_objects_v2, **kwargs)
            out += self._parse(resp, level)
            token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
            if not token:
                return out

    def _parse(self, resp: dict[str, Any], level: int) -> list[LtxObject]:
        out = []
        for item in resp.get("Contents", []):
            key = item["Key"][len(self.prefix):]
            lm = item.get("LastModified")
            mtime = lm.timestamp() if isinstance(lm, datetime) else time.time()
            obj = _parse_key(key, level, int(item.get("Size", 0)), mtime)
            if obj:
                out.append(obj)
        return out

    def list_ltx(self, level: int, start_after: str | None = None,
                 max_keys: int = 1000) -> list[LtxObject]:
        prefix = f"{self.prefix}{level:04x}/"
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": max_keys}
        if start_after:
            kwargs["StartAfter"] = self.prefix + start_after
        resp = self._call(self._client.list_objects_v2, **kwargs)
        return self._parse(resp, level)

    def contents(self) -> Contents:
        # One listing of the top level ("directories" and loose objects), then one short
        # listing inside each candidate: bounded whatever the prefix holds. The prefix ends
        # in "/", so `a/b` never sees the objects of `a/bc`.
        top = self._call(self._client.list_objects_v2, Bucket=self.bucket, Prefix=self.prefix,
                         Delimiter="/", MaxKeys=1000)
        dirs = [p["Prefix"][len(self.prefix):] for p in top.get("CommonPrefixes", [])]
        loose = [o["Key"][len(self.prefix):] for o in top.get("Contents", [])]
        if not dirs and not loose:
            return Contents("empty")
        for d in [d for d in dirs if re.fullmatch(r"[0-9a-f]{4}/", d)][:16]:
            if self._any_key(d, S3_KEY, 20):
                return Contents("0.5")
        if "generations/" in dirs and self._any_key("generations/", V3_KEY, 100):
            return Contents("0.3")
        return Contents("unknown", tuple(self._keys("", 5)))

    def _any_key(self, under: str, pattern: re.Pattern[str], max_keys: int) -> bool:
        """Whether one of the first `max_keys` keys under `under` matches. The first key
        answers in the usual case, so ask for one first: some servers (rclone serve s3)
        read every listed object to compute its ETag, and these are the backup's largest
        files. Only when that key is something else are the next ones read."""
        first = self._keys(under, 1)
        if any(pattern.match(k) for k in first):
            return True
        return bool(first) and any(pattern.match(k) for k in self._keys(under, max_keys))

    def _keys(self, under: str, max_keys: int) -> list[str]:
        resp = self._call(self._client.list_objects_v2, Bucket=self.bucket,
                          Prefix=self.prefix + under, MaxKeys=max_keys)
        return [item["Key"][len(self.prefix):] for item in resp.get("Contents", [])]


def open_store(replica: Replica, timeout: float = 5.0) -> Store:
    if replica.s3 is not None:
        return S3Store(replica, timeout)
    assert replica.dir is not None
    return DirStore(replica.dir)


def probe(replica: Replica, deadline_s: float, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> Contents:
    """What the replica holds: a backup in either layout, nothing at all, or unknown objects.

    Connection failures are retried until `deadline_s`; denied and missing-bucket answers are
    final at once. Raises ReplicaUnreachable.
    """
    end = clock() + deadline_s
    delay = 0.5
    # Connecting is bounded at 5 s (bucket.client.timeouts) so a down server is retried; an
    # answer may take the whole budget: a slow listing is not an unreachable bucket. Only an
    # unreachable bucket is retried: denied, missing and an untrusted certificate are final.
    store = open_store(replica, deadline_s)
    while True:
        try:
            return store.contents()
        except ReplicaUnreachable as exc:
            if exc.kind != "unreachable" or clock() + delay > end:
                raise
        sleep(delay)
        delay = min(delay * 2, 5.0)


def latest_position(store: Store) -> LtxObject | None:
    """The newest LTX object across all levels (highest max TXID, newest time on ties)."""
    best: LtxObject | None = None
    for level in (0, 1, 2, 3, 9):
        objs = store.list_ltx(level)
        for obj in objs:
            if best is None or (obj.max_txid, obj.last_modified) > (best.max_txid,
                                                                      best.last_modified):
                best = obj
    return best


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
