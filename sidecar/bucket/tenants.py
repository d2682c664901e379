"""Directory entries: many databases (one per tenant) in one directory, replicated by
Litestream's `dir:` + `pattern:` (+ `recursive:`, `watch:`) config.

Litestream replicates each database it finds under its own prefix beneath the entry's replica
path, `<prefix>/<path relative to the directory>/<level>/<ltx>` (cloneReplicaConfigWithRelative
Path in Litestream's cmd/litestream/main.go), and `litestream restore -config` does not know
the databases of a directory entry ("database not found in config"). So each database of an
entry is a plain `Database` here (`member`), restored through a config that names it, and one
listing of the entry's prefix tells which databases the bucket holds (`remote_members`). The
restore of a whole entry on start is recovery/directory_restore.py.
"""

from __future__ import annotations

import fnmatch
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sidecar import names
from sidecar.config import Database, DbDir, Replica

# <rel>/<level>/<min>-<max>.ltx (0.5) or <rel>/generations/<id>/<kind>/<file> (0.3)
_V5 = re.compile(r"^(.+)/[0-9a-f]{4}/[0-9a-f]{16}-([0-9a-f]{16})\.ltx$")
_V3 = re.compile(r"^(.+)/generations/[0-9a-f]{16}/(?:snapshots|wal)/[^/]+$")


def member(entry: DbDir, rel: str) -> Database:
    """The database at `rel` (relative to the entry's directory) with its own replica prefix."""
    rep = entry.replica
    if rep.s3 is not None:
        prefix = f"{rep.s3.prefix.rstrip('/')}/{rel}"
        s3 = replace(rep.s3, prefix=prefix)
        return Database(path=entry.dir / rel,
                        replica=Replica(url=f"s3://{s3.bucket}/{prefix}", s3=s3))
    assert rep.dir is not None
    return Database(path=entry.dir / rel,
                    replica=Replica(url=f"file://{rep.dir / rel}", dir=rep.dir / rel))


# Sidecar's own files beside the databases: a restore's temporary file (restore.TMP_MARK, with
# Litestream's `.tmp` after it), the lock beside a database (preflight.db_lock_path) and the
# lock in a directory of them (preflight.dir_lock_path).
_OWN_MARKS = (".sidecar-restore-", ".sidecar.lock")


def own_file(name: str) -> bool:
    return name.startswith(".") and any(m in name for m in _OWN_MARKS)


def fits(entry: DbDir, rel: str) -> bool:
    """Whether `rel` is where the entry looks for databases: in the directory itself, or any
    level below with recursion, its file name matching the pattern as Litestream matches it
    (Go's filepath.Match: `*.db` matches `.hidden.db` too, and Litestream backs it up),
    sidecar's own files excepted. Says nothing of the name itself (names.problem)."""
    if not rel or rel.startswith("/"):
        return False
    if "/" in rel and not entry.recursive:
        return False
    name = rel.rsplit("/", 1)[-1]
    return fnmatch.fnmatchcase(name, entry.pattern) and not own_file(name)


def matches(entry: DbDir, rel: str) -> bool:
    """Whether `rel` is a database of the entry: where it looks (fits), and a name the one
    rule accepts (names.problem)."""
    return fits(entry, rel) and names.problem(rel) is None


def local_scan(entry: DbDir) -> tuple[list[str], list[str]]:
    """The relative paths in the directory the entry takes (fits), split into the databases
    and the names the rule refuses."""
    out: list[str] = []
    bad: list[str] = []
    if not entry.dir.is_dir():
        return out, bad
    for root, dirs, files in os.walk(entry.dir):
        base = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if entry.recursive else []
        for f in sorted(files):
            rel = str((base / f).relative_to(entry.dir))
            if fits(entry, rel):
                (out if names.problem(rel) is None else bad).append(rel)
    return out, bad


def local_members(entry: DbDir) -> list[str]:
    """Relative paths of the files in the directory that match the entry (SQLite or not:
    a 0-byte ghost is a database to restore; sidecar's own files never match). A file whose
    name starts with a dot is a database like any other when the pattern matches it, as in
    Litestream (which backs it up: skipping it here made its backup "missing" at every
    start); hidden subdirectories (sidecar's state dir) are not searched; a name the rule
    refuses (names.py) is not one."""
    return local_scan(entry)[0]


@dataclass
class Listing:
    """What the bucket holds under an entry's prefix: `members` maps each database's relative
    path to its layout ("0.5" or "0.3"); `unknown` are keys of neither layout; `requests`
    is the number of S3 requests it took (one per 1,000 keys)."""

    members: dict[str, str] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # backups the pattern does not match
    positions: dict[str, int] = field(default_factory=dict)  # rel -> newest TXID (0.5 only)
    requests: int = 0
    # Backups where the entry looks whose name the rule refuses (names.py): rel -> (a key
    # of it, relative to the prefix; why). Never a member: never restored, never a path.
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)
    # rel -> bytes of its newest snapshot, when the listing gave sizes (what a restore of it
    # will write, about: the restore cap in restore_on_start).
    sizes: dict[str, int] = field(default_factory=dict)


def classify(entry: DbDir, keys: list[str], sizes: dict[str, int] | None = None) -> Listing:
    out = Listing()
    newest: dict[str, int] = {}  # rel -> the max TXID of the snapshot in out.sizes
    for key in keys:
        m = _V5.match(key) or _V3.match(key)
        if m is None:
            out.unknown.append(key)
            continue
        rel = m.group(1)
        if not fits(entry, rel):
            if rel not in out.ignored:
                out.ignored.append(rel)
            continue
        if (why := names.problem(rel)) is not None:
            out.bad.setdefault(rel, (key, f"the name {rel!r} {why}"))
            continue
        layout = "0.5" if m.re is _V5 else "0.3"
        if layout == "0.5":
            out.positions[rel] = max(out.positions.get(rel, 0), int(m.group(2), 16))
        if sizes is not None and key in sizes:
            if layout == "0.5" and key[len(rel):].startswith("/0009/"):
                txid = int(m.group(2), 16)
                if txid >= newest.get(rel, -1):
                    newest[rel], out.sizes[rel] = txid, sizes[key]
            elif layout == "0.3" and "/snapshots/" in key[len(rel):]:
                out.sizes[rel] = max(out.sizes.get(rel, 0), sizes[key])
        if out.members.get(rel) != "0.5":
            out.members[rel] = layout
    # A database inside another's path (`t1.db/0009/n.db`) would need `t1.db` as a
    # directory: the one that lies inside goes.
    found = set(out.members)
    for rel in sorted(found):
        if (outer := names.nested_in(rel, found)) is not None:
            del out.members[rel]
            out.positions.pop(rel, None)
            out.bad[rel] = (_some_key(keys, rel),
                            f"the name {rel!r} lies inside the path of the database {outer!r}")
    return out


def _some_key(keys: list[str], rel: str) -> str:
    return next((k for k in keys if k.startswith(rel + "/")), rel)


def _file_keys(root: Path, sub: str = "") -> list[str]:
    """The keys of a file replica (under `sub` of it), relative to its root."""
    top = root / sub if sub else root
    keys = [str(p.relative_to(root)).replace(os.sep, "/")
            for p in sorted(top.rglob("*")) if p.is_file()] if top.is_dir() else []
    # A file replica lays a database out as <rel>/ltx/<level, decimal>/<ltx>.
    return [re.sub(r"/ltx/(\d+)/", lambda m: f"/{int(m.group(1)):04x}/", k) for k in keys]


def _keys(store: Any, sub: str = "", start_after: str | None = None,
          max_pages: int | None = None, page: int = 1000,
          sizes: dict[str, int] | None = None) -> tuple[list[str], bool]:
    """Keys under the store's prefix + `sub` (relative to the store's prefix), from after
    `start_after` (relative too), at most `max_pages` requests; and whether the listing
    reached the end. Each key's size goes into `sizes` when given."""
    keys: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        kwargs: dict[str, Any] = {"Bucket": store.bucket, "Prefix": store.prefix + sub,
                                  "MaxKeys": page}
        if token:
            kwargs["ContinuationToken"] = token
        elif start_after:
            kwargs["StartAfter"] = store.prefix + start_after
        resp = store._call(store._client.list_objects_v2, **kwargs)
        pages += 1
        keys += [o["Key"][len(store.prefix):] for o in resp.get("Contents", [])]
        if sizes is not None:
            sizes.update((o["Key"][len(store.prefix):], int(o.get("Size") or 0))
                         for o in resp.get("Contents", []))
        token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
        if not token:
            return keys, True
        if max_pages is not None and pages >= max_pages:
            return keys, False


def remote_members(entry: DbDir, deadline_s: float, client: Any = None,
                   sleep: Callable[[float], None] = time.sleep, retry: bool = True,
                   page: int = 1000) -> Listing:
    """One paginated listing of the entry's prefix (`page` keys a request, S3's most).
    Connection failures are retried until `deadline_s`; denied and missing-bucket answers
    are final. Raises ReplicaUnreachable."""
    from sidecar.bucket import replica

    view = BucketView(entry, deadline_s, client=client, page=page)
    end = time.monotonic() + deadline_s
    delay = 0.5
    spent = 0  # requests of the attempts that failed
    while True:
        try:
            out = view.full()
            out.requests += spent
            return out
        except replica.ReplicaUnreachable as exc:
            spent += exc.requests
            if not retry or exc.kind != "unreachable" or time.monotonic() + delay > end:
                exc.requests = spent  # a failed lag check's requests count too
                raise
        sleep(delay)
        delay = min(delay * 2, 5.0)


@dataclass
class Page:
    """One page of a sweep through the entry's prefix: what it held, the last key it read
    (where the next page starts), and whether it was the sweep's last."""

    listing: Listing
    last_key: str | None
    done: bool


class BucketView:
    """The three listings a directory's lag checks make, each one attempt (a failure raises
    ReplicaUnreachable with the requests it made): the whole prefix, one page of it from a
    key on, and one database's own prefix. A file replica is read whole every time (it is
    local: no request to count)."""

    def __init__(self, entry: DbDir, timeout: float, client: Any = None, page: int = 1000):
        self.entry, self.timeout, self.client, self.page_keys = entry, timeout, client, page

    def _store(self) -> Any:
        """A store counting this listing's requests, over one client kept for every listing
        (a boto3 client is costly to make, and keeps its connections for the next one)."""
        from sidecar.bucket import replica

        store = replica.S3Store(self.entry.replica, timeout=self.timeout, client=self.client)
        self.client = store._client
        return store

    def _run(self, sub: str = "", start_after: str | None = None,
             max_pages: int | None = None) -> tuple[Listing, str | None, bool]:
        from sidecar.bucket import replica

        store = self._store()
        sizes: dict[str, int] = {}
        try:
            keys, done = _keys(store, sub, start_after, max_pages, self.page_keys, sizes)
        except replica.ReplicaUnreachable as exc:
            exc.requests = store.requests
            raise
        out = classify(self.entry, keys, sizes)
        out.requests = store.requests
        return out, (keys[-1] if keys else None), done

    def full(self) -> Listing:
        rep = self.entry.replica
        if rep.s3 is None:
            assert rep.dir is not None
            return classify(self.entry, _file_keys(rep.dir))
        return self._run()[0]

    def page(self, start_after: str | None) -> Page:
        if self.entry.replica.s3 is None:
            return Page(self.full(), None, True)
        listing, last, done = self._run(start_after=start_after, max_pages=1)
        return Page(listing, last, done)

    def member(self, rel: str) -> Listing:
        rep = self.entry.replica
        if rep.s3 is None:
            assert rep.dir is not None
            return classify(self.entry, _file_keys(rep.dir, rel))
        return self._run(sub=rel + "/")[0]
