"""Files moved aside stay usable: a moved-aside database keeps SQLite's pairing with its -wal
(`app.db.STAMP` + `app.db.STAMP-wal`), a busy checkpoint stops the move instead of splitting
the database, and pre-migration copies of two databases with the same file name never collide.
Real SQLite files, no fakes."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from sidecar import config, dbfile
from sidecar.config import Database
from sidecar.errors import RestoreError
from sidecar.recovery import restore
from sidecar.startup import migrate
from testkit import make_db, rows


def test_moved_aside_wal_keeps_its_pairing(tmp_path: Path) -> None:
    """With another connection open (so -wal and -shm exist at the move), swap_in keeps them
    as app.db.STAMP-wal/-shm beside app.db.STAMP, and the kept copy opens with every row."""
    live, new = tmp_path / "app.db", tmp_path / "restored.db"
    make_db(live, ["old1", "old2"])
    make_db(new, ["new"])
    dbfile.settle(new)
    holder = sqlite3.connect(live)  # idle: the checkpoint can finish, the files stay
    holder.execute("SELECT count(*) FROM rows").fetchall()
    try:
        assert dbfile.wal_path(live).exists() and dbfile.shm_path(live).exists()
        kept = [Path(p) for p in restore.swap_in(new, live, tmp_path / "aside")]
    finally:
        holder.close()
    names = sorted(p.name for p in kept)
    base = names[0]
    assert names == [base, f"{base}-shm", f"{base}-wal"], names
    assert base.startswith("app.db.") and base.endswith("Z")
    assert rows(tmp_path / "aside" / base) == ["old1", "old2"]
    assert rows(live) == ["new"]
    assert not dbfile.wal_path(live).exists() or dbfile.wal_path(live).stat().st_size == 0


def test_busy_checkpoint_refuses_the_swap_and_changes_nothing(tmp_path: Path) -> None:
    """A reader holding the WAL keeps the checkpoint busy: swap_in refuses (RestoreError
    naming the cause) and leaves the live DB, its -wal and the restored file where they were."""
    live, new = tmp_path / "app.db", tmp_path / "restored.db"
    make_db(live, ["old"])
    make_db(new, ["new"])
    reader = sqlite3.connect(live, isolation_level=None)
    writer = sqlite3.connect(live, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM rows").fetchall()  # a read snapshot pins the WAL
    writer.execute("INSERT INTO rows(v) VALUES ('in the wal')")
    try:
        frames_before = dbfile.wal_path(live).stat().st_size
        with pytest.raises(RestoreError, match="another process is using the database"):
            restore.swap_in(new, live, tmp_path / "aside")
        assert new.exists() and not (tmp_path / "aside").exists()
        assert dbfile.wal_path(live).stat().st_size >= frames_before > 0
        with pytest.raises(dbfile.CheckpointBusy):
            dbfile.checkpoint(live, attempts=1, timeout=0.1)
    finally:
        reader.execute("COMMIT")
        reader.close()
        writer.close()
    assert rows(live) == ["old", "in the wal"]
    assert dbfile.checkpoint(live) == (0, 0)


def test_checkpoint_reports_frames_and_non_wal_files(tmp_path: Path) -> None:
    """The checkpoint's answer is read: (0, 0) after a TRUNCATE of a WAL database, (-1, -1)
    for a rollback-journal database."""
    wal_db = tmp_path / "w.db"
    make_db(wal_db, ["x"])
    assert dbfile.checkpoint(wal_db) == (0, 0)
    plain = tmp_path / "p.db"
    con = sqlite3.connect(plain)
    con.execute("CREATE TABLE t(v TEXT)")
    con.commit()
    con.close()
    assert dbfile.checkpoint(plain) == (-1, -1)


def two_dbs_config(tmp_path: Path, keep: int) -> config.Config:
    cfg = config.load({"SIDECAR_DB_PATH": str(tmp_path / "a" / "app.db"), "PATH": "/usr/bin"},
                      app_command=["true"], cwd=tmp_path)
    dbs = (Database(tmp_path / "a" / "app.db", None), Database(tmp_path / "b" / "app.db", None))
    return dataclasses.replace(cfg, databases=dbs, keep_copies=keep,
                               state_dir=tmp_path / "state")


def test_pre_migration_copies_of_same_named_databases_never_collide(tmp_path: Path) -> None:
    """/a/app.db and /b/app.db in one config: each safety copy round makes one copy of each,
    under different names, and rotation keeps the newest N of each, not N in all."""
    cfg = two_dbs_config(tmp_path, keep=2)
    make_db(tmp_path / "a" / "app.db", ["from a"])
    make_db(tmp_path / "b" / "app.db", ["from b"])
    rounds = [migrate.safety_copy(cfg) for _ in range(3)]
    assert all(len(r) == 2 and len(set(r)) == 2 for r in rounds), rounds
    for a_copy, b_copy in rounds[-2:]:
        assert rows(Path(a_copy)) == ["from a"] and rows(Path(b_copy)) == ["from b"]
    left = sorted(p.name for p in (cfg.state_dir / "pre-migrate").iterdir())
    assert len(left) == 4, left  # the newest 2 of each
    assert {Path(p).name for r in rounds[-2:] for p in r} == set(left)
    # A database whose name is unique keeps the plain name.
    single = dataclasses.replace(cfg, databases=cfg.databases[:1])
    assert dbfile.copy_base(single.databases[0], single.databases) == "app.db"


def test_directory_members_with_one_file_name_keep_their_own_safety_copies(tmp_path: Path) -> None:
    """t1/app.db and t2/app.db of a directory entry (not among the configured databases): their
    pre-migration copies are tagged apart, so rotation keeps the newest N of each."""
    cfg = two_dbs_config(tmp_path, keep=2)
    members = [dataclasses.replace(cfg.databases[0], path=tmp_path / "tenants" / t / "app.db")
               for t in ("t1", "t2")]
    for m, t in zip(members, ("t1", "t2"), strict=True):
        make_db(m.path, [f"from {t}"])
    only = dataclasses.replace(cfg, databases=cfg.databases[:1])
    for _ in range(3):
        for m in members:
            migrate.safety_copy(only, [m])
    left = sorted((cfg.state_dir / "pre-migrate").iterdir())
    assert len(left) == 4, [p.name for p in left]  # the newest 2 of each member
    assert sorted({tuple(rows(p)) for p in left}) == [("from t1",), ("from t2",)]
