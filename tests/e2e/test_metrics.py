"""The /metrics body: every SPEC metric, Litestream's series passed through, promtool-clean."""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar import metrics
from sidecar.lag.model import LagResult
from testkit import free_port, tool
from testkit.http import get, serving
from testkit.metrics import fake_runtime, watching
from testkit.procs import stop, wait_serving

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.requires(PROMTOOL is not None, "promtool is not installed")

# SPEC section 3, "Metrics that must exist".
SPEC_METRICS = {
    "sidecar_replication_lag_seconds": {"db"},
    "sidecar_replica_last_upload_timestamp_seconds": {"db"},
    "sidecar_local_txid": {"db"},
    "sidecar_replica_txid": {"db"},
    "sidecar_replica_reachable": {"db"},
    "sidecar_app_up": set(),
    "sidecar_litestream_up": set(),
    "sidecar_child_restarts_total": {"child"},
    "sidecar_restores_total": {"trigger", "outcome"},
    "sidecar_restore_duration_seconds": set(),
    "sidecar_migrations_total": {"outcome"},
    "sidecar_backup_verify_last_success_timestamp_seconds": {"db"},
    "sidecar_db_size_bytes": {"db"},
    "sidecar_wal_size_bytes": {"db"},
    "sidecar_build_info": {"version", "litestream_version"},
}


def litestream_binary() -> str:
    return tool("litestream")


def promtool_check(body: bytes) -> subprocess.CompletedProcess[bytes]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )


def families(body: bytes) -> dict[str, str]:
    """Map each family name in a text exposition to its declared type."""
    found: dict[str, str] = {}
    for match in re.finditer(rb"^# TYPE (\S+) (\S+)$", body, re.MULTILINE):
        name = match.group(1).decode()
        assert name not in found, f"family {name} declared twice"
        found[name] = match.group(2).decode()
    return found


def sample(name: str, **labels: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def litestream_metrics_url(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real `litestream replicate` with a file:// replica; yields (metrics URL, DB path)."""
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('hello')")
    conn.close()
    port = free_port()
    config = tmp_path / "litestream.yml"
    config.write_text(
        f"addr: 127.0.0.1:{port}\n"
        "dbs:\n"
        f"  - path: {db}\n"
        "    replica:\n"
        f"      url: file://{tmp_path / 'replica'}\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    proc = subprocess.Popen(
        [litestream_binary(), "replicate", "-config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_serving(proc, url, lambda _status, body: b"litestream_txid{" in body, 20,
                     "litestream's metrics")
        yield url, str(db)
    finally:
        stop(proc)


@pytest.fixture
def served_text() -> Iterator[tuple[str, list[tuple[int, bytes]]]]:
    """A loopback HTTP server answering /metrics with whatever (status, body) the test sets."""
    answer: list[tuple[int, bytes]] = [(200, b"")]
    with serving(lambda _path: answer[0]) as base:
        yield f"{base}/metrics", answer


def test_every_spec_metric_is_exposed_with_its_labels() -> None:
    """Each SPEC section 3 metric appears in render() with exactly the SPEC's label names."""
    metrics.init_db("/data/spec.db")
    with watching(fake_runtime("/data/spec.db")):
        body = metrics.render(None)
    declared = families(body)
    for name, labels in SPEC_METRICS.items():
        assert name in declared, f"{name} missing from /metrics"
        lines = re.findall(rf"^{name}(?:{{(.*)}})? \S+$", body.decode(), re.MULTILINE)
        assert lines, f"{name} has no series"
        for label_text in lines:
            assert set(re.findall(r'(\w+)="', label_text)) == labels, name


def test_types_and_units_follow_prometheus_naming() -> None:
    """Counters end in _total and every sidecar_* family has a help text."""
    body = metrics.render(None).decode()
    for name, kind in families(body.encode()).items():
        if not name.startswith("sidecar_"):
            continue
        assert (kind == "counter") == name.endswith("_total"), name
        help_line = re.search(rf"^# HELP {name} (.+)$", body, re.MULTILINE)
        assert help_line and len(help_line.group(1)) > 20, f"{name} lacks a real help text"


def test_known_label_values_exist_at_zero_from_the_start() -> None:
    """Children, restore and migration outcomes are series before anything happened."""
    body = metrics.render(None).decode()
    for child in ("app", "litestream"):
        assert f'sidecar_child_restarts_total{{child="{child}"}}' in body
    for trigger in ("startup", "manual"):
        for outcome in ("restored", "fresh", "skipped", "failed"):
            assert f'sidecar_restores_total{{outcome="{outcome}",trigger="{trigger}"}}' in body
    for outcome in ("succeeded", "failed", "skipped"):
        assert f'sidecar_migrations_total{{outcome="{outcome}"}}' in body


def test_a_database_starts_from_nothing_known(tmp_path: Path) -> None:
    """Before any lag check: lag NaN (unknown), the bucket unreachable, every position 0, the
    lag-check counters at 0; the file sizes are the files' own, read at the scrape."""
    db = tmp_path / "fresh.db"
    db.write_bytes(b"x" * 4096)
    metrics.init_db(str(db))
    with watching(fake_runtime(str(db))):
        assert math.isnan(sample("sidecar_replication_lag_seconds", db=str(db)))
        assert sample("sidecar_replica_reachable", db=str(db)) == 0
        assert sample("sidecar_replica_txid", db=str(db)) == 0
        assert sample("sidecar_local_txid", db=str(db)) == 0
        assert sample("sidecar_db_size_bytes", db=str(db)) == 4096
        assert sample("sidecar_wal_size_bytes", db=str(db)) == 0
        body = metrics.render(None).decode()
    assert sample("sidecar_backup_verify_last_success_timestamp_seconds", db=str(db)) == 0
    assert f'sidecar_lag_checks_total{{db="{db}",outcome="failed"}} 0.0' in body


def test_state_is_read_from_the_runtime_at_scrape_time(tmp_path: Path) -> None:
    """The lag and positions are the last check's, read when scraped (no copy to fall
    behind); a check that could not ask Litestream keeps the last known position; the build
    info follows the Litestream version preflight found, in one series."""
    db = str(tmp_path / "app.db")
    with watching(fake_runtime(db, checks=1, lag_seconds=2.5, local_txid=7, replica_txid=6,
                          last_upload=1_700_000_000.0, reachable=True)) as rt:
        assert sample("sidecar_replication_lag_seconds", db=db) == 2.5
        assert sample("sidecar_local_txid", db=db) == 7
        assert sample("sidecar_replica_txid", db=db) == 6
        assert sample("sidecar_replica_reachable", db=db) == 1
        assert sample("sidecar_replica_last_upload_timestamp_seconds", db=db) == 1_700_000_000
        rt.lag.dbs[0].result = LagResult(db=db, checks=2, lag_seconds=0.0, replica_txid=8,
                                         reachable=True)
        assert sample("sidecar_local_txid", db=db) == 7  # unknown this time: the last known
        assert sample("sidecar_replica_txid", db=db) == 8
        assert sample("sidecar_replication_lag_seconds", db=db) == 0
        rt.litestream_version = "0.5.99"
        body = metrics.render(None).decode()
    assert re.findall(r"^sidecar_build_info\{.*$", body, re.MULTILINE) == [
        f'sidecar_build_info{{litestream_version="0.5.99",version="{metrics.__version__}"}} 1.0']


def test_children_are_up_while_the_supervisor_says_they_run() -> None:
    """sidecar_app_up and sidecar_litestream_up are the supervisor's own view."""
    class Sup:
        app, litestream = True, False

        def app_running(self) -> bool:
            return self.app

        def litestream_running(self) -> bool:
            return self.litestream

    rt = fake_runtime("/data/kids.db")
    rt.supervisor = Sup()
    with watching(rt):
        assert (sample("sidecar_app_up"), sample("sidecar_litestream_up")) == (1, 0)
        rt.supervisor.app, rt.supervisor.litestream = False, True
        assert (sample("sidecar_app_up"), sample("sidecar_litestream_up")) == (0, 1)
    assert (sample("sidecar_app_up"), sample("sidecar_litestream_up")) == (0, 0)


def test_each_metric_is_declared_once_and_nothing_is_replayed() -> None:
    """metrics.py holds prometheus_client's own objects: no stand-in, no queue, no second
    module declaring them again."""
    from prometheus_client.metrics import MetricWrapperBase

    import sidecar.daemon as daemon

    src = Path(metrics.__file__).read_text()
    assert "_pending" not in src and "replay" not in src.lower()
    assert not (Path(daemon.__file__).parent / "registry.py").exists()
    names = [v._name for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    names += list(metrics.STATE)
    assert len(names) == len(set(names))
    assert set(SPEC_METRICS) <= {n + "_total" if n + "_total" in SPEC_METRICS else n
                                 for n in names}


def test_content_type_is_classic_text_format() -> None:
    """CONTENT_TYPE announces text format 0.0.4, the format Litestream's series are in."""
    assert metrics.CONTENT_TYPE.startswith("text/plain; version=0.0.4")


@needs_promtool
def test_real_litestream_output_alone_fails_promtool(
    litestream_metrics_url: tuple[str, str],
) -> None:
    """Litestream's raw exposition fails promtool's lint, so passing it through unchanged won't do."""
    url, _ = litestream_metrics_url
    raw = get(url, timeout=2).body
    result = promtool_check(raw)
    assert result.returncode != 0
    assert b'should have "_total" suffix' in result.stdout + result.stderr


@needs_promtool
def test_combined_output_with_real_litestream_passes_promtool(
    litestream_metrics_url: tuple[str, str],
) -> None:
    """sidecar's series plus a real Litestream's litestream_* series pass promtool check metrics."""
    url, db = litestream_metrics_url
    metrics.init_db(db)
    body = metrics.render(url)
    result = promtool_check(body)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert (result.stdout + result.stderr).strip() == b""
    declared = families(body)
    assert "litestream_txid" in declared and "sidecar_local_txid" in declared
    assert re.search(rf'^litestream_txid{{db="{re.escape(db)}"}} \d', body.decode(), re.MULTILINE)


def test_only_litestream_families_are_passed_through(
    litestream_metrics_url: tuple[str, str],
) -> None:
    """Litestream's go_*, process_* and promhttp_* series are dropped; its names are kept."""
    url, _ = litestream_metrics_url
    raw_families = families(get(url, timeout=2).body)
    combined = families(metrics.render(url))  # also asserts no family is declared twice
    own = families(metrics.render(None))
    passed = set(combined) - set(own)
    assert passed == {name for name in raw_families if name.startswith("litestream_")}
    assert not any(name.startswith(("go_", "promhttp_")) for name in combined)
    assert combined["litestream_sync_count"] == "untyped"  # a counter without _total upstream
    assert combined["litestream_txid"] == "gauge"


@needs_promtool
def test_render_without_litestream_still_serves_sidecar_series() -> None:
    """With Litestream's endpoint down, render returns sidecar's series and counts the failure."""
    before = sample("sidecar_litestream_metrics_scrape_errors_total")
    body = metrics.render(f"http://127.0.0.1:{free_port()}/metrics", timeout=0.5)
    assert sample("sidecar_litestream_metrics_scrape_errors_total") == before + 1
    assert b"sidecar_app_up " in body
    assert b"litestream_txid" not in body
    assert f"sidecar_litestream_metrics_scrape_errors_total {before + 1}".encode() in body
    result = promtool_check(body)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_render_does_not_hang_on_a_silent_endpoint() -> None:
    """An endpoint that accepts but never answers costs at most the timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # never accepted: the request waits for an answer that never comes
        before = sample("sidecar_litestream_metrics_scrape_errors_total")
        started = time.monotonic()
        body = metrics.render(f"http://127.0.0.1:{listener.getsockname()[1]}/m", timeout=0.3)
        assert time.monotonic() - started < 2
    assert b"sidecar_app_up " in body
    assert sample("sidecar_litestream_metrics_scrape_errors_total") == before + 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b"internal error\n"),
        (200, b'litestream_txid{db="/x" 1\n'),  # unterminated label set
        (200, b"\xff\xfe not utf-8\n"),
    ],
    ids=["http-500", "malformed", "not-utf8"],
)
def test_a_broken_litestream_answer_is_counted_not_passed_on(
    served_text: tuple[str, list[tuple[int, bytes]]], status: int, body: bytes
) -> None:
    """An error status or unparsable text adds nothing to /metrics and counts one error."""
    url, answer = served_text
    answer[0] = (status, body)
    before = sample("sidecar_litestream_metrics_scrape_errors_total")
    out = metrics.render(url)
    assert sample("sidecar_litestream_metrics_scrape_errors_total") == before + 1
    assert b"litestream_txid" not in out


@needs_promtool
def test_passthrough_keeps_histograms_and_fills_missing_help(
    served_text: tuple[str, list[tuple[int, bytes]]],
) -> None:
    """Histograms stay histograms, help-less families get one, and the result passes promtool."""
    url, answer = served_text
    answer[0] = (
        200,
        (
            b"# HELP litestream_upload_seconds Upload time.\n"
            b"# TYPE litestream_upload_seconds histogram\n"
            b'litestream_upload_seconds_bucket{le="1"} 2\n'
            b'litestream_upload_seconds_bucket{le="+Inf"} 3\n'
            b"litestream_upload_seconds_sum 4.5\n"
            b"litestream_upload_seconds_count 3\n"
            b"# TYPE litestream_replica_operation_total counter\n"
            b'litestream_replica_operation_total{operation="PUT",path="a\\"b"} 7\n'
            b"# TYPE litestream_pending_count gauge\n"
            b"litestream_pending_count 1\n"
            b"# HELP go_goroutines Number of goroutines.\n"
            b"# TYPE go_goroutines gauge\n"
            b"go_goroutines 12\n"
        ),
    )
    before = sample("sidecar_litestream_metrics_scrape_errors_total")
    out = metrics.render(url)
    assert sample("sidecar_litestream_metrics_scrape_errors_total") == before
    declared = families(out)
    assert declared["litestream_upload_seconds"] == "histogram"
    assert declared["litestream_replica_operation_total"] == "counter"
    assert declared["litestream_pending_count"] == "untyped"
    assert "go_goroutines" not in declared
    assert b'litestream_replica_operation_total{operation="PUT",path="a\\"b"} 7\n' in out
    assert b"litestream_upload_seconds_count 3\n" in out
    result = promtool_check(out)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
