"""The next scheduled verification, as an operator sees it: `/status` and `sidecar status
--json` show `verification.next` (ISO 8601 UTC, the scheduler's own next run: a Sunday for day
of week 0 and for 7), `sidecar status` and `sidecar check` print it. Real sidecar, real S3."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from testkit import base_env, run_sidecar, s3_env
from testkit.http import get
from testkit.live import start_with_http

pytestmark = pytest.mark.slow


def _when(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.parametrize("schedule", ["17 3 * * 0", "17 3 * * 7"])
def test_status_and_check_show_the_next_verification(tmp_path: Path, s3, bucket, sidecars,
                                                     schedule: str) -> None:
    """Both days 0 and 7: the next run is a Sunday 03:17 UTC within the week, the same in
    /status, `sidecar status --json`, the log line that scheduled it and `sidecar check`."""
    sc, base = start_with_http(tmp_path, s3, bucket, sidecars, SIDECAR_VERIFY_SCHEDULE=schedule)
    scheduled = sc.wait_event("backup verification scheduled", 30)
    code, body, _ = get(f"{base}/status")
    assert code == 200
    doc = json.loads(body)
    ver = doc["verification"]
    assert ver["schedule"] == schedule
    nxt = _when(ver["next"])
    assert nxt.strftime("%A %H:%M:%S") == "Sunday 03:17:00"
    assert timedelta(0) < nxt - datetime.now(UTC) <= timedelta(days=7)
    assert scheduled["next"] == ver["next"]

    env = sc.env
    res = run_sidecar(["status", "--json"], env, tmp_path, timeout=30)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["verification"] == ver
    res = run_sidecar(["status"], env, tmp_path, timeout=30)
    assert res.returncode == 0, res.stderr
    assert f"next verification  {ver['next']} ({schedule}, UTC)" in res.stdout
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 0

    res = run_sidecar(["check"], env, tmp_path, timeout=60)
    line = next(x for x in res.stdout.splitlines() if " verification " in x)
    assert line.startswith("OK") and f"next at {ver['next']} (Sunday)" in line, res.stdout


def test_check_says_when_nothing_is_scheduled(tmp_path: Path, s3, bucket) -> None:
    """An empty SIDECAR_VERIFY_SCHEDULE: `sidecar check` says no verification is scheduled."""
    env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_VERIFY_SCHEDULE="")
    res = run_sidecar(["check", "--json"], env, tmp_path, timeout=60)
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    assert checks["verification"]["ok"]
    assert "not scheduled" in checks["verification"]["detail"]


def test_a_schedule_cron_refuses_stops_the_start(tmp_path: Path, s3, bucket) -> None:
    """`* * * * 8`: exit 2, one JSON error line naming the variable and the reason."""
    env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_VERIFY_SCHEDULE="* * * * 8")
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=60)
    assert res.returncode == 2, res.stderr
    errors = [json.loads(x) for x in res.stderr.splitlines()]
    assert [e["level"] for e in errors] == ["error"]
    assert "SIDECAR_VERIFY_SCHEDULE" in json.dumps(errors[0])
    assert "0 and 7 are Sunday" in json.dumps(errors[0])
