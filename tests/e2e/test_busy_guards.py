"""The 409 answers of a busy sidecar, with real processes: a second live restore (and an undo)
while one runs, a second verification while one runs, a restore and an undo while the sidecar
stops. Each time the answer is 409 with a body that says why, the first operation then
completes, and nothing is lost.

The first operation is held in place, not timed: the bucket is reached through a shaping
proxy (testkit/shaper.py) whose gate holds every download of an LTX file (what a restore and a
verification read, whether Litestream or sidecar's own fetch reads it) until the test opens
it. Real Litestream, real rclone S3 server."""

from __future__ import annotations

import signal
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from testkit import base_env, free_port, make_db, rows, s3_env, side_restore, wait_for, write_app
from testkit.http import post_json, request
from testkit.live import app_pids, aside_files, wait_synced
from testkit.shaper import Shaper

pytestmark = pytest.mark.slow
TOKEN = "busy-guards-admin-token"

# Reports its pid, idles; on SIGTERM it waits while the file HOLD_STOP names exists (a slow
# shutdown the test ends), then exits 0.
SLOW_STOP_APP = textwrap.dedent("""
    import os, signal, sys, time
    hold = os.environ.get("HOLD_STOP", "")
    def term(*_):
        while hold and os.path.exists(hold):
            time.sleep(0.05)
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    print(f"app up {os.getpid()}", flush=True)
    while True:
        time.sleep(0.2)
""")


class Gate:
    """Holds every download of an LTX file (a GET of an .ltx key, with or without a query
    string) while closed; counts the downloads it holds."""

    def __init__(self) -> None:
        self.closed = False
        self.opened = threading.Event()
        self.held = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        self.opened.clear()
        self.closed = True

    def open(self) -> None:
        self.closed = False
        self.opened.set()

    def __call__(self, method: str, target: str) -> None:
        if self.closed and method == "GET" and target.split("?")[0].endswith(".ltx"):
            with self._lock:
                self.held += 1
            self.opened.wait(120)


class Running:
    """One `sidecar run` behind the gated proxy, with the admin endpoints on."""

    def __init__(self, tmp_path: Path, s3: Any, bucket: str, sidecars: Any, **extra: str):
        self.gate = Gate()
        self.shaper = Shaper(s3.port, on_request=self.gate)
        self.port = free_port()
        self.env = base_env(tmp_path, **s3_env(s3, bucket),
                            SIDECAR_HTTP_ADDR=f"127.0.0.1:{self.port}",
                            SIDECAR_ADMIN_TOKEN=TOKEN, SIDECAR_VERIFY_SCHEDULE="",
                            SIDECAR_SYNC_INTERVAL="200ms", SIDECAR_RESTORE_CONCURRENCY="2",
                            # a held download must not time out while the test looks
                            SIDECAR_REPLICA_TIMEOUT="60s", **extra)
        self.env["SIDECAR_S3_ENDPOINT"] = self.shaper.endpoint
        self.db = Path(self.env["SIDECAR_DB_PATH"])
        self.sc = sidecars(self.env, write_app(tmp_path, SLOW_STOP_APP, "slow_stop.py"), tmp_path)
        self.sc.wait_event("app started", 60)
        self.sc.wait_stdout("app up")

    def close(self) -> None:
        self.gate.open()
        self.shaper.close()

    def write(self, values: list[str]) -> int:
        """Write rows and wait until the bucket holds them; the uploaded TXID."""
        make_db(self.db, values)
        return wait_synced(self.env, 30, what="the rows to reach the bucket")

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None,
              timeout: float = 120) -> tuple[int, dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/admin{path}"
        if body is None:
            resp = request(url, method, token=TOKEN, timeout=timeout)
        else:
            resp = post_json(url, body, token=TOKEN, timeout=timeout)
        return resp.status, resp.json()

    def count(self, message: str) -> int:
        return sum(1 for e in self.sc.events if e.get("message") == message)


@pytest.fixture
def running(tmp_path: Path, s3, bucket, sidecars) -> Any:
    made: list[Running] = []

    def make(**extra: str) -> Running:
        made.append(Running(tmp_path, s3, bucket, sidecars, **extra))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _job_state(r: Running, job_id: str) -> str:
    code, job = r.admin("GET", f"/restore?id={job_id}")
    assert code == 200, job
    return str(job["state"])


def test_a_restore_or_an_undo_while_a_restore_runs_is_409_and_the_first_completes(
        running) -> None:
    """A live restore held in its download: a second restore and an undo answer 409 saying a
    restore is running, queue nothing and replace nothing; once the download goes on, the
    first restore completes, the app runs again and every replaced database is kept."""
    r = running()
    r.write(["a1", "a2"])
    txid_a = r.write(["b1"])
    r.write(["c1"])
    # A first restore, so that there is something to undo.
    code, first = r.admin("POST", "/restore", {"txid": f"{txid_a:016x}", "wait": True})
    assert code == 200 and first["outcome"] == "restored", first
    assert rows(r.db) == ["a1", "a2", "b1"]
    wait_for(lambda: len(app_pids(r.sc)) == 2, 30, what="the app to start after the restore")
    txid_d = r.write(["d1"])
    r.write(["d2"])

    r.gate.close()
    code, job = r.admin("POST", "/restore", {"txid": f"{txid_d:016x}"})
    assert code == 202, job
    wait_for(lambda: r.gate.held and _job_state(r, job["id"]) == "restoring", 60,
             interval=0.05, what="the restore to be held in its download")

    code, doc = r.admin("POST", "/restore", {})
    assert code == 409, doc
    assert doc["error"] == "cannot restore now: the sidecar is restoring", doc
    assert "wait for the current start, restore or shutdown to finish" in doc["fix"]
    code, doc = r.admin("POST", "/undo", {})
    assert code == 409, doc
    assert doc["error"] == "cannot undo now: the sidecar is restoring", doc
    code, doc = r.admin("POST", "/restore", {"dry_run": True})
    assert code == 409, doc  # not even a plan: the sidecar is busy
    code, last = r.admin("GET", "/restore")
    assert code == 200 and last["id"] == job["id"] and last["state"] == "restoring", last
    assert rows(r.db) == ["a1", "a2", "b1", "d1", "d2"]  # nothing swapped yet

    r.gate.open()
    wait_for(lambda: _job_state(r, job["id"]) in ("done", "failed"), 60,
             what="the held restore to finish")
    code, done = r.admin("GET", f"/restore?id={job['id']}")
    assert done["outcome"] == "restored" and done["error"] is None, done
    assert rows(r.db) == ["a1", "a2", "b1", "d1"]
    assert r.count("restore requested") == 2 and r.count("undo requested") == 0
    # Nothing lost: each replaced database is kept, the newest one with d2.
    kept = [rows(p) for p in aside_files(r.env)]
    assert kept == [["a1", "a2", "b1", "c1"], ["a1", "a2", "b1", "d1", "d2"]], kept
    # Three starts of the app: the first, after the first restore, after this one.
    wait_for(lambda: len(app_pids(r.sc)) >= 3, 30, what="the app to start after the restore")
    assert len(app_pids(r.sc)) == 3, r.sc.stdout
    code, status = r.admin("GET", "/status")
    assert status["state"] == "running", status
    # The undo is allowed again now, and puts back the database the last restore replaced.
    code, undone = r.admin("POST", "/undo", {"wait": True})
    assert code == 200 and undone["outcome"] == "restored", undone
    assert rows(r.db) == ["a1", "a2", "b1", "d1", "d2"]


def test_a_verification_while_one_runs_is_409_and_the_first_completes(running) -> None:
    """A verification held in its download: a second one answers 409 saying one is running;
    the first then finds the backup intact, and a third one runs again."""
    r = running()
    r.write(["a1", "a2"])
    r.gate.close()
    first: list[tuple[int, dict[str, Any]]] = []
    t = threading.Thread(target=lambda: first.append(r.admin("POST", "/verify", {})),
                         daemon=True)
    t.start()
    wait_for(lambda: r.gate.held, 60, interval=0.05,
             what="the verification to be held in its download")

    code, doc = r.admin("POST", "/verify", {})
    assert code == 409, doc
    assert doc["error"] == "cannot verify now: a verification is already running", doc
    assert not first, "the first verification finished while its download was held"

    r.gate.open()
    t.join(120)
    assert first and first[0][0] == 200, first
    assert first[0][1]["ok"] is True and len(first[0][1]["databases"]) == 1, first
    assert r.count("backup verified") == 1
    code, again = r.admin("POST", "/verify", {})
    assert code == 200 and again["ok"] is True, again
    assert r.count("backup verified") == 2


def test_a_restore_or_an_undo_while_the_sidecar_stops_is_409_and_the_stop_completes(
        running, tmp_path: Path) -> None:
    """SIGTERM while the app takes its time to stop: a restore and an undo answer 409 naming
    the phase; the shutdown then completes (exit 0), nothing was restored, and the bucket
    holds every row the database had."""
    hold = tmp_path / "hold-stop"
    r = running(HOLD_STOP=str(hold), SIDECAR_APP_STOP_TIMEOUT="120s")
    txid_a = r.write(["a1", "a2"])
    r.write(["b1"])
    code, first = r.admin("POST", "/restore", {"txid": f"{txid_a:016x}", "wait": True})
    assert code == 200 and first["outcome"] == "restored", first  # something to undo
    assert rows(r.db) == ["a1", "a2"]
    r.write(["c1"])
    # The app the restore started again has its SIGTERM handler (it says so once it has).
    wait_for(lambda: len(app_pids(r.sc)) == 2, 30, what="the app to start after the restore")

    hold.touch()
    r.sc.signal(signal.SIGTERM)
    wait_for(lambda: r.admin("GET", "/status")[1]["state"] == "stopping-app", 30,
             interval=0.05, what="the sidecar to be stopping its app")
    code, doc = r.admin("POST", "/restore", {})
    assert code == 409, doc
    assert doc["error"] == "cannot restore now: the sidecar is stopping-app", doc
    code, doc = r.admin("POST", "/undo", {})
    assert code == 409, doc
    assert doc["error"] == "cannot undo now: the sidecar is stopping-app", doc

    hold.unlink()
    assert r.sc.wait(60) == 0, r.sc.output()
    assert r.count("restore requested") == 1 and r.count("undo requested") == 0
    assert rows(r.db) == ["a1", "a2", "c1"]
    assert rows(side_restore(r.env, tmp_path / "bucket.db")) == ["a1", "a2", "c1"]
