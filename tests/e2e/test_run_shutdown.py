"""`sidecar run` end to end: fresh start, the final write on SIGTERM, and the plain
`litestream replicate -exec` behaviour it replaces."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import textwrap
from pathlib import Path

import pytest

from testkit import S3_SECRET, base_env, rows, s3_env, side_restore, tool, wait_for, write_app

pytestmark = pytest.mark.slow


def test_fresh_start_rows_reach_bucket_and_final_row_survives_nonzero_exit(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """Empty bucket: fresh start; rows reach the bucket; a row written in the app's SIGTERM
    handler before exiting 3 is in the bucket, and the sidecar exits 3."""
    env = base_env(tmp_path, **s3_env(s3, bucket), EXIT_ON_TERM="3", APP_TAG="a")
    sc = sidecars(env, write_app(tmp_path), tmp_path)
    decided = sc.wait_event("restore decided")
    assert decided["outcome"] == "fresh"
    assert "holds no backup" in decided["detail"]
    sc.wait_event("app started")
    sc.wait_stdout("wrote a-10")
    def bucket_rows() -> int:
        mid = tmp_path / "mid.db"
        mid.unlink(missing_ok=True)  # each poll restores afresh (litestream will not overwrite)
        return len(rows(side_restore(env, mid)))

    wait_for(lambda: bucket_rows() >= 5, 20, what="rows in the bucket")
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 3
    assert any("final row written" in line for line in sc.stdout)

    restored = rows(side_restore(env, tmp_path / "after.db"))
    local = rows(Path(env["SIDECAR_DB_PATH"]))
    assert restored[-1] == "a-final"
    assert restored == local
    # The app's SIGTERM came from the sidecar, and the order was app first, then Litestream.
    names = [e.get("message") for e in sc.events]
    assert names.index("app exited") < names.index("final sync") < names.index("litestream stopped")
    assert S3_SECRET not in "\n".join(sc.lines + sc.stdout)


def test_sigterm_exit_code_is_128_plus_signal_when_app_dies_of_it(tmp_path: Path, sidecars
                                                                   ) -> None:
    """An app that dies of SIGTERM (no handler) makes the sidecar exit 143."""
    env = base_env(tmp_path)
    sc = sidecars(env, ["sleep", "60"], tmp_path)
    sc.wait_event("app started")
    sc.signal(signal.SIGTERM)
    assert sc.wait() == 128 + signal.SIGTERM


def test_app_exit_code_is_passed_through_when_app_exits_by_itself(tmp_path: Path, sidecars
                                                                   ) -> None:
    """The app exiting 42 on its own stops Litestream and exits 42."""
    env = base_env(tmp_path)
    app = write_app(tmp_path, "import sys, time\ntime.sleep(0.5)\nsys.exit(42)\n", "exit42.py")
    sc = sidecars(env, app, tmp_path)
    assert sc.wait() == 42
    assert sc.event("litestream stopped") is not None


def test_second_signal_skips_the_stop_timeout(tmp_path: Path, sidecars) -> None:
    """An app that ignores SIGTERM is SIGKILLed at once on a second signal, not after the
    stop timeout."""
    env = base_env(tmp_path, SIDECAR_APP_STOP_TIMEOUT="60s")
    app = write_app(tmp_path, textwrap.dedent("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stubborn", flush=True)
        time.sleep(600)
    """), "stubborn.py")
    sc = sidecars(env, app, tmp_path)
    sc.wait_stdout("stubborn")
    sc.signal(signal.SIGTERM)
    sc.wait_event("app stopping")
    sc.signal(signal.SIGINT)
    assert sc.wait(timeout=20) == 128 + signal.SIGKILL
    assert sc.event("second signal: skipping the wait") is not None


def test_on_failure_restarts_the_app_in_place(tmp_path: Path, sidecars) -> None:
    """SIDECAR_APP_RESTART=on-failure restarts a crashing app; Litestream keeps running."""
    env = base_env(tmp_path, SIDECAR_APP_RESTART="on-failure")
    marker = tmp_path / "runs"
    app = write_app(tmp_path, textwrap.dedent(f"""
        import sys, time
        with open({str(marker)!r}, "a") as f:
            f.write("x")
        time.sleep(0.2)
        sys.exit(0 if len(open({str(marker)!r}).read()) >= 3 else 1)
    """), "crashy.py")
    sc = sidecars(env, app, tmp_path)
    assert sc.wait(timeout=30) == 0
    assert marker.read_text() == "xxx"
    restarts = [e for e in sc.events if e.get("message") == "app restart scheduled"]
    assert len(restarts) == 2
    assert restarts[1]["in_seconds"] > restarts[0]["in_seconds"]  # backoff grows
    assert sum(1 for e in sc.events if e.get("message") == "litestream started") == 1


def test_plain_litestream_exec_loses_the_final_row(tmp_path: Path, s3, bucket) -> None:
    """The run.sh way (`litestream replicate -exec`) loses the row written on SIGTERM by an app
    that exits non-zero, and exits 1: the behaviour sidecar exists to fix."""
    env = base_env(tmp_path, **s3_env(s3, bucket), EXIT_ON_TERM="3", APP_TAG="p")
    env.pop("AWS_CA_BUNDLE")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    db = env["SIDECAR_DB_PATH"]
    cfg = tmp_path / "plain.yml"
    cfg.write_text(textwrap.dedent(f"""
        dbs:
          - path: {db}
            replica:
              type: s3
              bucket: {bucket}
              path: app.db
              endpoint: {s3.endpoint}
              region: us-east-1
              force-path-style: true
              access-key-id: ${{AWS_ACCESS_KEY_ID}}
              secret-access-key: ${{AWS_SECRET_ACCESS_KEY}}
    """))
    app = write_app(tmp_path)
    proc = subprocess.Popen([tool("litestream"), "replicate", "-config", str(cfg), "-exec",
                             " ".join(app)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _count(Path(db)) > 20, 30, what="app writes")
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    local = rows(Path(db))
    assert local[-1] == "p-final"  # the app did write it
    restored = rows(side_restore(env, tmp_path / "plain-after.db"))
    assert code == 1
    assert "p-final" not in restored


def _count(db: Path) -> int:
    """Rows so far, 0 while the app has not created its table yet."""
    try:
        return len(rows(db)) if db.exists() else 0
    except sqlite3.OperationalError:
        return 0
