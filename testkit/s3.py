"""`rclone serve s3` on 127.0.0.1 over a directory; each subfolder is a bucket."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

from testkit.net import free_port, port_open
from testkit.poll import wait_for

S3_KEY = "sidecar-test-key"
S3_SECRET = "s3-secret-$ecret-Do-Not-Leak-42"  # a `$` on purpose: must survive Litestream


class S3Server:
    """One rclone S3 server. `log` None discards its output; `dir_cache` is how long it trusts
    its directory listings (the benchmarks create buckets behind its back, so they use 1ms;
    never 0s, with which rclone spins once a file has been uploaded: bench/harness.py)."""

    # Extra `rclone serve s3` flags of a variant server (e.g. virtual-hosted only).
    extra_args: tuple[str, ...] = ()

    def __init__(self, root: Path, port: int | None = None, key: str = S3_KEY,
                 secret: str = S3_SECRET, dir_cache: str = "1s", log: Path | bool | None = True):
        self.root = root
        self.port = port or free_port()
        self.key, self.secret, self.dir_cache = key, secret, dir_cache
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root.parent / f"rclone-{self.port}.log" if log is True else (log or None)
        root.mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from testkit.sidecar import tool

        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            # --etag-hash '': list without reading every object for its MD5, as S3 does (rclone
            # otherwise reads every listed object: seconds per listing of a large backup, a
            # cost no S3 user pays). Tests and bench share this server.
            [tool("rclone"), "serve", "s3", *self.extra_args, "--etag-hash", "",
             "--auth-key", f"{self.key},{self.secret}",
             "--addr", f"127.0.0.1:{self.port}", "--dir-cache-time", self.dir_cache,
             str(self.root)],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "RCLONE_CONFIG": "/dev/null"})
        wait_for(lambda: port_open(self.port), 15, interval=0.05, what="rclone serve s3")

    def stop(self, timeout: float = 10) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """A fresh server process on the same port and data."""
        self.stop()
        self.start()

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket through the S3 API (the server caches its directory listings)."""
        name = name or f"b-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The object keys under `prefix` in `bucket` (one listing: tests write few objects)."""
        resp = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for o in resp.get("Contents", [])]

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))


def railway_bucket_env(endpoint: str, bucket: str, region: str = "auto") -> dict[str, str]:
    """The variables a Railway Bucket provides, under its own names, for the tests' key pair."""
    return {"BUCKET": bucket, "ENDPOINT": endpoint, "REGION": region,
            "ACCESS_KEY_ID": S3_KEY, "SECRET_ACCESS_KEY": S3_SECRET}
