"""Fault suite, secrets: every fault test scans its own output (no_secret_leaks in
faultkit.py); this module adds the paths most likely to leak — every HTTP endpoint with no,
a wrong and the right admin token, the operator commands, a rejected secret at start, and config
errors around the secret values — and scans them too."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from conftest import S3_SECRET, s3_env, seed_bucket, write_app
from faultkit import ADMIN_TOKEN, SCANNED, fault_env, http_landed, no_secret_leaks, request, run_cmd  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_secret_leaks")]


def test_http_endpoints_and_operator_commands_never_show_a_secret(tmp_path: Path, s3, bucket,
                                                                   sidecars) -> None:
    """/metrics, /healthz, /readyz, /status and every /admin/ answer (no token, wrong token,
    right token), `sidecar status --json`, `check` and `verify`: no S3 secret, no admin
    token, in any body, header or log line."""
    if not http_landed():
        pytest.skip("sidecar/http.py (the HTTP listener) has not landed")
    env = fault_env(tmp_path, **s3_env(s3, bucket), APP_TAG="s")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_event("app started")
    sc.wait_stdout("wrote s-10")
    for path in ("/metrics", "/healthz", "/readyz", "/status"):
        status, body = request(env, "GET", path)
        assert status in (200, 503), (path, status)
    for token in (None, "wrong-token-wrong-token", ADMIN_TOKEN[:-1], S3_SECRET):
        for method, path in (("POST", "/admin/verify"), ("GET", "/admin/status"),
                             ("POST", "/admin/restore")):
            status, _ = request(env, method, path, token=token)
            assert status == 401, (method, path, token is None)
    status, body = request(env, "POST", "/admin/verify", token=ADMIN_TOKEN, timeout=60)
    assert status < 500, body
    status, body = request(env, "GET", "/admin/status", token=ADMIN_TOKEN)
    assert status == 200 and json.loads(body)
    for args in (["status", "--json"], ["check"], ["verify"]):
        res = run_cmd(args, env, tmp_path, timeout=120)
        assert "Traceback" not in res.stderr, res.stderr[-2000:]
    sc.signal(signal.SIGTERM)
    assert sc.wait(60) == 0


def test_rejected_secret_and_secret_config_errors_are_not_echoed(tmp_path: Path, s3, bucket,
                                                                  ) -> None:
    """A wrong S3 secret at a start that needs a restore (exit 4), a short admin token and a
    secret without its key id (exit 2): the messages say what is wrong, never the value."""
    wrong = S3_SECRET[::-1]
    env = fault_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["backed-up"])
    for p in Path(env["SIDECAR_DB_PATH"]).parent.glob("app.db*"):
        p.unlink()
    res = run_cmd(["run", "--", "true"], {**env, "AWS_SECRET_ACCESS_KEY": wrong}, tmp_path)
    assert res.returncode == 4 and "denied" in res.stderr, res.stderr[-2000:]
    assert wrong not in res.stdout + res.stderr
    res = run_cmd(["run", "--", "true"], {**env, "SIDECAR_ADMIN_TOKEN": "short$ecret"},
                  tmp_path)
    assert res.returncode == 2 and "SIDECAR_ADMIN_TOKEN" in res.stderr
    assert "short$ecret" not in res.stdout + res.stderr
    no_key = {k: v for k, v in env.items() if k != "AWS_ACCESS_KEY_ID"}
    res = run_cmd(["run", "--", "true"], no_key, tmp_path)
    assert res.returncode == 2 and "AWS_ACCESS_KEY_ID" in res.stderr
    res = run_cmd(["check"], {**env, "AWS_SECRET_ACCESS_KEY": wrong}, tmp_path)
    assert res.returncode == 1 and wrong not in res.stdout + res.stderr


def test_the_scan_saw_the_suite() -> None:
    """The scan is not vacuous: by now it has read the output of the fault tests run so far."""
    assert SCANNED["tests"] >= 2 and SCANNED["records"] > 0
