"""Preflight for real: a mounted volume in a mount namespace, the lock, and config errors that
exit 2 and touch nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from testkit import BIN, base_env, run_sidecar, s3_env
from testkit.db import write_tenant_config

pytestmark = pytest.mark.slow

needs_root = pytest.mark.requires(os.geteuid() == 0 and shutil.which("unshare"),
                                  "mount namespaces need root and unshare")


def _in_namespace(volume: Path, env: dict[str, str], args: list[str], cwd: Path,
                  mount: bool = True) -> subprocess.CompletedProcess[str]:
    """Run sidecar in a private mount namespace where `volume` is a fresh tmpfs."""
    volume.mkdir(parents=True, exist_ok=True)
    mount_cmd = f"mount -t tmpfs -o size=64m tmpfs {volume} && " if mount else ""
    script = mount_cmd + 'exec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           "sh", str(BIN / "sidecar"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@needs_root
def test_db_on_mounted_volume_starts(tmp_path: Path) -> None:
    """A tmpfs mounted at the volume path with the DB inside it: the start goes through."""
    vol = tmp_path / "vol"
    env = base_env(tmp_path, SIDECAR_VOLUME_PATH=str(vol), DATABASE_URL=f"file:{vol}/app.db")
    env.pop("SIDECAR_DB_PATH")
    res = _in_namespace(vol, env, ["run", "--", "sh", "-c", "echo app-ran"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "app-ran" in res.stdout
    assert '"db on volume (app.db)": "' in res.stderr
    assert not (vol / "app.db").exists()  # it lived on the tmpfs, gone with the namespace


@needs_root
def test_db_outside_volume_exits_3_with_the_corrected_url(tmp_path: Path) -> None:
    """The /app/prisma/app.db trap: a DB outside the mounted volume exits 3 and prints the
    DATABASE_URL that would put it on the volume."""
    vol = tmp_path / "data"
    app_dir = tmp_path / "app" / "prisma"
    app_dir.mkdir(parents=True)
    env = base_env(tmp_path, RAILWAY_VOLUME_MOUNT_PATH=str(vol),
                   DATABASE_URL=f"file:{app_dir}/app.db", SIDECAR_ALLOW_NO_BACKUP="1")
    env.pop("SIDECAR_DB_PATH")
    res = _in_namespace(vol, env, ["run", "--", "sh", "-c", "echo app-ran"], tmp_path)
    assert res.returncode == 3, res.stderr
    assert f"DATABASE_URL=file:{vol}/app.db" in res.stderr
    assert "app-ran" not in res.stdout
    assert list(app_dir.iterdir()) == []  # nothing written


@needs_root
def test_volume_path_not_a_mount_point_exits_3(tmp_path: Path) -> None:
    """A volume path that is a plain directory (the volume is not attached) exits 3."""
    vol = tmp_path / "data"
    env = base_env(tmp_path, SIDECAR_VOLUME_PATH=str(vol), SIDECAR_DB_PATH=f"{vol}/app.db")
    res = _in_namespace(vol, env, ["run", "--", "true"], tmp_path, mount=False)
    assert res.returncode == 3, res.stderr
    assert "is not a mount point" in res.stderr
    assert list(vol.iterdir()) == []


def test_second_sidecar_on_the_same_db_exits_3(tmp_path: Path, sidecars) -> None:
    """While one sidecar runs, a second one on the same DB refuses with exit 3."""
    env = base_env(tmp_path)
    first = sidecars(env, ["sleep", "30"], tmp_path)
    first.wait_event("app started")
    res = run_sidecar(["run", "--", "true"], env, tmp_path)
    assert res.returncode == 3
    assert "another sidecar is running" in res.stderr
    first.signal(signal.SIGTERM)
    assert first.wait() == 128 + signal.SIGTERM


BAD_VALUES = [
    ("SIDECAR_MAX_LAG_SECONDS", "abc"),
    ("SIDECAR_MAX_LAG_SECONDS", "-1"),
    ("SIDECAR_LAG_CHECK_INTERVAL", "soon"),
    ("SIDECAR_SYNC_INTERVAL", "0"),
    ("SIDECAR_APP_STOP_TIMEOUT", "10 minutes"),
    ("SIDECAR_APP_RESTART", "always"),
    ("SIDECAR_LOG_FORMAT", "xml"),
    ("SIDECAR_ON_START_FAILURE", "retry"),
    ("SIDECAR_HTTP_ADDR", "localhost"),
    ("SIDECAR_HTTP_ADDR", "[::]:99999"),
    ("SIDECAR_VERIFY_SCHEDULE", "every day"),
    ("SIDECAR_REPLICA_URL", "ftp://bucket/x"),
    ("SIDECAR_REPLICA_URL", "s3://bucket"),
    ("SIDECAR_S3_ENDPOINT", "not a url"),
    ("SIDECAR_S3_FORCE_PATH_STYLE", "maybe"),
    ("SIDECAR_HEARTBEAT_URL", "ftp://x"),
    ("SIDECAR_KEEP_COPIES", "0"),
    ("SIDECAR_REPLICA_TIMEOUT", "-5s"),
    ("SIDECAR_VOLUME_PATH", "data"),
    ("DATABASE_URL", "postgres://user:pw@host/db"),
    ("LITESTREAM_CONFIG", "/nonexistent/litestream.yml"),
    ("SIDECAR_APP_COMMAND", "node 'server.js"),
]


@pytest.mark.parametrize("var,value", BAD_VALUES)
def test_invalid_value_exits_2_naming_the_variable(tmp_path: Path, var: str, value: str) -> None:
    """Each invalid value exits 2 with the variable and value named, no traceback, and nothing
    is written."""
    env = base_env(tmp_path, **{var: value})
    if var == "DATABASE_URL":
        env.pop("SIDECAR_DB_PATH")
    args = ["run"] if var == "SIDECAR_APP_COMMAND" else ["run", "--", "true"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = run_sidecar(args, env, tmp_path)
    assert res.returncode == 2, res.stderr
    assert var in res.stderr
    assert "Traceback" not in res.stderr
    if var == "DATABASE_URL":
        assert "pw@" not in res.stderr  # a password in another engine's URL is not echoed
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Several bad variables are all named in one error."""
    env = base_env(tmp_path, SIDECAR_MAX_LAG_SECONDS="x", SIDECAR_APP_RESTART="sometimes",
                   SIDECAR_LOG_FORMAT="xml")
    res = run_sidecar(["run", "--", "true"], env, tmp_path)
    assert res.returncode == 2
    for var in ("SIDECAR_MAX_LAG_SECONDS", "SIDECAR_APP_RESTART", "SIDECAR_LOG_FORMAT"):
        assert var in res.stderr


def test_flags_override_the_environment(tmp_path: Path) -> None:
    """A flag wins over its variable: a bad variable fixed by a good flag starts fine."""
    env = base_env(tmp_path, SIDECAR_APP_RESTART="sometimes")
    res = run_sidecar(["run", "--app-restart", "no", "--", "true"], env, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]


def test_no_replica_on_railway_is_a_config_error(tmp_path: Path) -> None:
    """On Railway with no bucket configured, the start is refused unless explicitly allowed."""
    env = base_env(tmp_path, RAILWAY_ENVIRONMENT="production")
    res = run_sidecar(["run", "--", "true"], env, tmp_path)
    assert res.returncode == 2
    assert "SIDECAR_REPLICA_URL" in res.stderr
    assert not Path(env["SIDECAR_DB_PATH"]).exists()


def test_help_lists_commands_variables_and_exit_codes(tmp_path: Path) -> None:
    """`sidecar --help` and `sidecar run --help` name the commands, variables and exit codes."""
    top = run_sidecar(["--help"], base_env(tmp_path), tmp_path)
    assert top.returncode == 0 and "run" in top.stdout and "exit codes" in top.stdout
    sub = run_sidecar(["run", "--help"], base_env(tmp_path), tmp_path)
    assert sub.returncode == 0
    for text in ("SIDECAR_REPLICA_URL", "DATABASE_URL", "SIDECAR_APP_STOP_TIMEOUT", "128+N"):
        assert text in sub.stdout


def test_litestream_missing_exits_3(tmp_path: Path) -> None:
    """A Litestream binary that is not there stops the start with exit 3, writing nothing."""
    env = base_env(tmp_path, SIDECAR_LITESTREAM_BIN="/nonexistent/litestream")
    res = run_sidecar(["run", "--", "true"], env, tmp_path)
    assert res.returncode == 3
    assert "litestream" in res.stderr
    assert not (tmp_path / "data" / ".sidecar").exists()



@pytest.mark.parametrize("var", ["APP_COMMAND", "SIDECAR_MIGRATE_COMMAND"])
def test_command_that_does_not_exist_exits_2_before_anything_runs(tmp_path: Path, var: str
                                                                  ) -> None:
    """An app or migration command that is not installed is a config error (exit 2), found
    before any restore or write, not after."""
    env = base_env(tmp_path)
    args = ["run", "--", "no-such-program-xyz"]
    if var != "APP_COMMAND":
        env[var] = "no-such-migrator-xyz deploy"
        args = ["run", "--", "true"]
    res = run_sidecar(args, env, tmp_path)
    assert res.returncode == 2, res.stderr
    assert var in res.stderr and "not" in res.stderr
    assert not (tmp_path / "data" / ".sidecar").exists()


def _dir_env(tmp_path: Path, s3, bucket: str, vol: Path, db_dir: Path) -> dict[str, str]:
    env = base_env(tmp_path, **s3_env(s3, bucket, "tenants"), SIDECAR_VOLUME_PATH=str(vol),
                   SIDECAR_DB_DIR=str(db_dir))
    env.pop("SIDECAR_DB_PATH")
    return env


def _yml_env(tmp_path: Path, s3, bucket: str, vol: Path, db_dir: Path) -> dict[str, str]:
    """The directory as a `dir:` entry of a project litestream.yml."""
    yml = write_tenant_config(tmp_path / "litestream.yml", db_dir, bucket, s3.endpoint)
    env = _dir_env(tmp_path, s3, bucket, vol, db_dir)
    for name in ("SIDECAR_DB_DIR", "SIDECAR_REPLICA_URL", "SIDECAR_S3_ENDPOINT",
                 "SIDECAR_S3_REGION"):
        env.pop(name)
    env["LITESTREAM_CONFIG"] = str(yml)
    return env


@needs_root
def test_db_dir_on_mounted_volume_starts(tmp_path: Path, s3, bucket) -> None:
    """A directory of databases on the mounted volume (created there): the start goes
    through and the check is logged."""
    vol = tmp_path / "vol"
    env = _dir_env(tmp_path, s3, bucket, vol, vol / "tenants")
    res = _in_namespace(vol, env, ["run", "--", "sh", "-c", "echo app-ran"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "app-ran" in res.stdout
    assert '"db dir on volume (tenants/)": "' in res.stderr, res.stderr[-2000:]


@needs_root
def test_db_dir_outside_volume_exits_3_with_the_fix(tmp_path: Path, s3, bucket) -> None:
    """SIDECAR_DB_DIR outside the mounted volume is refused like a DB path outside it (every
    tenant would be wiped on the next deploy), naming the corrected setting; nothing is
    written (no directory, no state dir)."""
    vol = tmp_path / "data"
    outside = tmp_path / "app" / "tenants"
    env = _dir_env(tmp_path, s3, bucket, vol, outside)
    res = _in_namespace(vol, env, ["run", "--", "sh", "-c", "echo app-ran"], tmp_path)
    assert res.returncode == 3, res.stderr[-2000:]
    assert f"the database directory {outside} is outside the volume {vol}" in res.stderr
    assert f"set SIDECAR_DB_DIR to {vol}/tenants" in res.stderr, res.stderr[-2000:]
    assert "app-ran" not in res.stdout and "Traceback" not in res.stderr
    assert not (tmp_path / "app").exists()
    assert s3.keys(bucket) == []

    env = _yml_env(tmp_path, s3, bucket, vol, outside)
    res = _in_namespace(vol, env, ["run", "--", "sh", "-c", "echo app-ran"], tmp_path)
    assert res.returncode == 3, res.stderr[-2000:]
    assert f"set the dir: entry in {tmp_path}/litestream.yml to {vol}/tenants" in res.stderr
    assert not (tmp_path / "app").exists()


@needs_root
def test_db_dir_nested_mount_or_a_file_exits_3(tmp_path: Path, s3, bucket) -> None:
    """A directory on a mount nested inside the volume, or a path that is a file, exits 3."""
    vol = tmp_path / "vol"
    env = _dir_env(tmp_path, s3, bucket, vol, vol / "inner" / "tenants")
    script = (f"mount -t tmpfs tmpfs {vol} && mkdir {vol}/inner && "
              f"mount -t tmpfs tmpfs {vol}/inner && " + 'exec "$@"')
    vol.mkdir()
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                          "sh", str(BIN / "sidecar"), "run", "--", "true"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "a mount nested inside the volume" in res.stderr, res.stderr[-2000:]

    # A dir: entry of the project's litestream.yml is checked the same way (SIDECAR_DB_DIR
    # naming a file is already a config error, exit 2).
    env = _yml_env(tmp_path, s3, bucket, vol, vol / "tenants")
    script = (f"mount -t tmpfs tmpfs {vol} && echo not-a-dir > {vol}/tenants && "
              + 'exec "$@"')
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                          "sh", str(BIN / "sidecar"), "run", "--", "true"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stderr[-2000:]
    assert f"{vol}/tenants is a file, not a directory" in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
