"""Replication lag measured against what is really in the bucket. (Over 500 lines on purpose:
the definition of lag, its bucket tracker and its monitor are one algorithm; the directory
entries' variant lives in tenant_lag.py.)

Litestream cannot say that backups stopped: during an S3 outage its error counters stay at 0
for minutes, and `litestream_txid` is only the local position. So sidecar measures lag itself:

- **The bucket's position** (ReplicaTracker): Litestream writes one level-0 object per sync
  and keys sort by TXID, so after a one-time seek for the newest object each check is one
  `list_objects_v2(StartAfter=<last key seen>)` call: the cost does not grow with history.
- **The local position** comes from Litestream's control socket (`/txid`).
- **When local changes happened** (ChangeLog): watchdog reports every write to the DB and its
  `-wal`; each time the local TXID advances, the first unassigned write time is recorded
  against it.

lag = 0 when the bucket holds the local latest TXID, else now minus the time of the oldest
local change whose TXID the bucket does not hold yet. A failed check keeps the last known
bucket position, so the lag keeps growing during an outage, and the bucket counts as
unreachable from that first failure on. An idle database with nothing to upload has lag 0.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar import log
from sidecar.bucket.replica import DirStore, LtxObject, ReplicaUnreachable, Store, open_store, utc
from sidecar.config import Config, Database
from sidecar.daemon import metrics
from sidecar.litestream.control import Control, ControlError

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
            if (not ev or t - ev[-1] >= EVENT_RESOLUTION) and len(ev) < MAX_EVENTS:
                ev.append(t)

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


# ------------------------------------------------------------------ one database


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


class DbLag:
    """Lag bookkeeping for one database. `check()` runs in the scheduler's thread,
    `file_changed()` in watchdog's; they share only the ChangeLog."""

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

    def _local_txid(self) -> int | None:
        if self.control is None:
            return None
        try:
            txid = self.control.txid(self.db.path)
        except (ControlError, ValueError, TypeError):
            return None
        if not self.changes.observe(txid, self.clock()):
            self._replaced = True  # a restore: find the bucket's position again
        return txid

    def file_changed(self) -> None:
        """A write to the DB or its -wal (watchdog thread)."""
        now = self.clock()
        self.changes.changed(now)
        # Ask for the TXID now and then while writes happen, so change times map to TXIDs
        # finely; never more often than POLL_MIN, and not at all while the DB is idle.
        if now >= self._next_poll and self._poll_lock.acquire(blocking=False):
            try:
                self._next_poll = now + POLL_MIN
                if self._local_txid() is None:
                    self._next_poll = now + 1.0
            finally:
                self._poll_lock.release()

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
        self._export(res)
        if res.reachable != self.result.reachable or (res.error and res.checks == 1):
            if res.reachable:
                self._log.info("replica reachable", db=self.label, replica_txid=res.replica_txid)
            else:
                self._log.warning("replica unreachable", db=self.label, error=res.error,
                                  lag_seconds=round(res.lag_seconds, 1))
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

    def _export(self, res: LagResult) -> None:
        # The check's events; its result (lag, positions) is read at scrape time
        # (metrics.RuntimeCollector).
        db = self.label
        metrics.LAG_CHECKS.labels(db=db, outcome="ok" if res.reachable else "failed").inc()
        if res.requests:
            metrics.REPLICA_REQUESTS.labels(db=db, operation="list_objects_v2").inc(res.requests)


def file_sizes(db: Database) -> tuple[int | None, int]:
    """(DB size or None when missing, -wal size or 0)."""
    def size(p: Path) -> int | None:
        try:
            return p.stat().st_size
        except OSError:
            return None

    return size(db.path), size(Path(f"{db.path}-wal")) or 0



# ------------------------------------------------------------------ the monitor


class LagMonitor:
    """Every database's lag: file watching, scheduled checks, the heartbeat."""

    def __init__(self, cfg: Config, control: Control | None,
                 litestream_running: Callable[[], bool] = lambda: True,
                 stores: dict[str, Store] | None = None):
        self.cfg = cfg
        self.litestream_running = litestream_running
        self.dbs: list[DbLag] = []
        timeout = min(5.0, max(1.0, cfg.lag_check_interval))
        for db in cfg.databases:
            store = (stores or {}).get(str(db.path))
            opener = None
            if store is None and db.replica is not None:
                opener = functools.partial(open_store, db.replica, timeout=timeout)
            self.dbs.append(DbLag(db, store, control, opener=opener,
                                  window_every=6 * cfg.lag_check_interval))
        from sidecar.config.pitr import configured

        promised = configured(cfg)["window_seconds"]
        for d in self.dbs:
            d.window_promised = promised
        from sidecar.daemon.tenant_lag import DirLag

        self.dirs = [DirLag(e, control, timeout, cfg.db_metrics_limit) for e in cfg.directories]
        self._observer: Any = None
        self._schedule: Callable[[], Any] | None = None
        self._log = log.get("lag")

    # -- results
    def results(self) -> dict[str, LagResult]:
        return {d.label: d.result for d in [*self.dbs, *self.dirs]}

    def healthy(self) -> bool:
        """Every bucket reachable and every lag under SIDECAR_MAX_LAG_SECONDS."""
        return all(r.measured and r.reachable and (r.lag_seconds or 0) < self.cfg.max_lag
                   for r in self.results().values())

    # -- the scheduled job
    def check_all(self) -> None:
        for d in self.dbs:
            d.check()
        for e in self.dirs:
            e.check()
        if self.cfg.heartbeat_url and self.healthy() and self.litestream_running():
            self._heartbeat(self.cfg.heartbeat_url)

    def _heartbeat(self, url: str) -> None:
        import urllib.parse
        import urllib.request  # only with SIDECAR_HEARTBEAT_URL, never on the start path

        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                resp.read(1024)
        # Any failure to reach the monitor is logged and the next healthy check tries again.
        except Exception as exc:
            # The URL often carries the monitor's secret token: show its host only.
            host = urllib.parse.urlsplit(url).hostname
            self._log.warning("heartbeat failed", host=host, error=type(exc).__name__)

    # -- file watching
    def watch(self) -> None:
        """Start watching the databases' directories (once; later calls do nothing)."""
        if self._observer is not None:
            return
        from watchdog import events as ev
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        # Writes only, asked of the kernel: Litestream opens and closes every database's WAL
        # about twice a second to read it, and at 1,000 tenants those ~4,000 open/close
        # events a second, each handled in Python only to be ignored, were most of an idle
        # sidecar's CPU.
        writes = [ev.FileModifiedEvent, ev.FileCreatedEvent, ev.FileMovedEvent,
                  ev.FileDeletedEvent, ev.FileClosedEvent, ev.DirCreatedEvent,
                  ev.DirMovedEvent, ev.DirDeletedEvent, ev.DirModifiedEvent]

        by_file: dict[str, DbLag] = {}
        for d in self.dbs:
            by_file[str(d.db.path)] = d
            by_file[f"{d.db.path}-wal"] = d

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for p in (event.src_path, getattr(event, "dest_path", "")):
                    name = p if isinstance(p, str) else p.decode()
                    target = by_file.get(name)
                    if target is not None:
                        target.file_changed()
                        return
                    for e in dirs:  # one watcher per directory entry, whatever its size
                        if name.startswith(e.label + "/"):
                            e.file_changed(name)

        dirs = self.dirs
        observer = Observer()
        observer.daemon = True
        for directory in sorted({str(d.db.path.parent) for d in self.dbs}):
            observer.schedule(Handler(), directory, recursive=False, event_filter=writes)
        for e in dirs:
            e.entry.dir.mkdir(parents=True, exist_ok=True)
            observer.schedule(Handler(), str(e.entry.dir), recursive=e.entry.recursive,
                              event_filter=writes)
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer = None


    # -- the schedule
    def begin_checks(self) -> None:
        """Schedule the checks (the first one right away); once only, later calls do nothing."""
        schedule, self._schedule = self._schedule, None
        if schedule is not None:
            schedule()


def start(cfg: Config, control: Control | None, litestream_running: Callable[[], bool],
          scheduler_add: Callable[..., Any], defer_checks: bool = False) -> LagMonitor:
    """Create the monitor, start watching, and schedule its checks (first one right away),
    or with `defer_checks` only when `begin_checks()` is called: `sidecar run` does that once
    the start-up restore is over, because each check lists the bucket while Litestream
    downloads it (on a slow server that slowed a 1 GB restore from 56 s to 81 s), and there
    is no local position to compare with before Litestream runs. Until the first check the
    lag is unmeasured, so readiness says not ready.

    With `defer_checks` the file watching waits too, for `watch()`: a start-up restore writes
    its temporary file beside the database, in the watched directory, and the watcher's
    thread handled every one of those writes (2.3-3.1 s of CPU for 315 MB, which made
    Litestream's restore 1-3 s slower on two cores). There is nothing to time before the
    restore step is over: the app and Litestream start after it."""
    monitor = LagMonitor(cfg, control, litestream_running)
    if not defer_checks:
        monitor.watch()
    monitor._schedule = functools.partial(scheduler_add, monitor.check_all,
                                          cfg.lag_check_interval, "lag check")
    if not defer_checks:
        monitor.begin_checks()
    return monitor
