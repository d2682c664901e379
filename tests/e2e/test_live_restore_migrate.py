"""Migrations after a live restore: a point-in-time restore to before the last migration brings
back the older schema, and the migration command runs on it (after its safety copy) before the
app starts again; a migration that fails there holds the sidecar (app stopped, the pre-restore
database kept, /status and `sidecar status` say why) until `sidecar resume` or another restore.

Real Litestream, a real S3 server, a real migration runner (a small script applying
migrations/*.sql in order, recording them in _migrations, like Prisma's migrate deploy)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from faultkit import fault_env, request

from sidecar.litestream import Control
from testkit import S3_SECRET, make_db, rows, run_sidecar, s3_env, side_restore, wait_for, write_app
from testkit.db import query
from testkit.live import db_path, state_dir, synced, wait_synced

pytestmark = pytest.mark.slow

MIGRATE = textwrap.dedent("""
    import glob, os, sqlite3, sys
    path = os.environ["DATABASE_URL"].removeprefix("file:")
    folder = os.environ["MIGRATIONS_DIR"]
    con = sqlite3.connect(path, isolation_level=None, timeout=10)
    con.execute("CREATE TABLE IF NOT EXISTS _migrations(name TEXT PRIMARY KEY)")
    done = {r[0] for r in con.execute("SELECT name FROM _migrations")}
    for f in sorted(glob.glob(os.path.join(folder, "*.sql"))):
        name = os.path.basename(f)
        if name in done:
            continue
        con.execute("BEGIN")
        try:
            for stmt in open(f).read().split(";"):
                if stmt.strip():
                    con.execute(stmt)
            con.execute("INSERT INTO _migrations VALUES (?)", (name,))
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            con.execute("ROLLBACK")
            print(f"migration {name} failed: {exc}", flush=True)
            sys.exit(1)
        print(f"applied {name}", flush=True)
    print("migrations up to date", flush=True)
""")

# Reports the columns of `rows` it sees at start, then idles.
SCHEMA_APP = textwrap.dedent("""
    import os, signal, sqlite3, sys, time
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    con = sqlite3.connect(os.environ["SIDECAR_DB_PATH"])
    cols = ",".join(r[1] for r in con.execute("PRAGMA table_info(rows)"))
    con.close()
    print(f"app up {os.getpid()} columns={cols}", flush=True)
    while True:
        time.sleep(0.2)
""")

CREATE_ROWS = "CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT, at REAL);\n"
ADD_NOTE = "ALTER TABLE rows ADD COLUMN note TEXT;\n"
BROKEN = "ALTER TABLE no_such_table ADD COLUMN x TEXT;\n"


def columns(db: Path, table: str = "rows") -> list[str]:
    return [r[1] for r in query(db, f"PRAGMA table_info({table})")]


def applied(db: Path) -> list[str]:
    return [r[0] for r in query(db, "SELECT name FROM _migrations ORDER BY name")]


def app_lines(sc: Any) -> list[str]:
    return [line for line in sc.stdout if line.startswith("app up ")]


class Project:
    """A tiny app with a migrations folder, deployed under sidecar against a real bucket."""

    def __init__(self, tmp_path: Path, s3: Any, bucket: str, sidecars: Any):
        self.tmp, self.sidecars = tmp_path, sidecars
        self.migrations = tmp_path / "migrations"
        self.migrations.mkdir()
        (self.migrations / "001_rows.sql").write_text(CREATE_ROWS)
        runner = write_app(tmp_path, MIGRATE, "migrate.py")
        self.env = fault_env(tmp_path, **s3_env(s3, bucket), SIDECAR_SYNC_INTERVAL="200ms",
                             MIGRATIONS_DIR=str(self.migrations),
                             SIDECAR_MIGRATE_COMMAND=" ".join(runner))
        self.app = write_app(tmp_path, SCHEMA_APP, "schema_app.py")

    def boot(self) -> Any:
        sc = self.sidecars(self.env, self.app, self.tmp)
        sc.wait_event("app started", timeout=60)
        wait_for(lambda: app_lines(sc), 20, what="the app's first line")
        return sc

    def history(self) -> tuple[Any, str]:
        """Boot 1 (001 only): rows a1,a2 reach the bucket; time T; deploy 002 (adds a column):
        boot 2 migrates it and writes b1 (with a note). Returns the running sidecar and T."""
        sc = self.boot()
        make_db(db_path(self.env), ["a1", "a2"])
        wait_synced(self.env, 20, what="a first sync")
        time.sleep(1.2)  # the listing's times have whole-second resolution
        t = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        time.sleep(1.2)
        sc.signal(signal.SIGTERM)
        assert sc.wait() == 0, sc.output()

        (self.migrations / "002_note.sql").write_text(ADD_NOTE)
        sc = self.boot()
        assert app_lines(sc)[-1].endswith("columns=id,v,at,note"), app_lines(sc)
        con = sqlite3.connect(db_path(self.env), isolation_level=None)
        con.execute("INSERT INTO rows(v, at, note) VALUES ('b1', 0, 'after 002')")
        con.close()
        synced(self.env)
        return sc, t


def test_pitr_to_before_a_migration_migrates_again_before_the_app(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """A live restore to a time before migration 002: the migration command runs on the
    restored DB (after a safety copy of it) before the app starts again, so the new app process
    sees the new column; replication resumes from the migrated state."""
    proj = Project(tmp_path, s3, bucket, sidecars)
    sc, t = proj.history()
    first_pid = app_lines(sc)[0].split()[2]
    before = len(sc.events)

    res = run_sidecar(["restore", "--timestamp", t, "--yes"], proj.env, tmp_path, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    db = db_path(proj.env)
    assert rows(db) == ["a1", "a2"]
    assert columns(db) == ["id", "v", "at", "note"]
    assert applied(db) == ["001_rows.sql", "002_note.sql"]

    wait_for(lambda: len(app_lines(sc)) == 2, 20, what="the app to start again")
    assert app_lines(sc)[1].endswith("columns=id,v,at,note"), app_lines(sc)
    assert app_lines(sc)[1].split()[2] != first_pid
    # Order: restore, safety copy, migration, replication, then the app.
    names = [e.get("message") for e in sc.events[before:]]
    copy_at = names.index("pre-migration copy")
    migrated_at = next(i for i, e in enumerate(sc.events[before:])
                       if e.get("message") == "migrations finished" and e.get("after") == "restore")
    app_at = len(names) - 1 - names[::-1].index("app started")
    assert names.index("replication stopped for the restore") < copy_at < migrated_at < app_at
    assert names.index("restored state replicated") < app_at
    copy = Path(sc.events[before:][copy_at]["path"])
    assert columns(copy) == ["id", "v", "at"] and rows(copy) == ["a1", "a2"]  # the restored DB
    assert any("applied 002_note.sql" in str(e.get("line")) for e in sc.events[before:])

    # The migrated restored state is now the newest backup.
    backup = side_restore(proj.env, tmp_path / "bucket.db")
    assert rows(backup) == ["a1", "a2"] and "note" in columns(backup)
    code, body = request(proj.env, "GET", "/status")
    doc = json.loads(body)
    assert code == 200 and doc["last_migration"]["outcome"] == "succeeded"
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0, sc.output()


def _hold_after_restore(proj: Project, sc: Any, t: str) -> tuple[Any, Path]:
    """A broken migration (003) is present; the live restore to T must hold. Checks the hold
    and returns the restore's result and the kept pre-restore DB."""
    (proj.migrations / "003_broken.sql").write_text(BROKEN)
    app_pid = int(app_lines(sc)[-1].split()[2])
    res = run_sidecar(["restore", "--timestamp", t, "--yes"], proj.env, proj.tmp, timeout=180)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "restored, but the migration command failed" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and S3_SECRET not in res.stdout + res.stderr
    assert "sidecar resume" in res.stderr

    db = db_path(proj.env)
    assert rows(db) == ["a1", "a2"]  # the restored DB, migrated up to 002 (003 rolled back)
    kept = sorted(p for p in (state_dir(proj.env) / "pre-restore").iterdir()
                  if not p.name.endswith(("-wal", "-shm")))
    assert len(kept) == 1 and rows(kept[0]) == ["a1", "a2", "b1"], kept
    assert str(kept[0]) in res.stderr  # named where the operator looks
    # The app stays stopped.
    time.sleep(1.0)
    assert len(app_lines(sc)) == 1 and not Path(f"/proc/{app_pid}").exists()
    assert sc.proc.poll() is None

    status = run_sidecar(["status"], proj.env, proj.tmp)
    assert status.returncode == 0, status.stderr
    assert "held" in status.stdout and "migration" in status.stdout
    assert "sidecar resume" in status.stdout
    code, body = request(proj.env, "GET", "/status")
    doc = json.loads(body)
    assert doc["state"] == "held" and doc["failure"]["exit_code"] == 5
    assert "migration" in doc["failure"]["error"]
    code, body = request(proj.env, "GET", "/readyz")
    assert code == 503 and "held for an operator" in body
    assert request(proj.env, "GET", "/healthz")[0] == 200
    # Replication of the DB stays stopped while held: the bucket still ends with b1.
    assert rows(side_restore(proj.env, proj.tmp / "held-bucket.db")) == ["a1", "a2", "b1"]
    return res, kept[0]


def test_failing_migration_after_restore_holds_and_resume_continues(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """A migration failing after a live restore: the app stays stopped, the pre-restore DB is
    kept, status says why, and a Litestream restart meanwhile does not resume the held DB;
    once the migration is fixed, `sidecar resume` migrates, resumes replication and starts the
    app on the new schema."""
    proj = Project(tmp_path, s3, bucket, sidecars)
    sc, t = proj.history()
    _hold_after_restore(proj, sc, t)

    # Litestream crashing while held opens every DB again: the held one is stopped again.
    ls_pid = sc.event("replication started")["pid"]
    os.kill(ls_pid, signal.SIGKILL)
    sc.wait_event("replication of the held database stopped again", timeout=30)
    listed = Control(state_dir(proj.env) / "litestream.sock").list()
    assert [d["status"] for d in listed if d["path"] == str(db_path(proj.env))] == ["stopped"]

    (proj.migrations / "003_broken.sql").write_text("CREATE TABLE fixed(x TEXT);\n")
    res = run_sidecar(["resume"], proj.env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(lambda: len(app_lines(sc)) == 2, 20, what="the app after resume")
    assert app_lines(sc)[1].endswith("columns=id,v,at,note")
    db = db_path(proj.env)
    assert applied(db) == ["001_rows.sql", "002_note.sql", "003_broken.sql"]
    code, body = request(proj.env, "GET", "/status")
    assert code == 200 and json.loads(body)["state"] == "running" and json.loads(body)["failure"] is None
    wait_for(lambda: rows(side_restore(proj.env, tmp_path / "b2.db")) == ["a1", "a2"], 20,
             what="the restored, migrated state in the bucket")
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0, sc.output()


def test_failing_migration_after_restore_holds_and_another_restore_continues(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """Held after a failed post-restore migration, the operator fixes the migration and
    restores the latest backup (still the state before the first restore, as replication was
    stopped): the app runs again on it, migrated."""
    proj = Project(tmp_path, s3, bucket, sidecars)
    sc, t = proj.history()
    _hold_after_restore(proj, sc, t)

    (proj.migrations / "003_broken.sql").unlink()
    res = run_sidecar(["restore", "--yes"], proj.env, tmp_path, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    wait_for(lambda: len(app_lines(sc)) == 2, 20, what="the app after the second restore")
    assert rows(db_path(proj.env)) == ["a1", "a2", "b1"]
    assert app_lines(sc)[1].endswith("columns=id,v,at,note")
    code, body = request(proj.env, "GET", "/status")
    assert code == 200 and json.loads(body)["state"] == "running"
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0, sc.output()


def test_stop_while_held_after_restore_exits_5_and_the_next_start_migrates_first(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """SIGTERM while held exits 5 (the migration's code); the next start finds the restored
    DB, runs the migration before anything else and, as it still fails, never starts the app."""
    proj = Project(tmp_path, s3, bucket, sidecars)
    sc, t = proj.history()
    _hold_after_restore(proj, sc, t)
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 5, sc.output()

    again = sidecars(proj.env, proj.app, tmp_path)
    assert again.wait(60) == 5, again.output()
    assert again.event("restore decided")["outcome"] == "skipped"
    assert again.event("app started") is None and not app_lines(again)
