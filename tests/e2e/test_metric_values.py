"""The values of the event metrics SPEC section 3 promises, read from a real sidecar's /metrics
after the real event: a start that restored, a start on an empty bucket, a start over a local
database, a start that cannot reach the bucket, a live restore that succeeds and one that
fails, a verification, real Prisma migrations that succeed and fail. Each counter is read by
its full label set, and the ones that must not move are read too (0), so a count put under
the wrong label fails.

Real Litestream, real rclone S3 server; the counters start from zero in each `sidecar run`."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from testkit import base_env, free_port, make_db, rows, s3_env, seed_bucket, wait_for, write_app
from testkit.http import post_json
from testkit.live import IDLE_APP, app_pids, db_path, wait_synced
from testkit.metrics import scrape, value
from testkit.prisma import ADD_BIO, NODE_MODULES, Deployment, add_migration, migration_lines
from testkit.shaper import Shaper

pytestmark = pytest.mark.slow
TOKEN = "metric-values-admin-token"
TRIGGERS = ("startup", "manual")
OUTCOMES = ("restored", "fresh", "skipped", "failed")


def restores(text: str) -> dict[tuple[str, str], float | None]:
    """Every sidecar_restores_total series, by (trigger, outcome)."""
    return {(t, o): value(text, "sidecar_restores_total", trigger=t, outcome=o)
            for t in TRIGGERS for o in OUTCOMES}


def only(**counts: float) -> dict[tuple[str, str], float]:
    """The restore counters all at 0 but the ones named, e.g. only(startup_restored=1)."""
    want = {(t, o): 0.0 for t in TRIGGERS for o in OUTCOMES}
    for key, n in counts.items():
        trigger, outcome = key.split("_")
        assert (trigger, outcome) in want, key
        want[(trigger, outcome)] = float(n)
    return want


def migrations(text: str) -> dict[str, float | None]:
    return {o: value(text, "sidecar_migrations_total", outcome=o)
            for o in ("succeeded", "failed", "skipped")}


def logged_duration(sc: Any, message: str) -> float:
    """duration_seconds of the one log event `message` (rounded to ms by the log)."""
    found = [e for e in sc.events if e.get("message") == message]
    assert len(found) == 1, found
    return float(found[0]["duration_seconds"])


class Start:
    """One `sidecar run` of the idle app with /metrics and the admin endpoints on."""

    def __init__(self, env: dict[str, str], tmp_path: Path, sidecars: Any):
        self.env = env
        self.base = f"http://{env['SIDECAR_HTTP_ADDR']}"
        self.sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
        self.sc.wait_event("app started", 60)

    def metrics(self) -> str:
        return scrape(self.base)

    def admin(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        resp = post_json(f"{self.base}/admin{path}", body, token=TOKEN, timeout=120)
        return resp.status, resp.json()


def env_for(tmp_path: Path, s3: Any, bucket: str) -> dict[str, str]:
    return base_env(tmp_path, **s3_env(s3, bucket),
                    SIDECAR_HTTP_ADDR=f"127.0.0.1:{free_port()}", SIDECAR_ADMIN_TOKEN=TOKEN,
                    SIDECAR_VERIFY_SCHEDULE="", SIDECAR_SYNC_INTERVAL="200ms")


def lose_volume(env: dict[str, str]) -> None:
    """The volume comes back empty (its database, -wal, -shm and state directory gone)."""
    data = db_path(env).parent
    shutil.rmtree(data)
    data.mkdir()


def test_a_start_that_restored_a_live_restore_and_a_verification_are_counted(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """A start over an empty volume restores the bucket: startup/restored is 1 and nothing
    else, the duration is the one logged, migrations count one skipped (no command). A live
    restore then adds manual/restored and sets the duration to its own; a verification sets
    its timestamp to now."""
    env = env_for(tmp_path, s3, bucket)
    seed_bucket(env, tmp_path, ["a1", "a2"])
    lose_volume(env)

    run = Start(env, tmp_path, sidecars)
    assert rows(db_path(env)) == ["a1", "a2"]
    text = run.metrics()
    assert restores(text) == only(startup_restored=1)
    startup_took = logged_duration(run.sc, "restore decided")
    duration = value(text, "sidecar_restore_duration_seconds")
    assert duration is not None and duration > 0
    assert abs(duration - startup_took) <= 0.0006, (duration, startup_took)
    assert migrations(text) == {"succeeded": 0, "failed": 0, "skipped": 1}
    db_label = str(db_path(env))
    assert value(text, "sidecar_backup_verify_last_success_timestamp_seconds",
                 db=db_label) == 0

    # A live restore back to the restored state, after a write.
    txid_a = wait_synced(env)
    make_db(db_path(env), ["b1"])
    assert wait_synced(env, what="b1 to reach the bucket") > txid_a
    code, job = run.admin("/restore", {"txid": f"{txid_a:016x}", "wait": True})
    assert code == 200 and job["outcome"] == "restored", job
    assert rows(db_path(env)) == ["a1", "a2"]
    text = run.metrics()
    assert restores(text) == only(startup_restored=1, manual_restored=1)
    manual_took = logged_duration(run.sc, "restore completed")
    duration = value(text, "sidecar_restore_duration_seconds")
    assert duration is not None and abs(duration - manual_took) <= 0.0006, (duration,
                                                                              manual_took)
    assert migrations(text) == {"succeeded": 0, "failed": 0, "skipped": 1}

    before = time.time()
    code, doc = run.admin("/verify", {})
    after = time.time()
    assert code == 200 and doc["ok"] is True, doc
    stamp = value(run.metrics(), "sidecar_backup_verify_last_success_timestamp_seconds",
                  db=db_label)
    assert stamp is not None and before <= stamp <= after, (before, stamp, after)


def test_a_start_on_an_empty_bucket_is_fresh_and_a_start_over_local_data_is_skipped(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """An empty bucket: startup/fresh 1 and the duration stays 0 (nothing was restored). The
    next start finds the local database: startup/skipped 1."""
    env = env_for(tmp_path, s3, bucket)
    run = Start(env, tmp_path, sidecars)
    text = run.metrics()
    assert restores(text) == only(startup_fresh=1)
    assert value(text, "sidecar_restore_duration_seconds") == 0
    make_db(db_path(env), ["a1"])
    wait_synced(env)
    run.sc.signal()
    assert run.sc.wait(60) == 0, run.sc.output()

    again = Start(env, tmp_path, sidecars)
    text = again.metrics()
    assert restores(text) == only(startup_skipped=1)
    assert value(text, "sidecar_restore_duration_seconds") == 0
    assert rows(db_path(env)) == ["a1"]



def test_a_live_restore_that_fails_counts_manual_failed_and_changes_nothing(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """The bucket answers every LTX download with 404 once the restore is planned: the
    restore fails, manual/failed is 1 (and manual/restored 0), the duration stays 0, the
    database is untouched and the app runs again."""
    failing = threading.Event()

    def fail(method: str, target: str, _headers: dict[str, str]) -> int | None:
        ltx = method == "GET" and target.split("?")[0].endswith(".ltx")
        return 404 if failing.is_set() and ltx else None

    shaper = Shaper(s3.port, fail=fail)
    try:
        env = env_for(tmp_path, s3, bucket)
        env["SIDECAR_S3_ENDPOINT"] = shaper.endpoint
        run = Start(env, tmp_path, sidecars)
        make_db(db_path(env), ["a1", "a2"])
        txid_a = wait_synced(env)
        make_db(db_path(env), ["b1"])
        wait_synced(env, what="b1 to reach the bucket")
        wait_for(lambda: app_pids(run.sc), 30, what="the app to say it is up")

        failing.set()
        code, job = run.admin("/restore", {"txid": f"{txid_a:016x}", "wait": True})
        assert code == 500 and job.get("outcome") == "failed", (code, job)
        assert shaper.answered, "no download was refused: the restore did not fail there"
        text = run.metrics()
        assert restores(text) == only(startup_fresh=1, manual_failed=1)
        assert value(text, "sidecar_restore_duration_seconds") == 0
        assert rows(db_path(env)) == ["a1", "a2", "b1"]
        wait_for(lambda: len(app_pids(run.sc)) == 2, 30, what="the app to run again")
    finally:
        shaper.close()


def test_a_start_that_cannot_reach_the_bucket_counts_startup_failed(
        tmp_path: Path, own_s3, sidecars) -> None:
    """A lost volume and the bucket down, held for the operator: startup/failed is 1 and
    nothing else, and /metrics says so while the sidecar holds."""
    bucket = own_s3.make_bucket()
    env = env_for(tmp_path, own_s3, bucket)
    seed_bucket(env, tmp_path, ["a1"])
    lose_volume(env)
    own_s3.stop()
    env["SIDECAR_ON_START_FAILURE"] = "hold"
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    sc.wait_event("start failed: holding for an operator", timeout=60)
    text = scrape(f"http://{env['SIDECAR_HTTP_ADDR']}")
    assert restores(text) == only(startup_failed=1)
    assert value(text, "sidecar_restore_duration_seconds") == 0
    assert migrations(text) == {"succeeded": 0, "failed": 0, "skipped": 0}
    assert not db_path(env).exists()

class Served(Deployment):
    """The example Prisma app as deployed, with sidecar's /metrics on a port of its own."""

    def __init__(self, *args: Any, **extra: str):
        super().__init__(*args)
        self.metrics_port = free_port()
        self.extra = extra

    def env(self) -> dict[str, str]:
        return {**super().env(), "SIDECAR_HTTP_ADDR": f"127.0.0.1:{self.metrics_port}",
                **self.extra}

    def metrics(self) -> str:
        return scrape(f"http://127.0.0.1:{self.metrics_port}")


@pytest.mark.requires(
    (NODE_MODULES / ".bin" / "prisma").exists() and shutil.which("node") is not None,
    "examples/prisma-app/node_modules is not installed (./scripts/setup.sh runs `npm ci` "
    "there) or node is not on PATH")
def test_migration_outcomes_of_real_prisma_starts(tmp_path: Path, s3, bucket,
                                                 sidecars) -> None:
    """The example app's real `prisma migrate deploy`: a first start counts one succeeded
    migration (and a fresh database); a start over a lost volume with a new migration counts
    a restore and one succeeded migration; a migration that fails counts one failed (held for
    the operator, so /metrics still answers) and no succeeded one."""
    app = Served(tmp_path, s3, bucket, sidecars, SIDECAR_ON_START_FAILURE="hold")
    sc = app.boot()
    app.wait_serving(sc)
    text = app.metrics()
    assert migrations(text) == {"succeeded": 1, "failed": 0, "skipped": 0}
    assert restores(text) == only(startup_fresh=1)
    app.post_note("kept", [])
    wait_synced({"SIDECAR_DB_PATH": str(app.db)}, what="the note to reach the bucket")
    app.stop(sc)

    app.lose_volume()
    add_migration(app.app, "20250801120000_bio", ADD_BIO)
    sc = app.boot()
    app.wait_serving(sc)
    assert "20250801120000_bio" in migration_lines(sc)
    text = app.metrics()
    assert migrations(text) == {"succeeded": 1, "failed": 0, "skipped": 0}
    assert restores(text) == only(startup_restored=1)
    duration = value(text, "sidecar_restore_duration_seconds")
    assert duration is not None and duration > 0
    app.stop(sc)

    add_migration(app.app, "20250801130000_broken",
                  'ALTER TABLE "NoSuchTable" ADD COLUMN "x" TEXT;\n')
    sc = app.boot()
    sc.wait_event("start failed: holding for an operator", timeout=120)
    text = app.metrics()
    assert migrations(text) == {"succeeded": 0, "failed": 1, "skipped": 0}
    assert restores(text) == only(startup_skipped=1)
    assert app.query('SELECT title FROM "Note"') == [("kept",)]
