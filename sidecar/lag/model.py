"""Replication lag measured against what is really in the bucket: its definition.

Litestream cannot say that backups stopped: during an S3 outage its error counters stay at 0
for minutes, and `litestream_txid` is only the local position. So sidecar measures lag itself:

- **The bucket's position** (ReplicaTracker): Litestream writes one level-0 object per sync
  and keys sort by TXID, so after a one-time seek for the newest object each check is one
  `list_objects_v2(StartAfter=<last key seen>)` call: the cost does not grow with history.
- **The local position** comes from Litestream's control socket (`/txid`).
- **When local changes happened** (ChangeLog): the watcher (watcher.py) reports writes to the
  DB and its `-wal`; each time the local TXID advances, the first unassigned write time is
  recorded against it.

lag = 0 when the bucket holds the local latest TXID, else now minus the time of the oldest
local change whose TXID the bucket does not hold yet. A failed check keeps the last known
bucket position, so the lag keeps growing during an outage, and the bucket counts as
unreachable from that first failure on. An idle database with nothing to upload has lag 0.

The rest of the room: db_lag.py checks one database, dir_lag.py a directory entry's
databases, watcher.py times the changes, heartbeat.py calls the monitor's URL, monitor.py
holds them together for `sidecar run`.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sidecar import metrics
from sidecar.bucket.replica import DirStore, LtxObject, Store, utc

PAGE = 1000  # keys per listing request (the S3 maximum)
MAX_PAGES = 3  # per level and check; more new keys than that are read on the next check
LEVELS = (0, 1, 2, 3, 9)  # Litestream 0.5: uploads land in 0, compactions in 1-3, snapshots 9
POLL_MIN = 0.25  # a file change asks Litestream for its TXID at most this often
GRACE = 3.0  # a file change older than this that made no new TXID was not a data change
EVENT_RESOLUTION = 0.05  # file changes closer together than this are one change
MAX_EVENTS = 4096


# ------------------------------------------------------------------ when changes happened


class ChangeLog:
    """Times of local changes, tied to the Litestream TXIDs that hold them. Thread-safe.

    `changed(t)` records a write to the DB files; `observe(txid, t)` records the local TXID
    seen at `t`. Litestream turns writes into a TXID on its own schedule (about once a
    second), so writes before the previous observation belong to a TXID that appeared since;
    later writes may belong to the next one and are kept for it as well (an overestimate of
    at most one observation gap, never an underestimate).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: deque[float] = deque()
        self._segments: deque[tuple[int, float]] = deque()  # (txid, first change time)
        self.txid: int | None = None
        self._last_obs: float | None = None

    def changed(self, t: float) -> None:
        with self._lock:
            ev = self._events
            if len(ev) >= MAX_EVENTS:
                return
            if not ev or t - ev[-1] >= EVENT_RESOLUTION:
                ev.append(t)
            elif t < ev[-1]:
                # Earlier than the last one (the watcher's look times a write at the look
                # before it, which an event may have passed): kept in order, as the earlier.
                i = bisect.bisect_left(ev, t)
                if i == 0 or t - ev[i - 1] >= EVENT_RESOLUTION:
                    ev.insert(i, t)

    def observe(self, txid: int, t: float) -> bool:
        """Record the local TXID; returns False when it went backwards (the DB was replaced)."""
        with self._lock:
            ev = self._events
            prev_obs, self._last_obs = self._last_obs, t
            if self.txid is None or txid < self.txid:
                replaced = self.txid is not None
                # Changes up to here happened before we could time them: count them from now
                # (or from the first write we saw), which errs toward a smaller lag only for
                # what predates the sidecar.
                self._segments.clear()
                self._segments.append((txid, min(ev[0], t) if ev else t))
                ev.clear()
                self.txid = txid
                return not replaced
            if txid > self.txid:
                first = min(ev[0], t) if ev else t
                cutoff = prev_obs if prev_obs is not None else t
                while ev and ev[0] <= cutoff:
                    ev.popleft()
                self._segments.append((txid, first))
                self.txid = txid
            else:
                while ev and ev[0] <= t - GRACE:  # wrote nothing Litestream counted
                    ev.popleft()
            return True

    def unmatched(self) -> bool:
        """Whether writes were seen that no observed TXID holds yet (Litestream turns them
        into one on its next sync): Litestream must be asked again."""
        with self._lock:
            return bool(self._events)

    def oldest_pending(self, replica_txid: int | None, now: float,
                       litestream_answered: bool = True) -> float | None:
        """Time of the oldest change the bucket does not hold, or None when there is none.

        While Litestream does not answer, writes it has not turned into a TXID for longer
        than GRACE count as pending too (when it answers, observe() has sorted them out).
        """
        with self._lock:
            segs = self._segments
            if replica_txid is not None:
                while segs and segs[0][0] <= replica_txid:
                    segs.popleft()
            times = [segs[0][1]] if segs else []
            if not litestream_answered and self._events and self._events[0] <= now - GRACE:
                times.append(self._events[0])
            return min(times) if times else None


# ------------------------------------------------------------------ what the bucket holds


def _level_dir(store: Store, level: int) -> str:
    """The key prefix of a level, relative to the replica root (see replica.py)."""
    if isinstance(store, DirStore):
        return f"ltx/{level}/"
    return f"{level:04x}/"


class ReplicaTracker:
    """The newest object in the bucket, found with a bounded number of listing requests."""

    def __init__(self, store: Store):
        self.store = store
        self.last_key: dict[int, str | None] = {}
        self.newest: LtxObject | None = None  # highest TXID seen
        self.last_upload: float | None = None  # newest LastModified seen
        self.bootstrapped = False

    @property
    def txid(self) -> int | None:
        if not self.bootstrapped:
            return None
        return self.newest.max_txid if self.newest else 0

    def reset(self) -> None:
        self.last_key.clear()
        self.newest = None
        self.last_upload = None
        self.bootstrapped = False

    def _see(self, objs: Iterable[LtxObject]) -> None:
        for obj in objs:
            if self.newest is None or obj.max_txid > self.newest.max_txid:
                self.newest = obj
            if self.last_upload is None or obj.last_modified > self.last_upload:
                self.last_upload = obj.last_modified

    def _first_from(self, level: int, txid: int) -> LtxObject | None:
        """The first object of `level` whose min TXID is >= txid (one request)."""
        start = f"{_level_dir(self.store, level)}{txid:016x}" if txid > 0 else None
        objs = self.store.list_ltx(level, start_after=start, max_keys=1)
        return objs[0] if objs else None

    def _page_from(self, level: int, start_after: str | None) -> list[LtxObject]:
        """Objects after `start_after`, at most MAX_PAGES requests."""
        out: list[LtxObject] = []
        for _ in range(MAX_PAGES):
            objs = self.store.list_ltx(level, start_after=start_after, max_keys=PAGE)
            out.extend(objs)
            if objs:
                start_after = objs[-1].key
            if len(objs) < PAGE:
                break
        return out

    def seek_last(self, level: int, hint: int) -> LtxObject | None:
        """The newest object of one level, near TXID `hint`, in O(log distance) requests.

        Probe for anything at or after the hint; if nothing, step down from it in doubling
        strides until something is found, then binary-search between the two probes. Every
        probe is a one-key listing, so a level of any size costs a few dozen requests at most.
        """
        found = self._first_from(level, hint)
        if found is None:
            hi, stride = hint, 1  # no object has min TXID >= hi
            while True:
                probe = max(0, hi - stride)
                found = self._first_from(level, probe)
                if found is not None or probe == 0:
                    break
                hi, stride = probe, stride * 2
            if found is None:
                return None
            lo = found.min_txid
            while hi - lo > 1:
                mid = (lo + hi) // 2
                obj = self._first_from(level, mid)
                if obj is None:
                    hi = mid
                else:
                    lo, found = obj.min_txid, obj
        # Every object from `found` on (few: the tail of the level) in one listing.
        tail = self._page_from(level, f"{_level_dir(self.store, level)}{found.min_txid:016x}")
        return tail[-1] if tail else found

    def bootstrap(self, hint: int) -> None:
        """Find the newest object. Uploads land in level 0 first and leave it last, so the
        first non-empty level in order 0, 1, 2, 3, 9 holds it."""
        self.reset()
        for level in LEVELS:
            last = self.seek_last(level, hint)
            self.last_key[level] = last.key if last else None
            if last is not None:
                self._see([last])
                break
        self.bootstrapped = True

    def update(self, local_txid: int | None) -> None:
        """One check: what is new at level 0 since the last key seen (one request, usually).

        When that shows the bucket behind and nothing new arrived at level 0 (its objects
        are deleted a while after compaction), the compaction levels are read the same way,
        so a long check interval cannot make a caught-up bucket look behind.
        """
        if not self.bootstrapped:
            if local_txid is None:
                self.store.list_ltx(0, max_keys=1)  # reachability only
                return
            self.bootstrap(local_txid)
            return
        new = self._page_from(0, self.last_key.get(0))
        if new:
            self.last_key[0] = new[-1].key
            self._see(new)
        elif local_txid is not None and (self.txid or 0) < local_txid:
            for level in LEVELS[1:4]:
                if level not in self.last_key:
                    last = self.seek_last(level, local_txid)
                    self.last_key[level] = last.key if last else None
                    self._see([last] if last else [])
                    continue
                more = self._page_from(level, self.last_key[level])
                if more:
                    self.last_key[level] = more[-1].key
                    self._see(more)


# ------------------------------------------------------------------ one check's result



@dataclass
class LagResult:
    """The latest check of one database, as /status and /readyz show it."""

    db: str
    local_txid: int | None = None
    replica_txid: int | None = None
    lag_seconds: float | None = None  # None until a check has run
    last_upload: float | None = None  # unix time
    reachable: bool = False
    error: str | None = None
    checked_at: float | None = None  # unix time
    requests: int = 0
    checks: int = 0
    restorable_oldest: float | None = None  # unix time of the oldest snapshot in the bucket

    @property
    def measured(self) -> bool:
        """A check has run with Litestream's local position known, so the lag means something."""
        return self.checks > 0 and self.local_txid is not None and self.lag_seconds is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "local_txid": _txid_hex(self.local_txid),
            "replica_txid": _txid_hex(self.replica_txid),
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "last_upload": utc(self.last_upload) if self.last_upload else None,
            "replica_reachable": self.reachable, "last_check_error": self.error,
            "last_check": utc(self.checked_at) if self.checked_at else None,
            "last_check_requests": self.requests,
            "restorable": {
                "oldest": utc(self.restorable_oldest) if self.restorable_oldest else None,
                "window_seconds": round(time.time() - self.restorable_oldest, 1)
                if self.restorable_oldest else None},
        }


def _txid_hex(txid: int | None) -> str | None:
    return None if txid is None else f"{txid:016x}"


def record_check(logger: Any, label: str, res: LagResult, before: LagResult, key: str = "db",
                 **when_reachable: Any) -> None:
    """A finished check's events, for one database (`key` "db") or a directory entry ("dir")
    alike: its counters (the result itself, lag and positions, is read at scrape time by
    metrics.RuntimeCollector) and a line when the bucket's reachability changes or the first
    check failed."""
    metrics.LAG_CHECKS.labels(db=label, outcome="ok" if res.reachable else "failed").inc()
    if res.requests:
        metrics.REPLICA_REQUESTS.labels(db=label, operation="list_objects_v2").inc(res.requests)
    if res.reachable == before.reachable and not (res.error and res.checks == 1):
        return
    if res.reachable:
        logger.info("replica reachable", **{key: label}, **when_reachable)
    else:
        logger.warning("replica unreachable", **{key: label}, error=res.error,
                       lag_seconds=round(res.lag_seconds, 1))
