"""When local changes happen: watchdog's inotify watches on the databases' directories, at a
cost that does not grow with the write rate.

The lag (model.py) needs the time of the first write after the position the bucket holds,
and the times of later writes only as finely as Litestream's TXIDs are asked for (POLL_MIN).
An app committing 420 times a second made as many inotify events, each dispatched in Python
(8.7 % of a core against 1.3 % for Litestream). So a database directory's watch is dropped
at the first write, and while it is dropped one thread looks at the files' state (size,
times, inode of the DB and its -wal) every POLL_MIN: a change seen there is recorded at the
previous look, the last moment the files were known unchanged (a lag that errs large by at
most POLL_MIN, never small). Once the last check shows the bucket holding every change, the
watch is scheduled again first, and the files looked at once more: a write between the last
look and the new watch is in that look, so none is missed. An idle database costs nothing.

A look taken within STAMP of the files' modification time cannot tell a write made in the
same tick of the kernel's clock (the times are coarse): the next look counts a change then.

A directory entry's watch (many tenants, one recursive watch) is not dropped: dropping it
would blind it to every other tenant.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar import log
from sidecar.lag.db_lag import DbLag
from sidecar.lag.dir_lag import DirLag
from sidecar.lag.model import POLL_MIN

STAMP = 0.05  # seconds: coarser than any kernel's file-time tick

State = tuple[Any, ...]


def _wal_index(db: DbLag) -> bytes | None:
    """The -shm file's wal-index header (48 bytes: its change counter, the last frame, the
    salts), which every commit in WAL mode changes: on a file system whose timestamps are
    coarser than a write (ext3, FAT, some network mounts), a WAL reset rewritten to the same
    size in the same tick changes nothing that stat shows."""
    try:
        fd = os.open(f"{db.db.path}-shm", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.pread(fd, 48, 0)
    except OSError:
        return None
    finally:
        os.close(fd)


def file_state(db: DbLag) -> tuple[State, float]:
    """(what a write changes in the DB, its -wal and its wal-index, the newest modification
    time)."""
    out: list[Any] = []
    newest = 0.0
    for path in (db.db.path, f"{db.db.path}-wal"):
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        newest = max(newest, st.st_mtime_ns / 1e9, st.st_ctime_ns / 1e9)
    out.append(_wal_index(db))
    return tuple(out), newest


@dataclass
class Look:
    """The files' state at one look."""

    state: State
    at: float  # the database's clock
    blurred: bool  # taken within STAMP of a modification: a same-tick write may hide


@dataclass
class Spot:
    """One database directory's watch."""

    path: str
    dbs: list[DbLag]
    watch: Any = None  # watchdog's ObservedWatch while listening
    pausing: bool = False  # a write asked for the watch to be dropped
    fixed: bool = False  # also a directory entry's watch: never dropped
    looks: dict[int, Look] = field(default_factory=dict)  # id(DbLag) -> the last look
    failing: str | None = None  # the last step's error, logged once


def _look(db: DbLag) -> Look:
    wall = time.time()
    at = db.clock()
    state, newest = file_state(db)
    return Look(state, at, newest >= wall - STAMP)


class Watcher:
    """The file watching of a LagMonitor's databases and directory entries."""

    def __init__(self, dbs: list[DbLag], dirs: list[DirLag], every: float = POLL_MIN):
        self.dbs, self.dirs, self.every = dbs, dirs, every
        self._cond = threading.Condition()
        self._stopping = False
        self._observer: Any = None
        self._thread: threading.Thread | None = None
        self._handler: Any = None
        self.spots: dict[str, Spot] = {}
        for d in dbs:
            key = str(d.db.path.parent)
            self.spots.setdefault(key, Spot(key, [])).dbs.append(d)
        shared = {str(e.entry.dir) for e in dirs if not e.entry.recursive}
        for key, spot in self.spots.items():
            spot.fixed = key in shared  # (watchdog keeps one watch for the two)
        self._log = log.get("lag")
        self.pauses = 0  # watches dropped (a test and the bench read these)
        self.rearms = 0

    def listening(self, directory: str) -> bool:
        with self._cond:
            spot = self.spots.get(directory)
            return spot is not None and spot.watch is not None

    def start(self) -> None:
        from watchdog import events as ev
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        # Writes only, asked of the kernel: Litestream opens and closes every database's WAL
        # about twice a second to read it, and at 1,000 tenants those ~4,000 open/close
        # events a second, each handled in Python only to be ignored, were most of an idle
        # sidecar's CPU.
        self._writes = [ev.FileModifiedEvent, ev.FileCreatedEvent, ev.FileMovedEvent,
                        ev.FileDeletedEvent, ev.FileClosedEvent, ev.DirCreatedEvent,
                        ev.DirMovedEvent, ev.DirDeletedEvent, ev.DirModifiedEvent]
        by_file: dict[str, tuple[DbLag, Spot]] = {}
        for spot in self.spots.values():
            for d in spot.dbs:
                by_file[str(d.db.path)] = by_file[f"{d.db.path}-wal"] = (d, spot)
        dirs, watcher = self.dirs, self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for p in (event.src_path, getattr(event, "dest_path", "")):
                    name = p if isinstance(p, str) else p.decode()
                    target = by_file.get(name)
                    if target is not None:
                        target[0].file_changed()
                        watcher._pause_soon(target[1])
                        return
                    for e in dirs:  # one watcher per directory entry, whatever its size
                        if name.startswith(e.label + "/"):
                            e.file_changed(name)

        self._handler = Handler()
        observer = Observer()
        observer.daemon = True
        observer.start()
        self._observer = observer
        with self._cond:
            for spot in self.spots.values():
                spot.watch = self._schedule(spot)
        for e in dirs:
            e.entry.dir.mkdir(parents=True, exist_ok=True)
            observer.schedule(self._handler, str(e.entry.dir), recursive=e.entry.recursive,
                              event_filter=self._writes)
        self._thread = threading.Thread(target=self._run, name="lag-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._observer is not None:
            self._observer.stop()
            self._observer = None

    def _schedule(self, spot: Spot) -> Any:
        """The directory's own watch (writes only), as watchdog's ObservedWatch."""
        return self._observer.schedule(self._handler, spot.path, recursive=False,
                                       event_filter=self._writes)

    def _pause_soon(self, spot: Spot) -> None:
        """A write seen by an event (observer's thread): drop the watch, on the watcher's own
        thread (unscheduling joins watchdog's emitter)."""
        if spot.pausing or spot.fixed or spot.watch is None:
            return
        with self._cond:
            spot.pausing = True
            self._cond.notify_all()

    # -- the watcher's thread: drops, looks, schedules again
    def _run(self) -> None:
        while True:
            with self._cond:
                paused = [s for s in self.spots.values() if s.watch is None]
                if not self._stopping and not paused and not any(
                        s.pausing for s in self.spots.values()):
                    self._cond.wait()
                elif not self._stopping and paused:
                    self._cond.wait(timeout=self.every)
                if self._stopping:
                    return
                pausing = [s for s in self.spots.values() if s.pausing and s.watch is not None]
                paused = [s for s in self.spots.values() if s.watch is None]
            for spot in paused:
                self._step(self._tend, spot)
            for spot in pausing:
                self._step(self._pause, spot)

    def _step(self, step: Callable[[Spot], None], spot: Spot) -> None:
        """One step for one directory; a failure (the directory gone, say) is logged and the
        step is tried again at the next look, so the thread never dies with a watch dropped."""
        try:
            step(spot)
        except Exception as exc:  # whatever it is, the other directories go on
            error = f"{type(exc).__name__}: {exc}"
            if error != spot.failing:  # once per failure, not four times a second
                self._log.warning("file watching step failed", dir=spot.path, error=error)
            spot.failing = error
        else:
            spot.failing = None

    def _pause(self, spot: Spot) -> None:
        # The last state known first, then the watch dropped: a write in between is both an
        # event and a change the next look sees.
        for d in spot.dbs:
            spot.looks[id(d)] = _look(d)
        with self._cond:
            watch, spot.watch, spot.pausing = spot.watch, None, False
        self._observer.unschedule(watch)
        self.pauses += 1

    def _compare(self, spot: Spot) -> None:
        """Look at each database's files: a change since the last look is recorded at it."""
        for d in spot.dbs:
            now = _look(d)
            last = spot.looks.get(id(d))
            if last is None or now.state != last.state or last.blurred:
                d.file_changed(since=now.at if last is None else last.at, now=now.at)
            spot.looks[id(d)] = now

    def _tend(self, spot: Spot) -> None:
        """One look at a dropped watch's databases; the watch scheduled again once the bucket
        holds every change of every database in the directory."""
        if not all(d.settled() for d in spot.dbs):
            self._compare(spot)
            return
        try:
            watch = self._schedule(spot)
        except Exception:
            self._compare(spot)  # no watch yet: the files are still looked at meanwhile
            raise
        with self._cond:
            spot.watch = watch
        self.rearms += 1
        self._compare(spot)  # after the watch: what it cannot have seen, this look has
        spot.looks.clear()

