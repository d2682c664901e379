"""Units of the bounds on operator commands: the stall watch on a restore's output, which
databases `sidecar verify` covers, and its exit code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from sidecar import config
from sidecar.bucket import tenants
from sidecar.recovery import scratch, verification
from sidecar.recovery.reachable import Stall
from testkit.clock import Clock


def test_stall_fires_only_when_the_output_stops_growing(tmp_path: Path) -> None:
    out = tmp_path / "copy.db"
    tmp = tmp_path / "copy.db.tmp"
    clock = Clock()
    watch = Stall(out, 3.0, clock=clock)
    assert not watch()
    clock.now += 2.9
    assert not watch()  # nothing written yet, but not for 3 s
    tmp.write_bytes(b"x" * 10)
    clock.now += 2.9
    assert not watch()  # it grew: the clock starts again
    clock.now += 2.9
    assert not watch()
    clock.now += 0.2
    assert watch() and watch.stalled  # 3.1 s without growth


def test_stall_counts_in_place_writes_to_the_wal_as_progress(tmp_path: Path) -> None:
    """Replaying a 0.3 backup's WAL rewrites pages of `<output>.tmp-wal` in place: its size
    stays, its mtime moves. That is progress, not a dead bucket."""
    out = tmp_path / "copy.db"
    (tmp_path / "copy.db.tmp").write_bytes(b"x" * 10)
    wal = tmp_path / "copy.db.tmp-wal"
    wal.write_bytes(b"w" * 100)
    clock = Clock()
    watch = Stall(out, 3.0, clock=clock)
    assert not watch()
    for step in range(1, 5):
        clock.now += 2.9
        os.utime(wal, ns=(step * 10**9, step * 10**9))  # the same size, rewritten
        assert not watch() and not watch.stalled
    clock.now += 3.1
    assert watch() and watch.stalled


def test_stall_never_fires_once_litestream_put_the_output_in_place(tmp_path: Path) -> None:
    """The integrity check after the restore writes nothing: that is no stall."""
    out = tmp_path / "copy.db"
    out.write_bytes(b"done")
    clock = Clock()
    watch = Stall(out, 1.0, clock=clock)
    clock.now += 60
    assert not watch() and not watch.stalled


def test_stall_passes_the_callers_stop_on(tmp_path: Path) -> None:
    watch = Stall(tmp_path / "copy.db", 100.0, inner=lambda: True)
    assert watch() and not watch.stalled


def test_verify_covers_every_tenant_on_the_volume(tmp_path: Path) -> None:
    d = tmp_path / "tenants"
    (d / "eu").mkdir(parents=True)
    for rel in ("a.db", "b.db", "eu/c.db", "notes.txt", ".a.db.sidecar-restore-1"):
        (d / rel).write_bytes(b"")
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_DB_DIR": str(d), "SIDECAR_DB_RECURSIVE": "1",
           "SIDECAR_REPLICA_URL": "s3://bkt/tenants", "SIDECAR_S3_ENDPOINT": "http://s3.test",
           "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    cfg = config.load(env, need_app=False, cwd=tmp_path)
    got = verification.targets(cfg, None)
    assert [str(db.path.relative_to(d)) for db in got] == ["a.db", "b.db", "eu/c.db"]
    assert got[2].replica is not None and got[2].replica.url == "s3://bkt/tenants/eu/c.db"
    assert [db.path for db in verification.targets(cfg, "b.db")] == [d / "b.db"]


def test_verify_exit_codes() -> None:
    ok, bad = {"ok": True}, {"ok": False}
    gone = {"ok": False, "unreachable": True}
    assert verification.exit_code([ok, ok]) == 0
    assert verification.exit_code([]) == 0
    assert verification.exit_code([ok, gone]) == 4  # only replicas that cannot be read
    assert verification.exit_code([gone, bad]) == 1  # a backup that fails is worse


def test_a_killed_tenant_verification_is_cleaned_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    d = tmp_path / "tenants"
    d.mkdir()
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_DB_DIR": str(d),
           "SIDECAR_REPLICA_URL": "s3://bkt/tenants", "SIDECAR_S3_ENDPOINT": "http://s3.test",
           "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    cfg = config.load(env, need_app=False, cwd=tmp_path)
    t1 = tenants.member(cfg.directories[0], "t1.db")
    left = tmp_path / f"{scratch.VERIFY_MARK}{scratch.tag(t1)}-4194999-abc"  # a pid never used
    left.mkdir()
    assert scratch.clean_verify_leftovers(cfg) == [] and left.exists()
    assert scratch.clean_verify_leftovers(cfg, [t1]) == [left] and not left.exists()


def test_verifications_side_by_side_count_the_space_promised_to_each_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two copies that each fit the free space but not together: the second is refused until
    the first gives its directory back (the free space does not yet show what it will write)."""
    cfg = config.load({"SIDECAR_DB_PATH": str(tmp_path / "app.db"), "PATH": "/usr/bin:/bin"},
                      app_command=["true"], cwd=tmp_path)
    db = cfg.databases[0]
    monkeypatch.setattr(scratch, "places",
                        lambda cfg, db: [scratch.Place(tmp_path, 100 << 20, False)])
    first = scratch.verify_dir(cfg, db, 60 << 20)
    with pytest.raises(scratch.OperatorError, match="not enough free space"):
        scratch.verify_dir(cfg, db, 60 << 20)
    scratch.release(first)
    second = scratch.verify_dir(cfg, db, 60 << 20)
    scratch.release(second)
    assert not scratch._promised
