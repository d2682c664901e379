"""deploy/prometheus and deploy/grafana: valid for promtool and for a real Prometheus."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.daemon import metrics
from testkit import free_port
from testkit.metrics import fake_runtime
from testkit.procs import stop, wait_serving

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "sidecar-dashboard.json"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.requires(PROMTOOL is not None, "promtool is not installed")
needs_prometheus = pytest.mark.requires(PROMETHEUS is not None, "prometheus is not installed")

# SPEC section 3, "Metrics that must exist": each has a place on the dashboard.
SPEC_METRICS = [
    "sidecar_replication_lag_seconds",
    "sidecar_replica_last_upload_timestamp_seconds",
    "sidecar_local_txid",
    "sidecar_replica_txid",
    "sidecar_replica_reachable",
    "sidecar_app_up",
    "sidecar_litestream_up",
    "sidecar_child_restarts_total",
    "sidecar_restores_total",
    "sidecar_restore_duration_seconds",
    "sidecar_migrations_total",
    "sidecar_backup_verify_last_success_timestamp_seconds",
    "sidecar_db_size_bytes",
    "sidecar_wal_size_bytes",
    "sidecar_build_info",
]

# Grafana's variables, as a real Prometheus would see them once Grafana has filled them in.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
    "$db": ".*",
}

_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


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


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\w+", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        is_function = expr[match.end() :].lstrip().startswith("(")
        if not is_function and match.group().lower() not in _PROMQL_WORDS:
            names.add(match.group())
    return names


def registry_names() -> set[str]:
    """Family names as exposed by render(): counters carry their _total suffix."""
    body = metrics.render(None).decode()
    return set(re.findall(r"^# TYPE (\S+) ", body, re.MULTILINE))


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


@needs_promtool
def test_scrape_config_is_valid() -> None:
    """promtool check config accepts prometheus.yml and the rule file it loads."""
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_scrape_config_targets_the_sidecar_port() -> None:
    """The scrape job is named sidecar (the alerts select it) and targets port 9090."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["sidecar"]["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(":9090") for t in targets)
    assert config["rule_files"] == ["alerts.yml"]


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


def test_every_alert_is_tested_firing_and_quiet() -> None:
    """Each alert has a unit test where it fires and one where it must stay quiet."""
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires in tests"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never quiet"


def test_expected_alerts_cover_the_brief() -> None:
    """Lag, reachability, Litestream down, restart loops, stale verification and absence alert."""
    by_name = {rule["alert"]: rule for rule in alert_rules()}
    exprs = " ".join(rule["expr"] for rule in by_name.values())
    for metric in (
        "sidecar_replication_lag_seconds",
        "sidecar_replica_reachable",
        "sidecar_litestream_up",
        "sidecar_child_restarts_total",
        "sidecar_backup_verify_last_success_timestamp_seconds",
        "sidecar_build_info",
        "up",
    ):
        assert metric in metric_names(exprs), f"no alert watches {metric}"
    assert "absent(sidecar_build_info" in exprs


def test_every_alert_says_what_to_do() -> None:
    """Each alert has a severity and a summary, a description and a runbook hint."""
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert len(rule["annotations"].get(key, "")) > 20, f"{rule['alert']}: {key}"


def test_alerts_use_only_exported_metrics() -> None:
    """Alert expressions select only series sidecar exports, plus Prometheus's own `up`."""
    known = registry_names() | {"up"}
    for rule in alert_rules():
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        assert names <= known, f"{rule['alert']}: unknown {names - known}"


def test_dashboard_structure() -> None:
    """The dashboard has the datasource, instance and db variables and well-formed panels."""
    board = dashboard()
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["db"]["type"] == "query"
    assert "db" in variables["db"]["definition"]
    ids = [p["id"] for p in dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard_panels():
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_queries_use_only_known_metrics() -> None:
    """Every panel query selects metrics from sidecar's REGISTRY or Litestream's litestream_*."""
    known = registry_names()
    for expr in dashboard_exprs():
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        unknown = {n for n in names - known if not n.startswith("litestream_")}
        assert not unknown, f"{expr!r} uses {unknown}"


def test_dashboard_shows_every_spec_metric() -> None:
    """Each SPEC section 3 metric is on at least one panel."""
    shown = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    missing = [name for name in SPEC_METRICS if name not in shown]
    assert not missing, missing


def test_metric_name_extraction() -> None:
    """metric_names finds selectors and ignores functions, labels, keywords and variables."""
    expr = (
        'sum by (db, instance) (rate(a_total{db=~"$db"}[$__rate_interval])) / on (db) '
        "b_seconds > 26 * 3600 and on (job) time() - process_start_time_seconds offset 1m"
    )
    assert metric_names(expr) == {"a_total", "b_seconds", "process_start_time_seconds"}


@pytest.fixture
def metrics_server() -> Iterator[str]:
    """sidecar's /metrics body served over loopback HTTP; yields host:port."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = metrics.render(None)
            self.send_response(200)
            self.send_header("Content-Type", metrics.CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


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
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}{path}?{query}", timeout=5) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:  # a 400 carries the PromQL parse error
        return json.load(error)


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
