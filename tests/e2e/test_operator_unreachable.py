"""Operator commands against a dead bucket end within SIDECAR_REPLICA_TIMEOUT with one error
and exit 4, touch nothing and leave no temporary file: `sidecar verify`, `sidecar restore
--dry-run` and `sidecar restore --output`, with a real listener that accepts and never
answers, one that refuses, and a real S3 server that goes away in the middle of a restore."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit import S3_KEY, S3_SECRET, base_env, free_port, s3_env, seed_bucket, wait_for
from testkit.s3proxy import S3Proxy
from testkit.sidecar import BIN

pytestmark = pytest.mark.slow
TIMEOUT = 3.0  # SIDECAR_REPLICA_TIMEOUT in these tests
# Litestream alone retries a dead endpoint for about two minutes: these runs are stopped long
# before that, so a command that is not bounded fails the test instead of hanging it.
KILL_AFTER = 40.0


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections (and reads what is sent) but never answers."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(listener.getsockname()[1])
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    listener.close()


def _env(tmp_path: Path, endpoint: str, bucket: str = "gone") -> dict[str, str]:
    return base_env(tmp_path, SIDECAR_REPLICA_URL=f"s3://{bucket}/app.db",
                    SIDECAR_S3_ENDPOINT=endpoint, SIDECAR_S3_REGION="us-east-1",
                    AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET,
                    SIDECAR_REPLICA_TIMEOUT=f"{TIMEOUT:g}s",
                    SIDECAR_STATE_DIR=str(tmp_path / "state"))


def _run(args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    try:
        res = subprocess.run([str(BIN / "sidecar"), *args], env=env, cwd=cwd,
                             capture_output=True, text=True, timeout=KILL_AFTER)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`sidecar {' '.join(args)}` still ran after {KILL_AFTER}s "
                    f"(SIDECAR_REPLICA_TIMEOUT={TIMEOUT:g}s)")
    return res.returncode, res.stdout, res.stderr, time.monotonic() - t0


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")} if d.exists() else set()


COMMANDS = {
    "verify": ["verify"],
    "restore-dry-run": ["restore", "--dry-run"],
    "restore-output": ["restore", "--output", "OUT"],
}


def _check_dead(tmp_path: Path, endpoint: str, args: list[str]) -> str:
    env = _env(tmp_path, endpoint)
    out = tmp_path / "out"
    out.mkdir()
    args = [str(out / "copy.db") if a == "OUT" else a for a in args]
    # The command's own temporary directory, so what it leaves there is its own (another
    # process's sidecar-* entries in a shared /tmp are not).
    data, tmp = tmp_path / "data", tmp_path / "tmp"
    tmp.mkdir()
    env["TMPDIR"] = str(tmp)
    before_data, before_out = _files(data), _files(out)
    code, stdout, stderr, took = _run(args, env, tmp_path)
    text = stdout + stderr
    assert code == 4, text[-3000:]
    # One error naming the replica, the setting and the cause, within the timeout (twice it,
    # for Python's start-up and a loaded machine), no traceback, no secret.
    assert took < 2 * TIMEOUT + 6, (took, text[-2000:])
    assert "Traceback" not in text
    assert "s3://gone/app.db" in text and "SIDECAR_REPLICA_TIMEOUT=3s" in text, text[-2000:]
    assert S3_SECRET not in text
    assert _files(data) == before_data and _files(out) == before_out  # nothing touched
    assert not list(tmp.iterdir()), list(tmp.iterdir())
    return text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_black_holed_bucket_ends_within_the_timeout(tmp_path: Path, black_hole: int,
                                                      command: str) -> None:
    text = _check_dead(tmp_path, f"http://127.0.0.1:{black_hole}", COMMANDS[command])
    assert "cannot be read within" in text


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_refusing_bucket_ends_within_the_timeout(tmp_path: Path, command: str) -> None:
    text = _check_dead(tmp_path, f"http://127.0.0.1:{free_port()}", COMMANDS[command])
    assert "cannot be read within" in text


def _big_backup(tmp_path: Path, s3, bucket: str) -> dict[str, str]:
    """A real backup of a few MB (random, so it does not compress) in `bucket`."""
    env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_STATE_DIR=str(tmp_path / "state"))
    db = Path(env["SIDECAR_DB_PATH"])
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)")
    con.executemany("INSERT INTO blobs(b) VALUES (?)", [(os.urandom(4096),) for _ in range(1500)])
    con.close()
    seed_bucket(env, tmp_path, ["seeded"])
    return env


def test_a_bucket_that_dies_during_the_restore_stops_it(tmp_path: Path, s3, bucket) -> None:
    """The probe passes, the download starts (slowly), then every connection is reset:
    Litestream would retry for minutes; sidecar stops it once the output has not grown for
    SIDECAR_REPLICA_TIMEOUT, exit 4, and removes its partial file."""
    env = _big_backup(tmp_path, s3, bucket)
    proxy = S3Proxy(int(s3.endpoint.rsplit(":", 1)[1]))
    try:
        env.update(SIDECAR_S3_ENDPOINT=proxy.endpoint, SIDECAR_REPLICA_TIMEOUT=f"{TIMEOUT:g}s")
        out_dir = tmp_path / "out"
        out_dir.mkdir()
        proxy.throttle(200_000)  # about 30 s for the whole backup: the reset comes first
        t0 = time.monotonic()
        proc = subprocess.Popen([str(BIN / "sidecar"), "restore", "--output",
                                 str(out_dir / "copy.db")], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def partial() -> bool:
            return any(p.stat().st_size > 100_000 for p in out_dir.iterdir()
                       if p.name.endswith(".tmp"))

        wait_for(partial, 30, 0.05, what="the restore to write part of its file")
        proxy.set("reset")
        proxy.close()  # nothing answers from now on
        dead_at = time.monotonic()
        try:
            stdout, stderr = proc.communicate(timeout=KILL_AFTER)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"restore --output still ran {KILL_AFTER}s after the bucket died")
        text = stdout + stderr
        assert proc.returncode == 4, text[-3000:]
        assert time.monotonic() - dead_at < 2 * TIMEOUT + 6, text[-2000:]
        assert "wrote nothing for 3s" in text, text[-2000:]
        assert "Traceback" not in text
        assert list(out_dir.iterdir()) == []  # the partial file is gone, no output left
        assert time.monotonic() - t0 < KILL_AFTER
    finally:
        proxy.close()
        sys.stdout.flush()


def test_verify_through_the_daemon_ends_within_the_timeout(tmp_path: Path, s3, bucket,
                                                           sidecars) -> None:
    """With a sidecar running and its bucket gone (every connection reset), `sidecar verify`
    (done by the daemon) ends within the replica timeout, exit 4, naming the replica."""
    proxy = S3Proxy(int(s3.endpoint.rsplit(":", 1)[1]))
    try:
        env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_STATE_DIR=str(tmp_path / "state"))
        env.update(SIDECAR_S3_ENDPOINT=proxy.endpoint, SIDECAR_REPLICA_TIMEOUT=f"{TIMEOUT:g}s")
        seed_bucket(env, tmp_path, ["a", "b"])
        sc = sidecars(env, ["sleep", "120"], tmp_path)
        sc.wait_event("app started")
        proxy.set("reset")
        code, stdout, stderr, took = _run(["verify"], env, tmp_path)
        text = stdout + stderr
        assert code == 4, text[-3000:]
        assert "verified by the running sidecar" in stdout, text[-2000:]
        assert f"s3://{bucket}/app.db" in text and "cannot be read within" in text
        assert took < 2 * TIMEOUT + 6, (took, text[-2000:])
        proxy.set("pass")
        sc.signal()
        sc.wait(60)
    finally:
        proxy.close()


def test_check_covers_a_directorys_bucket(tmp_path: Path, black_hole: int) -> None:
    """`sidecar check` with a directory of databases checks its bucket too (it used to check
    the single databases' only): a black-holed one is a FAIL within the timeout, exit 1."""
    env = _env(tmp_path, f"http://127.0.0.1:{black_hole}")
    env.pop("SIDECAR_DB_PATH")
    env.update(SIDECAR_DB_DIR=str(tmp_path / "data" / "tenants"),
               SIDECAR_REPLICA_URL="s3://gone/tenants")
    code, stdout, stderr, took = _run(["check"], env, tmp_path)
    assert code == 1, stdout + stderr[-2000:]
    line = next((ln for ln in stdout.splitlines() if "replica (tenants/)" in ln), "")
    assert line.startswith("FAIL"), stdout
    assert took < 2 * TIMEOUT + 6, (took, stdout)
    assert "Traceback" not in stderr and S3_SECRET not in stdout + stderr
