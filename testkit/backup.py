"""A real Litestream backup with a shape: a large snapshot, then many small transactions
uploaded one sync at a time, so a restore's plan holds a snapshot and many L0/L1 files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from testkit.poll import wait_for
from testkit.s3 import S3Server

# Litestream's config for one database in an S3 bucket, its keys read from the environment, as
# a user writes it (a str.format template: db, bucket, prefix, endpoint, sync); bench/ runs
# plain Litestream with it too.
REPLICA_CONFIG = """\
dbs:
  - path: {db}
    replica:
      type: s3
      bucket: {bucket}
      path: {prefix}
      endpoint: {endpoint}
      region: us-east-1
      force-path-style: true
      access-key-id: ${{AWS_ACCESS_KEY_ID}}
      secret-access-key: ${{AWS_SECRET_ACCESS_KEY}}
      sync-interval: {sync}
"""

CONFIG = REPLICA_CONFIG + """\
socket:
  enabled: true
  path: {sock}
levels:
  - interval: {l1}
"""


def replicated(sock: Path, db: Path, timeout: float = 120, call_timeout: float = 60,
               interval: float = 0.1) -> None:
    """Wait until plain `litestream replicate` (its control socket `sock`) says it uploaded
    everything of `db`; a refused sync (Litestream still starting) is tried again."""
    from sidecar.litestream.control import Control

    ctl = Control(sock)

    def done() -> bool:
        res = ctl.sync(db, wait=True, timeout=call_timeout)
        return bool(res.get("txid")) and res.get("txid") == res.get("replicated_txid")

    wait_for(done, timeout, interval=interval, what=f"Litestream to upload {db.name}",
             ignore=(Exception,))


def _env(server: S3Server) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESTREAM_"))}
    env.update(AWS_ACCESS_KEY_ID=server.key, AWS_SECRET_ACCESS_KEY=server.secret,
               AWS_EC2_METADATA_DISABLED="true")
    return env


def seed_shaped(server: S3Server, bucket: str, work: Path, *, prefix: str = "app.db",
                blob_mb: int = 24, small: int = 12, gap: float = 0.35,
                marks: tuple[int, ...] = (), l1: str = "1h", then_mb: int = 0
                ) -> tuple[list[str], dict[int, str]]:
    """Replicate a database into `bucket`/`prefix` with plain `litestream replicate`
    (sync every 100 ms): `blob_mb` MB of incompressible blobs in one transaction, then
    `small` transactions `gap` seconds apart, each adding one row `s<i>` to table rows.
    Returns (the values of rows, {i: the UTC time (RFC3339, ms) just after row i's upload,
    for each i in `marks`}); the source is removed. `l1`: how often L0 is compacted into L1
    (an hour by default: the plan then holds every small transaction's own file). `then_mb`:
    MB of blobs in a second transaction before the small ones (a second large planned file)."""
    from testkit.sidecar import tool

    work.mkdir(parents=True, exist_ok=True)
    db, sock, cfg = work / "seed.db", work / "seed.sock", work / "seed.yml"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)")
    con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
    con.execute("BEGIN")
    con.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < ?) "
                "INSERT INTO blobs(b) SELECT randomblob(1900) FROM c",
                (blob_mb * 1024 * 1024 // 2048,))
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cfg.write_text(CONFIG.format(db=db, bucket=bucket, prefix=prefix, endpoint=server.endpoint,
                                 sync="100ms", sock=sock, l1=l1))
    proc = subprocess.Popen([tool("litestream"), "replicate", "-config", str(cfg)],
                            env=_env(server), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    values: list[str] = []
    times: dict[int, str] = {}
    try:
        wait_for(sock.exists, 30, interval=0.05, what=str(sock))
        replicated(sock, db)
        if then_mb:  # a second large transaction: its own large L0 file, after the snapshot
            # Litestream writes its first snapshot (L9) a moment after the first upload; a
            # transaction before that would be inside it.
            wait_for(lambda: server.keys(bucket, f"{prefix}/0009/"), 60, interval=0.1,
                     what="Litestream's first snapshot")
            con.execute("BEGIN")
            con.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c "
                        "WHERE x < ?) INSERT INTO blobs(b) SELECT randomblob(1900) FROM c",
                        (then_mb * 1024 * 1024 // 2048,))
            con.execute("COMMIT")
            replicated(sock, db)
        for i in range(small):
            time.sleep(gap)
            con.execute("INSERT INTO rows(v, at) VALUES (?, ?)", (f"s{i}", time.time()))
            values.append(f"s{i}")
            replicated(sock, db)
            if i in marks:
                time.sleep(0.05)
                now = datetime.now(UTC)
                times[i] = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
                time.sleep(0.05)
    finally:
        con.close()
        proc.terminate()
        proc.wait(60)
    for p in work.glob("seed.*"):
        p.unlink(missing_ok=True)
    return values, times
