"""Nothing sidecar writes on the volume follows a link planted there: lock files, the state
dir and its sub-directories, the copies kept aside (on the real filesystem)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sidecar import config
from sidecar.errors import PreflightError
from sidecar.recovery import restore
from sidecar.startup import migrate, preflight
from testkit.db import plain_db


def _cfg(tmp_path: Path, **extra: str) -> config.Config:
    env = {"PATH": "/usr/bin:/bin", "SIDECAR_DB_PATH": str(tmp_path / "data" / "app.db"),
           "SIDECAR_MIGRATE_COMMAND": "true", **extra}
    return config.load(env, ["true"], cwd=tmp_path)


def _victim(tmp_path: Path) -> Path:
    v = tmp_path / "elsewhere" / "victim.txt"
    v.parent.mkdir(parents=True, exist_ok=True)
    v.write_text("precious\n")
    return v


def _db(path: Path, mode: int = 0o644) -> None:
    plain_db(path)
    os.chmod(path, mode)


@pytest.mark.parametrize("which", ["db", "state", "dir"])
def test_a_linked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path,
                                                                which: str) -> None:
    """A link at `.app.db.sidecar.lock`, `.sidecar/sidecar.lock` or a directory's
    `.sidecar.lock`: exit 3 naming it, the file it points to keeps its bytes."""
    victim = _victim(tmp_path)
    if which == "dir":
        cfg = config.load({"PATH": "/usr/bin:/bin", "SIDECAR_DB_DIR": str(tmp_path / "t"),
                           "SIDECAR_REPLICA_URL": "s3://b/t",
                           "SIDECAR_S3_ENDPOINT": "http://s3.test"}, ["true"], cwd=tmp_path)
        lock = preflight.dir_lock_path(cfg.directories[0].dir)
    else:
        cfg = _cfg(tmp_path)
        lock = (preflight.db_lock_path(cfg.databases[0].path) if which == "db"
                else cfg.state_dir / "sidecar.lock")
    lock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock.symlink_to(victim)
    with pytest.raises(PreflightError) as err:
        if which == "state":
            preflight.acquire_lock(cfg.state_dir)
        else:
            preflight.acquire_db_locks(cfg)
    assert err.value.exit_code == 3
    assert f"cannot use {lock} as the lock of" in err.value.message
    assert "symbolic link" in err.value.message
    assert victim.read_text() == "precious\n"
    assert not preflight.lock_is_held(cfg)  # reading the lock's state follows no link either


def test_a_linked_state_dir_is_refused(tmp_path: Path) -> None:
    """The state dir as a link to elsewhere: refused naming it, nothing written there."""
    cfg = _cfg(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cfg.state_dir.parent.mkdir(parents=True)
    cfg.state_dir.symlink_to(elsewhere)
    with pytest.raises(PreflightError) as err:
        preflight.acquire_lock(cfg.state_dir)
    assert f"cannot use {cfg.state_dir} as the state directory: it is a symbolic link" in \
        err.value.message
    assert list(elsewhere.iterdir()) == []


def test_a_loose_state_dir_is_tightened(tmp_path: Path) -> None:
    """A state dir left 0755 (by an older version, or by hand) is made 0700."""
    cfg = _cfg(tmp_path)
    cfg.state_dir.mkdir(parents=True, mode=0o755)
    os.chmod(cfg.state_dir, 0o755)
    preflight.acquire_lock(cfg.state_dir).close()
    assert stat.S_IMODE(cfg.state_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize("kind", ["pre-restore", "pre-migrate"])
def test_a_linked_copies_directory_gets_no_copy(tmp_path: Path, kind: str) -> None:
    """`pre-restore` / `pre-migrate` as links out of the state dir: refused naming them, no
    copy of the database written through them, the live database unchanged."""
    cfg = _cfg(tmp_path)
    live = cfg.databases[0].path
    _db(live)
    before = live.read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cfg.state_dir.mkdir(mode=0o700)
    (cfg.state_dir / kind).symlink_to(elsewhere)
    with pytest.raises(PreflightError) as err:
        if kind == "pre-restore":
            fresh = live.with_name("fresh.db")
            _db(fresh)
            restore.swap_in(fresh, live, restore.aside_dir(cfg, kind))
        else:
            migrate.safety_copy(cfg)
    assert f"{cfg.state_dir / kind}" in err.value.message and "symbolic link" in \
        err.value.message
    assert list(elsewhere.iterdir()) == []
    assert live.read_bytes() == before


def test_copies_kept_aside_are_the_owners_only(tmp_path: Path) -> None:
    """The old database moved aside by a restore is 0600 whatever its mode was (README),
    while the restored database keeps its own."""
    cfg = _cfg(tmp_path)
    live = cfg.databases[0].path
    _db(live, 0o644)
    fresh = live.with_name("fresh.db")
    _db(fresh, 0o644)
    kept = restore.swap_in(fresh, live, restore.aside_dir(cfg, "pre-restore"))
    assert kept
    for p in kept:
        assert stat.S_IMODE(os.lstat(p).st_mode) == 0o600, p
    assert stat.S_IMODE(live.stat().st_mode) == 0o644
    assert stat.S_IMODE(restore.aside_dir(cfg, "pre-restore").stat().st_mode) == 0o700
