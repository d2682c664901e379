"""The lag checks list through sidecar's one S3 client (bucket.client: boto3), as the start-up
probe does, in every environment: on a bucket written by the real Litestream they find its
position and the lag, and a `sidecar run` that needs no restore loads boto3 only after the
app has started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sidecar import config
from sidecar.bucket import replica
from sidecar.bucket.client import Client
from sidecar.lag.db_lag import DbLag
from sidecar.lag.monitor import LagMonitor
from testkit import S3Server, base_env, free_port, s3_env, seed_bucket, wait_for, write_app
from testkit.http import get
from testkit.metrics import read_total


class FixedControl:
    """Litestream's control socket as the lag check sees it: one local TXID."""

    def __init__(self, txid: int):
        self.value = txid

    def txid(self, _db: Path) -> int:
        return self.value


def load(env: dict[str, str], tmp_path: Path) -> config.Config:
    return config.load(env, app_command=["true"], cwd=tmp_path)


def test_lag_through_the_client_on_a_bucket_litestream_wrote(tmp_path: Path, s3: S3Server,
                                                             bucket: str) -> None:
    """Litestream writes the bucket; a check with a local TXID finds the bucket's position and
    the lag: caught up, behind (a local TXID the bucket does not hold), and after Litestream
    uploaded more."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, [f"a{i}" for i in range(20)])
    db = load(env, tmp_path).databases[0]
    assert db.replica is not None
    newest = replica.latest_position(replica.S3Store(db.replica, 5.0))
    assert newest is not None and newest.max_txid > 0
    control, clock = FixedControl(newest.max_txid), [50.0]
    store = replica.S3Store(db.replica, 5.0)
    d = DbLag(db, store, control, clock=lambda: clock[0],  # type: ignore[arg-type]
                  wall=lambda: 1000.0)
    first = d.check()
    assert first.reachable and first.replica_txid == newest.max_txid
    assert first.lag_seconds == 0.0  # caught up

    control.value = newest.max_txid + 1  # a local change the bucket does not hold yet
    d.changes.changed(50.0)
    clock[0] = 57.5
    behind = d.check()
    assert behind.lag_seconds == 7.5 and behind.replica_txid == newest.max_txid

    seed_bucket(env, tmp_path, [f"b{i}" for i in range(20)])  # Litestream uploads more
    grown = replica.latest_position(replica.S3Store(db.replica, 5.0))
    assert grown is not None and grown.max_txid > newest.max_txid
    control.value = grown.max_txid
    clock[0] = 60.0
    caught_up = d.check()
    assert caught_up.replica_txid == grown.max_txid and caught_up.lag_seconds == 0.0


def test_monitor_and_probe_use_the_one_client_whatever_the_environment(
        tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No fork by environment: with or without a proxy or an AWS config-file variable, the
    lag checks and the probe list through bucket.client.Client."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, env[name])
    cfg = load(env, tmp_path)
    profile = tmp_path / "aws-config"
    profile.write_text("[default]\nregion = us-east-1\n")
    for extra in ({}, {"HTTPS_PROXY": "http://127.0.0.1:9"}, {"AWS_CONFIG_FILE": str(profile)}):
        with monkeypatch.context() as m:
            for name, value in extra.items():
                m.setenv(name, value)
            opened = LagMonitor(cfg, None).dbs[0]._opener
            assert opened is not None
            r = cfg.databases[0].replica
            assert r is not None
            assert isinstance(opened()._client, Client)  # type: ignore[attr-defined]
            assert isinstance(replica.open_store(r, 5.0)._client, Client)  # type: ignore[attr-defined]
            assert replica.probe(r, 5.0).layout == "empty", extra  # and it answers


# `sidecar run` itself, with an import hook that notes (and does not stop) every import of
# boto3 or botocore in any of its threads, with the time, for as long as the process lives.
WATCHED = textwrap.dedent("""
    import sys, time
    class Note:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("boto3", "botocore"):
                with open(MARK, "a") as f:
                    f.write(f"{name} {time.time()}\\n")
            return None
    MARK = sys.argv.pop(1)
    sys.meta_path.insert(0, Note())
    from sidecar.cli import main
    sys.argv[0] = "sidecar"
    sys.exit(main())
""")


def test_a_start_without_restore_loads_boto3_after_the_app(tmp_path: Path, s3: S3Server,
                                                           bucket: str, sidecars: object) -> None:
    """A real `sidecar run` over a present database starts the app before anything imports
    boto3 or botocore (nothing before it needs the bucket); the lag checks that follow load
    them and measure (reachable, a bucket position)."""
    from datetime import datetime

    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["x"])  # the database stays: no restore at start
    port = free_port()
    env.update(SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}", SIDECAR_LAG_CHECK_INTERVAL="1s",
               SIDECAR_VERIFY_SCHEDULE="", WRITE_LIMIT="1")
    wrapper, mark = tmp_path / "watched.py", tmp_path / "imports.txt"
    wrapper.write_text(WATCHED)
    mark.write_text("")
    app = write_app(tmp_path)
    sc = sidecars(env, app, tmp_path,  # type: ignore[operator]
                  argv=[sys.executable, str(wrapper), str(mark), "run", "--", *app])
    started = sc.wait_event("app started", 60)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: read_total(base, "sidecar_lag_checks_total", outcome="ok") >= 2, 30, what="2 lag checks")
    status = get(f"{base}/status").json()
    first = status["databases"][0]
    assert first["replica_reachable"] is True and first["replica_txid"], first
    imports = [line.split() for line in mark.read_text().splitlines()]
    assert {"boto3", "botocore"} <= {name for name, _t in imports}, imports
    app_up = datetime.fromisoformat(started["timestamp"].replace("Z", "+00:00")).timestamp()
    assert min(float(t) for _n, t in imports) >= app_up - 0.01, (imports, started)
    sc.signal()
    assert sc.wait() == 0, sc.output()


def test_verification_space_estimate_lists_the_newest_snapshot(tmp_path: Path, s3: S3Server,
                                                               bucket: str) -> None:
    """The scheduled verification's space estimate (the newest snapshot's size) lists through
    the client: the newest snapshot counts, not the largest."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    client = s3.client()
    for n, size in ((1, 70_000), (5, 90_000), (9, 40_000)):  # snapshots: the newest counts
        client.put_object(Bucket=bucket, Key=f"app.db/0009/{1:016x}-{n:016x}.ltx",
                          Body=b"x" * size)
    db = load(env, tmp_path).databases[0]
    snaps = replica.S3Store(db.replica, 5.0).list_ltx(9)  # type: ignore[arg-type]
    assert [o.size for o in snaps] == [70_000, 90_000, 40_000]
    want = int(40_000 * 1.25) + 1024 * 1024
    code = ("import json, sys; from pathlib import Path; from sidecar import config\n"
            "from sidecar.recovery import scratch\n"
            "cfg = config.load(json.loads(sys.argv[1]), app_command=['true'], cwd=Path('/tmp'))\n"
            "print(json.dumps(scratch.copy_estimate(cfg.databases[0])))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(env)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == want, out.stdout


def test_sidecar_run_watches_the_database_once_the_app_runs(tmp_path: Path, s3: S3Server,
                                                            bucket: str, sidecars: object) -> None:
    """The file watching is deferred past the restore step, not dropped: once the app runs,
    the sidecar process holds an inotify watch (seen in /proc, not through sidecar)."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["x"])
    (tmp_path / "data" / "app.db").unlink()
    env.update(WRITE_LIMIT="1", SIDECAR_VERIFY_SCHEDULE="")
    sc = sidecars(env, write_app(tmp_path), tmp_path)  # type: ignore[operator]
    sc.wait_event("app started", 60)
    assert sc.event("restore decided")["outcome"] == "restored"
    fds = Path(f"/proc/{sc.proc.pid}/fd")

    def watching() -> bool:
        links = []
        for fd in fds.iterdir():
            try:
                links.append(os.readlink(fd))
            except OSError:
                continue
        return "anon_inode:inotify" in links

    wait_for(watching, 10, what="an inotify watch in the sidecar process")
    sc.signal()
    assert sc.wait() == 0, sc.output()
