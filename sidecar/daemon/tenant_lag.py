"""Lag of a directory entry's databases at a cost that does not grow with idle databases.

Per check: one listing of the entry's prefix (a request per 1,000 objects; Litestream keeps a
few objects per database once it has compacted, so one request covers a couple of hundred
databases) gives every database's newest TXID in the bucket; Litestream's control socket is
asked for the local TXID only of the databases whose files changed (one watcher on the
directory reports them) or that still have changes the bucket lacks. An idle database costs
no request of its own. Each database's lag is lag.py's definition (ChangeLog); the entry
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
from sidecar.config import DbDir
from sidecar.daemon import metrics
from sidecar.daemon.lag import ChangeLog, LagResult
from sidecar.litestream.control import Control, ControlError
from sidecar.replica import ReplicaUnreachable
from sidecar.startup import tenants

TOP = 10  # the databases furthest behind that /status names


class DirLag:
    """One directory entry. `check()` runs in the scheduler's thread, `file_changed()` in
    watchdog's."""

    def __init__(self, entry: DbDir, control: Control | None, timeout: float,
                 per_db_limit: int, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 lister: Callable[[], tenants.Listing] | None = None):
        self.entry = entry
        self.label = str(entry.dir)
        self.control = control
        self.clock, self.wall = clock, wall
        self.per_db_limit = per_db_limit
        self._lister = lister or (lambda: tenants.remote_members_positions(entry, timeout))
        self._lock = threading.Lock()
        self.changes: dict[str, ChangeLog] = {}
        self._dirty: set[str] = set()
        self.remote: dict[str, int] = {}  # rel -> newest TXID the bucket holds
        self.lags: dict[str, float] = {}
        self.result = LagResult(db=self.label)
        self.members = 0
        self.behind: list[tuple[str, float]] = []
        self._exported: set[str] = set()
        self._log = log.get("lag")

    def file_changed(self, path: str) -> None:
        rel = path[len(self.label) + 1:] if path.startswith(self.label + "/") else ""
        # The DB and its -wal only, as lag.py: readers (Litestream too) write the -shm.
        rel = rel.removesuffix("-wal")
        if not tenants.matches(self.entry, rel):  # a dot-named tenant is one (tenants.py)
            return
        with self._lock:
            cl = self.changes.get(rel)
            if cl is None:
                cl = self.changes[rel] = ChangeLog()
            self._dirty.add(rel)
        cl.changed(self.clock())

    def _local_txid(self, rel: str) -> int | None:
        if self.control is None:
            return None
        try:
            return self.control.txid(self.entry.dir / rel)
        except (ControlError, ValueError, TypeError):
            return None

    def check(self) -> LagResult:
        t0 = self.clock()
        res = LagResult(db=self.label, checks=self.result.checks + 1)
        try:
            listing = self._lister()
            res.reachable = True
            res.requests = listing.requests
            self.remote = dict(listing.positions)
        except ReplicaUnreachable as exc:
            res.error = exc.message  # keep the last known positions: the lag keeps growing
            res.requests = exc.requests  # a timed-out listing was still a request
        local = tenants.local_members(self.entry)
        with self._lock:
            for rel in local:
                if rel not in self.changes:  # first seen (at start, or created since)
                    self.changes[rel] = ChangeLog()
                    self._dirty.add(rel)
            dirty, self._dirty = self._dirty, set()
        now = self.clock()
        answered_all = True
        lags: dict[str, float] = {}
        behind: list[tuple[str, float]] = []
        present = set(local)
        for rel, cl in list(self.changes.items()):
            if rel not in present:
                with self._lock:
                    self.changes.pop(rel, None)
                continue
            remote = self.remote.get(rel, -1)
            pending = cl.oldest_pending(remote, now) is not None
            answered = True
            if rel in dirty or pending:
                txid = self._local_txid(rel)
                if txid is not None:
                    cl.observe(txid, now)
                else:
                    answered = answered_all = False
            oldest = cl.oldest_pending(remote, now, litestream_answered=answered)
            lags[rel] = 0.0 if oldest is None else max(0.0, now - oldest)
            if oldest is not None:
                behind.append((rel, lags[rel]))
        self.lags = lags
        self.members = len(lags)
        self.behind = sorted(behind, key=lambda x: -x[1])
        res.lag_seconds = max(lags.values(), default=0.0)
        res.local_txid = 0 if answered_all else None
        res.checked_at = self.wall()
        res.check_seconds = self.clock() - t0
        self._export(res)
        if res.reachable != self.result.reachable or (res.error and res.checks == 1):
            if res.reachable:
                self._log.info("replica reachable", dir=self.label, databases=self.members)
            else:
                self._log.warning("replica unreachable", dir=self.label, error=res.error,
                                  lag_seconds=round(res.lag_seconds, 1))
        self.result = res
        return res

    def _export(self, res: LagResult) -> None:
        d = self.label
        metrics.REPLICATION_LAG.labels(db=d).set(res.lag_seconds or 0.0)
        metrics.REPLICA_REACHABLE.labels(db=d).set(1 if res.reachable else 0)
        metrics.LAG_CHECKS.labels(db=d, outcome="ok" if res.reachable else "failed").inc()
        if res.requests:
            metrics.REPLICA_REQUESTS.labels(db=d, operation="list_objects_v2").inc(res.requests)
        metrics.DIR_DATABASES.labels(dir=d).set(self.members)
        metrics.DIR_BEHIND.labels(dir=d).set(len(self.behind))
        shown = {str(self.entry.dir / r) for r in sorted(self.lags)[:self.per_db_limit]}
        for path in self._exported - shown:  # a database gone, or past the limit now
            metrics.REPLICATION_LAG.remove(path)
        for rel in sorted(self.lags)[:self.per_db_limit]:
            metrics.REPLICATION_LAG.labels(db=str(self.entry.dir / rel)).set(self.lags[rel])
        self._exported = shown

    def summary(self) -> dict[str, Any]:
        """What /status shows for the entry: counts and the furthest behind, not every DB."""
        return {
            "dir": self.label, "pattern": self.entry.pattern, "replica": self.entry.replica.url,
            "databases": self.members, "behind": len(self.behind),
            "most_behind": [{"db": r, "lag_seconds": round(v, 3)} for r, v in
                            self.behind[:TOP]],
            **self.result.as_dict(),
        }
