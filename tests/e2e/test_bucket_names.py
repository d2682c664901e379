"""A bucket is less trusted than the volume: valid LTX data planted under hostile names in a
tenant directory's prefix, with the real Litestream and a real S3 server (rclone). Whatever the
name, a start ends in exit 4 naming the object (SIDECAR_BUCKET_BAD_NAMES=refuse, the default)
or exit 0 with it left alone and named (skip, or a name the entry does not take), never 70; no
file outside the directory or inside the state dir changes or appears, and with `skip` the
real tenants come back whole."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit import BIN, S3Server, base_env, rows, run_sidecar, s3_env
from testkit.db import plain_db

pytestmark = pytest.mark.slow

BUCKET = "bkt"
REAL = {"t1.db": ["t1-0", "t1-1", "t1-2"], "t2.db": ["t2-0"]}

# Waits (up to a minute) until the bucket holds a snapshot of every tenant, then exits 0.
WAIT_APP = textwrap.dedent("""
    import os, time, boto3
    c = boto3.client("s3", endpoint_url=os.environ["SIDECAR_S3_ENDPOINT"],
                     aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                     region_name="us-east-1")
    want = set(os.environ["WANT"].split(","))
    for _ in range(600):
        keys = [o["Key"] for o in c.list_objects_v2(Bucket="bkt", Prefix="tenants/")
                .get("Contents", [])]
        if want <= {k.split("/")[1] for k in keys if "/0009/" in k}:
            break
        time.sleep(0.1)
""")


# The hostile names of the issue that an S3 server stores (rclone refuses keys with `//`,
# `/./` or `..` segments: those are in tests/unit/test_names.py), each with whether it sits
# in a subdirectory (recursion decides whether the entry takes it at all).
VICTIM_REL = "%2e%2e%2f%2e%2e%2fvictim%2fvictim.db"  # data/tenants/../../victim/victim.db
HOSTILE = [
    (VICTIM_REL, False),
    ("%2e%2e%2fescaped.db", False),  # would make data/escaped.db
    ("t2.db#.db", False),  # a second Litestream on t2.db
    ("m.db?mode=memory&x=.db", False),  # URI parameters
    ("%741.db", False),  # an alias of t1.db
    ("x" * 237 + ".db", False),  # no room for sidecar's temporary names beside it
    (".sidecar/st.db", True),  # into the state dir
    ("t1.db/0009/nest.db", True),  # inside a database's path
    ("sub%2f..%2f..%2fup.db", False),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A private S3 server (restarted after each planting: rclone caches its listings), whose
    bucket holds real backups of t1.db and t2.db made by a sidecar run."""
    root = tmp_path_factory.mktemp("names")
    srv = S3Server(root / "s3root")
    srv.start()
    srv.make_bucket(BUCKET)
    for name, values in REAL.items():
        db_path = root / "data" / "tenants" / name
        db_path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(db_path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT)")
        db.executemany("INSERT INTO rows(v) VALUES (?)", [(v,) for v in values])
        db.close()
    app = root / "wait.py"
    app.write_text(WAIT_APP)
    env = _env(root, srv, WANT=",".join(REAL))
    res = run_sidecar(["run", "--", sys.executable, str(app)], env, root, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    keys = srv.keys(BUCKET, "tenants/")
    assert {k.split("/")[1] for k in keys} == set(REAL), keys
    yield srv
    srv.stop()


def _env(base: Path, srv: S3Server, **extra: str) -> dict[str, str]:
    env = base_env(base, **{**s3_env(srv, BUCKET, "tenants"),
                            "SIDECAR_DB_DIR": str(base / "data" / "tenants"), **extra})
    del env["SIDECAR_DB_PATH"]
    return env


def _plant(srv: S3Server, rel: str) -> list[str]:
    """Every object of t1.db's backup, copied under `tenants/<rel>/`: valid LTX data."""
    c = srv.client()
    planted = []
    for key in srv.keys(BUCKET, "tenants/t1.db/"):
        if key.count("/") != 3:  # t1.db's own keys only (not a nested plant's)
            continue
        body = c.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        new = f"tenants/{rel}/" + key.split("/", 2)[2]
        c.put_object(Bucket=BUCKET, Key=new, Body=body)
        planted.append(new)
    srv.restart()
    return planted


def _unplant(srv: S3Server, planted: list[str]) -> None:
    c = srv.client()
    for key in planted:
        c.delete_object(Bucket=BUCKET, Key=key)
    srv.restart()


def _tree(root: Path, skip: Path) -> dict[str, str]:
    """Every file under `root` but inside `skip`, with a digest of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_relative_to(skip):
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _victim(path: Path) -> bytes:
    """An unrelated database (rollback journal, no Litestream tables) outside the volume."""
    return plain_db(path, "secret", "untouched")


@pytest.mark.parametrize("rel,nested", HOSTILE, ids=lambda v: str(v)[:24])
def test_a_hostile_name_never_reaches_outside_the_directory(tmp_path: Path, server: S3Server,
                                                            rel: str, nested: bool) -> None:
    planted = _plant(server, rel)
    assert planted
    try:
        for recursive in ("0", "1"):
            for mode in ("refuse", "skip"):
                _one_start(tmp_path / f"r{recursive}-{mode}", server, rel, nested,
                           recursive, mode)
    finally:
        _unplant(server, planted)


def _one_start(base: Path, srv: S3Server, rel: str, nested: bool, recursive: str,
               mode: str) -> None:
    base.mkdir()
    victim = base / "victim" / "victim.db"
    victim_bytes = _victim(victim)
    tenants = base / "data" / "tenants"
    state = tenants / ".sidecar"
    env = _env(base, srv, SIDECAR_DB_RECURSIVE=recursive, SIDECAR_BUCKET_BAD_NAMES=mode)
    before = _tree(base, tenants)
    res = run_sidecar(["run", "--", "true"], env, base, timeout=180)
    what = f"{rel!r} recursive={recursive} {mode}: exit {res.returncode}\n{res.stderr[-3000:]}"
    taken = recursive == "1" or not nested  # the entry looks where the name points
    if taken and mode == "refuse":
        assert res.returncode == 4, what
        assert f"s3://{BUCKET}/tenants/{rel}/" in res.stderr, what
        assert "move or delete" in res.stderr, what
        assert not list(tenants.glob("*.db")), what  # nothing was restored
    else:
        assert res.returncode == 0, what
        assert f"tenants/{rel}" in res.stderr or rel in res.stderr, what  # named in the log
        for name, values in REAL.items():
            assert rows(tenants / name) == values, what
        assert not (tenants / "t1.db").is_dir()
    assert victim.read_bytes() == victim_bytes, what
    assert not victim.with_name("victim.db-wal").exists(), what
    assert not victim.with_name("victim.db-shm").exists(), what
    assert _tree(base, tenants) == before, what  # nothing outside the directory
    assert not (tenants / rel).exists(), what  # never made, not even as a directory
    if state.exists():
        assert not list(state.rglob("*.db*")), what


def test_a_directory_left_at_a_databases_path_is_exit_4_not_70(tmp_path: Path,
                                                               server: S3Server) -> None:
    """A directory where the bucket's t1.db goes (what an earlier version left after a nested
    plant, even once the object was deleted): exit 4 naming it (was IsADirectoryError, exit
    70, at every start); with `skip` the other tenant comes back and the directory stays."""
    tenants = tmp_path / "data" / "tenants"
    (tenants / "t1.db" / "0009").mkdir(parents=True)
    for mode in ("refuse", "skip"):
        env = _env(tmp_path, server, SIDECAR_DB_RECURSIVE="1", SIDECAR_BUCKET_BAD_NAMES=mode)
        res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=180)
        what = f"{mode}: exit {res.returncode}\n{res.stderr[-3000:]}"
        assert "Traceback" not in res.stderr, what
        assert f"{tenants / 't1.db'} is a directory" in res.stderr, what
        if mode == "refuse":
            assert res.returncode == 4, what
            assert not (tenants / "t2.db").exists(), what
        else:
            assert res.returncode == 0, what
            assert rows(tenants / "t2.db") == REAL["t2.db"], what
        assert (tenants / "t1.db" / "0009").is_dir() and not any((tenants / "t1.db").rglob("*.*"))


def test_the_number_of_databases_a_bucket_can_make_sidecar_restore_is_capped(
        tmp_path: Path, server: S3Server) -> None:
    """More databases to restore than SIDECAR_RESTORE_MAX_DATABASES: exit 4 naming both
    figures and the setting, nothing restored; raised to the real count, the start goes on."""
    tenants = tmp_path / "data" / "tenants"
    env = _env(tmp_path, server, SIDECAR_RESTORE_MAX_DATABASES="1")
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=180)
    assert res.returncode == 4, res.stderr[-3000:]
    assert "holds 2 databases to restore" in res.stderr and "at most 1" in res.stderr
    assert "SIDECAR_RESTORE_MAX_DATABASES" in res.stderr
    assert not list(tenants.glob("*.db"))
    env["SIDECAR_RESTORE_MAX_DATABASES"] = "2"
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert {n: rows(tenants / n) for n in REAL} == REAL


@pytest.mark.requires(os.geteuid() == 0 and shutil.which("unshare"),
                      "mount namespaces need root and unshare")
def test_a_directory_restore_that_does_not_fit_is_refused_with_the_figures(
        tmp_path: Path, server: S3Server) -> None:
    """The directory on a 1 MB filesystem (a real tmpfs in a mount namespace): the planned
    restores do not fit, exit 4 naming what they need and what is free, nothing restored."""
    data = tmp_path / "data"
    data.mkdir()
    env = _env(tmp_path, server)
    script = (f"mount -t tmpfs -o size=1m tmpfs {data} && \"$@\"; rc=$?; "
              f"ls -A {data}/tenants; exit $rc")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                          "sh", str(BIN / "sidecar"), "run", "--", "true"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert res.returncode == 4, res.stderr[-3000:]
    assert "restoring 2 databases into" in res.stderr and "MB free" in res.stderr
    assert ".db" not in res.stdout.replace(".sidecar", "")  # nothing restored
