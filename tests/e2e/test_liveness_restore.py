"""Liveness stays true during long work: a live restore that takes longer than the shipped
Kubernetes liveness probe's window (periodSeconds x failureThreshold) and longer than the
listener's stall limit keeps /healthz at 200 throughout, answered within the probe's timeout,
while /readyz says a restore is running. The restore is slow for real: a real Litestream
downloads a real backup from a real S3 server through a proxy that caps the download rate."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultkit import fault_env

from sidecar.daemon import health as sidecar_health
from sidecar.litestream import unix_request
from testkit import free_port, make_db, run_sidecar, s3_env, wait_for, write_app
from testkit.http import get
from testkit.live import IDLE_APP, db_path, sock, wait_synced
from testkit.s3proxy import S3Proxy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def liveness_probe() -> dict[str, Any]:
    for doc in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "statefulset.yaml")
                                  .read_text()):
        if doc and doc.get("kind") == "StatefulSet":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if "livenessProbe" in c:
                    return dict(c["livenessProbe"])
    raise AssertionError("no livenessProbe in deploy/kubernetes/statefulset.yaml")


def test_live_restore_longer_than_the_liveness_window_keeps_healthz_200(
        tmp_path: Path, s3, bucket, sidecars) -> None:
    """A live restore of ~75 s (the probe's window is 30 s, the stall limit 60 s): every
    /healthz poll during it answers 200 within the probe's timeout; /readyz is 503 saying a
    restore runs; afterwards both are back and the app runs on the restored DB."""
    probe = liveness_probe()
    window = probe["periodSeconds"] * probe["failureThreshold"]
    target = max(window, sidecar_health.LOOP_STALL_LIMIT) + 15

    proxy = S3Proxy(s3.port)
    port = free_port()
    env = fault_env(tmp_path, **{**s3_env(s3, bucket), "SIDECAR_S3_ENDPOINT": proxy.endpoint},
                    SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}", SIDECAR_SYNC_INTERVAL="200ms",
                    SIDECAR_LAG_CHECK_INTERVAL="2s")
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    sc.wait_event("app started")
    wait_for(lambda: sock(env).exists(), 10, what="control socket")
    make_db(db_path(env), ["a1"])
    con = sqlite3.connect(db_path(env), isolation_level=None)
    con.execute("CREATE TABLE blobs(b BLOB)")
    for _ in range(12):  # ~6 MB that does not compress
        con.execute("INSERT INTO blobs VALUES (randomblob(500000))")
    con.close()
    wait_synced(env, 30, what="the blobs in the bucket")

    plan = run_sidecar(["restore", "--dry-run", "--json"], env, tmp_path, timeout=120)
    assert plan.returncode == 0, plan.stderr
    download = json.loads(plan.stdout)["download_bytes"]
    assert download > 3_000_000, download
    proxy.throttle(download / target)

    polls: list[tuple[float, int, float]] = []  # (at, status, seconds to answer)
    ready: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                code = get(f"http://127.0.0.1:{port}/healthz", probe["timeoutSeconds"]).status
            except OSError:
                code = 0
            polls.append((t0, code, time.monotonic() - t0))
            resp = get(f"http://127.0.0.1:{port}/readyz", 10)
            if resp.status == 503:
                ready.append(resp.text)
            stop.wait(0.5)

    t0 = time.monotonic()
    code, job = unix_request(sock(env), "POST", "/restore", {})
    assert code == 202, job
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()

    def finished() -> dict[str, Any] | None:
        _c, j = unix_request(sock(env), "GET", f"/restore?id={job['id']}")
        return j if j["state"] in ("done", "failed") else None

    try:
        done = wait_for(finished, target * 4, interval=1.0, what="the slow restore to finish")
    finally:
        proxy.throttle(None)
        stop.set()
        poller.join(15)
    took = time.monotonic() - t0
    assert done["outcome"] == "restored", done
    assert took > max(window, sidecar_health.LOOP_STALL_LIMIT), \
        f"the restore took {took:.0f}s: not longer than the window, the test proves nothing"
    during = [p for p in polls if p[0] < t0 + took]
    assert len(during) > took / 2, len(during)  # polled all along
    bad = [(round(at - t0, 1), c, round(s, 2)) for at, c, s in during
           if c != 200 or s >= probe["timeoutSeconds"]]
    assert bad == [], f"/healthz failed the probe during the restore: {bad[:10]}"
    assert any("a live restore is running" in b for b in ready), ready[:3]

    wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz", 10)[0] == 200, 60,
             what="/readyz after the restore")
    assert get(f"http://127.0.0.1:{port}/healthz", 3)[0] == 200
    proxy.close()
