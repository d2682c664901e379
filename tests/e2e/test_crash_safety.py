"""No unsupervised children after a crash of sidecar itself: SIGKILL to the sidecar alone
(outside a PID namespace, as under systemd or an OOM kill) takes the app and Litestream with it
within a second; a descendant that escapes (a grandchild of the app) holds the lock beside the
database, so a new sidecar refuses with exit 3 while it runs, whatever SIDECAR_STATE_DIR says.
Real sidecar, real Litestream, real S3 server, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import time
from pathlib import Path

import pytest

from testkit import base_env, rows, run_sidecar, s3_env, wait_for, write_app

pytestmark = pytest.mark.slow


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def survivors(pids: list[int], within: float) -> list[int]:
    end = time.monotonic() + within
    while time.monotonic() < end:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def test_sigkill_of_sidecar_alone_takes_app_and_litestream_with_it(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """SIGKILL to the sidecar's pid only: within a second neither the app nor Litestream runs;
    the lock is free again, and the next sidecar starts on the same DB with every row."""
    env = base_env(tmp_path, **s3_env(s3, bucket), WRITE_INTERVAL="0.05")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    app_pid = sc.wait_event("app started")["pid"]
    ls_pid = sc.wait_event("replication started")["pid"]
    sc.wait_stdout("wrote run-5")
    assert alive(app_pid) and alive(ls_pid)

    os.kill(sc.proc.pid, signal.SIGKILL)  # the sidecar alone, not its group or children
    sc.proc.wait()
    left = survivors([app_pid, ls_pid], within=1.0)
    assert left == [], f"still running a second after the sidecar died: {left}"

    written = rows(Path(env["SIDECAR_DB_PATH"]))
    again = sidecars(env, write_app(tmp_path), tmp_path)
    assert again.wait_event("restore decided")["outcome"] == "skipped"
    again.wait_event("app started")
    again.signal(signal.SIGTERM)
    assert again.wait() == 0, again.output()
    assert rows(Path(env["SIDECAR_DB_PATH"]))[:len(written)] == written


# The app starts a worker of its own (a grandchild of sidecar), which PR_SET_PDEATHSIG does
# not reach: it keeps writing after the sidecar and the app are gone.
FORKING_APP = textwrap.dedent("""
    import os, sqlite3, sys, time
    worker = os.fork()
    if worker == 0:
        db = sqlite3.connect(os.environ["SIDECAR_DB_PATH"], isolation_level=None, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
        print(f"worker {os.getpid()}", flush=True)
        while True:
            db.execute("INSERT INTO rows(v, at) VALUES ('w', ?)", (time.time(),))
            time.sleep(0.1)
    print(f"app up {os.getpid()}", flush=True)
    os.waitpid(worker, 0)
""")


def test_escaped_grandchild_keeps_a_new_sidecar_off_the_database(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """The app's own worker survives a SIGKILL of the sidecar: a new sidecar on the same DB,
    even with another SIDECAR_STATE_DIR, refuses with exit 3 and names the worker's pid, and
    starts normally once the worker is gone."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    sc = sidecars(env, write_app(tmp_path, FORKING_APP, "forking.py"), tmp_path)
    app_pid = sc.wait_event("app started")["pid"]
    ls_pid = sc.wait_event("replication started")["pid"]
    wait_for(lambda: any(line.startswith("worker ") for line in sc.stdout), 20,
             what="the app's worker")
    worker = int(next(line for line in sc.stdout if line.startswith("worker ")).split()[1])

    os.kill(sc.proc.pid, signal.SIGKILL)
    sc.proc.wait()
    try:
        assert survivors([app_pid, ls_pid], within=1.0) == []
        assert alive(worker)  # out of reach of the death signal, as a real app's workers are
        db = Path(env["SIDECAR_DB_PATH"])
        lock = db.with_name(".app.db.sidecar.lock")
        for extra in ({}, {"SIDECAR_STATE_DIR": str(tmp_path / "elsewhere")}):
            res = run_sidecar(["run", "--", "true"], {**env, **extra}, tmp_path)
            assert res.returncode == 3, res.stderr[-2000:]
            assert f"cannot lock {lock}" in res.stderr
            assert f"pid {worker} " in res.stderr, res.stderr[-2000:]
            assert "Traceback" not in res.stderr
        assert not (tmp_path / "elsewhere" / "litestream.generated.yml").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not alive(worker), 5, what="the worker to die")
    again = sidecars(env, ["sleep", "30"], tmp_path)
    again.wait_event("app started")
    again.signal(signal.SIGTERM)
    assert again.wait() == 128 + signal.SIGTERM, again.output()


def test_second_sidecar_with_another_state_dir_refuses(tmp_path: Path, sidecars) -> None:
    """The lock lives beside the database: a second sidecar on the same DB with a different
    SIDECAR_STATE_DIR refuses with exit 3 while the first runs."""
    env = base_env(tmp_path)
    first = sidecars(env, ["sleep", "30"], tmp_path)
    first.wait_event("app started")
    res = run_sidecar(["run", "--", "true"],
                      {**env, "SIDECAR_STATE_DIR": str(tmp_path / "other-state")}, tmp_path)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "another sidecar is running on the database" in res.stderr
    assert f"pid {first.proc.pid} " in res.stderr
    first.signal(signal.SIGTERM)
    assert first.wait() == 128 + signal.SIGTERM
