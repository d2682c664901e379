"""Replication lag: the arithmetic with fakes (fast, exact), then real sidecars against a real
S3 server (rclone) with the real Litestream: steady writes, a 30-second outage, an idle DB,
and the cost of a check as the bucket grows."""

from __future__ import annotations

import http.server
import json
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import S3_KEY, S3_SECRET, S3Server, base_env, free_port, s3_env, wait_for, write_app

from sidecar import lag
from sidecar.config import Database, Replica
from sidecar.lag import ChangeLog, DbLag, ReplicaTracker
from sidecar.litestream.control import Control, ControlError
from sidecar.replica import LtxObject, ReplicaUnreachable, S3Store, Store

# ------------------------------------------------------------------ fakes


class FakeStore(Store):
    """An in-memory bucket with S3's listing semantics (sorted keys, StartAfter, MaxKeys)."""

    def __init__(self) -> None:
        self.keys: dict[str, LtxObject] = {}
        self.requests = 0
        self.down = False

    def put(self, level: int, lo: int, hi: int, mtime: float = 0.0) -> None:
        key = f"{level:04x}/{lo:016x}-{hi:016x}.ltx"
        self.keys[key] = LtxObject(key, level, lo, hi, 100, mtime)

    def list_ltx(self, level: int, start_after: str | None = None,
                 max_keys: int = 1000) -> list[LtxObject]:
        self.requests += 1
        if self.down:
            raise ReplicaUnreachable("unreachable", "cannot reach fake: EndpointConnectionError")
        prefix = f"{level:04x}/"
        out = [self.keys[k] for k in sorted(self.keys)
               if k.startswith(prefix) and (start_after is None or k > start_after)]
        return out[:max_keys]


class FakeControl:
    def __init__(self) -> None:
        self.local = 0
        self.down = False

    def txid(self, _path: Path) -> int:
        if self.down:
            raise ControlError("cannot reach litestream.sock")
        return self.local


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_db(tmp_path: Path) -> Database:
    return Database(tmp_path / "app.db", Replica(url="s3://b/app.db"))


# ------------------------------------------------------------------ ChangeLog


def test_idle_database_has_nothing_pending() -> None:
    """With no writes and the same TXID observed again and again, nothing is pending."""
    log = ChangeLog()
    for t in range(0, 120, 10):
        log.observe(7, float(t))
        assert log.oldest_pending(7, float(t)) is None


def test_pending_change_is_timed_from_the_first_write() -> None:
    """A write at t=10 that became TXID 8 is pending from 10 until the bucket holds 8."""
    log = ChangeLog()
    log.observe(7, 0.0)
    log.changed(10.0)
    log.changed(10.5)
    log.observe(8, 11.0)
    assert log.oldest_pending(7, 20.0) == 10.0
    assert log.oldest_pending(8, 21.0) is None


def test_oldest_of_several_pending_changes_counts() -> None:
    """Two TXIDs behind: the lag is measured from the older one's first write, never less."""
    log = ChangeLog()
    log.observe(1, 0.0)
    log.changed(5.0)
    log.observe(2, 6.0)
    log.changed(7.0)
    log.observe(3, 8.0)
    assert log.oldest_pending(1, 9.0) == 5.0
    # TXID 3's first write was at 7.0; with observations this sparse the write at 5.0 might
    # also belong to it, so the estimate may be earlier (a larger lag), never later.
    pending = log.oldest_pending(2, 9.0)
    assert pending is not None and 5.0 <= pending <= 7.0


def test_write_not_yet_turned_into_a_txid_is_kept_for_the_next_one() -> None:
    """A write just before an observation that did not advance the TXID belongs to the next."""
    log = ChangeLog()
    log.observe(1, 0.0)
    log.changed(9.9)
    log.observe(1, 10.0)  # Litestream has not seen it yet
    log.observe(2, 11.0)
    assert log.oldest_pending(1, 12.0) == 9.9


def test_stray_write_without_a_new_txid_is_forgotten() -> None:
    """A checkpoint-like write that never becomes a TXID does not inflate a later lag."""
    log = ChangeLog()
    log.observe(1, 0.0)
    log.changed(1.0)
    log.observe(1, 1.0 + lag.GRACE + 0.1)
    log.changed(100.0)
    log.observe(2, 101.0)
    assert log.oldest_pending(1, 102.0) == 100.0


def test_writes_litestream_never_counts_are_pending() -> None:
    """With Litestream down (no observations) writes older than GRACE count as pending."""
    log = ChangeLog()
    log.observe(1, 0.0)
    log.changed(10.0)
    assert log.oldest_pending(1, 10.0 + lag.GRACE / 2, litestream_answered=False) is None
    assert log.oldest_pending(1, 10.0 + lag.GRACE + 1, litestream_answered=False) == 10.0
    assert log.oldest_pending(1, 10.0 + lag.GRACE + 1) is None  # answered: not a TXID yet


# ------------------------------------------------------------------ ReplicaTracker


@pytest.mark.parametrize("level", [0, 1, 2, 3, 9])
def test_bootstrap_finds_the_newest_object_in_any_level(level: int) -> None:
    """The seek finds the newest object whichever level holds it."""
    store = FakeStore()
    for i in range(1, 400):
        store.put(level, i if level != 9 else 1, i)
    tracker = ReplicaTracker(store)
    tracker.bootstrap(hint=399)
    assert tracker.txid == 399


def test_seek_last_is_right_for_random_layouts() -> None:
    """For random runs of objects and hints, seek_last returns the level's last object."""
    rng = random.Random(7)
    for _ in range(200):
        store = FakeStore()
        txid = 0
        for _ in range(rng.randint(1, 60)):
            lo = txid + 1
            txid = lo + rng.randint(0, 50)
            store.put(1, lo, txid)
        hint = rng.randint(0, txid + 100)
        last = ReplicaTracker(store).seek_last(1, hint)
        assert last is not None and last.max_txid == txid, (hint, txid)


def test_empty_bucket_reads_txid_zero() -> None:
    """An empty bucket (reachable) is position 0, not unknown."""
    tracker = ReplicaTracker(FakeStore())
    tracker.bootstrap(hint=5)
    assert tracker.txid == 0


def test_check_cost_stays_bounded_as_the_bucket_grows() -> None:
    """Steady-state checks cost one request; a seek costs O(log n), at 100 or 100,000 keys."""
    costs = {}
    for n in (100, 100_000):
        store = FakeStore()
        for i in range(1, n + 1):
            store.put(1, i, i)
        for i in range(n + 1, n + 6):
            store.put(0, i, i)
        tracker = ReplicaTracker(store)
        tracker.update(local_txid=n + 5)
        boot = store.requests
        assert tracker.txid == n + 5
        store.put(0, n + 6, n + 6)
        before = store.requests
        tracker.update(local_txid=n + 6)
        costs[n] = (boot, store.requests - before)
        assert tracker.txid == n + 6
    assert costs[100][1] == costs[100_000][1] == 1
    assert costs[100_000][0] <= 4


def test_caught_up_bucket_found_in_compaction_level_after_l0_cleanup() -> None:
    """When level 0 was emptied by retention, an idle DB still reads as caught up."""
    store = FakeStore()
    for i in range(1, 50):
        store.put(1, i * 10 - 9, i * 10)
    tracker = ReplicaTracker(store)
    tracker.update(local_txid=490)
    assert tracker.txid == 490


# ------------------------------------------------------------------ DbLag


def test_outage_marks_unreachable_at_once_and_lag_keeps_growing(tmp_path: Path) -> None:
    """The first failed check drops reachability; lag grows from the oldest pending write."""
    store, control, clock = FakeStore(), FakeControl(), Clock()
    d = DbLag(make_db(tmp_path), store, control, clock=clock)  # type: ignore[arg-type]
    control.local = 3
    store.put(0, 1, 3)
    assert d.check().lag_seconds == 0 and d.result.reachable
    store.down = True
    clock.t += 1
    d.changes.changed(clock.t)
    clock.t += 1
    control.local = 4
    res = d.check()
    assert not res.reachable and res.error
    clock.t += 30
    res = d.check()
    assert res.lag_seconds == pytest.approx(31.0) and not res.reachable
    store.down = False
    store.put(0, 4, 4)
    res = d.check()
    assert res.reachable and res.lag_seconds == 0


def test_litestream_down_before_first_answer_gives_unknown_position(tmp_path: Path) -> None:
    """Without a local TXID the check only probes the bucket and reports no positions."""
    store, control = FakeStore(), FakeControl()
    control.down = True
    d = DbLag(make_db(tmp_path), store, control)  # type: ignore[arg-type]
    res = d.check()
    assert res.reachable and res.local_txid is None and res.replica_txid is None
    assert res.lag_seconds == 0 and store.requests == 1


# ------------------------------------------------------------------ real processes


class Hits(http.server.BaseHTTPRequestHandler):
    """A heartbeat receiver (an outside dead-man's-switch monitor)."""

    times: list[float]

    def do_GET(self) -> None:
        self.server.times.append(time.monotonic())  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_a: Any) -> None:
        pass


@pytest.fixture
def heartbeat() -> Any:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hits)
    server.times = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(base: str, name: str) -> float | None:
    _, body = get(f"{base}/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def start_writer(tmp_path: Path, server: S3Server, bucket: str, sidecars: Any,
                 **extra: str) -> tuple[Any, str]:
    port = free_port()
    env = base_env(tmp_path, **s3_env(server, bucket), SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}",
                   **extra)
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_event("app started", 60)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: (metric(base, "sidecar_lag_checks_total") or 0) > 0 and
             get(f"{base}/readyz")[0] == 200, 30, what="first lag check and readiness")
    return sc, base


@pytest.mark.slow
def test_steady_writes_keep_lag_within_sync_plus_check_interval(
        tmp_path: Path, s3: S3Server, bucket: str, sidecars: Any) -> None:
    """App writing every 100 ms: lag never exceeds sync interval + check interval."""
    sc, base = start_writer(tmp_path, s3, bucket, sidecars, SIDECAR_SYNC_INTERVAL="1s",
                            SIDECAR_LAG_CHECK_INTERVAL="2s")
    checks0 = metric(base, "sidecar_lag_checks_total") or 0
    reqs0 = metric(base, "sidecar_replica_requests_total") or 0
    samples = []
    end = time.monotonic() + 20
    while time.monotonic() < end:
        samples.append(metric(base, "sidecar_replication_lag_seconds"))
        time.sleep(0.25)
    assert all(s is not None for s in samples)
    assert max(samples) <= 1 + 2, samples  # type: ignore[type-var]
    assert (metric(base, "sidecar_local_txid") or 0) > 10
    # One check costs one listing request while the DB is busy.
    checks = (metric(base, "sidecar_lag_checks_total") or 0) - checks0
    reqs = (metric(base, "sidecar_replica_requests_total") or 0) - reqs0
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
    code, body = get(f"{base}/readyz")
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
    checks0 = metric(base, "sidecar_lag_checks_total") or 0
    end = time.monotonic() + 60
    while time.monotonic() < end:
        lag_now = metric(base, "sidecar_replication_lag_seconds")
        assert lag_now == 0, lag_now
        time.sleep(1)
    assert (metric(base, "sidecar_lag_checks_total") or 0) >= checks0 + 40
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
