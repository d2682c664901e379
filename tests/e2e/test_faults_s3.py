"""Fault suite, the bucket: the S3 server stopped at start, mid-run and during the final sync,
flapping for a minute, and answering 500s. Whatever happens, every row the app committed is
either in the bucket or still on the volume, and reaches the bucket once S3 is back."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from faultkit import bucket_rows, events, fault_env, logged_rows, no_secret_leaks  # noqa: F401

from testkit import make_db, rows, s3_env, side_restore, wait_for, write_app
from testkit.s3proxy import S3Proxy

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_secret_leaks")]

FAST = {"SIDECAR_SYNC_INTERVAL": "1s", "SIDECAR_REPLICA_TIMEOUT": "3s",
        "SIDECAR_LITESTREAM_STOP_TIMEOUT": "10s", "WRITE_INTERVAL": "0.1"}


def _bucket_has(env: dict[str, str], out: Path, value: str) -> bool:
    return value in bucket_rows(env, out)


def _stop_and_check(sc, env: dict[str, str], tmp_path: Path, code: int = 0) -> list[str]:
    """SIGTERM, expect `code`; the bucket then equals the local DB and holds every logged row."""
    sc.signal(signal.SIGTERM)
    assert sc.wait(60) == code, sc.output()
    local = rows(Path(env["SIDECAR_DB_PATH"]))
    restored = rows(side_restore(env, tmp_path / "final.db"))
    assert restored == local, f"bucket {len(restored)} rows, local {len(local)}"
    missing = set(logged_rows(sc.stdout)) - set(restored)
    assert not missing, f"rows the app committed are not in the bucket: {sorted(missing)[:10]}"
    return restored


def test_s3_down_at_start_with_local_db_app_runs_and_bucket_catches_up(
        tmp_path: Path, own_s3, sidecars) -> None:
    """DB on the volume and S3 stopped at start: no restore is needed, so the app starts; once
    S3 is back, everything written meanwhile reaches the bucket."""
    bucket = own_s3.make_bucket()
    env = fault_env(tmp_path, **s3_env(own_s3, bucket), **FAST, APP_TAG="d")
    make_db(Path(env["SIDECAR_DB_PATH"]), ["before-1", "before-2"])
    own_s3.stop()
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    assert sc.wait_event("restore decided")["outcome"] == "skipped"
    sc.wait_event("app started")
    sc.wait_stdout("wrote d-20")
    assert sc.proc.poll() is None
    own_s3.start()
    wait_for(lambda: _bucket_has(env, tmp_path / "mid.db", "d-20"), 40, 1,
             what="rows written during the outage in the bucket")
    restored = _stop_and_check(sc, env, tmp_path)
    assert restored[:2] == ["before-1", "before-2"]


def test_s3_stopped_mid_run_loses_nothing(tmp_path: Path, own_s3, sidecars) -> None:
    """S3 stopped for 6 s under steady writes: the app keeps running, and after S3 is back and
    the sidecar stops, the bucket holds every committed row and the final one."""
    bucket = own_s3.make_bucket()
    env = fault_env(tmp_path, **s3_env(own_s3, bucket), **FAST, APP_TAG="m")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_event("app started")
    wait_for(lambda: _bucket_has(env, tmp_path / "pre.db", "m-5"), 20, 0.5,
             what="first rows in the bucket")
    own_s3.stop()
    written = len(sc.stdout)
    time.sleep(6)
    assert sc.proc.poll() is None, sc.output()
    assert len(sc.stdout) > written + 20, "the app stopped writing during the outage"
    own_s3.start()
    app_pid = sc.event("app started")["pid"]
    restored = _stop_and_check(sc, env, tmp_path)
    assert restored[-1] == "m-final"
    assert len({e["pid"] for e in events(sc, "app started")}) == 1 and app_pid  # never restarted


def test_s3_down_during_final_sync_is_bounded_and_next_start_uploads_the_rest(
        tmp_path: Path, own_s3, sidecars) -> None:
    """S3 stops just before SIGTERM: the sidecar still exits (bounded by the stop timeouts) with
    the app's code, says the final sync failed, keeps every row on the volume; the next start
    with S3 back uploads them, so nothing is lost."""
    bucket = own_s3.make_bucket()
    env = fault_env(tmp_path, **{**s3_env(own_s3, bucket), **FAST, "APP_TAG": "f",
                                 "SIDECAR_LITESTREAM_STOP_TIMEOUT": "3s"})
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_event("app started")
    wait_for(lambda: _bucket_has(env, tmp_path / "pre.db", "f-5"), 20, 0.5,
             what="first rows in the bucket")
    own_s3.stop()
    time.sleep(1.5)
    t0 = time.monotonic()
    sc.signal(signal.SIGTERM)
    assert sc.wait(60) == 0, sc.output()
    took = time.monotonic() - t0
    assert took < 30, f"shutdown took {took:.1f}s with S3 down"
    names = [e.get("message") for e in sc.events]
    assert "final sync failed" in names or "final sync did not finish in time" in names, names
    local = rows(Path(env["SIDECAR_DB_PATH"]))
    assert local[-1] == "f-final"
    assert set(logged_rows(sc.stdout)) <= set(local)

    own_s3.start()
    again = sidecars(env, write_app(tmp_path, "print('second start', flush=True)\n", "once.py"),
                     tmp_path)
    assert again.wait(60) == 0, again.output()
    assert again.event("restore decided")["outcome"] == "skipped"
    assert bucket_rows(env, tmp_path / "after.db") == local


def test_s3_flapping_for_a_minute_loses_nothing(tmp_path: Path, own_s3, sidecars) -> None:
    """S3 stopped and started every 3 s for 60 s under steady writes: the sidecar and the app
    stay up, and once it is steady again the bucket holds every row."""
    bucket = own_s3.make_bucket()
    env = fault_env(tmp_path, **s3_env(own_s3, bucket), **FAST, APP_TAG="x")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_event("app started")
    wait_for(lambda: _bucket_has(env, tmp_path / "pre.db", "x-3"), 20, 0.5,
             what="first rows in the bucket")
    end = time.monotonic() + 60
    flips = 0
    while time.monotonic() < end:
        own_s3.stop()
        time.sleep(3)
        own_s3.start()
        flips += 1
        time.sleep(3)
        assert sc.proc.poll() is None, sc.output()
    assert flips >= 8
    assert len({e["pid"] for e in events(sc, "app started")}) == 1
    restored = _stop_and_check(sc, env, tmp_path)
    assert len(restored) > 300  # ten rows a second for a minute, all there


@pytest.fixture
def proxy(own_s3) -> S3Proxy:
    p = S3Proxy(own_s3.port)
    yield p
    p.close()


def test_s3_answering_500s_mid_run_loses_nothing(tmp_path: Path, own_s3, proxy, sidecars
                                                  ) -> None:
    """Every S3 request answered `500 InternalError` for 6 s: the app keeps running, and once
    S3 answers again the bucket holds every row."""
    bucket = own_s3.make_bucket()
    env = fault_env(tmp_path, **{**s3_env(own_s3, bucket), **FAST, "APP_TAG": "e",
                                 "SIDECAR_S3_ENDPOINT": proxy.endpoint})
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_event("app started")
    wait_for(lambda: _bucket_has(env, tmp_path / "pre.db", "e-3"), 20, 0.5,
             what="first rows in the bucket")
    proxy.set("error")
    time.sleep(6)
    assert proxy.requests["error"] > 0, "nothing was sent to S3 during the error window"
    assert sc.proc.poll() is None, sc.output()
    proxy.set("pass")
    _stop_and_check(sc, env, tmp_path)


def test_s3_answering_500s_when_restore_needed_refuses_and_creates_nothing(
        tmp_path: Path, own_s3, proxy, sidecars) -> None:
    """No local DB and S3 answering 500s: the sidecar cannot tell whether backups exist, so it
    refuses to start (exit 4) naming the replica, and creates no database."""
    bucket = own_s3.make_bucket()
    env = fault_env(tmp_path, **{**s3_env(own_s3, bucket), **FAST,
                                 "SIDECAR_S3_ENDPOINT": proxy.endpoint})
    proxy.set("error")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    assert sc.wait(60) == 4, sc.output()
    err = next(e for e in sc.events if e.get("exit_code") == 4)
    assert f"s3://{bucket}/app.db" in err["message"] and "500" in err["message"] + str(err)
    db = Path(env["SIDECAR_DB_PATH"])
    assert not db.exists() and not db.with_name("app.db-wal").exists()
    assert sc.stdout == []  # the app never ran
    assert proxy.requests["error"] > 0


def test_s3_reset_connections_while_stopping_do_not_hang(tmp_path: Path, own_s3, proxy,
                                                         sidecars) -> None:
    """S3 connections reset mid-stream while the sidecar stops: it still exits within the stop
    bounds, and the rows are on the volume."""
    bucket = own_s3.make_bucket()
    env = fault_env(tmp_path, **{**s3_env(own_s3, bucket), **FAST, "APP_TAG": "r",
                                 "SIDECAR_S3_ENDPOINT": proxy.endpoint,
                                 "SIDECAR_LITESTREAM_STOP_TIMEOUT": "3s"})
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    sc.wait_event("app started")
    sc.wait_stdout("wrote r-10")
    stop = threading.Event()

    def reset_often() -> None:
        while not stop.is_set():
            proxy.set("reset")
            time.sleep(0.3)
            proxy.set("pass")
            time.sleep(0.2)

    t = threading.Thread(target=reset_often, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        sc.signal(signal.SIGTERM)
        assert sc.wait(60) == 0, sc.output()
        assert time.monotonic() - t0 < 30
    finally:
        stop.set()
        t.join()
    proxy.set("pass")
    local = rows(Path(env["SIDECAR_DB_PATH"]))
    assert local[-1] == "r-final"
    assert set(logged_rows(sc.stdout)) <= set(local)
