"""The lag checks list through the small client (sidecar.s3list) wherever the start-up probe
does: on a bucket written by the real Litestream they find the same position and the same
lag as through boto3, and an idle `sidecar run` with such a config never imports boto3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from sidecar import config, replica, s3list
from sidecar.daemon import lag
from testkit import S3Server, base_env, free_port, s3_env, seed_bucket, wait_for, write_app


class FixedControl:
    """Litestream's control socket as the lag check sees it: one local TXID."""

    def __init__(self, txid: int):
        self.value = txid

    def txid(self, _db: Path) -> int:
        return self.value


def load(env: dict[str, str], tmp_path: Path) -> config.Config:
    return config.load(env, app_command=["true"], cwd=tmp_path)


def pair(db: config.Database, control: FixedControl, clock: list[float]
         ) -> tuple[lag.DbLag, lag.DbLag]:
    r = db.replica
    assert r is not None
    boto = replica.S3Store(r, 5.0)
    small = replica.S3Store(r, 5.0, client=s3list.Client(r, 5.0))
    return tuple(lag.DbLag(db, store, control, clock=lambda: clock[0],  # type: ignore[arg-type]
                           wall=lambda: 1000.0) for store in (boto, small))


def same(a: lag.LagResult, b: lag.LagResult) -> tuple[object, ...]:
    key = ("local_txid", "replica_txid", "lag_seconds", "reachable", "error", "requests")
    got = tuple(getattr(b, k) for k in key)
    assert got == tuple(getattr(a, k) for k in key), (a, b)
    assert a.last_upload is not None and b.last_upload is not None
    assert abs(a.last_upload - b.last_upload) < 1
    return got


def test_lag_through_s3list_equals_lag_through_boto3(tmp_path: Path, s3: S3Server,
                                                     bucket: str) -> None:
    """Litestream writes the bucket; a check through each client, with the same local TXID and
    the same change times, gives the same bucket position, lag and request count: caught up,
    behind (a local TXID the bucket does not hold), and after Litestream uploaded more."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, [f"a{i}" for i in range(20)])
    db = load(env, tmp_path).databases[0]
    newest = replica.latest_position(replica.S3Store(db.replica, 5.0))  # type: ignore[arg-type]
    assert newest is not None and newest.max_txid > 0
    control, clock = FixedControl(newest.max_txid), [50.0]
    boto, small = pair(db, control, clock)
    assert isinstance(small.store._client, s3list.Client)  # type: ignore[union-attr]
    assert not isinstance(boto.store._client, s3list.Client)  # type: ignore[union-attr]

    first = same(boto.check(), small.check())
    assert first[1] == newest.max_txid and first[2] == 0.0  # caught up

    control.value = newest.max_txid + 1  # a local change the bucket does not hold yet
    for d in (boto, small):
        d.changes.changed(50.0)
    clock[0] = 57.5
    behind = same(boto.check(), small.check())
    assert behind[2] == 7.5 and behind[1] == newest.max_txid

    seed_bucket(env, tmp_path, [f"b{i}" for i in range(20)])  # Litestream uploads more
    grown = replica.latest_position(replica.S3Store(db.replica, 5.0))  # type: ignore[arg-type]
    assert grown is not None and grown.max_txid > newest.max_txid
    control.value = grown.max_txid
    clock[0] = 60.0
    caught_up = same(boto.check(), small.check())
    assert caught_up[1] == grown.max_txid and caught_up[2] == 0.0


def test_monitor_opens_the_small_client_only_where_the_probe_does(
        tmp_path: Path, s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule (s3list.usable) for both: with a proxy or an AWS config-file variable set,
    the lag checks use boto3 like the probe."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, env[name])
    cfg = load(env, tmp_path)

    def clients() -> tuple[type, type]:
        opened = lag.LagMonitor(cfg, None).dbs[0]._opener
        assert opened is not None
        r = cfg.databases[0].replica
        assert r is not None
        return (type(opened()._client),  # type: ignore[attr-defined]
                type(replica.listing_store(r, 5.0)._client))  # type: ignore[attr-defined]

    assert clients() == (s3list.Client, s3list.Client)
    profile = tmp_path / "aws-config"
    profile.write_text("[default]\nregion = us-east-1\n")
    for name, value in (("HTTPS_PROXY", "http://127.0.0.1:9"), ("AWS_CONFIG_FILE", str(profile))):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            monitor, probe = clients()
            assert monitor.__module__ == probe.__module__ == "botocore.client", name


# `sidecar run` itself, with an import hook that notes (and does not stop) every import of
# boto3 or botocore in any of its threads, for as long as the process lives.
WATCHED = textwrap.dedent("""
    import sys
    class Note:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("boto3", "botocore"):
                with open(MARK, "a") as f:
                    f.write(name + "\\n")
            return None
    MARK = sys.argv.pop(1)
    sys.meta_path.insert(0, Note())
    from sidecar.cli import main
    sys.argv[0] = "sidecar"
    sys.exit(main())
""")


def metric(base: str, name: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("extra,loaded", [({}, False), ({"HTTPS_PROXY": "http://127.0.0.1:9"},
                                                         True)])
def test_idle_sidecar_run_never_imports_boto3(tmp_path: Path, s3: S3Server, bucket: str,
                                              sidecars: object, extra: dict[str, str],
                                              loaded: bool) -> None:
    """A real `sidecar run` restores from the bucket, starts the app and runs lag checks
    (reachable, lag measured) while idle: boto3 and botocore are never imported. The same
    run with a proxy variable set (boto3's case) does import them, so the hook sees imports."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    seed_bucket(env, tmp_path, ["x"])
    (tmp_path / "data" / "app.db").unlink()  # the start restores it: the probe runs too
    port = free_port()
    env.update(extra, SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}", SIDECAR_LAG_CHECK_INTERVAL="1s",
               SIDECAR_VERIFY_SCHEDULE="", WRITE_LIMIT="1")
    wrapper, mark = tmp_path / "watched.py", tmp_path / "imports.txt"
    wrapper.write_text(WATCHED)
    mark.write_text("")
    app = write_app(tmp_path)
    sc = sidecars(env, app, tmp_path,  # type: ignore[operator]
                  argv=[sys.executable, str(wrapper), str(mark), "run", "--", *app])
    sc.wait_event("app started", 60)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: metric(base, "sidecar_lag_checks_total") >= 4, 30, what="4 lag checks")
    with urllib.request.urlopen(f"{base}/status", timeout=5) as resp:
        status = json.loads(resp.read())
    first = status["databases"][0]
    assert first["replica_reachable"] is True and first["replica_txid"], first
    time.sleep(1.5)
    imports = mark.read_text().split()
    if loaded:
        assert "boto3" in imports and "botocore" in imports, imports
    else:
        assert imports == [], imports
    sc.signal()
    assert sc.wait() == 0, sc.output()


def test_verification_space_estimate_lists_without_boto3(tmp_path: Path, s3: S3Server,
                                                         bucket: str) -> None:
    """The scheduled verification's space estimate (the newest snapshot's size) only lists:
    through the small client it gives boto3's answer, and a daemon that verifies does not
    load boto3 for it."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    client = s3.client()
    for n, size in ((1, 70_000), (5, 90_000), (9, 40_000)):  # snapshots: the newest counts
        client.put_object(Bucket=bucket, Key=f"app.db/0009/{1:016x}-{n:016x}.ltx",
                          Body=b"x" * size)
    db = load(env, tmp_path).databases[0]
    snaps = replica.S3Store(db.replica, 5.0).list_ltx(9)  # type: ignore[arg-type]
    assert [o.size for o in snaps] == [70_000, 90_000, 40_000]
    want = int(40_000 * 1.25) + 1024 * 1024
    code = ("import json, sys; from pathlib import Path; from sidecar import config, scratch\n"
            "cfg = config.load(json.loads(sys.argv[1]), app_command=['true'], cwd=Path('/tmp'))\n"
            "n = scratch.copy_estimate(cfg.databases[0])\n"
            "print(json.dumps([n, 'boto3' in sys.modules, 'botocore' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(env)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [want, False, False], out.stdout


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
