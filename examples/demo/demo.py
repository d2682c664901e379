"""The quick-start demo: sidecar against a real local S3 server, start to restore.

Run it with ./scripts/demo.sh. It leaves nothing running and prints PASS or FAIL.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
KEY, SECRET = "demo-key", "demo-secret-not-for-production"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def count(db: Path) -> int:
    return int(sqlite3.connect(db).execute("SELECT count(*) FROM visits").fetchone()[0])


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="sidecar-demo-"))
    port = free_port()
    (work / "s3" / "demo-bucket").mkdir(parents=True)
    say(f"starting a local S3 server on 127.0.0.1:{port} (rclone serve s3)")
    s3 = subprocess.Popen([str(BIN / "rclone"), "serve", "s3", "--auth-key", f"{KEY},{SECRET}",
                           "--addr", f"127.0.0.1:{port}", str(work / "s3")],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          env={**os.environ, "RCLONE_CONFIG": "/dev/null"})
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        db = work / "data" / "app.db"
        db.parent.mkdir()
        env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
               "SIDECAR_DB_PATH": str(db), "SIDECAR_REPLICA_URL": "s3://demo-bucket/app.db",
               "SIDECAR_S3_ENDPOINT": f"http://127.0.0.1:{port}",
               "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
               "SIDECAR_HTTP_ADDR": f"127.0.0.1:{free_port()}",
               "SIDECAR_LOG_FORMAT": os.environ.get("SIDECAR_LOG_FORMAT", "console"),
               "SIDECAR_MIGRATE_COMMAND": ""}
        app = [sys.executable, str(HERE / "app.py")]

        say("first start: the bucket is empty, so sidecar starts fresh and replicates")
        first = subprocess.run([str(BIN / "sidecar"), "run", "--", *app], env=env, cwd=work)
        rows_before = count(db)

        say(f"the app wrote {rows_before} rows; now the database is lost (deleted)")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)

        say("second start: sidecar restores from the bucket before the app runs")
        second = subprocess.run([str(BIN / "sidecar"), "run", "--", *app], env=env, cwd=work)
        rows_after = count(db)
        ok = first.returncode == 0 and second.returncode == 0 and rows_after == 2 * rows_before
        say(f"{'PASS' if ok else 'FAIL'}: {rows_before} rows before the loss, "
            f"{rows_after} after the restore and a second run (expected {2 * rows_before})")
        return 0 if ok else 1
    finally:
        s3.terminate()
        s3.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
