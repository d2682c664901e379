"""The start-up restore writes its temporary file beside the database, in the directory the
lag monitor watches: `sidecar run` starts the monitor with its watching deferred, so none of
those writes reaches the watcher's thread, and watching starts when told (once)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sidecar import config
from sidecar.lag import model as lag
from testkit import wait_for


def test_deferred_monitor_watches_only_once_told(tmp_path: Path) -> None:
    cfg = config.load({"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "PATH": "/usr/bin:/bin",
                       "SIDECAR_REPLICA_URL": f"file://{tmp_path / 'replica'}"},
                      app_command=["true"], cwd=tmp_path)
    monitor = lag.start(cfg, None, lambda: True, lambda *a: None, defer_checks=True)
    events = monitor.dbs[0].changes._events
    try:
        temp = tmp_path / ".app.db.sidecar-restore-1"  # what a restore writes meanwhile
        with temp.open("wb") as f:
            for _ in range(50):
                f.write(b"x" * 4096)
                f.flush()
        (tmp_path / "app.db").write_bytes(b"y")
        time.sleep(0.5)
        assert monitor._observer is None and not events
        monitor.watch()
        observer = monitor._observer
        monitor.watch()
        assert observer is not None and monitor._observer is observer
        (tmp_path / "app.db").write_bytes(b"z")
        wait_for(lambda: len(events) > 0, 10, what="the watcher to see a write to the DB")
    finally:
        monitor.stop()


def test_reads_of_a_database_never_reach_the_watchers_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Litestream opens and reads every WAL about twice a second: those opens and closes
    are not asked of the kernel at all (a thousand tenants made ~4,000 a second), while a
    write still is seen."""
    from watchdog.events import FileSystemEventHandler

    seen: list[str] = []
    original = FileSystemEventHandler.dispatch

    def dispatch(self: FileSystemEventHandler, event: object) -> None:
        seen.append(event.event_type)  # type: ignore[attr-defined]
        original(self, event)  # type: ignore[arg-type]

    monkeypatch.setattr(FileSystemEventHandler, "dispatch", dispatch)
    cfg = config.load({"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "PATH": "/usr/bin:/bin",
                       "SIDECAR_REPLICA_URL": f"file://{tmp_path / 'replica'}"},
                      app_command=["true"], cwd=tmp_path)
    (tmp_path / "app.db-wal").write_bytes(b"w" * 4096)
    monitor = lag.start(cfg, None, lambda: True, lambda *a: None, defer_checks=True)
    try:
        monitor.watch()
        time.sleep(0.2)
        for _ in range(100):
            with (tmp_path / "app.db-wal").open("rb") as f:
                f.read(32)
        time.sleep(0.5)
        assert [e for e in seen if e in ("opened", "closed_no_write")] == [], seen[:5]
        with (tmp_path / "app.db-wal").open("ab") as f:
            f.write(b"x")
        wait_for(lambda: "modified" in seen, 10, what="the write to be seen")
    finally:
        monitor.stop()
