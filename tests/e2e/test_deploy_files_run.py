"""The deployment files run for real: Litestream reads the reference litestream.yml, replicates
with it and restores; `sidecar run` backs up with it; the Compose file's S3 server command and
app environment back an app's writes up. What the files say is read in
tests/unit/test_deploy_files.py."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit import (
    S3_KEY,
    S3_SECRET,
    S3Server,
    base_env,
    free_port,
    railway_bucket_env,
    rows,
    side_restore,
    tool,
    wait_for,
    write_app,
)
from testkit.deploy import LITESTREAM_YML, compose, compose_env, interpolate


def test_real_litestream_reads_the_reference_config() -> None:
    """`litestream databases` (0.5) parses litestream.yml with Railway's variables set."""
    env = {**os.environ, "BUCKET": "bkt", "ENDPOINT": "https://storage.railway.app",
           "REGION": "auto", "ACCESS_KEY_ID": "id", "SECRET_ACCESS_KEY": "secret"}
    env.pop("AWS_CA_BUNDLE", None)
    res = subprocess.run([tool("litestream"), "databases", "-config", str(LITESTREAM_YML)],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert re.search(r"^/data/app\.db\s+s3\s*$", res.stdout, re.M), res.stdout


def local_copy_of_reference_config(tmp_path: Path, db: Path) -> Path:
    """litestream.yml with only what cannot hold on this machine changed: the database path,
    the socket and metrics port (tests run side by side), and path-style addressing (the local
    S3 server has no per-bucket host names)."""
    text = LITESTREAM_YML.read_text()
    for old, new in (("path: /data/app.db", f"path: {db}"),
                     ("path: /tmp/litestream.sock", f"path: {tmp_path / 'ls.sock'}"),
                     ('addr: "127.0.0.1:9091"', f'addr: "127.0.0.1:{free_port()}"'),
                     ("force-path-style: false", "force-path-style: true")):
        assert text.count(old) == 1, f"litestream.yml no longer has {old!r}"
        text = text.replace(old, new)
    out = tmp_path / "litestream.yml"
    out.write_text(text)
    return out


@pytest.mark.slow
def test_reference_config_replicates_and_restores_with_real_litestream(
        tmp_path: Path, s3: S3Server, bucket: str) -> None:
    """Plain `litestream replicate` with litestream.yml (Litestream expanding the variables,
    a `$` in the secret included) uploads under the app.db prefix, and a restore gets the rows."""
    db = tmp_path / "app.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT)")
    cfg = local_copy_of_reference_config(tmp_path, db)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(railway_bucket_env(s3.endpoint, bucket, "us-east-1"), AWS_EC2_METADATA_DISABLED="true")
    proc = subprocess.Popen([tool("litestream"), "replicate", "-config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for i in range(20):
            con.execute("INSERT INTO rows(v) VALUES (?)", (f"row-{i}",))
        con.close()
        client = s3.client()

        def uploaded() -> bool:
            listed = client.list_objects_v2(Bucket=bucket, Prefix="app.db/")
            return any(o["Key"].endswith(".ltx") for o in listed.get("Contents", []))

        wait_for(uploaded, 20, what="LTX files under app.db/")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=40)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    restored = tmp_path / "restored.db"
    res = subprocess.run([tool("litestream"), "restore", "-config", str(cfg), "-o",
                          str(restored), str(db)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    got = [r[0] for r in sqlite3.connect(restored).execute("SELECT v FROM rows ORDER BY id")]
    assert got == [f"row-{i}" for i in range(20)]


@pytest.mark.slow
def test_sidecar_runs_with_the_reference_config(tmp_path: Path, s3: S3Server, bucket: str,
                                                sidecars: Any) -> None:
    """`sidecar run` with LITESTREAM_CONFIG=litestream.yml and only Railway's bucket variables
    backs the app's writes up where the file says (bucket, app.db prefix)."""
    db = tmp_path / "data" / "app.db"
    (tmp_path / "data").mkdir()
    cfg = local_copy_of_reference_config(tmp_path, db)
    env = base_env(tmp_path, LITESTREAM_CONFIG=str(cfg), WRITE_LIMIT="5",
                   **railway_bucket_env(s3.endpoint, bucket, "us-east-1"))
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_stdout("wrote run-4")
    sc.wait_event("app started")
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0, sc.output()
    out = side_restore({**env, "SIDECAR_REPLICA_URL": f"s3://{bucket}/app.db",
                        "SIDECAR_S3_ENDPOINT": s3.endpoint, "AWS_ACCESS_KEY_ID": S3_KEY,
                        "AWS_SECRET_ACCESS_KEY": S3_SECRET}, tmp_path / "check.db")
    assert rows(out)[:5] == [f"run-{i}" for i in range(5)]


@pytest.fixture
def compose_s3(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """The Compose file's S3 server command, run with the real rclone (port and folder mapped
    to this machine), after the Compose file's bucket-creating step."""
    services = compose()["services"]
    cmd = [interpolate(a) for a in services["s3"]["command"]]
    root = tmp_path / "s3"
    mkdir = services["create-bucket"]["command"]
    assert mkdir[:2] == ["mkdir", "-p"]
    made = Path(mkdir[-1].replace(cmd[-1].rstrip("/"), str(root), 1))
    made.mkdir(parents=True)
    port = free_port()
    cmd[cmd.index("--addr") + 1] = f"127.0.0.1:{port}"
    cmd[-1] = str(root)
    proc = subprocess.Popen([tool("rclone"), *cmd], env={**os.environ, "RCLONE_CONFIG": "/dev/null"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(up, 15, what="rclone from compose.yaml")
        yield f"http://127.0.0.1:{port}", cmd
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_compose_settings_back_up_for_real(tmp_path: Path, compose_s3: tuple[str, list[str]],
                                           sidecars: Any) -> None:
    """The app service's environment, pointed at the Compose S3 server run for real, backs the
    app's writes up; the bucket then holds them."""
    endpoint, _ = compose_s3
    app_env = {k: interpolate(v) for k, v in compose_env("app").items()}
    app_env["SIDECAR_S3_ENDPOINT"] = endpoint  # the `s3` host name exists only inside Compose
    for name in ("DATABASE_URL", "SIDECAR_VOLUME_PATH", "SIDECAR_LOG_FORMAT"):
        app_env.pop(name)  # /data is not a mount here; the tests read JSON logs
    env = base_env(tmp_path, WRITE_LIMIT="5", **app_env)
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_stdout("wrote run-4")
    sc.wait_event("app started")
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0, sc.output()
    out = side_restore(env, tmp_path / "check.db")
    assert rows(out)[:5] == [f"run-{i}" for i in range(5)]
