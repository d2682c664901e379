"""Fault suite, the children: Litestream crash-looping (backoff grows, the app stays up, the
restarts are counted) and the app crash-looping under SIDECAR_APP_RESTART=on-failure."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from faultkit import bucket_rows, events, fault_env, logged_rows, metric, no_secret_leaks, request  # noqa: F401

from testkit import rows, s3_env, side_restore, tool, wait_for, write_app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_secret_leaks")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def _crashing_litestream(tmp_path: Path) -> tuple[Path, Path]:
    """A litestream that crashes at once on `replicate` while FLAG exists (else the real one)."""
    flag = tmp_path / "crash-litestream"
    wrapper = tmp_path / "litestream-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = replicate ] && [ -e "{flag}" ]; then\n'
        '  echo \'{"level":"ERROR","msg":"injected crash","error":"fault suite"}\'\n'
        "  exit 1\n"
        "fi\n"
        f'exec "{tool("litestream")}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, flag


def test_litestream_crash_loop_backs_off_counts_and_keeps_the_app_up(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """Litestream crashing at every start: restarts back off 1, 2, 4, 8 s, the restart metric
    counts them, readiness fails, the app keeps running and writing; once Litestream can run
    again, everything written meanwhile reaches the bucket."""
    wrapper, flag = _crashing_litestream(tmp_path)
    env = fault_env(tmp_path, **s3_env(s3, bucket), SIDECAR_LITESTREAM_BIN=str(wrapper),
                    APP_TAG="l", WRITE_INTERVAL="0.1")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    app_pid = sc.wait_event("app started")["pid"]
    ls_pid = sc.wait_event("replication started")["pid"]
    wait_for(lambda: "l-3" in bucket_rows(env, tmp_path / "pre.db"), 20, 0.5,
             what="first rows in the bucket")

    flag.touch()
    os.kill(ls_pid, signal.SIGKILL)
    wait_for(lambda: len(events(sc, "litestream restart scheduled")) >= 4, 30,
             what="four scheduled litestream restarts")
    backoffs = [e["in_seconds"] for e in events(sc, "litestream restart scheduled")]
    assert backoffs[:4] == sorted(set(backoffs[:4])) and backoffs[3] >= 4 * backoffs[0], backoffs
    assert any(e.get("message") == "injected crash" for e in sc.events)  # its log is folded in
    assert metric(env, "sidecar_child_restarts_total", child="litestream") >= 3
    assert metric(env, "sidecar_litestream_up") == 0
    status, body = request(env, "GET", "/readyz")
    assert status == 503 and "litestream is not running" in body
    # The app never noticed.
    assert _alive(app_pid) and len({e["pid"] for e in events(sc, "app started")}) == 1
    written = len(sc.stdout)
    wait_for(lambda: len(sc.stdout) > written, 10, what="the app to keep writing")

    flag.unlink()
    starts = len(events(sc, "litestream started"))
    wait_for(lambda: len(events(sc, "litestream started")) > starts, 20,
             what="litestream started again")
    last = sc.stdout[-1].split(" ", 1)[1]
    try:
        wait_for(lambda: last in bucket_rows(env, tmp_path / "mid.db"), 30, 1,
                 what="rows written during the crash loop in the bucket")
    except AssertionError:
        raise AssertionError(f"{last} not in bucket; it ends with "
                             f"{bucket_rows(env, tmp_path / 'mid.db')[-3:]}\n{sc.output()}"
                             ) from None
    sc.signal(signal.SIGTERM)
    assert sc.wait(60) == 0, sc.output()
    restored = rows(side_restore(env, tmp_path / "final.db"))
    assert restored == rows(Path(env["SIDECAR_DB_PATH"]))
    assert set(logged_rows(sc.stdout)) <= set(restored)


CRASHING_APP = """
import os, sqlite3, sys, time
db = sqlite3.connect(os.environ["SIDECAR_DB_PATH"], isolation_level=None, timeout=10)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
n = db.execute("SELECT count(*) FROM rows").fetchone()[0]
db.execute("INSERT INTO rows(v, at) VALUES (?, ?)", (f"c-{n}", time.time()))
print(f"wrote c-{n}", flush=True)
time.sleep(0.3)
sys.exit(int(os.environ.get("APP_CODE", "1")))
"""


def test_app_crash_loop_on_failure_backs_off_and_keeps_replicating(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """An app that exits 1 at once under SIDECAR_APP_RESTART=on-failure: restarts back off
    1, 2, 4, 8 s, are counted, readiness fails between them, Litestream is never restarted, and
    every row each incarnation wrote reaches the bucket; SIGTERM then exits with the app's code."""
    env = fault_env(tmp_path, **s3_env(s3, bucket), SIDECAR_APP_RESTART="on-failure")
    sc = sidecars(env, write_app(tmp_path, CRASHING_APP, "crash.py"), tmp_path)
    wait_for(lambda: len(events(sc, "app restart scheduled")) >= 4, 30,
             what="four scheduled app restarts")
    backoffs = [e["in_seconds"] for e in events(sc, "app restart scheduled")]
    assert backoffs[:4] == sorted(set(backoffs[:4])) and backoffs[3] >= 4 * backoffs[0], backoffs
    assert metric(env, "sidecar_child_restarts_total", child="app") >= 3
    assert metric(env, "sidecar_child_restarts_total", child="litestream") == 0
    status, body = request(env, "GET", "/readyz")
    assert status == 503 and "app is not running" in json.loads(body)["reasons"]
    assert len(events(sc, "litestream started")) == 1
    assert sc.proc.poll() is None

    sc.signal(signal.SIGTERM)
    assert sc.wait(60) == 1, sc.output()  # the app's last exit code
    restored = rows(side_restore(env, tmp_path / "final.db"))
    assert restored == [f"c-{i}" for i in range(len(restored))]
    assert set(logged_rows(sc.stdout)) == set(restored) and len(restored) >= 4


def test_app_exiting_zero_under_on_failure_is_not_restarted(tmp_path: Path, s3, bucket,
                                                              sidecars) -> None:
    """Under on-failure, an app that exits 0 ends the sidecar with 0 after a final sync, and
    its row is in the bucket."""
    env = fault_env(tmp_path, **s3_env(s3, bucket), SIDECAR_APP_RESTART="on-failure",
                    APP_CODE="0")
    sc = sidecars(env, write_app(tmp_path, CRASHING_APP, "once.py"), tmp_path)
    assert sc.wait(60) == 0, sc.output()
    assert events(sc, "app restart scheduled") == []
    assert rows(side_restore(env, tmp_path / "final.db")) == ["c-0"]
