"""Lag of a directory entry's databases at a cost that does not grow with idle databases.

A database's lag is model.py's definition (ChangeLog): the age of the oldest local change the
bucket does not hold. Once the bucket holds a database's newest local TXID, the database
needs nothing from the bucket again until it changes (one watcher on the directory reports
changes; Litestream's control socket gives the local TXID). So per check:

- the first check (and any check while the positions are not known yet) lists the entry's
  whole prefix once (a request per 1,000 keys) for every database's newest TXID there;
- every later check reads ONE page of that prefix, continuing where the previous check's page
  ended (S3's start-after), and starts over at the end: that request is the reachability
  check, and it refreshes the known positions a page at a time;
- the databases that still have changes the bucket lacks (and only those) have their own
  prefix listed, or the whole prefix once when that takes fewer requests.

An idle directory costs one request a check, whatever the number of databases. The entry
exports the largest lag, the number of databases behind, and per-database series for at most
SIDECAR_DB_METRICS_LIMIT databases (sorted by path), so a thousand tenants do not make a
thousand series of each metric.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sidecar import log
from sidecar.bucket import tenants
from sidecar.bucket.replica import ReplicaUnreachable
from sidecar.config import DbDir
from sidecar.lag.model import ChangeLog, LagResult, record_check
from sidecar.litestream.control import Control, ControlError

TOP = 10  # the databases furthest behind that /status names


def _encodable(rel: str) -> bool:
    """Whether a file name can go into an S3 request (a name that is not UTF-8 on disk
    comes out of os.walk with surrogates)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class DirLag:
    """One directory entry. `check()` runs in the scheduler's thread, `file_changed()` in
    watchdog's."""

    def __init__(self, entry: DbDir, control: Control | None, timeout: float,
                 per_db_limit: int, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 bucket: tenants.BucketView | None = None):
        self.entry = entry
        self.label = str(entry.dir)
        self.control = control
        self.clock, self.wall = clock, wall
        self.per_db_limit = per_db_limit
        self.bucket = bucket or tenants.BucketView(entry, timeout)
        self._lock = threading.Lock()
        self.changes: dict[str, ChangeLog] = {}
        self._dirty: set[str] = set()
        self.remote: dict[str, int] = {}  # rel -> newest TXID the bucket holds
        self.known = False  # whether `remote` came from a whole listing yet
        self._cursor: str | None = None  # the last key the previous page read
        self._sweep: dict[str, int] = {}  # positions the current sweep has read so far
        self._sweep_pages = 0  # requests a whole listing took last time (>= 1)
        self._relist: set[str] = set()  # databases whose position must be read again
        self._unanswered: set[str] = set()  # Litestream gave no local TXID last check
        self.lags: dict[str, float] = {}
        self.result = LagResult(db=self.label)
        self.members = 0
        self.behind: list[tuple[str, float]] = []
        self._log = log.get("lag")

    def file_changed(self, path: str) -> None:
        rel = path[len(self.label) + 1:] if path.startswith(self.label + "/") else ""
        # The DB and its -wal only, as for one database: readers (Litestream too) write the -shm.
        rel = rel.removesuffix("-wal")
        if not tenants.matches(self.entry, rel):  # a dot-named tenant is one (tenants.py)
            return
        with self._lock:  # recorded before a check can take the database off _dirty
            cl = self.changes.get(rel)
            if cl is None:
                cl = self.changes[rel] = ChangeLog()
            cl.changed(self.clock())
            self._dirty.add(rel)

    def _local_txid(self, rel: str) -> int | None:
        if self.control is None:
            return None
        try:
            return self.control.txid(self.entry.dir / rel)
        except (ControlError, ValueError, TypeError):
            return None

    def _drop(self, rel: str) -> None:
        self.remote.pop(rel, None)
        self._sweep.pop(rel, None)

    def _forget(self, rel: str) -> None:
        """The bucket's position of `rel` is not known any more (the database was replaced,
        or created again under a name the bucket may hold from before): read it again."""
        self._drop(rel)
        self._relist.add(rel)

    def _full(self) -> int:
        listing = self.bucket.full()
        self.remote = dict(listing.positions)
        self.known, self._cursor, self._sweep = True, None, {}
        self._relist.clear()
        self._sweep_pages = max(1, listing.requests)
        return listing.requests

    def _next_page(self) -> int:
        page = self.bucket.page(self._cursor)
        for rel, txid in page.listing.positions.items():
            # A database's keys can straddle two pages: take the largest TXID the sweep saw,
            # and never lower a known position before the sweep is whole.
            self._sweep[rel] = max(self._sweep.get(rel, -1), txid)
            self.remote[rel] = max(self.remote.get(rel, -1), self._sweep[rel])
        if page.done:
            # The sweep is whole: its positions replace the known ones (a database gone from
            # the bucket is gone here too; a database's own listing during the sweep has
            # already put what it read into the sweep's positions).
            self.remote = dict(self._sweep)
            self._cursor, self._sweep = None, {}
        else:
            self._cursor = page.last_key
        return page.listing.requests

    def _members(self, need: list[str]) -> int:
        """Each database's own prefix listed: its position as the bucket holds it now."""
        if any(not _encodable(rel) for rel in need):
            return self._full()  # a name S3 cannot be asked for: the whole prefix holds it
        requests = 0
        for rel in need:
            try:
                listing = self.bucket.member(rel)
            except ReplicaUnreachable as exc:
                exc.requests += requests
                raise
            requests += listing.requests
            txid = listing.positions.get(rel)
            self._relist.discard(rel)
            passed = rel in self._sweep  # the sweep read it already: keep what is newer
            if txid is None:
                self.remote.pop(rel, None)
                self._sweep.pop(rel, None)
            else:
                self.remote[rel] = txid
                if passed:
                    self._sweep[rel] = txid
        return requests

    def _need(self, changes: dict[str, ChangeLog], now: float) -> list[str]:
        """The databases whose bucket position must be read: a local change (a TXID Litestream
        gave) the known position does not hold, or a position not known any more. Writes
        Litestream has not answered for are not among them: the bucket cannot settle those."""
        return sorted(rel for rel, cl in changes.items()
                      if rel in self._relist
                      or cl.oldest_pending(self.remote.get(rel, -1), now) is not None)

    def check(self) -> LagResult:
        t0 = self.clock()
        res = LagResult(db=self.label, checks=self.result.checks + 1)
        local = tenants.local_members(self.entry)
        present = set(local)
        with self._lock:
            for rel in local:
                if rel not in self.changes:  # first seen (at start, or created since)
                    self.changes[rel] = ChangeLog()
                    self._dirty.add(rel)
                    if self.known:
                        self._forget(rel)
            for rel in [r for r in self.changes if r not in present]:
                self.changes.pop(rel, None)
                self._drop(rel)  # deleted here: nothing to read for it
                self._relist.discard(rel)
            dirty, self._dirty = self._dirty, set()
            changes = dict(self.changes)
        now = self.clock()
        unanswered: set[str] = set()
        for rel, cl in changes.items():
            if (rel in dirty or rel in self._unanswered or cl.unmatched()
                    or cl.oldest_pending(self.remote.get(rel, -1), now) is not None):
                txid = self._local_txid(rel)
                if txid is None:
                    unanswered.add(rel)
                elif not cl.observe(txid, now):
                    self._forget(rel)  # replaced (its TXID went back): read its position again
        self._unanswered = unanswered
        requests = 0
        try:
            need = self._need(changes, now)
            if not self.known or len(need) > self._sweep_pages:
                requests += self._full()  # fewer requests than each one's own listing
            else:
                requests += self._next_page()
                need = self._need(changes, now)  # the page may have read some of them
                if need:
                    requests += self._members(need)
            res.reachable = True
        except ReplicaUnreachable as exc:
            res.error = exc.message  # keep the last known positions: the lag keeps growing
            requests += exc.requests  # a timed-out listing was still a request
        res.requests = requests
        now = self.clock()
        lags: dict[str, float] = {}
        behind: list[tuple[str, float]] = []
        for rel, cl in changes.items():
            oldest = cl.oldest_pending(self.remote.get(rel, -1), now,
                                       litestream_answered=rel not in unanswered)
            lags[rel] = 0.0 if oldest is None else max(0.0, now - oldest)
            if oldest is not None:
                behind.append((rel, lags[rel]))
        self.lags = lags
        self.members = len(lags)
        self.behind = sorted(behind, key=lambda x: -x[1])
        res.lag_seconds = max(lags.values(), default=0.0)
        res.local_txid = 0 if not unanswered else None
        res.checked_at = self.wall()
        res.check_seconds = self.clock() - t0
        record_check(self._log, self.label, res, self.result, key="dir",
                     databases=self.members)
        self.result = res
        return res

    def summary(self) -> dict[str, Any]:
        """What /status shows for the entry: counts and the furthest behind, not every DB."""
        return {
            "dir": self.label, "pattern": self.entry.pattern, "replica": self.entry.replica.url,
            "databases": self.members, "behind": len(self.behind),
            "most_behind": [{"db": r, "lag_seconds": round(v, 3)} for r, v in
                            self.behind[:TOP]],
            **self.result.as_dict(),
        }
