"""Supervision with real processes: Litestream killed and restarted, migrations, and zombie
reaping as PID 1."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit import (
    BIN,
    base_env,
    need,
    rows,
    run_sidecar,
    s3_env,
    seed_bucket,
    side_restore,
    wait_for,
    write_app,
)
from testkit.procs import ORPHAN_SCRIPT

pytestmark = pytest.mark.slow


def test_litestream_killed_is_restarted_and_the_app_is_undisturbed(tmp_path: Path, s3, bucket,
                                                                   sidecars) -> None:
    """SIGKILL to Litestream: it is restarted with backoff, the app keeps its pid, and rows
    written afterwards reach the bucket."""
    env = base_env(tmp_path, **s3_env(s3, bucket), APP_TAG="k")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    started = sc.wait_event("app started")
    first = sc.wait_event("replication started")
    os.kill(first["pid"], signal.SIGKILL)
    sc.wait_event("litestream restart scheduled")
    wait_for(lambda: sum(1 for e in sc.events if e.get("message") == "litestream started") >= 2,
             20, what="litestream restarted")
    sc.wait_stdout("wrote k-60", timeout=30)
    wait_for(lambda: "k-55" in rows(side_restore(env, tmp_path / f"r{time.time()}.db")), 30,
             interval=1, what="rows after the restart in the bucket")
    assert not any(e.get("message") == "app exited" for e in sc.events)
    assert os.path.exists(f"/proc/{started['pid']}")
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0
    assert rows(side_restore(env, tmp_path / "final.db"))[-1] == "k-final"


def test_failing_migration_exits_5_and_keeps_the_copy(tmp_path: Path, s3, bucket) -> None:
    """A failing migration: exit 5, the app never starts, the pre-migration copy exists and
    holds the data."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["keep-me"])
    env["SIDECAR_MIGRATE_COMMAND"] = f"{sys.executable} -c 'import sys; sys.exit(7)'"
    marker = tmp_path / "app-ran"
    res = run_sidecar(["run", "--", "touch", str(marker)], env, tmp_path)
    assert res.returncode == 5, res.stderr[-2000:]
    assert "exited 7" in res.stderr
    assert not marker.exists()
    copies = list((tmp_path / "data" / ".sidecar" / "pre-migrate").glob("app.db.*"))
    assert len(copies) == 1
    assert str(copies[0]) in res.stderr
    assert rows(copies[0]) == ["keep-me"]


def test_migration_runs_once_per_start_and_old_copies_are_pruned(tmp_path: Path) -> None:
    """A succeeding migration runs once per start, before Litestream opens the DB (Prisma needs
    an exclusive lock) and before the app; only the newest SIDECAR_KEEP_COPIES copies are
    kept."""
    counter = tmp_path / "count"
    env = base_env(tmp_path, SIDECAR_KEEP_COPIES="2", SIDECAR_MIGRATE_COMMAND=(
        f"sh -c 'echo x >> {counter}; sqlite3 \"$SIDECAR_DB_PATH\" "
        "\"create table if not exists m(x); insert into m values(1)\"'"))
    for _ in range(4):
        res = run_sidecar(["run", "--", "true"], env, tmp_path)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stderr.index('"migrations finished"') < res.stderr.index(
            '"replication started"') < res.stderr.index('"app started"')
    assert counter.read_text().count("x") == 4
    copies = sorted((tmp_path / "data" / ".sidecar" / "pre-migrate").glob("app.db.*"))
    assert len(copies) == 2  # the first start had no DB to copy; later ones were pruned to 2


@pytest.mark.requires(os.geteuid() == 0 and shutil.which("unshare"),
                      "a PID namespace needs root and unshare")
def test_as_pid1_orphaned_grandchildren_are_reaped(tmp_path: Path) -> None:
    """As PID 1 of a PID namespace, an orphaned grandchild of the app that exits is reaped
    (no zombie left), and the app's exit code comes back."""
    env = base_env(tmp_path)
    app = write_app(tmp_path, ORPHAN_SCRIPT, "orphans.py")
    res = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", str(BIN / "sidecar"),
                          "run", "--", *app, "9"], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 9, res.stderr[-2000:]
    assert "zombies: 0" in res.stdout, res.stdout


def test_sidecar_without_subreaper_would_leave_zombies_baseline(tmp_path: Path) -> None:
    """Baseline for the test above: with a plain shell as PID 1 the same orphan stays a zombie,
    so the check above can tell reaping from no reaping."""
    need(os.geteuid() == 0 and bool(shutil.which("unshare")),
         "a PID namespace needs root and unshare")
    path = tmp_path / "baseline.py"
    path.write_text(ORPHAN_SCRIPT)
    # A PID 1 that waits only for its own child, as a naive entrypoint does.
    pid1 = ("import subprocess, sys; "
            f"sys.exit(subprocess.run([sys.executable, {str(path)!r}]).returncode)")
    res = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                          pid1], capture_output=True, text=True, timeout=60)
    assert "zombies: 1" in res.stdout, res.stdout + res.stderr
