"""The moments a database's backup can be restored to, read from the bucket.

`litestream restore -timestamp T` (Litestream 0.5, CalcRestorePlan in replica.go) starts from
the newest snapshot (level 9) created before T, then chains LTX files of any level created
before T, each time taking the one that reaches the highest TXID. "Created" is the
`litestream-timestamp` metadata of the S3 object (the timestamp in the LTX header, in ms),
or its LastModified when the metadata is missing; for a file replica, the file's mtime.

A compacted file carries the timestamp of the newest file it compacts (its last sync), and a
sync's LTX file the moment it read the WAL. So the planner's answer only changes at the
distinct creation times of the files in the bucket, and this module replays the planner
over them in order: each time the reachable TXID grows, that TXID is a restore point, and the
first millisecond after the file's creation time is the earliest `-timestamp` that restores
it. Every listed time restores exactly its TXID (tests/e2e/test_time_travel.py restores a
sample of them).

Granularity follows from which level gave each point: every sync for as long as level 0 files
are kept (`l0-retention`), every compaction of the finest level kept before that, and the
oldest snapshot is the oldest moment of all (Litestream drops older compactions).
"""

from __future__ import annotations

import heapq
import itertools
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecar.bucket import replica
from sidecar.config import Database
from sidecar.errors import OperatorError, ReplicaUnreachable

SNAPSHOT_LEVEL = 9
LEVELS = tuple(range(SNAPSHOT_LEVEL + 1))
METADATA_KEY = "litestream-timestamp"
# HEAD requests in flight at once (Litestream's own restore uses a similar pool).
HEAD_CONCURRENCY = 16


@dataclass(frozen=True)
class LtxFile:
    level: int
    min_txid: int
    max_txid: int
    created_ms: int  # what the planner compares T with, in ms since the epoch
    size: int


@dataclass(frozen=True)
class Point:
    txid: int
    time_ms: int  # the earliest -timestamp (ms) that restores exactly `txid`
    level: int  # the finest level with a file that ends at `txid` (0: a sync's own file)

    @property
    def time(self) -> str:
        return iso_ms(self.time_ms)


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


def _parse_rfc3339(text: str) -> int | None:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None or not 1970 < t.year < 9999:  # a time no backup has (and +1 ms fits)
        return None
    # Go writes up to nanoseconds; Python parses at most microseconds.
    return int(t.timestamp() * 1_000_000) // 1000


def read_files(db: Database, timeout: float = 10.0) -> list[LtxFile]:
    """Every LTX file of `db`'s replica with the creation time the planner uses.
    Raises ReplicaUnreachable; OperatorError for a backup this cannot read (Litestream 0.3)."""
    assert db.replica is not None
    store = replica.open_store(db.replica, timeout=timeout)
    objs = [o for level in LEVELS for o in store.list_level(level)]
    if not objs:
        contents = store.contents()
        if contents.layout == "0.3":
            raise OperatorError(
                f"cannot list the restore points of {db.name}: its backup is in Litestream "
                "0.3's layout (generations/), which has no LTX files to read",
                hint="restore with --timestamp; the new backup written from then on can be "
                     "listed")
        return []
    if isinstance(store, replica.S3Store):
        return _with_metadata(store, objs)
    # A file replica: Litestream's file client sets each file's mtime to its LTX timestamp,
    # and that mtime is what its planner compares.
    return [LtxFile(o.level, o.min_txid, o.max_txid, int(o.last_modified * 1000), o.size)
            for o in objs]


def _with_metadata(store: replica.S3Store, objs: list[replica.LtxObject]) -> list[LtxFile]:
    def head(obj: replica.LtxObject) -> LtxFile | None:
        try:
            resp = store.head(obj.key)
        except ReplicaUnreachable as exc:
            # A 404 right after the listing answered: Litestream deleted the file meanwhile
            # (level 0 retention, a compaction), so no restore can use it either.
            if exc.kind == "missing":
                return None
            raise
        meta = {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}
        ms = _parse_rfc3339(meta.get(METADATA_KEY, ""))
        if ms is None:  # what Litestream falls back to as well
            ms = int(obj.last_modified * 1000)
        return LtxFile(obj.level, obj.min_txid, obj.max_txid, ms, obj.size)

    with ThreadPoolExecutor(max_workers=HEAD_CONCURRENCY) as pool:
        return [f for f in pool.map(head, objs) if f is not None]


def points(files: list[LtxFile]) -> list[Point]:
    """The restore points, oldest first: replays Litestream's planner at each distinct
    creation time. The planner's TXID at a time T only grows with T (a later snapshot starts
    the chain at or past where the files reached), and between two creation times it does not
    change, so the first millisecond after each creation time covers every answer."""
    out: list[Point] = []
    by_time = sorted(files, key=lambda f: (f.created_ms, f.level, f.min_txid))
    reach = 0
    pending: list[tuple[int, int]] = []  # (min, max) of files not yet chained
    finest: dict[int, int] = {}  # max TXID -> the finest level of a file ending there
    i = 0
    while i < len(by_time):
        created = by_time[i].created_ms
        before = reach
        while i < len(by_time) and by_time[i].created_ms == created:
            f = by_time[i]
            i += 1
            finest[f.max_txid] = min(f.level, finest.get(f.max_txid, SNAPSHOT_LEVEL))
            if f.level == SNAPSHOT_LEVEL:
                reach = max(reach, f.max_txid)
            else:
                heapq.heappush(pending, (f.min_txid, f.max_txid))
        while pending and pending[0][0] <= reach + 1:
            reach = max(reach, heapq.heappop(pending)[1])
        if reach > before:
            out.append(Point(reach, created + 1, finest[reach]))
    return out


def _seconds_text(s: float) -> str:
    if s >= 3600 and s % 3600 < 60:
        return f"{s / 3600:g} h"
    if s >= 120:
        return f"{round(s / 60):g} min"
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


def stretches(pts: list[Point]) -> list[dict[str, Any]]:
    """Runs of consecutive points (oldest first) that come from the same level: the
    granularity of each part of the window."""
    out: list[dict[str, Any]] = []
    run: list[Point] = []
    for p in [*pts, None]:
        if run and (p is None or p.level != run[-1].level):
            steps = [b.time_ms - a.time_ms for a, b in itertools.pairwise(run)]
            every = statistics.median(steps) / 1000 if steps else None
            kind = ("snapshot" if run[0].level == SNAPSHOT_LEVEL
                    else "sync" if run[0].level == 0 else f"compaction of level {run[0].level}")
            out.append({"level": run[0].level, "kind": kind, "from": run[0].time,
                        "to": run[-1].time, "points": len(run), "every_seconds": every})
            run = []
        if p is not None:
            run.append(p)
    return out


def stretch_text(s: dict[str, Any]) -> str:
    every = s["every_seconds"]
    if s["points"] == 1:
        return f"one point ({s['kind']}) at {s['from']}"
    if s["level"] == 0:
        what = f"every sync (~{_seconds_text(every)})"
    else:
        what = f"every {_seconds_text(every)} ({s['kind']})"
    return f"{what} from {s['from']} to {s['to']}"


def listing(db: Database, files: list[LtxFile], limit: int | None = None) -> dict[str, Any]:
    """What `sidecar restore --list --json` prints for one database."""
    pts = points(files)
    newest_first = list(reversed(pts))
    if limit is not None:
        newest_first = newest_first[:limit]
    return {
        "db": str(db.path),
        "replica": db.replica.url if db.replica else None,
        "oldest": pts[0].time if pts else None,
        "newest": pts[-1].time if pts else None,
        "oldest_txid": f"{pts[0].txid:016x}" if pts else None,
        "newest_txid": f"{pts[-1].txid:016x}" if pts else None,
        "count": len(pts),
        "stretches": stretches(pts),
        "points": [{"txid": f"{p.txid:016x}", "time": p.time, "level": p.level}
                   for p in newest_first],
    }


def oldest(db: Database, timeout: float = 10.0) -> Point | None:
    """The oldest restorable point of `db` (None: no backup). Raises ReplicaUnreachable."""
    pts = points(read_files(db, timeout))
    return pts[0] if pts else None


__all__ = ["LtxFile", "Point", "ReplicaUnreachable", "iso_ms", "listing", "oldest", "points",
           "read_files", "stretch_text", "stretches"]
