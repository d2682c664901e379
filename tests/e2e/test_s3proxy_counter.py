"""testkit's request counter (the benchmarks' S3 request rates) counts what a real client
sent through the proxy to the real rclone server: each request once, by method and shape,
bodies that look like requests included."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

from testkit import S3Server, make_tenants, tool, wait_for
from testkit.s3proxy import RequestCounter, S3Proxy, shape


def test_counts_each_request_of_a_real_client_once(s3: S3Server, bucket: str) -> None:
    counter = RequestCounter()
    proxy = S3Proxy(s3.port, counter)
    try:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=proxy.endpoint, aws_access_key_id=s3.key,
                              aws_secret_access_key=s3.secret, region_name="us-east-1",
                              config=Config(s3={"addressing_style": "path"},
                                            retries={"max_attempts": 1}))
        # A body holding a request line after a blank line: it is data, not a request.
        body = b"x\r\n\r\nGET /other/key HTTP/1.1\r\nHost: y\r\n\r\n" + b"z" * 200_000
        for i in range(3):
            client.put_object(Bucket=bucket, Key=f"tenants/t{i:04d}.db/0000/"
                              f"{1:016x}-{i + 1:016x}.ltx", Body=body)
        for _ in range(5):
            client.list_objects_v2(Bucket=bucket, Prefix="tenants/t0001.db/0000/")
        client.list_objects_v2(Bucket=bucket, Prefix="tenants/")
        client.get_object(Bucket=bucket, Key=f"tenants/t0002.db/0000/{1:016x}-{3:016x}.ltx"
                          )["Body"].read()
    finally:
        proxy.close()
    got = counter.snapshot()
    assert got == Counter({"PUT tenants/tN.db/0000/X-X.ltx": 3,
                           "LIST tenants/tN.db/0000/": 5, "LIST tenants/": 1,
                           "GET tenants/tN.db/0000/X-X.ltx": 1}), got
    assert counter.total() == 10


def test_shape_folds_names_and_txids_and_keeps_levels() -> None:
    assert shape("GET", "/b-1/tenants/sub/t0042.db/0003/" + "0" * 15 + "1-" + "a" * 16
                 + ".ltx") == "GET tenants/sub/tN.db/0003/X-X.ltx"
    assert shape("GET", "/b/?list-type=2&prefix=tenants%2F&delimiter=%2F") == (
        "LIST tenants/ (delimiter)")


def test_counts_the_real_litestreams_uploads(tmp_path: Path, s3: S3Server, bucket: str) -> None:
    """The real Litestream replicating one database through the proxy: its PUTs less its
    DELETEs are exactly the objects the bucket holds afterwards."""
    counter = RequestCounter()
    proxy = S3Proxy(s3.port, counter)
    make_tenants(tmp_path / "d", 1)
    cfg = tmp_path / "ls.yml"
    cfg.write_text(f"dbs:\n  - path: {tmp_path / 'd' / 't0000.db'}\n    replica:\n"
                   f"      type: s3\n      bucket: {bucket}\n      path: one\n"
                   f"      endpoint: {proxy.endpoint}\n      region: us-east-1\n"
                   f"      force-path-style: true\n")
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(AWS_ACCESS_KEY_ID=s3.key, AWS_SECRET_ACCESS_KEY=s3.secret,
               AWS_EC2_METADATA_DISABLED="true")
    p = subprocess.Popen([tool("litestream"), "replicate", "-config", str(cfg)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        on_disk = s3.root / bucket / "one"
        wait_for(lambda: any(on_disk.rglob("*.ltx")), 30, what="a first upload")
        for i in range(3):
            con = sqlite3.connect(tmp_path / "d" / "t0000.db", isolation_level=None)
            con.execute("INSERT INTO rows(v) VALUES (?)", (f"more-{i}",))
            con.close()
            time.sleep(1.5)
        time.sleep(2)
    finally:
        p.terminate()
        p.wait(30)
        proxy.close()
    got = counter.snapshot()
    puts = sum(v for k, v in got.items() if k.startswith("PUT "))
    deletes = sum(v for k, v in got.items() if k.startswith("DELETE "))
    files = sum(1 for f in on_disk.rglob("*") if f.is_file())
    assert puts >= 4 and puts - deletes == files, (got, files)
