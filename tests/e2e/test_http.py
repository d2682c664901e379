"""The HTTP listener on a real running sidecar: /metrics linted by promtool and scraped by a
real Prometheus, /status, /healthz and /readyz through app and Litestream failures, dual
stack, and clear errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from testkit import S3_KEY, S3_SECRET, S3Server, base_env, free_port, need, s3_env, wait_for, write_app
from testkit.http import get, request
from testkit.live import start_with_http

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.requires(
    PROMTOOL is not None and PROMETHEUS is not None,
    "prometheus/promtool not installed (apt-get install prometheus; scripts/setup.sh)")

# SPEC section 3: every field /status must carry per database.
DB_FIELDS = {"path", "size_bytes", "local_txid", "replica_txid", "lag_seconds", "last_upload"}
CHILD_FIELDS = {"pid", "uptime_seconds", "restarts"}
TOP_FIELDS = {"databases", "children", "last_restore", "last_migration", "last_verification"}


def host_has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def wait_ready(base: str) -> None:
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, 30, what="/readyz 200")


@pytest.mark.slow
@needs_prometheus
def test_metrics_page_passes_promtool_and_carries_litestream_series(
        tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any) -> None:
    """A real /metrics page: promtool-clean, every sidecar_* series, litestream_* passed through."""
    sc, base = start_with_http(tmp_path, s3, bucket, sidecars)
    wait_ready(base)
    code, body, headers = get(f"{base}/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    res = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                         timeout=30)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    text = body.decode()
    db = str(tmp_path / "data" / "app.db")
    for name in ("sidecar_replication_lag_seconds", "sidecar_replica_last_upload_timestamp_seconds",
                 "sidecar_local_txid", "sidecar_replica_txid", "sidecar_replica_reachable",
                 "sidecar_backup_verify_last_success_timestamp_seconds", "sidecar_db_size_bytes",
                 "sidecar_wal_size_bytes"):
        assert f'{name}{{db="{db}"}}' in text, name
    for name in ("sidecar_app_up 1.0", "sidecar_litestream_up 1.0", "sidecar_build_info{",
                 'sidecar_child_restarts_total{child="app"}', "sidecar_restores_total{",
                 "sidecar_restore_duration_seconds", "sidecar_migrations_total{",
                 "litestream_txid{"):
        assert name in text, name
    assert S3_SECRET not in text and S3_KEY not in text
    sc.signal()
    assert sc.wait() == 0


PROM_CONFIG = """
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: sidecar
    static_configs:
      - targets: ["{target}"]
"""


@pytest.mark.slow
@needs_prometheus
def test_real_prometheus_scrapes_the_lag(
        tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any) -> None:
    """Debian's Prometheus on 127.0.0.1 scrapes the sidecar; PromQL returns the lag."""
    sc, base = start_with_http(tmp_path, s3, bucket, sidecars)
    wait_ready(base)
    target = base.removeprefix("http://")
    prom_dir = tmp_path / "prom"
    prom_dir.mkdir()
    (prom_dir / "prometheus.yml").write_text(PROM_CONFIG.format(target=target))
    prom_port = free_port()
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={prom_dir / 'prometheus.yml'}",
         f"--storage.tsdb.path={prom_dir / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=open(prom_dir / "prometheus.log", "wb"))
    try:
        query = urllib.parse.quote('sidecar_replication_lag_seconds{job="sidecar"}')
        url = f"http://127.0.0.1:{prom_port}/api/v1/query?query={query}"

        def result() -> list[Any] | None:
            try:
                _code, body, _ = get(url, timeout=2)
                return json.loads(body)["data"]["result"] or None
            except (OSError, ValueError, KeyError):
                return None

        series = wait_for(result, 60, interval=0.5, what="Prometheus to return the lag")
        assert series[0]["metric"]["db"] == str(tmp_path / "data" / "app.db")
        assert float(series[0]["value"][1]) >= 0
        up = urllib.parse.quote('up{job="sidecar"}')
        _c, body, _ = get(f"http://127.0.0.1:{prom_port}/api/v1/query?query={up}")
        assert json.loads(body)["data"]["result"][0]["value"][1] == "1"
    finally:
        prom.terminate()
        prom.wait(20)
    sc.signal()
    assert sc.wait() == 0


@pytest.mark.slow
def test_status_has_every_field_and_no_secret(
        tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any) -> None:
    """/status carries every SPEC field; no secret (S3 key, admin token, heartbeat URL)."""
    token = "admin-token-" + "z" * 20
    beat = "http://127.0.0.1:9/hb/very-secret-check-uuid"
    sc, base = start_with_http(tmp_path, s3, bucket, sidecars, SIDECAR_ADMIN_TOKEN=token,
                     SIDECAR_HEARTBEAT_URL=beat)
    wait_ready(base)

    def uploaded() -> bool:
        return bool(json.loads(get(f"{base}/status")[1])["databases"][0]["last_upload"])

    wait_for(uploaded, 15, what="a lag check that saw the first upload")
    code, body, headers = get(f"{base}/status")
    assert code == 200 and headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert set(doc) >= TOP_FIELDS, set(doc)
    (db,) = doc["databases"]
    assert set(db) >= DB_FIELDS, set(db)
    assert db["path"] == str(tmp_path / "data" / "app.db")
    assert db["size_bytes"] > 0 and db["lag_seconds"] is not None
    assert db["local_txid"] and len(db["local_txid"]) == 16
    assert int(db["replica_txid"], 16) > 0 and db["last_upload"].endswith("Z")
    for child in ("app", "litestream"):
        assert set(doc["children"][child]) >= CHILD_FIELDS, doc["children"][child]
        assert doc["children"][child]["pid"] > 0
    assert doc["last_restore"] and doc["last_migration"]["outcome"] == "skipped"
    text = body.decode()
    for secret in (S3_SECRET, token, "very-secret-check-uuid", S3_KEY):
        assert secret not in text, secret
    for secret in (S3_SECRET, token, "very-secret-check-uuid"):
        assert secret not in "\n".join(sc.lines), secret
    sc.signal()
    assert sc.wait() == 0


# Exits 3 about a second after each start; with on-failure the sidecar restarts it with
# a growing backoff, so the app is down most of the time.
CRASHING_APP = """
    import sys, time
    time.sleep(0.5)
    sys.exit(3)
"""


@pytest.mark.slow
def test_healthz_stays_200_while_the_app_is_down(
        tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any) -> None:
    """App crash-looping: /healthz stays 200, /readyz is 503 naming the app."""
    app = write_app(tmp_path, CRASHING_APP, "crash.py")
    sc, base = start_with_http(tmp_path, s3, bucket, sidecars, app=app, SIDECAR_APP_RESTART="on-failure")
    sc.wait_event("app exited", 10)

    def app_down() -> bool:
        health = get(f"{base}/healthz")
        assert health[0] == 200, health
        code, body, _ = get(f"{base}/readyz")
        down = "app is not running" in json.loads(body)["reasons"]
        assert code == 503 or not down, (code, body)
        return down

    wait_for(app_down, 6, what="/readyz to name the app as not running")
    sc.signal()
    sc.wait()


@pytest.mark.slow
def test_readyz_503_while_litestream_is_down(
        tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any) -> None:
    """Litestream killed: /readyz 503 with the reason until it is back; /healthz stays 200."""
    sc, base = start_with_http(tmp_path, s3, bucket, sidecars)
    wait_ready(base)
    pid = json.loads(get(f"{base}/status")[1])["children"]["litestream"]["pid"]
    os.kill(pid, signal.SIGKILL)

    def down() -> bool:
        code, body, _ = get(f"{base}/readyz")
        return code == 503 and "litestream is not running" in json.loads(body)["reasons"]

    wait_for(down, 5, interval=0.05, what="/readyz 503 naming litestream")
    assert get(f"{base}/healthz")[0] == 200
    wait_ready(base)  # restarted by the supervisor
    sc.signal()
    assert sc.wait() == 0


@pytest.mark.slow
def test_dual_stack_listener_answers_ipv4_and_ipv6(
        tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any) -> None:
    """`[::]:PORT` is one socket reachable on 127.0.0.1 and on ::1; unknown paths are 404.
    Whether the host has ::1 at all is asked before sidecar starts, with a socket of the
    test's own: an unreachable ::1 on sidecar's listener is then the failure under test."""
    need(host_has_ipv6_loopback(), "this host has no ::1 (IPv6 loopback)")
    port = free_port()
    sc, _ = start_with_http(tmp_path, s3, bucket, sidecars, addr=f"[::]:{port}")
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    assert get(f"http://[::1]:{port}/healthz")[0] == 200
    code, body, _ = get(f"http://127.0.0.1:{port}/nope")
    assert code == 404 and "no such endpoint" in json.loads(body)["error"]
    resp = request(f"http://127.0.0.1:{port}/metrics", "POST", b"")
    assert resp.status == 405 and resp.headers["Allow"] == "GET", resp
    sc.signal()
    assert sc.wait() == 0


def test_port_in_use_is_one_clear_error_naming_the_variable(
        tmp_path: Path, s3: S3Server, bucket: str) -> None:
    """A taken port: exit 3, one error naming SIDECAR_HTTP_ADDR, nothing started."""
    from testkit import run_sidecar

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}")
        res = run_sidecar(["run", "--", "true"], env, tmp_path)
    assert res.returncode == 3, res.stderr
    errors = [json.loads(line) for line in res.stderr.splitlines()
              if line.startswith("{") and '"error"' in line]
    assert any("SIDECAR_HTTP_ADDR" in e["message"] for e in errors), res.stderr
    assert not (tmp_path / "data" / "app.db").exists()
