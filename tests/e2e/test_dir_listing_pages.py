"""A directory entry's listing pages through the small S3 client (ListObjectsV2 continuation
tokens and start-after) against the real rclone server: past 1,000 keys it lists what boto3's
paginator lists, a lag check's sweep a page at a time reads the same, and the directory lag
check never imports boto3 for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar import config
from sidecar.bucket import tenants
from testkit import S3Server, base_env, s3_env, wait_for

pytestmark = pytest.mark.slow

N_DBS = 1234  # one 0.5 object each, plus a level-1 object for every third: > 1,000 keys


def fill(s3: S3Server, bucket: str) -> set[str]:
    """Objects written straight into the server's directory (fast; rclone serves files)."""
    keys = set()
    for i in range(N_DBS):
        names = [f"0000/{1:016x}-{i + 1:016x}.ltx"]
        if i % 3 == 0:
            names.append(f"0001/{1:016x}-{i + 2:016x}.ltx")
        for name in names:
            path = s3.root / bucket / "tenants" / f"t{i:04d}.db" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
            keys.add(f"tenants/t{i:04d}.db/{name}")
    # The server caches directory listings for a second: wait until it lists every file.
    wait_for(lambda: boto_keys(s3, bucket) == keys, 10, interval=0.2,
             what="the S3 server to list every key written")
    return keys


def entry(tmp_path: Path, s3: S3Server, bucket: str) -> tuple[config.DbDir, dict[str, str]]:
    env = base_env(tmp_path, **s3_env(s3, bucket, "tenants"),
                   SIDECAR_DB_DIR=str(tmp_path / "data" / "tenants"))
    del env["SIDECAR_DB_PATH"]
    cfg = config.load(env, app_command=["true"], cwd=tmp_path)
    return cfg.directories[0], env


def boto_keys(s3: S3Server, bucket: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                   Prefix="tenants/")
    return {o["Key"] for p in pages for o in p.get("Contents", [])}


@pytest.mark.parametrize("page", [1000, 97])
def test_paged_listing_equals_boto3s(tmp_path: Path, s3: S3Server, bucket: str,
                                     monkeypatch: pytest.MonkeyPatch, page: int) -> None:
    """Every key, every member and every newest TXID, in ceil(keys / page) requests, the
    same as the server's own listing (and as the files written)."""
    want = fill(s3, bucket)
    assert boto_keys(s3, bucket) == want
    e, env = entry(tmp_path, s3, bucket)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, env[name])
    got = tenants.remote_members(e, 10, page=page)
    assert sorted(got.members) == sorted({k.split("/")[1] for k in want})
    assert len(got.members) == N_DBS and got.unknown == []
    assert got.positions["t0000.db"] == 2 and got.positions["t0001.db"] == 2
    assert got.requests == -(-len(want) // page)


def test_directory_lag_listings_page_in_a_process_of_their_own(tmp_path: Path, s3: S3Server,
                                                               bucket: str) -> None:
    """In a process of its own, as the daemon makes them: a lag check's listing of > 1,000
    keys takes two requests, a page one, one database's own listing one."""
    fill(s3, bucket)
    _, env = entry(tmp_path, s3, bucket)
    code = ("import json, sys; from pathlib import Path; from sidecar import config\n"
            "from sidecar.bucket import tenants\n"
            "cfg = config.load(json.loads(sys.argv[1]), app_command=['true'], cwd=Path('/tmp'))\n"
            "view = tenants.BucketView(cfg.directories[0], 10)\n"
            "out, page, one = view.full(), view.page(None), view.member('t0007.db')\n"
            "print(json.dumps([len(out.members), out.requests, page.listing.requests,"
            " one.requests]))")
    res = subprocess.run([sys.executable, "-c", code, json.dumps(env)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [N_DBS, 2, 1, 1]


@pytest.mark.parametrize("page", [1000, 97])
def test_a_sweep_page_by_page_reads_what_one_listing_reads(
        tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch,
        page: int) -> None:
    """The lag checks' sweep: each page starts after the previous page's last key (S3's
    start-after, which the server must honour), one request each, and together the pages
    hold every database and newest TXID of the whole listing; one database's own listing
    holds only it."""
    want = fill(s3, bucket)
    e, env = entry(tmp_path, s3, bucket)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, env[name])
    view = tenants.BucketView(e, 10, page=page)
    whole = view.full()
    positions: dict[str, int] = {}
    pages, cursor = 0, None
    while True:
        p = view.page(cursor)
        assert p.listing.requests == 1
        pages += 1
        for rel, txid in p.listing.positions.items():
            positions[rel] = max(positions.get(rel, -1), txid)
        if p.done:
            break
        assert p.last_key is not None and (cursor is None or p.last_key > cursor)
        cursor = p.last_key
    assert pages == -(-len(want) // page)
    assert positions == whole.positions and len(positions) == N_DBS
    one = view.member("t0003.db")
    assert one.positions == {"t0003.db": 5} and one.requests == 1
    assert view.member("t0001.db").positions == {"t0001.db": 2}
