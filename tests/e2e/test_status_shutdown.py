"""`sidecar status` (control socket) and `GET /status` (HTTP listener) are one route over one
document: at each phase of a real shutdown (running, stopping the app, the final sync while the
bucket is down, stopping Litestream) both return the same document."""

from __future__ import annotations

import json
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from testkit import base_env, free_port, run_sidecar, s3_env, wait_for, write_app
from testkit.http import get

pytestmark = pytest.mark.slow

# Writes rows; on SIGTERM writes a last one and takes 3 s to exit (a slow app shutdown).
SLOW_STOP_APP = textwrap.dedent("""
    import os, signal, sqlite3, sys, time
    db = sqlite3.connect(os.environ["SIDECAR_DB_PATH"], isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT)")
    def term(signum, frame):
        db.execute("INSERT INTO rows(v) VALUES ('final')")
        time.sleep(3)
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    print("app up", flush=True)
    while True:
        db.execute("INSERT INTO rows(v) VALUES ('x')")
        time.sleep(0.2)
""")


def _same_parts(doc: dict[str, Any]) -> dict[str, Any]:
    """The document without what moves by the second (uptimes, lag figures)."""
    return {
        "keys": sorted(doc),
        "state": doc["state"], "pid": doc["pid"], "version": doc["version"],
        "failure": doc["failure"], "started_at": doc["started_at"],
        "children": {name: {k: v for k, v in child.items() if k != "uptime_seconds"}
                     for name, child in doc["children"].items()},
        "databases": [(d["path"], d["replica"], sorted(d)) for d in doc["databases"]],
        "last_restore": doc["last_restore"], "last_migration": doc["last_migration"],
        "manual_restore": doc["manual_restore"], "last_verification": doc["last_verification"],
    }


def _http_status(port: int) -> dict[str, Any] | None:
    try:
        resp = get(f"http://127.0.0.1:{port}/status")
    except OSError:
        return None
    return dict(resp.json()) if resp.status == 200 else None


def test_cli_and_http_status_agree_at_every_phase_of_a_shutdown(tmp_path: Path, own_s3,
                                                                sidecars) -> None:
    """Sampled through a slow shutdown with the bucket down: whenever the HTTP document is
    stable around a `sidecar status --json` call, the CLI shows exactly that document; the
    phases running, stopping-app and final-sync/stopping-litestream are all seen."""
    port = free_port()
    env = base_env(tmp_path, **s3_env(own_s3, own_s3.make_bucket()),
                   SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}", SIDECAR_LITESTREAM_STOP_TIMEOUT="5s",
                   SIDECAR_APP_STOP_TIMEOUT="10s", SIDECAR_VERIFY_SCHEDULE="")
    sc = sidecars(env, write_app(tmp_path, SLOW_STOP_APP, "slow.py"), tmp_path)
    sc.wait_event("app started", 60)
    sc.wait_stdout("app up")
    wait_for(lambda: _http_status(port), 10, what="/status")

    agreed: dict[str, int] = {}
    disagreements: list[tuple[Any, Any]] = []

    def sample() -> None:
        before = _http_status(port)
        res = run_sidecar(["status", "--json"], env, tmp_path, timeout=30)
        after = _http_status(port)
        if before is None or after is None or res.returncode != 0:
            return
        if _same_parts(before) != _same_parts(after):
            return  # the document moved during the CLI call: nothing to compare against
        cli = json.loads(res.stdout)
        if _same_parts(cli) == _same_parts(before):
            agreed[cli["state"]] = agreed.get(cli["state"], 0) + 1
        else:
            disagreements.append((_same_parts(cli), _same_parts(before)))

    sample()
    own_s3.stop()  # the app keeps writing: the final sync will wait for its whole budget
    time.sleep(0.5)
    assert sc.proc is not None
    sc.proc.send_signal(signal.SIGTERM)
    end = time.monotonic() + 40
    while sc.proc.poll() is None and time.monotonic() < end:
        sample()
    assert sc.wait(60) == 0, sc.output()
    assert not disagreements, disagreements[:2]
    assert "running" in agreed and "stopping-app" in agreed, agreed
    assert {"final-sync", "stopping-litestream"} & set(agreed), agreed
    # Through the outage (boto3, apscheduler, watchdog all had their say): JSON lines only.
    not_json = [line for line in sc.lines if not _json_object(line)]
    assert not not_json, not_json[:5]


def _json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
