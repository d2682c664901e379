"""Operator commands besides the live restore: HTTP admin auth, verify (good and broken
bucket), snapshot under writes, restore --output with no daemon, and hold + resume."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from pathlib import Path
from typing import Any

import pytest

from sidecar.litestream import unix_request
from testkit import (
    S3_SECRET,
    base_env,
    free_port,
    rows,
    run_sidecar,
    s3_env,
    seed_bucket,
    wait_for,
    write_app,
)
from testkit.db import integrity, lose_db, query
from testkit.http import request
from testkit.live import IDLE_APP, db_path, sock, start_with_rows, state_dir

pytestmark = pytest.mark.slow
TOKEN = "t0ken-for-the-admin-endpoints"


def http(port: int, method: str, path: str, token: str | None = None, body: Any = None,
         timeout: float = 120) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    resp = request(f"http://127.0.0.1:{port}{path}", method, data, token=token, timeout=timeout)
    try:
        return resp.status, resp.json()
    except ValueError:
        return resp.status, resp.text


def verify_metric(port: int, db: Path) -> float:
    _code, text = http(port, "GET", "/metrics")
    m = re.search(r'^sidecar_backup_verify_last_success_timestamp_seconds\{db="'
                  + re.escape(str(db)) + r'"\} (\S+)$', text, re.M)
    assert m, "verify metric missing"
    return float(m.group(1))


def test_admin_restore_needs_the_token_and_the_socket_is_private(tmp_path: Path, s3, bucket,
                                                                 sidecars) -> None:
    """/admin/* answers 401 without or with a wrong token and nothing happens; with the token
    POST /admin/restore restores; the control socket is mode 0600."""
    port = free_port()
    env, sc, txid_a, _t = start_with_rows(
        tmp_path, s3, bucket, sidecars, SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}",
        SIDECAR_ADMIN_TOKEN=TOKEN)
    assert stat.S_IMODE(os.stat(sock(env)).st_mode) == 0o600
    body = {"txid": f"{txid_a:x}", "wait": True}
    for token in (None, "wrong-token-wrong-token", TOKEN[:-1]):
        for path in ("/admin/restore", "/admin/verify", "/admin/resume"):
            code, doc = http(port, "POST", path, token, body)
            assert code == 401, (token, path, doc)
    assert rows(db_path(env)) == ["a1", "a2", "b1", "b2"]
    assert sc.event("restore requested") is None
    code, doc = http(port, "POST", "/admin/restore", TOKEN, body)
    assert code == 200, doc
    assert doc["outcome"] == "restored"
    assert rows(db_path(env)) == ["a1", "a2"]
    code, doc = http(port, "GET", f"/admin/restore?id={doc['id']}", TOKEN)
    assert code == 200 and doc["state"] == "done"
    assert TOKEN not in "\n".join(sc.lines + sc.stdout)


def test_admin_routes_are_404_without_a_configured_token(tmp_path: Path, sidecars) -> None:
    """No SIDECAR_ADMIN_TOKEN: every /admin/ route is 404, with or without a token."""
    port = free_port()
    env = base_env(tmp_path, SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}")
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    sc.wait_event("app started")
    wait_for(lambda: http(port, "GET", "/healthz")[0] == 200, 10, what="http listener")
    for token in (None, TOKEN):
        for method, path in (("POST", "/admin/restore"), ("POST", "/admin/verify"),
                             ("GET", "/admin/status")):
            assert http(port, method, path, token, {})[0] == 404
    assert sc.event("restore requested") is None


def _corrupt_bucket(s3: Any, bucket: str) -> int:
    n = 0
    for p in (s3.root / bucket).rglob("*.ltx"):
        p.write_bytes(os.urandom(p.stat().st_size))
        n += 1
    return n


def test_verify_passes_on_a_good_backup_and_fails_on_a_corrupted_one(tmp_path: Path, s3,
                                                                      bucket, sidecars) -> None:
    """`sidecar verify` exits 0 and sets the metric on a good backup; with the bucket's LTX
    files overwritten it exits 1 and the metric keeps its last value."""
    port = free_port()
    env, _sc, _txid, _t = start_with_rows(tmp_path, s3, bucket, sidecars,
                                          SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}")
    assert verify_metric(port, db_path(env)) == 0
    res = run_sidecar(["verify"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("OK") and "running sidecar" in res.stdout
    good = verify_metric(port, db_path(env))
    assert good > 0
    assert S3_SECRET not in res.stdout + res.stderr

    assert _corrupt_bucket(s3, bucket) > 0
    res = run_sidecar(["verify", "--json"], env, tmp_path, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["databases"][0]["error"]
    assert verify_metric(port, db_path(env)) == good
    _code, status = unix_request(sock(env), "GET", "/status")
    assert status["last_verification"]["ok"] is False


def test_verify_fails_when_the_backup_is_missing(tmp_path: Path, s3, bucket, sidecars) -> None:
    """With every object gone from the bucket, verify exits 1 (through the daemon)."""
    env, _sc, _txid, _t = start_with_rows(tmp_path, s3, bucket, sidecars)
    client = s3.client()
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    res = run_sidecar(["verify"], env, tmp_path, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stdout.startswith("FAIL")


def test_snapshot_while_the_app_writes_every_10ms_is_consistent(tmp_path: Path, sidecars
                                                                 ) -> None:
    """`sidecar snapshot` taken while the app inserts a row every 10 ms passes integrity_check,
    and refuses to overwrite the file afterwards."""
    env = base_env(tmp_path, WRITE_INTERVAL="0.01", APP_TAG="w")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_stdout("wrote w-50")
    out = tmp_path / "snap.db"
    res = run_sidecar(["snapshot", "--output", str(out)], env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert integrity(out) == "ok"
    assert query(out, "SELECT count(*) FROM rows")[0][0] >= 50
    assert sc.proc.poll() is None
    again = run_sidecar(["snapshot", "--output", str(out)], env, tmp_path)
    assert again.returncode == 1 and "already exists" in again.stderr
    live = run_sidecar(["snapshot", "--output", str(db_path(env))], env, tmp_path)
    assert live.returncode == 1 and "live database" in live.stderr


def test_restore_output_needs_no_daemon_and_never_overwrites_unasked(tmp_path: Path, s3,
                                                                     bucket) -> None:
    """With no sidecar running, `restore --output` writes the backup into that file; it
    refuses an existing file unless --force, and never touches the live DB."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["x1", "x2"])
    live_before = db_path(env).read_bytes()
    out = tmp_path / "copy.db"
    res = run_sidecar(["restore", "--output", str(out)], env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert rows(out) == ["x1", "x2"]
    out.write_bytes(b"precious")
    res = run_sidecar(["restore", "--output", str(out)], env, tmp_path)
    assert res.returncode == 1 and "--output" in res.stderr and "already exists" in res.stderr
    assert out.read_bytes() == b"precious"
    res = run_sidecar(["restore", "--output", str(out), "--force"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    assert rows(out) == ["x1", "x2"]
    res = run_sidecar(["restore", "--output", str(db_path(env))], env, tmp_path)
    assert res.returncode == 1 and "live database" in res.stderr
    res = run_sidecar(["restore", "--yes"], env, tmp_path)
    assert res.returncode == 1 and "no sidecar is running" in res.stderr
    assert db_path(env).read_bytes() == live_before
    assert not list(state_dir(env).glob("pre-restore/*"))
    assert S3_SECRET not in res.stdout + res.stderr


def test_hold_keeps_the_sidecar_up_until_resume_restores_and_starts(tmp_path: Path, own_s3,
                                                                    sidecars) -> None:
    """SIDECAR_ON_START_FAILURE=hold, DB missing, bucket down: the sidecar stays up, /healthz
    200, /readyz 503, status names the failure, nothing at the DB path; with the bucket back,
    `sidecar resume` restores and starts the app."""
    bucket = own_s3.make_bucket()
    port = free_port()
    env = base_env(tmp_path, **s3_env(own_s3, bucket))
    seed_bucket(env, tmp_path, ["h1", "h2"])
    lose_db(db_path(env))
    own_s3.stop()
    env.update(SIDECAR_ON_START_FAILURE="hold", SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}")
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    sc.wait_event("start failed: holding for an operator", timeout=60)
    assert sc.proc.poll() is None
    assert http(port, "GET", "/healthz")[0] == 200
    code, ready = http(port, "GET", "/readyz")
    assert code == 503 and any("held" in r for r in ready["reasons"])
    res = run_sidecar(["status", "--json"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["state"] == "held" and "cannot be read" in doc["failure"]["error"]
    human = run_sidecar(["status"], env, tmp_path)
    assert "held because" in human.stdout and "sidecar resume" in human.stdout
    assert not db_path(env).exists()
    assert S3_SECRET not in res.stdout + "\n".join(sc.lines)

    own_s3.start()
    res = run_sidecar(["resume"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    sc.wait_event("app started")
    assert rows(db_path(env)) == ["h1", "h2"]
    assert json.loads(run_sidecar(["status", "--json"], env, tmp_path).stdout)["state"] == \
        "running"
    again = run_sidecar(["resume"], env, tmp_path)
    assert again.returncode == 1 and "not held" in again.stderr
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0


def test_every_operator_command_has_help() -> None:
    """Each operator command prints a --help that says what it does."""
    for cmd, words in (("status", "control socket"), ("restore", "--timestamp"),
                       ("verify", "integrity_check"), ("snapshot", "--output"),
                       ("resume", "SIDECAR_ON_START_FAILURE"), ("check", "bucket")):
        res = run_sidecar([cmd, "--help"], dict(os.environ), Path.cwd())
        assert res.returncode == 0 and words in res.stdout, (cmd, res.stdout[:300])


def test_scheduled_verification_updates_the_metric(tmp_path: Path, s3, bucket, sidecars) -> None:
    """SIDECAR_VERIFY_SCHEDULE runs verify on its cron (every minute here) inside the daemon,
    which sets the last-success metric without any operator command."""
    port = free_port()
    env, sc, _txid, _t = start_with_rows(tmp_path, s3, bucket, sidecars,
                                         SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}",
                                         SIDECAR_VERIFY_SCHEDULE="* * * * *")
    assert sc.event("backup verification scheduled")["schedule"] == "* * * * *"
    sc.wait_event("backup verified", timeout=75)
    assert verify_metric(port, db_path(env)) > 0


def test_output_naming_a_directory_is_a_clear_error_leaving_nothing(tmp_path: Path, s3,
                                                                    bucket) -> None:
    """`restore --output DIR --force` and `snapshot --output DIR --force`: exit 1 saying the
    path is a directory, no traceback, and no copy of the database left beside it or in it."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["x1", "x2"])
    out = tmp_path / "out"
    out.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    for cmd in ("restore", "snapshot"):
        res = run_sidecar([cmd, "--output", str(out), "--force"], env, tmp_path, timeout=120)
        assert res.returncode == 1, res.stdout + res.stderr
        assert f"--output: {out} is a directory" in res.stderr
        assert "Traceback" not in res.stderr
        assert list(out.iterdir()) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == before
