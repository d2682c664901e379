"""deploy/prometheus and deploy/grafana read as files: the scrape job, every alert tested
firing and quiet and saying what to do, the dashboard's structure, and both selecting only
metrics sidecar exports (every SPEC metric on the dashboard). promtool and a real Prometheus
check the same files in tests/e2e/test_prometheus_rules.py."""

from __future__ import annotations

import re

import yaml

from sidecar import metrics
from testkit.monitoring import (
    PROMETHEUS_DIR,
    alert_rules,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    metric_names,
)

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


def registry_names() -> set[str]:
    """Family names as exposed by render(): counters carry their _total suffix."""
    body = metrics.render(None).decode()
    return set(re.findall(r"^# TYPE (\S+) ", body, re.MULTILINE))


def test_scrape_config_targets_the_sidecar_port() -> None:
    """The scrape job is named sidecar (the alerts select it) and targets port 9090."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["sidecar"]["static_configs"] for t in sc["targets"]]
    assert targets and all(t.endswith(":9090") for t in targets)
    assert config["rule_files"] == ["alerts.yml"]


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
