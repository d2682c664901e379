"""Lag of one database (the definition is model.py's): its checks against the bucket, in the
scheduler's thread, and the file changes the watcher reports, in the watcher's threads."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sidecar import log
from sidecar.bucket.replica import ReplicaUnreachable, Store
from sidecar.config import Database
from sidecar.lag.model import POLL_MIN, ChangeLog, LagResult, ReplicaTracker, record_check
from sidecar.litestream.control import Control, ControlError


class DbLag:
    """Lag bookkeeping for one database. `check()` runs in the scheduler's thread,
    `file_changed()` in the watcher's (watcher.py); they share only the ChangeLog."""

    def __init__(self, db: Database, store: Store | None, control: Control | None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 opener: Callable[[], Store] | None = None, window_every: float = 60.0):
        self.db = db
        self._check_lock = threading.Lock()
        self.label = str(db.path)
        self.store = store
        self.tracker = ReplicaTracker(store) if store is not None else None
        # The store is opened by the first check, in the scheduler's thread, so nothing on the
        # way to the app waits on it (boto3's import and a client: a fraction of a second and
        # about 24 MB, held for good).
        self._opener = opener if store is None else None
        self.control = control
        self.clock, self.wall = clock, wall
        self.changes = ChangeLog()
        self.result = LagResult(db=self.label)
        self._poll_lock = threading.Lock()
        self._next_poll = 0.0
        self._replaced = False
        self._log = log.get("lag")
        # The restore window changes only when a snapshot is written or deleted (hours apart):
        # the bucket's snapshot level is listed every `window_every` seconds, not every check.
        self.window_every = window_every
        self._next_window = 0.0
        self.oldest_snapshot: float | None = None
        self.window_promised: float | None = None  # the configured window (LagMonitor sets it)

    def _local_txid(self, at: float | None = None) -> int | None:
        if self.control is None:
            return None
        try:
            txid = self.control.txid(self.db.path)
        except (ControlError, ValueError, TypeError):
            return None
        if not self.changes.observe(txid, self.clock() if at is None else at):
            self._replaced = True  # a restore: find the bucket's position again
        return txid

    def file_changed(self, since: float | None = None, now: float | None = None) -> None:
        """A write to the DB or its -wal (the watcher's threads). An event comes with neither
        time: the write is now. The watcher's poll, which sees a write only by the files'
        state, gives `since` (the write came after it) and `now` (when it looked)."""
        now = self.clock() if now is None else now
        # A look's write came just after the look before it, which may also have asked the
        # TXID: timed just after that, it is kept for the next TXID as well (ChangeLog).
        self.changes.changed(now if since is None else math.nextafter(since, math.inf))
        # Ask for the TXID now and then while writes happen, so change times map to TXIDs
        # finely; never more often than POLL_MIN, and not at all while the DB is idle.
        if now >= self._next_poll and self._poll_lock.acquire(blocking=False):
            try:
                self._next_poll = now + POLL_MIN
                if self._local_txid(now) is None:
                    self._next_poll = now + 1.0
            finally:
                self._poll_lock.release()

    def settled(self) -> bool:
        """Whether the bucket holds every change seen (as of the last check), so the watcher
        may listen again: nothing pending and no write waiting for a TXID."""
        if self.result.checks == 0 or self.changes.unmatched():
            return False
        replica = self.result.replica_txid
        return self.changes.oldest_pending(-1 if replica is None else replica,
                                           self.clock()) is None

    def check(self) -> LagResult:
        with self._check_lock:
            return self._check()

    def _check(self) -> LagResult:
        res = LagResult(db=self.label, checks=self.result.checks + 1)
        local = self._local_txid()
        res.local_txid = local if local is not None else self.changes.txid
        if self.tracker is None and self._opener is not None:
            self.store = self._opener()
            self.tracker = ReplicaTracker(self.store)
            self._opener = None
        if self.tracker is not None:
            assert self.store is not None
            if self._replaced:
                self._replaced = False
                self.tracker.reset()
            before = self.store.requests
            try:
                self.tracker.update(res.local_txid)
                res.reachable = True
            except ReplicaUnreachable as exc:
                res.error = exc.message
            if res.reachable and local is not None:  # (else the check only probes)
                self._refresh_window()
            res.requests = self.store.requests - before
            res.replica_txid = self.tracker.txid
            res.last_upload = self.tracker.last_upload
        else:
            res.error = "no replica configured"
        res.restorable_oldest = self.oldest_snapshot
        now = self.clock()
        # Unknown bucket position (never reached): every change since start counts as pending.
        replica = res.replica_txid if res.replica_txid is not None else -1
        oldest = self.changes.oldest_pending(replica, now, litestream_answered=local is not None)
        res.lag_seconds = 0.0 if oldest is None else max(0.0, now - oldest)
        res.checked_at = self.wall()
        record_check(self._log, self.label, res, self.result, replica_txid=res.replica_txid)
        self.result = res
        return res

    def _refresh_window(self) -> None:
        """The oldest snapshot's upload time (its LastModified: within an upload of the time
        in its header, which a restore compares): one listing of the snapshot level."""
        now = self.clock()
        if now < self._next_window or self.store is None:
            return
        self._next_window = now + self.window_every
        try:
            snaps = self.store.list_ltx(9)
        except ReplicaUnreachable as exc:
            self._log.warning("restore window not refreshed", db=self.label, error=exc.message)
            return
        self.oldest_snapshot = min((o.last_modified for o in snaps), default=None)


def file_sizes(db: Database) -> tuple[int | None, int]:
    """(DB size or None when missing, -wal size or 0)."""
    def size(p: Path) -> int | None:
        try:
            return p.stat().st_size
        except OSError:
            return None

    return size(db.path), size(Path(f"{db.path}-wal")) or 0
