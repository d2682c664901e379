"""Benchmark the HTTP listener and the lag checker at default settings.

    python bench/bench_metrics.py [--scrapes 1000] [--idle 60] [--json results.json]

Starts a real S3 server (rclone serve s3), then a real `sidecar run` (real Litestream) with an
app that writes 50 rows and then idles, and measures:

- /metrics latency (median, p99) over N scrapes, with Litestream's series passed through;
- the sidecar's RSS and CPU while idle, over --idle seconds (its own process, not Litestream's);
- S3 requests per minute at the default settings while idle: the sidecar's own (its lag
  checks, sidecar_replica_requests_total) and Litestream's (litestream_replica_operation_total).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from testkit import S3Server, free_port, wait_for
from testkit.http import get
from testkit.metrics import total

BIN = Path(sys.executable).parent
KEY, SECRET = "bench-key", "bench-secret-0123456789"

APP = textwrap.dedent("""
    import os, sqlite3, time
    db = sqlite3.connect(os.environ["SIDECAR_DB_PATH"], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(50):
        db.execute("INSERT INTO t(v) VALUES (?)", (str(i),))
        time.sleep(0.02)
    print("app idle", flush=True)
    while True:
        time.sleep(3600)
""")


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS bytes) of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def litestream_requests(body: bytes) -> float:
    """Litestream's own requests to the bucket (litestream_replica_operation_total, summed)."""
    return total(body, "litestream_replica_operation_total")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scrapes", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-metrics-"))
    (work / "s3" / "bench").mkdir(parents=True)
    (work / "data").mkdir()
    (work / "app.py").write_text(APP)
    http_port = free_port()
    s3 = S3Server(work / "s3", key=KEY, secret=SECRET, log=None)
    s3.start()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIDECAR_", "AWS_", "LITESTREAM_"))}
    env.update({
        "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
        "SIDECAR_DB_PATH": str(work / "data" / "app.db"),
        "SIDECAR_REPLICA_URL": "s3://bench/app.db",
        "SIDECAR_S3_ENDPOINT": s3.endpoint,
        "SIDECAR_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
        "SIDECAR_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "SIDECAR_MIGRATE_COMMAND": "", "SIDECAR_LOG_FORMAT": "json",
    })
    sc = subprocess.Popen([str(BIN / "sidecar"), "run", "--", sys.executable, str(work / "app.py")],
                          env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_for(lambda: get(f"{base}/readyz", timeout=2).status == 200, 60,
                 what="the sidecar to be ready", ignore=(OSError,))
        assert sc.stdout is not None
        wait_for(lambda: b"app idle" in sc.stdout.readline(), 30, what="the app to go idle")
        body = get(f"{base}/metrics").body
        if b"litestream_" not in body:
            raise SystemExit("Litestream's series are missing from /metrics")

        # --- /metrics latency, sequential scrapes
        lat = []
        for _ in range(args.scrapes):
            t0 = time.perf_counter()
            body = get(f"{base}/metrics").body
            lat.append((time.perf_counter() - t0) * 1000)
        lat.sort()
        p50 = statistics.median(lat)
        p99 = lat[min(len(lat) - 1, round(0.99 * len(lat)) - 1)]

        # --- idle: RSS, CPU, S3 requests
        time.sleep(3)  # let the scrapes' CPU settle out of the window
        cpu0, _ = proc_stat(sc.pid)
        m0 = get(f"{base}/metrics").body
        reqs0, ls0 = total(m0, "sidecar_replica_requests_total"), litestream_requests(m0)
        t0 = time.monotonic()
        rss_max = 0
        while time.monotonic() - t0 < args.idle:
            rss_max = max(rss_max, proc_stat(sc.pid)[1])
            time.sleep(1)
        elapsed = time.monotonic() - t0
        cpu1, rss = proc_stat(sc.pid)
        m1 = get(f"{base}/metrics").body
        reqs1, ls1 = total(m1, "sidecar_replica_requests_total"), litestream_requests(m1)
        checks = total(m1, "sidecar_lag_checks_total")
        results = {
            "scrapes": args.scrapes,
            "metrics_latency_ms_p50": round(p50, 2),
            "metrics_latency_ms_p99": round(p99, 2),
            "metrics_body_bytes": len(body),
            "idle_seconds": round(elapsed, 1),
            "sidecar_rss_mib": round(rss / 2**20, 1),
            "sidecar_rss_max_mib": round(rss_max / 2**20, 1),
            "sidecar_idle_cpu_percent": round(100 * (cpu1 - cpu0) / elapsed, 2),
            "sidecar_s3_requests_per_minute": round((reqs1 - reqs0) * 60 / elapsed, 1),
            "litestream_s3_requests_per_minute": round((ls1 - ls0) * 60 / elapsed, 1),
            "lag_checks_total": checks,
            "settings": "defaults (SIDECAR_LAG_CHECK_INTERVAL=10s, SIDECAR_SYNC_INTERVAL=1s)",
        }
    finally:
        os.killpg(sc.pid, signal.SIGTERM)
        try:
            sc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(sc.pid, signal.SIGKILL)
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    for k, v in results.items():
        print(f"{k:34} {v}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
