"""The lab's S3 server (rclone serve s3, as the tests and the bench start it) is idle when
nobody asks it anything, after uploads too. With `--dir-cache-time 0s` it is not: a
directory holding a file written through the server makes rclone's VFS re-arm its cache
cleanup at 0 forever, and the server spins at up to two cores, beside whatever the bench is
timing. The bench's setting and the tests' default are both checked.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.harness import DIR_CACHE, cpu_ticks
from testkit import S3Server

pytestmark = pytest.mark.slow


def _cpu_seconds(pid: int) -> float:
    return cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("dir_cache", [DIR_CACHE, None], ids=["bench", "tests"])
def test_the_s3_server_rests_after_uploads(tmp_path: Path, dir_cache: str | None) -> None:
    kw = {"dir_cache": dir_cache} if dir_cache else {}
    server = S3Server(tmp_path / "s3", log=None, **kw)
    server.start()
    try:
        bucket = server.make_bucket()
        client = server.client()
        for i in range(5):  # as Litestream uploads: a level directory, files written into it
            client.put_object(Bucket=bucket, Key=f"app.db/0000/{i:016x}.ltx",
                              Body=os.urandom(1000))
        client.delete_object(Bucket=bucket, Key=f"app.db/0000/{1:016x}.ltx")
        client.list_objects_v2(Bucket=bucket, Prefix="app.db/0000/")
        assert server.proc is not None
        pid = server.proc.pid
        time.sleep(0.5)
        before = _cpu_seconds(pid)
        time.sleep(3)
        used = _cpu_seconds(pid) - before
        assert used < 0.3, f"rclone used {used:.2f} CPU-s in 3 s with no client"
    finally:
        server.stop()
