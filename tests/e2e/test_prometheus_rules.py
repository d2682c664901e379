"""deploy/prometheus and deploy/grafana through the real tools: promtool accepts the scrape
config and the alert rules and passes their unit tests, and a real Prometheus scraping sidecar's
/metrics answers every dashboard query and evaluates every rule. What the files say is read in
tests/unit/test_monitoring_files.py."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import metrics
from testkit import free_port
from testkit.http import get, serving
from testkit.metrics import fake_runtime
from testkit.monitoring import PROMETHEUS_DIR, alert_rules, dashboard_exprs
from testkit.procs import stop, wait_serving

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.requires(PROMTOOL is not None, "promtool is not installed")
needs_prometheus = pytest.mark.requires(PROMETHEUS is not None, "prometheus is not installed")

# Grafana's variables, as a real Prometheus would see them once Grafana has filled them in.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$db": ".*",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_promtool
def test_scrape_config_is_valid() -> None:
    """promtool check config accepts prometheus.yml and the rule file it loads."""
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_alert_rules_are_valid() -> None:
    """promtool check rules accepts alerts.yml."""
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    """promtool test rules runs alerts_test.yml against alerts.yml without a failure."""
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.fixture
def metrics_server() -> Iterator[str]:
    """sidecar's /metrics body served over loopback HTTP; yields host:port."""

    with serving(lambda _path: (200, metrics.render(None)), metrics.CONTENT_TYPE) as base:
        yield base.removeprefix("http://")


@pytest.fixture
def prometheus(tmp_path: Path, metrics_server: str) -> Iterator[str]:
    """A real Prometheus scraping metrics_server every second with alerts.yml loaded."""
    assert PROMETHEUS is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
                "scrape_configs": [
                    {"job_name": "sidecar", "static_configs": [{"targets": [metrics_server]}]}
                ],
            }
        )
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_serving(proc, f"{url}/-/ready", lambda status, _body: status == 200, 30,
                     "prometheus")
        yield url
    finally:
        stop(proc, 15)


def api(url: str, path: str, **params: str) -> Any:
    # a 400 carries the PromQL parse error
    return get(f"{url}{path}?{urllib.parse.urlencode(params)}").json()


@needs_prometheus
def test_dashboard_queries_return_data_from_a_real_scrape(prometheus: str,
                                                          request: pytest.FixtureRequest) -> None:
    """A real Prometheus scraping render() answers every panel query with series, and every
    alert rule evaluates without error."""
    db = "/data/dashboard.db"
    metrics.init_db(db)
    now = time.time()
    request.addfinalizer(lambda: metrics.watch(None))
    metrics.watch(fake_runtime(db, checks=1, lag_seconds=0.5, last_upload=now - 5, local_txid=3,
                          replica_txid=3, reachable=True))
    metrics.BACKUP_VERIFY_LAST_SUCCESS.labels(db=db).set(now - 60)
    metrics.REPLICA_REQUESTS.labels(db=db, operation="list_objects_v2").inc()
    metrics.LAG_CHECKS.labels(db=db, outcome="ok").inc()

    pending = {}
    for expr in dashboard_exprs():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        pending[expr] = None
    deadline = time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for expr in list(pending):
            answer = api(prometheus, "/api/v1/query", query=expr)
            assert answer["status"] == "success", f"{expr!r}: {answer.get('error')}"
            pending[expr] = answer
            if answer["data"]["result"]:
                del pending[expr]
        time.sleep(0.5)
    assert not pending, f"queries without data: {list(pending)}"

    deadline = time.monotonic() + 15
    while True:
        groups = api(prometheus, "/api/v1/rules")["data"]["groups"]
        health = {r["name"]: r["health"] for g in groups for r in g["rules"]}
        if len(health) == len(alert_rules()) and set(health.values()) == {"ok"}:
            break
        assert "err" not in health.values(), health
        assert time.monotonic() < deadline, health
        time.sleep(0.5)
