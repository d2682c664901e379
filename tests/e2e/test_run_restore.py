"""The restore decision at start, against a real S3 server and the real Litestream binary."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from testkit import (
    BIN,
    S3_SECRET,
    base_env,
    rows,
    run_sidecar,
    s3_env,
    seed_bucket,
    side_restore,
    wait_for,
    write_app,
)
from testkit.db import lose_db

pytestmark = pytest.mark.slow

# A migration command that records how many rows it saw, proving it ran after the restore.
MIGRATE_PROBE = textwrap.dedent("""
    import os, sqlite3, sys
    path = os.environ["DATABASE_URL"][len("file:"):]
    n = sqlite3.connect(path).execute(
        "SELECT count(*) FROM sqlite_master WHERE name='rows'").fetchone()[0]
    count = sqlite3.connect(path).execute("SELECT count(*) FROM rows").fetchone()[0] if n else -1
    with open(os.environ["PROBE_OUT"], "a") as f:
        f.write(f"{count}\\n")
""")


@pytest.mark.parametrize("damage", ["deleted", "zero-bytes"])
def test_missing_or_empty_db_is_restored_before_migrations(tmp_path: Path, s3, bucket,
                                                           damage: str) -> None:
    """A deleted DB, or one replaced by a 0-byte file, is restored with every row before the
    migration command runs; the old file is kept aside."""
    probe = tmp_path / "probe.txt"
    mig = tmp_path / "mig.py"
    mig.write_text(MIGRATE_PROBE)
    env = base_env(tmp_path, **s3_env(s3, bucket), PROBE_OUT=str(probe),
                   SIDECAR_MIGRATE_COMMAND=f"{sys.executable} {mig}")
    values = [f"v{i}" for i in range(50)]
    seed_bucket(env, tmp_path, values)
    db = Path(env["SIDECAR_DB_PATH"])
    assert rows(db) == values
    lose_db(db)
    if damage == "zero-bytes":
        db.write_bytes(b"")

    app = write_app(tmp_path, "print('app ran', flush=True)\n", "noop.py")
    res = run_sidecar(["run", "--", *app], env, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert rows(db) == values
    # Migrations ran twice (seed, then this start), and on this start saw every row.
    assert probe.read_text().split() == ["-1", "50"]
    assert '"outcome": "restored"' in res.stderr
    assert res.stderr.index('"restore decided"') < res.stderr.index('"migrations finished"') \
        < res.stderr.index('"app started"')
    if damage == "zero-bytes":
        kept = list((db.parent / ".sidecar" / "pre-restore").glob("app.db.*"))
        assert kept and kept[0].stat().st_size == 0


def test_present_db_is_not_restored(tmp_path: Path, s3, bucket) -> None:
    """A database with data is used as it is: no restore, outcome skipped."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["a"])
    res = run_sidecar(["run", "--", "true"], env, tmp_path)
    assert res.returncode == 0
    assert '"outcome": "skipped"' in res.stderr


def test_s3_down_and_db_missing_refuses_to_start(tmp_path: Path, own_s3) -> None:
    """S3 stopped and no DB: exit 4 within the bound, no DB file created, app never started,
    the message names the endpoint."""
    bucket = own_s3.make_bucket()
    env = base_env(tmp_path, **s3_env(own_s3, bucket), SIDECAR_REPLICA_TIMEOUT="3s")
    own_s3.stop()
    marker = tmp_path / "app-ran"
    t0 = time.monotonic()
    res = run_sidecar(["run", "--", "touch", str(marker)], env, tmp_path)
    took = time.monotonic() - t0
    assert res.returncode == 4, res.stderr
    assert took < 20
    assert own_s3.endpoint in res.stderr
    assert not Path(env["SIDECAR_DB_PATH"]).exists()
    assert not Path(env["SIDECAR_DB_PATH"] + "-wal").exists()
    assert not marker.exists()


def test_s3_down_with_db_present_starts_and_catches_up(tmp_path: Path, own_s3, sidecars) -> None:
    """S3 stopped with the DB present: the app starts; when S3 returns, the rows written during
    the outage reach the bucket."""
    bucket = own_s3.make_bucket()
    env = base_env(tmp_path, **s3_env(own_s3, bucket), APP_TAG="o")
    seed_bucket(env, tmp_path, ["before"])
    own_s3.stop()
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_event("app started", timeout=60)
    sc.wait_stdout("wrote o-20")
    own_s3.start()
    wait_for(lambda: "o-20" in rows(side_restore(env, tmp_path / f"r{time.time()}.db")), 60,
             interval=1, what="outage rows in the bucket")
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0


@pytest.mark.parametrize("problem", ["wrong-secret", "missing-bucket"])
def test_denied_or_missing_bucket_refuses_at_once(tmp_path: Path, s3, problem: str) -> None:
    """A wrong secret or a bucket that does not exist: exit 4 at once, the problem named, the
    secret printed nowhere."""
    bucket = s3.make_bucket() if problem == "wrong-secret" else "no-such-bucket-here"
    env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_REPLICA_TIMEOUT="60s")
    wrong = "Wrong-Secret-Value-123456"
    if problem == "wrong-secret":
        env["AWS_SECRET_ACCESS_KEY"] = wrong
    t0 = time.monotonic()
    res = run_sidecar(["run", "--", "true"], env, tmp_path)
    assert res.returncode == 4, res.stderr
    assert time.monotonic() - t0 < 15  # not the 60 s retry bound: these are final answers
    text = res.stdout + res.stderr
    if problem == "wrong-secret":
        assert "denied" in text
    else:
        assert "does not exist" in text and bucket in text
    assert wrong not in text and S3_SECRET not in text
    assert not Path(env["SIDECAR_DB_PATH"]).exists()


def test_corrupt_db_is_never_replaced(tmp_path: Path, s3, bucket) -> None:
    """A DB file that is not SQLite stops the start (exit 4) and is left exactly as it was."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["x"])
    db = Path(env["SIDECAR_DB_PATH"])
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"this is not a database" * 100)
    res = run_sidecar(["run", "--", "true"], env, tmp_path)
    assert res.returncode == 4
    assert "not a SQLite database" in res.stderr
    assert db.read_bytes() == b"this is not a database" * 100


def _big_db(path: Path, mb: int) -> None:
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
    blob = "x" * 4000
    with con:
        for i in range(mb * 250):
            con.execute("INSERT INTO rows(v, at) VALUES (?, 0)", (f"{i}-{blob}",))
    con.close()


def test_sigkill_during_restore_never_leaves_a_partial_db(tmp_path: Path, s3, bucket) -> None:
    """The sidecar SIGKILLed in the middle of restoring a large DB leaves no file at the live
    path; the next start restores it completely."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    db = Path(env["SIDECAR_DB_PATH"])
    _big_db(db, 150)
    count = sqlite3.connect(db).execute("SELECT count(*) FROM rows").fetchone()[0]
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lose_db(db)

    proc = subprocess.Popen([str(BIN / "sidecar"), "run", "--", "true"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    partial = [p for p in db.parent.glob(".app.db.sidecar-restore-*")]
    wait_for(lambda: [p for p in db.parent.glob(".app.db.sidecar-restore-*")
                      if p.stat().st_size > 1_000_000], 60, interval=0.02,
             what="a partly written restore")
    import os
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not db.exists(), "a partial restore reached the live path"
    partial = list(db.parent.glob(".app.db.sidecar-restore-*"))
    assert partial  # the evidence of the interrupted restore, beside the DB

    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sqlite3.connect(db).execute("SELECT count(*) FROM rows").fetchone()[0] == count
    assert not list(db.parent.glob(".app.db.sidecar-restore-*"))


def test_two_databases_from_the_project_litestream_yml(tmp_path: Path, s3, bucket) -> None:
    """A project litestream.yml with two databases: both replicate with secrets taken from the
    environment (a `$` in the secret intact), and both are restored after being deleted."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    env.pop("SIDECAR_DB_PATH")
    env.pop("SIDECAR_REPLICA_URL")
    data = tmp_path / "data"
    (tmp_path / "litestream.yml").write_text(textwrap.dedent(f"""
        dbs:
          - path: {data}/one.db
            replica:
              url: s3://{bucket}/one
              endpoint: ${{SIDECAR_S3_ENDPOINT}}
              access-key-id: ${{AWS_ACCESS_KEY_ID}}
              secret-access-key: ${{AWS_SECRET_ACCESS_KEY}}
          - path: {data}/two.db
            replica:
              type: s3
              bucket: {bucket}
              path: two
              endpoint: ${{SIDECAR_S3_ENDPOINT}}
              force-path-style: true
              access-key-id: ${{AWS_ACCESS_KEY_ID}}
              secret-access-key: ${{AWS_SECRET_ACCESS_KEY}}
    """))
    app = write_app(tmp_path, textwrap.dedent(f"""
        import sqlite3
        for name in ("one", "two"):
            db = sqlite3.connect("{data}/" + name + ".db", isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
            db.execute("INSERT INTO rows(v, at) VALUES (?, 0)", (name,))
    """), "both.py")
    res = run_sidecar(["run", "--", *app], env, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count('"outcome": "fresh"') == 2
    for name in ("one", "two"):
        lose_db(data / f"{name}.db")
    res = run_sidecar(["run", "--", "true"], env, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count('"outcome": "restored"') == 2
    assert rows(data / "one.db") == ["one"] and rows(data / "two.db") == ["two"]
    # Expanded by sidecar (the `$` in the secret intact, or the restore above could not have
    # read the bucket) into a private file on a tmpfs, removed at exit: never on the volume.
    rendered = Path(next(json.loads(line) for line in res.stderr.splitlines()
                         if '"litestream config written"' in line)["path"])
    assert not rendered.is_relative_to(tmp_path) and not rendered.exists()
    assert not [p for p in data.rglob("*") if p.is_file() and S3_SECRET.encode() in p.read_bytes()]
    assert S3_SECRET not in res.stderr


def test_sigterm_during_a_long_restore_stops_cleanly(tmp_path: Path, s3, bucket) -> None:
    """SIGTERM while a restore downloads: the restore is abandoned, nothing reaches the live
    path, the app never starts, and the exit is 143 (a stop, not a failed restore)."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    db = Path(env["SIDECAR_DB_PATH"])
    _big_db(db, 150)
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lose_db(db)
    marker = tmp_path / "app-ran"
    proc = subprocess.Popen([str(BIN / "sidecar"), "run", "--", "touch", str(marker)], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    wait_for(lambda: [p for p in db.parent.glob(".app.db.sidecar-restore-*")
                      if p.stat().st_size > 1_000_000], 60, interval=0.02,
             what="a restore under way")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert not db.exists() and not marker.exists()
