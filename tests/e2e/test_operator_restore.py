"""Operator restores against a running sidecar: point in time by timestamp and by txid, through
the CLI and the control socket; a target no backup reaches; a SIGKILL in the middle."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from sidecar.litestream import unix_request
from testkit import S3_SECRET, make_db, rows, run_sidecar, wait_for, write_app
from testkit.db import integrity
from testkit.live import (
    IDLE_APP,
    app_pids,
    aside_files,
    db_path,
    restart_on_a_lost_volume,
    sock,
    start_with_rows,
    state_dir,
    synced,
)

pytestmark = pytest.mark.slow


def test_restore_by_timestamp_fences_the_app_keeps_old_db_and_becomes_the_new_backup(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """Rows A, time T, rows B; `restore --timestamp T --yes` restarts the app on a DB holding
    only A, keeps the old DB (A and B) in the state dir; rows C then reach the bucket, and a
    fresh start from the bucket has A and C, not B."""
    env, sc, _txid, t = start_with_rows(tmp_path, s3, bucket, sidecars)
    first_app = app_pids(sc)
    res = run_sidecar(["restore", "--timestamp", t, "--yes"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert rows(db_path(env)) == ["a1", "a2"]
    wait_for(lambda: len(app_pids(sc)) == 2, 15, what="the app to start again")
    assert app_pids(sc)[0] == first_app[0] and app_pids(sc)[1] != first_app[0]
    kept = aside_files(env)
    assert len(kept) == 1, list((state_dir(env) / "pre-restore").iterdir())
    assert rows(kept[0]) == ["a1", "a2", "b1", "b2"]
    assert str(kept[0]) in res.stdout
    assert S3_SECRET not in res.stdout + res.stderr

    make_db(db_path(env), ["c1"])
    restart_on_a_lost_volume(env, sc, tmp_path, sidecars)
    assert rows(db_path(env)) == ["a1", "a2", "c1"]


def test_restore_by_txid_through_the_control_socket_and_the_cli(tmp_path: Path, s3, bucket,
                                                                sidecars) -> None:
    """`restore --txid` (CLI) and POST /restore on the control socket both bring back the
    state at that txid while the sidecar runs."""
    env, _sc, txid_a, _t = start_with_rows(tmp_path, s3, bucket, sidecars)
    res = run_sidecar(["restore", "--txid", f"{txid_a:x}", "--yes"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert rows(db_path(env)) == ["a1", "a2"]

    make_db(db_path(env), ["c1"])
    txid_c = synced(env)
    make_db(db_path(env), ["c2"])
    synced(env)
    code, job = unix_request(sock(env), "POST", "/restore",
                             {"txid": f"{txid_c:016x}", "wait": True}, timeout=120)
    assert code == 200, job
    assert job["outcome"] == "restored" and job["txid"] == f"{txid_c:016x}"
    assert rows(db_path(env)) == ["a1", "a2", "c1"]
    assert len(aside_files(env)) == 2
    code, status = unix_request(sock(env), "GET", "/status")
    assert code == 200 and status["state"] == "running"
    assert status["manual_restore"]["id"] == job["id"]


def test_restore_to_a_txid_no_backup_has_changes_nothing_and_names_the_range(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """A txid beyond the backup: exit 1, the error names the available range, the app keeps
    running (same pid) on the untouched DB, nothing is moved aside."""
    env, sc, _txid, _t = start_with_rows(tmp_path, s3, bucket, sidecars)
    pid = app_pids(sc)
    res = run_sidecar(["restore", "--txid", "ffffff", "--yes"], env, tmp_path, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "0000000000ffffff" in res.stderr
    assert "available: txid 0000000000000001 to " in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert app_pids(sc) == pid and sc.proc.poll() is None
    assert rows(db_path(env)) == ["a1", "a2", "b1", "b2"]
    assert aside_files(env) == []
    bad = run_sidecar(["restore", "--txid", "xyz", "--yes"], env, tmp_path)
    assert bad.returncode == 1 and "--txid" in bad.stderr and "'xyz'" in bad.stderr
    bad = run_sidecar(["restore", "--timestamp", "yesterday", "--yes"], env, tmp_path)
    assert bad.returncode == 1 and "--timestamp" in bad.stderr and "RFC3339" in bad.stderr
    # Without --yes and without a terminal it refuses.
    res = run_sidecar(["restore", "--timestamp", _t], env, tmp_path)
    assert res.returncode == 1 and "--yes" in res.stderr
    assert rows(db_path(env)) == ["a1", "a2", "b1", "b2"]
    dry = run_sidecar(["restore", "--timestamp", _t, "--dry-run"], env, tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "download:" in dry.stdout and "nothing was changed" in dry.stdout
    assert rows(db_path(env)) == ["a1", "a2", "b1", "b2"]


def _kill_everything_under(tmp_path: Path) -> None:
    """What a container stop does: every process of the sidecar dies, children included."""
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(tmp_path) in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_dir.name), signal.SIGKILL)


@pytest.mark.parametrize("kill_at", ["restoring", "resuming-replication"])
def test_sigkill_during_live_restore_leaves_a_consistent_db_and_deletes_nothing(
        tmp_path: Path, s3, bucket, sidecars, kill_at: str) -> None:
    """SIGKILL of the sidecar (and its children) in the middle of a live restore: the next
    start has a sound DB at the live path, old or new, and the old data still exists."""
    env, sc, txid_a, _t = start_with_rows(tmp_path, s3, bucket, sidecars)
    con = sqlite3.connect(db_path(env), isolation_level=None)
    con.execute("CREATE TABLE blobs(b BLOB)")
    for _ in range(40):  # ~20 MB so the restore takes a moment
        con.execute("INSERT INTO blobs VALUES (randomblob(500000))")
    con.close()
    synced(env)
    code, job = unix_request(sock(env), "POST", "/restore", {"txid": f"{txid_a:x}"})
    assert code == 202, job
    order = ["queued", "stopping-app", "stopping-replication", "restoring", "swapping",
             "resuming-replication", "starting-app", "done"]

    def reached() -> bool:
        _c, j = unix_request(sock(env), "GET", f"/restore?id={job['id']}")
        return j["state"] in order and order.index(j["state"]) >= order.index(kill_at)

    wait_for(reached, 60, interval=0.005, what=f"restore state {kill_at}")
    sc.signal(signal.SIGKILL)
    _kill_everything_under(tmp_path)
    sc.wait()

    again = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    again.wait_event("app started")
    live = rows(db_path(env))
    assert integrity(db_path(env)) == "ok"
    assert live in (["a1", "a2"], ["a1", "a2", "b1", "b2"]), live
    if live == ["a1", "a2"]:  # the new DB is in place: the old one must be kept aside
        assert any(rows(p) == ["a1", "a2", "b1", "b2"] for p in aside_files(env))
    assert not list(db_path(env).parent.glob(".app.db.sidecar-restore-*"))
