"""Fault suite, the volume: a full disk (a small tmpfs mounted as the volume) and a damaged
database file at start."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import bucket_rows, fault_env, logged_rows, no_secret_leaks  # noqa: F401

from sidecar import dbfile
from testkit import need, rows, s3_env, seed_bucket, side_restore, wait_for, write_app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_secret_leaks")]


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs mounted at tmp_path/vol: a real mount point that fills up."""
    vol = tmp_path / "vol"
    vol.mkdir()
    need(os.geteuid() == 0, "mounting a tmpfs volume needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(vol)],
                         capture_output=True, text=True, check=False)
    need(res.returncode == 0, f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield vol
    finally:
        subprocess.run(["umount", "-l", str(vol)], check=False)


# Writes 8 KB rows until SQLite says the disk is full, reports SQLite's error, waits for
# RESUME_FLAG, then writes five small rows and idles. Logs "wrote X" after each commit.
FILLING_APP = """
import os, sqlite3, sys, time
db = sqlite3.connect(os.environ["SIDECAR_DB_PATH"], isolation_level=None, timeout=10)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT, at REAL, b BLOB)")
n = 0
while True:
    try:
        db.execute("INSERT INTO rows(v, at, b) VALUES (?, ?, randomblob(8000))",
                   (f"big-{n}", time.time()))
    except sqlite3.Error as exc:
        print(f"sqlite error: {type(exc).__name__}: {exc}", flush=True)
        break
    print(f"wrote big-{n}", flush=True)
    n += 1
    time.sleep(0.02)
while not os.path.exists(os.environ["RESUME_FLAG"]):
    time.sleep(0.1)
for i in range(5):
    while True:
        try:
            db.execute("INSERT INTO rows(v, at) VALUES (?, ?)", (f"small-{i}", time.time()))
            break
        except sqlite3.Error as exc:
            print(f"sqlite error: {type(exc).__name__}: {exc}", flush=True)
            time.sleep(0.5)
    print(f"wrote small-{i}", flush=True)
while True:
    time.sleep(1)
"""


def test_volume_full_app_gets_sqlite_error_nothing_lost_replication_resumes(
        tmp_path: Path, small_volume: Path, s3, bucket, sidecars) -> None:
    """The volume fills up: the app gets SQLite's own "database or disk is full", the sidecar
    stays up, every committed row stays in the local DB (which passes quick_check); once space
    is freed, replication resumes and every row, before and after, reaches the bucket."""
    ballast = small_volume / "ballast"
    ballast.write_bytes(os.urandom(1024 * 1024))
    resume = tmp_path / "resume"
    env = fault_env(tmp_path, **s3_env(s3, bucket), SIDECAR_VOLUME_PATH=str(small_volume),
                    SIDECAR_DB_PATH=str(small_volume / "app.db"), RESUME_FLAG=str(resume))
    sc = sidecars(env, write_app(tmp_path, FILLING_APP, "fill.py"), tmp_path)
    sc.wait_event("app started")
    sc.wait_stdout("sqlite error", timeout=60)
    err = next(line for line in sc.stdout if line.startswith("sqlite error"))
    assert "database or disk is full" in err, err
    before = logged_rows(sc.stdout)
    assert len(before) > 20
    # Litestream runs into the full disk too (it stages LTX files on the volume), and says so.
    sc.wait_event("disk full while staging ltx file, replication paused until space is freed",
                  30)
    assert sc.proc.poll() is None, sc.output()
    local = rows(small_volume / "app.db")
    assert set(before) <= set(local), "a committed row is gone from the full volume"
    assert dbfile.quick_check(small_volume / "app.db") == "ok"
    in_bucket = bucket_rows(env, tmp_path / "full.db")
    print(f"while full: {len(before)} rows committed, {len(in_bucket)} in the bucket")

    ballast.unlink()
    resume.touch()
    sc.wait_stdout("wrote small-4", timeout=30)
    wait_for(lambda: "small-4" in bucket_rows(env, tmp_path / "after.db"), 40, 1,
             what="rows written after space was freed, in the bucket")
    sc.signal(signal.SIGTERM)
    assert sc.wait(60) == 143, sc.output()  # the app has no SIGTERM handler
    restored = rows(side_restore(env, tmp_path / "final.db"))
    local = rows(small_volume / "app.db")
    assert restored == local
    assert set(logged_rows(sc.stdout)) <= set(restored)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _not_sqlite(db: Path) -> None:
    db.write_bytes(b"this is not a database\n" * 200)


def _fails_quick_check(db: Path) -> None:
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
    con.execute("CREATE INDEX rows_v ON rows(v)")
    con.executemany("INSERT INTO rows(v, at) VALUES (?, 0)",
                    [(f"local-{i}" * 5,) for i in range(3000)])
    con.commit()
    con.close()
    with open(db, "r+b") as f:  # the header and schema stay readable; page 6 does not
        f.seek(4096 * 5)
        f.write(b"\xff" * 64)


@pytest.mark.parametrize(("damage", "detail"), [
    (_not_sqlite, "not a SQLite database"),
    (_fails_quick_check, "quick_check failed"),
], ids=["not-sqlite", "quick-check"])
def test_damaged_db_at_start_refuses_and_never_overwrites_it(
        tmp_path: Path, s3, bucket, sidecars, damage, detail) -> None:
    """A damaged DB file at start, with good backups in the bucket: the sidecar refuses to start
    (exit 4) with a message naming the file and the damage, and leaves the file, the bucket and
    the directory exactly as they were; the app never runs."""
    env = fault_env(tmp_path, **s3_env(s3, bucket), SIDECAR_REPLICA_TIMEOUT="3s")
    seed_bucket(env, tmp_path, ["backup-1", "backup-2"])
    db = Path(env["SIDECAR_DB_PATH"])
    for p in db.parent.glob("app.db*"):
        p.unlink()
    damage(db)
    digest, listing = _sha(db), sorted(p.name for p in db.parent.iterdir())
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    assert sc.wait(60) == 4, sc.output()
    err = next(e for e in sc.events if e.get("exit_code") == 4)
    assert str(db) in err["message"] and detail in err["message"], err
    assert "sidecar restore --output" in err.get("fix", "")
    assert _sha(db) == digest
    assert sorted(p.name for p in db.parent.iterdir()) == listing
    assert not (Path(env["SIDECAR_DB_PATH"]).parent / ".sidecar" / "pre-restore").exists()
    assert sc.stdout == []
    assert rows(side_restore(env, tmp_path / "backup.db")) == ["backup-1", "backup-2"]
