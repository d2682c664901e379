"""The lag monitor's file watching (sidecar/lag/watcher.py) with real watchdog on real files.

The start-up restore writes its temporary file beside the database, in the directory the
lag monitor watches: `sidecar run` starts the monitor with its watching deferred, so none of
those writes reaches the watcher's thread, and watching starts when told (once). Once a
change is pending the watch is dropped (its cost must not grow with the write rate) and the
files are looked at instead; it comes back when the bucket holds every change, and a write
made while it was away is still counted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import config
from sidecar.lag import monitor as lag
from sidecar.lag.db_lag import DbLag
from sidecar.lag.model import EVENT_RESOLUTION
from sidecar.lag.watcher import Watcher
from testkit import wait_for


def _cfg(tmp_path: Path) -> config.Config:
    return config.load({"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "PATH": "/usr/bin:/bin",
                        "SIDECAR_REPLICA_URL": f"file://{tmp_path / 'replica'}"},
                       app_command=["true"], cwd=tmp_path)


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every (event type, path) watchdog hands to a handler of ours."""
    from watchdog.events import FileSystemEventHandler

    seen: list[tuple[str, str]] = []
    original = FileSystemEventHandler.dispatch

    def dispatch(self: FileSystemEventHandler, event: object) -> None:
        seen.append((event.event_type, str(event.src_path)))  # type: ignore[attr-defined]
        original(self, event)  # type: ignore[arg-type]

    monkeypatch.setattr(FileSystemEventHandler, "dispatch", dispatch)
    return seen


def _probe(tmp_path: Path, seen: list[tuple[str, str]], n: int) -> None:
    """Write a file the lag ignores and wait for its event: the watch is listening, and every
    event queued before this one has been handled (inotify keeps their order)."""
    probe = tmp_path / f"probe-{n}"
    probe.write_bytes(b"p")
    wait_for(lambda: any(p == str(probe) for _, p in seen), 10,
             what=f"the watcher to see {probe.name}")


def test_deferred_monitor_watches_only_once_told(tmp_path: Path) -> None:
    monitor = lag.start(_cfg(tmp_path), None, lambda: True, lambda *a: None, defer_checks=True)
    events = monitor.dbs[0].changes._events
    try:
        temp = tmp_path / ".app.db.sidecar-restore-1"  # what a restore writes meanwhile
        with temp.open("wb") as f:
            for _ in range(50):
                f.write(b"x" * 4096)
                f.flush()
        (tmp_path / "app.db").write_bytes(b"y")
        time.sleep(0.5)  # (nothing watches: there is no event to wait for)
        assert monitor.watcher is None and not events
        monitor.watch()
        watcher = monitor.watcher
        monitor.watch()
        assert watcher is not None and monitor.watcher is watcher
        (tmp_path / "app.db").write_bytes(b"z")
        wait_for(lambda: len(events) > 0, 10, what="the watcher to see a write to the DB")
    finally:
        monitor.stop()


def test_reads_of_a_database_never_reach_the_watchers_thread(
        tmp_path: Path, dispatched: list[tuple[str, str]]) -> None:
    """Litestream opens and reads every WAL about twice a second: those opens and closes
    are not asked of the kernel at all (a thousand tenants made ~4,000 a second), while a
    write still is seen."""
    (tmp_path / "app.db-wal").write_bytes(b"w" * 4096)
    monitor = lag.start(_cfg(tmp_path), None, lambda: True, lambda *a: None, defer_checks=True)
    try:
        monitor.watch()
        _probe(tmp_path, dispatched, 1)
        for _ in range(100):
            with (tmp_path / "app.db-wal").open("rb") as f:
                f.read(32)
        _probe(tmp_path, dispatched, 2)
        kinds = [e for e, _ in dispatched]
        assert [e for e in kinds if e in ("opened", "closed_no_write")] == [], kinds[:5]
        with (tmp_path / "app.db-wal").open("ab") as f:
            f.write(b"x")
        wait_for(lambda: any(e == "modified" and p.endswith("-wal") for e, p in dispatched),
                 10, what="the write to be seen")
    finally:
        monitor.stop()


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[lag.LagMonitor, Watcher]]:
    (tmp_path / "app.db-wal").write_bytes(b"w" * 4096)
    monitor = lag.start(_cfg(tmp_path), None, lambda: True, lambda *a: None, defer_checks=True)
    monitor.watch()
    assert monitor.watcher is not None
    try:
        yield monitor, monitor.watcher
    finally:
        monitor.stop()


def _append(path: Path, n: int = 1) -> None:
    with path.open("ab") as f:
        for _ in range(n):
            f.write(b"x" * 100)
            f.flush()


def _sure_look(watcher: Watcher, db: DbLag) -> None:
    """Wait for a look taken well after the last write (later than EVENT_RESOLUTION, so a
    change it sees next is a change of its own, and not blurred by the kernel's coarse file
    times, so only a change of state makes the next look count a write)."""
    spot = watcher.spots[str(db.db.path.parent)]
    t = time.monotonic()
    wait_for(lambda: (look := spot.looks.get(id(db))) is not None and not look.blurred
             and look.at > t + EVENT_RESOLUTION, 10, what="a look sure of the files' state")


def test_no_event_is_handled_while_a_change_is_pending(
        tmp_path: Path, watched: tuple[lag.LagMonitor, Watcher],
        dispatched: list[tuple[str, str]]) -> None:
    """The first write drops the watch; a thousand more reach no handler, and the watcher's
    look still records that the files changed (no bucket was checked: nothing is settled)."""
    monitor, watcher = watched
    wal = tmp_path / "app.db-wal"
    events = monitor.dbs[0].changes._events
    _append(wal)
    wait_for(lambda: watcher.pauses == 1, 10, what="the watch to be dropped")
    assert not watcher.listening(str(tmp_path))
    _sure_look(watcher, monitor.dbs[0])
    before, recorded = len(dispatched), len(events)
    t0 = time.monotonic()
    _append(wal, 1000)
    wait_for(lambda: len(events) > recorded, 10, what="a look to see the writes")
    assert events[-1] <= t0  # timed at the look before them: the lag errs large, never small
    time.sleep(0.3)  # (a dropped watch has no event to wait for)
    assert dispatched[before:] == []
    assert watcher.pauses == 1 and watcher.rearms == 0


def test_the_watch_comes_back_once_the_bucket_holds_every_change(
        tmp_path: Path, watched: tuple[lag.LagMonitor, Watcher],
        dispatched: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    monitor, watcher = watched
    db = monitor.dbs[0]
    settled = [False]
    monkeypatch.setattr(db, "settled", lambda: settled[0])
    _append(tmp_path / "app.db-wal")
    wait_for(lambda: watcher.pauses == 1, 10, what="the watch to be dropped")
    settled[0] = True
    wait_for(lambda: watcher.listening(str(tmp_path)), 10, what="the watch to come back")
    assert watcher.rearms == 1
    before = len(dispatched)
    _append(tmp_path / "app.db-wal")
    wait_for(lambda: len(dispatched) > before, 10, what="an event after the watch came back")
    wait_for(lambda: watcher.pauses == 2, 10, what="the watch to be dropped again")


def test_a_write_between_the_last_look_and_the_new_watch_counts(
        tmp_path: Path, watched: tuple[lag.LagMonitor, Watcher],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: the bucket caught up, the watch is about to be scheduled again, and the app
    writes in between (no event: nothing listens yet). The look after scheduling counts it,
    timed at the last look (before the write)."""
    monitor, watcher = watched
    db = monitor.dbs[0]
    wal = tmp_path / "app.db-wal"
    settled = [False]
    monkeypatch.setattr(db, "settled", lambda: settled[0])
    _append(wal)
    wait_for(lambda: watcher.pauses == 1, 10, what="the watch to be dropped")
    _sure_look(watcher, db)
    events = db.changes._events
    recorded = len(events)
    written: list[float] = []
    assert watcher._observer is not None
    schedule = watcher._observer.schedule

    def write_then_schedule(*a: object, **kw: object) -> object:
        _append(wal)
        written.append(time.monotonic())
        return schedule(*a, **kw)

    monkeypatch.setattr(watcher._observer, "schedule", write_then_schedule)
    settled[0] = True
    wait_for(lambda: watcher.rearms == 1, 10, what="the watch to come back")
    assert written and len(events) > recorded, "the write before the watch was lost"
    assert events[-1] <= written[0]


def test_a_failed_step_is_tried_again_and_the_watch_still_comes_back(
        tmp_path: Path, watched: tuple[lag.LagMonitor, Watcher],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Scheduling the watch again fails once (the directory gone for a moment, say): the
    thread logs it, goes on looking, and schedules it at a later look."""
    monitor, watcher = watched
    db = monitor.dbs[0]
    monkeypatch.setattr(db, "settled", lambda: True)
    assert watcher._observer is not None
    schedule = watcher._observer.schedule
    calls: list[int] = []

    def flaky(*a: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("no such directory")
        return schedule(*a, **kw)

    monkeypatch.setattr(watcher._observer, "schedule", flaky)
    _append(tmp_path / "app.db-wal")
    wait_for(lambda: watcher.rearms == 1, 10, what="the watch to come back after a failure")
    assert len(calls) == 2 and watcher.listening(str(tmp_path))


def test_a_commit_that_stat_cannot_see_is_seen_in_the_wal_index(tmp_path: Path) -> None:
    """On a file system with coarse timestamps a WAL reset rewritten to the same size in the
    same tick shows nothing to stat: the -shm file's wal-index header, which every commit
    changes, tells the two states apart."""
    from sidecar.lag.watcher import file_state

    for suffix, data in (("", b"d" * 4096), ("-wal", b"w" * 4096), ("-shm", bytes(32768))):
        (tmp_path / f"app.db{suffix}").write_bytes(data)
    probe = DbLag(_cfg(tmp_path).databases[0], None, None)
    before, _ = file_state(probe)
    with (tmp_path / "app.db-shm").open("r+b") as f:  # a commit: the header's counters move
        f.seek(16)
        f.write((7).to_bytes(4, "little"))
    after, _ = file_state(probe)
    assert before[:2] == after[:2] and before != after  # the DB and -wal alike, not the index


def test_a_watch_that_cannot_come_back_still_looks_and_says_so_once(
        tmp_path: Path, watched: tuple[lag.LagMonitor, Watcher],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Scheduling the watch again keeps failing: the files are still looked at, so a write
    meanwhile is dated, and the failure is logged once, not at every look."""
    monitor, watcher = watched
    db = monitor.dbs[0]
    monkeypatch.setattr(db, "settled", lambda: True)
    assert watcher._observer is not None
    calls: list[int] = []

    def failing(*a: object, **kw: object) -> object:
        calls.append(1)
        raise OSError("no space for another watch")

    warned: list[str] = []
    monkeypatch.setattr(watcher._observer, "schedule", failing)
    monkeypatch.setattr(watcher, "_log", type("L", (), {
        "warning": staticmethod(lambda msg, **kw: warned.append(msg))})())
    changed: list[float] = []
    original = db.file_changed
    monkeypatch.setattr(db, "file_changed", lambda *a, **kw: (changed.append(1),
                                                              original(*a, **kw)))
    _append(tmp_path / "app.db-wal")
    wait_for(lambda: len(calls) >= 3, 10, what="three tries to schedule the watch")
    seen = len(changed)
    _append(tmp_path / "app.db-wal")
    wait_for(lambda: len(changed) > seen, 10, what="the write made while the watch is away")
    assert warned == ["file watching step failed"], warned
    assert not watcher.listening(str(tmp_path))
