"""Replication lag with real sidecars against a real S3 server (rclone) with the real
Litestream: steady writes, a 30-second outage, an idle DB, and the cost of a check as the
bucket grows. The arithmetic with fakes is in tests/unit/test_lag.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sidecar.bucket.replica import S3Store
from sidecar.config import Replica
from sidecar.lag.model import ReplicaTracker
from sidecar.litestream import Control
from testkit import S3_KEY, S3_SECRET, S3Server, base_env, free_port, s3_env, wait_for, write_app
from testkit.http import get, serving
from testkit.metrics import read as metric
from testkit.metrics import read_total

# ------------------------------------------------------------------ real processes


@pytest.fixture
def heartbeat() -> Iterator[SimpleNamespace]:
    """A heartbeat receiver (an outside dead-man's-switch monitor): `times` of each ping."""
    times: list[float] = []

    def ping(_path: str) -> tuple[int, bytes]:
        times.append(time.monotonic())
        return 200, b"ok"

    with serving(ping) as base:
        yield SimpleNamespace(times=times, server_port=int(base.rsplit(":", 1)[1]))


def start_writer(tmp_path: Path, server: S3Server, bucket: str, sidecars: Any,
                 **extra: str) -> tuple[Any, str]:
    port = free_port()
    env = base_env(tmp_path, **s3_env(server, bucket), SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}",
                   **extra)
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_event("app started", 60)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: read_total(base, "sidecar_lag_checks_total") > 0 and
             get(f"{base}/readyz")[0] == 200, 30, what="first lag check and readiness")
    return sc, base


@pytest.mark.slow
def test_steady_writes_keep_lag_within_sync_plus_check_interval(
        tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any) -> None:
    """App writing every 100 ms: lag never exceeds sync interval + check interval."""
    sc, base = start_writer(tmp_path, s3, bucket, sidecars, SIDECAR_SYNC_INTERVAL="1s",
                            SIDECAR_LAG_CHECK_INTERVAL="2s")
    checks0 = read_total(base, "sidecar_lag_checks_total")
    reqs0 = read_total(base, "sidecar_replica_requests_total")
    samples = []
    end = time.monotonic() + 20
    while time.monotonic() < end:
        samples.append(metric(base, "sidecar_replication_lag_seconds"))
        time.sleep(0.25)
    assert all(s is not None for s in samples)
    assert max(samples) <= 1 + 2, samples  # type: ignore[type-var]
    assert (metric(base, "sidecar_local_txid") or 0) > 10
    # One check costs one listing request while the DB is busy.
    checks = read_total(base, "sidecar_lag_checks_total") - checks0
    reqs = read_total(base, "sidecar_replica_requests_total") - reqs0
    assert checks >= 8 and reqs <= checks + 1, (reqs, checks)
    sc.signal()
    assert sc.wait() == 0


@pytest.mark.slow
def test_s3_outage_shows_in_lag_reachability_readiness_and_heartbeat(
        tmp_path: Path, own_s3: S3Server, sidecars: Any, heartbeat: Any) -> None:
    """S3 down 30 s: lag >= 25 s, reachable 0, /readyz 503 with the reason, no heartbeat;
    after it returns and Litestream uploads again, lag < 2x sync within two checks."""
    check, sync = 2.0, 1.0
    bucket = own_s3.make_bucket()
    sc, base = start_writer(
        tmp_path, own_s3, bucket, sidecars, SIDECAR_SYNC_INTERVAL=f"{sync:g}s",
        SIDECAR_LAG_CHECK_INTERVAL=f"{check:g}s", SIDECAR_MAX_LAG_SECONDS="10",
        SIDECAR_HEARTBEAT_URL=f"http://127.0.0.1:{heartbeat.server_port}/ping/s3cr3t-uuid")
    wait_for(lambda: len(heartbeat.times) >= 2, 10, what="heartbeats while healthy")

    own_s3.stop()
    down_at = time.monotonic()
    # Reachability falls on the first failed check, not after Litestream's retry loop.
    wait_for(lambda: metric(base, "sidecar_replica_reachable") == 0, check + 2,
             what="reachable 0 within one check")
    time.sleep(max(0.0, down_at + 30 - time.monotonic()))

    def outage_visible() -> bool:
        return (metric(base, "sidecar_replication_lag_seconds") or 0) >= 25

    wait_for(outage_visible, check + 0.5, what="lag >= 25 s within one check after 30 s")
    assert metric(base, "sidecar_replica_reachable") == 0
    code, body, _ = get(f"{base}/readyz")
    doc = json.loads(body)
    assert code == 503 and not doc["ready"]
    assert any("replication lag" in r and "SIDECAR_MAX_LAG_SECONDS" in r for r in doc["reasons"])
    beats_during = [t for t in heartbeat.times if t > down_at + check + 1]
    assert beats_during == [], "heartbeat sent while the bucket was unreachable"

    own_s3.start()
    back_at = time.monotonic()
    # Litestream resumes uploads on its own retry schedule (up to ~20 s after an outage:
    # its S3 client sleeps between attempts); watch the bucket itself for that moment.
    client = own_s3.client()
    state = tmp_path / "data" / ".sidecar"
    control = Control(state / "litestream.sock")

    def bucket_caught_up() -> bool:
        local = control.txid(tmp_path / "data" / "app.db")  # Litestream's own word, now
        keys = client.list_objects_v2(Bucket=bucket, Prefix="app.db/0000/").get("Contents", [])
        top = max((int(k["Key"].rsplit("-", 1)[1][:16], 16) for k in keys), default=0)
        return top >= local - 1

    wait_for(bucket_caught_up, 90, interval=0.2, what="Litestream uploading again")
    caught_up_at = time.monotonic()
    seen = []

    def lag_recovered() -> bool:
        value = metric(base, "sidecar_replication_lag_seconds")
        seen.append((round(time.monotonic() - caught_up_at, 2), value,
                     metric(base, "sidecar_local_txid"), metric(base, "sidecar_replica_txid")))
        return value is not None and value < 2 * sync

    try:
        wait_for(lag_recovered, 2 * check, interval=0.1,
                 what="lag back under 2x sync within two checks")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: (s, lag, local, replica) {seen}") from None
    wait_for(lambda: get(f"{base}/readyz")[0] == 200, 2 * check, what="ready again")
    assert metric(base, "sidecar_replica_reachable") == 1
    wait_for(lambda: any(t > caught_up_at for t in heartbeat.times), 2 * check + 1,
             what="heartbeat resumes")
    print(f"litestream resumed uploading {caught_up_at - back_at:.1f}s after S3 returned")
    # The heartbeat URL's secret path never reaches the log.
    assert "s3cr3t-uuid" not in "\n".join(sc.lines)
    sc.signal()
    sc.wait(90)


@pytest.mark.slow
def test_idle_database_keeps_lag_zero_for_a_minute(
        tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any) -> None:
    """After a burst of writes, a minute of no writes reads lag 0 throughout."""
    sc, base = start_writer(tmp_path, s3, bucket, sidecars, WRITE_LIMIT="20",
                            SIDECAR_LAG_CHECK_INTERVAL="1s")
    wait_for(lambda: metric(base, "sidecar_replication_lag_seconds") == 0 and
             metric(base, "sidecar_replica_txid") == metric(base, "sidecar_local_txid"),
             20, what="caught up after the burst")
    checks0 = read_total(base, "sidecar_lag_checks_total")
    end = time.monotonic() + 60
    while time.monotonic() < end:
        lag_now = metric(base, "sidecar_replication_lag_seconds")
        assert lag_now == 0, lag_now
        time.sleep(1)
    assert read_total(base, "sidecar_lag_checks_total") >= checks0 + 40
    sc.signal()
    assert sc.wait() == 0


@pytest.mark.slow
def test_requests_per_check_stay_bounded_on_a_real_bucket_with_thousands_of_objects(
        tmp_path: Path) -> None:
    """Counted by a boto3 hook on a real S3 server: one listing per check at 50 and at
    5,000 objects; the first check's seek stays a few dozen requests at most."""
    root = tmp_path / "s3root"
    prefix = root / "bkt" / "app.db"
    (prefix / "0001").mkdir(parents=True)
    (prefix / "0000").mkdir(parents=True)
    results = {}
    for n in (50, 5000):
        for i in range(1, n + 1):
            (prefix / "0001" / f"{i:016x}-{i:016x}.ltx").write_bytes(b"x")
        server = S3Server(root)
        server.start()
        try:
            client = server.client()
            sent: list[str] = []

            def count(request: Any, sink: list[str] = sent, **_: Any) -> None:
                sink.append(request.url)

            client.meta.events.register("before-send.s3", count)
            replica = Replica(url="s3://bkt/app.db", s3=_s3_settings(server))
            store = S3Store(replica, client=client)
            tracker = ReplicaTracker(store)
            tracker.update(local_txid=n)
            boot = len(sent)
            assert tracker.txid == n
            per_check = []
            for extra in range(3):
                txid = n + extra + 1
                client.put_object(Bucket="bkt", Key=f"app.db/0000/{txid:016x}-{txid:016x}.ltx",
                                  Body=b"x")
                before = len(sent)
                tracker.update(local_txid=txid)
                per_check.append(len(sent) - before)
                assert tracker.txid == txid
            results[n] = (boot, per_check)
            for extra in range(3):
                txid = n + extra + 1
                client.delete_object(Bucket="bkt",
                                     Key=f"app.db/0000/{txid:016x}-{txid:016x}.ltx")
        finally:
            server.stop()
    assert results[50][1] == results[5000][1] == [1, 1, 1], results
    assert results[5000][0] <= 40, results


def _s3_settings(server: S3Server) -> Any:
    from sidecar.config import S3

    return S3(bucket="bkt", prefix="app.db", endpoint=server.endpoint, region="us-east-1",
              force_path_style=True, access_key_id=S3_KEY, secret_access_key=S3_SECRET)
