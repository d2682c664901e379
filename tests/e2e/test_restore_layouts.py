"""The restore decision knows every replica layout: a real Litestream 0.3 backup is restored,
objects that are no backup stop the start, and only a prefix with no object at all is empty."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import config
from sidecar.bucket import replica
from sidecar.startup import preflight
from testkit import (
    S3_KEY,
    S3_SECRET,
    base_env,
    free_port,
    make_db,
    rows,
    run_sidecar,
    s3_env,
    wait_for,
    write_app,
)
from testkit.db import lose_db
from testkit.http import get

pytestmark = pytest.mark.slow

def replicate_with_03(binary: str, db: Path, replica_doc: dict[str, Any], work: Path,
                      done: Any) -> None:
    """Run Litestream 0.3 on `db` until `done()` says the backup is written, then stop it."""
    cfg = work / "litestream03.yml"
    cfg.write_text(yaml.safe_dump({"dbs": [{"path": str(db), "replicas": [replica_doc]}]}))
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    log = work / "litestream03.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([binary, "replicate", "-no-expand-env", "-config", str(cfg)],
                                env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            wait_for(done, 30, what=f"a Litestream 0.3 backup ({log.read_text()[-500:]})")
            # Every WAL frame uploaded: the backup restores (with 0.3 itself) to every row.
            want, checks, n = rows(db), work / "checks", itertools.count()
            checks.mkdir(exist_ok=True)

            def whole() -> bool:
                out = checks / f"{next(n)}.db"
                res = subprocess.run([binary, "restore", "-no-expand-env", "-config", str(cfg),
                                      "-o", str(out), str(db)], env=env, capture_output=True,
                                     timeout=30)
                return res.returncode == 0 and rows(out) == want

            wait_for(whole, 30, interval=0.5, what="the Litestream 0.3 backup to hold every row")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def seed_03_in_s3(litestream03: str, s3: Any, bucket: str, values: list[str],
                  work: Path) -> None:
    """A real Litestream 0.3 backup of a DB holding `values`, under `app.db/` in the bucket."""
    seed = work / "old" / "app.db"
    seed.parent.mkdir()
    make_db(seed, values)
    replicate_with_03(litestream03, seed, {
        "type": "s3", "bucket": bucket, "path": "app.db", "endpoint": s3.endpoint,
        "region": "us-east-1", "force-path-style": True, "access-key-id": S3_KEY,
        "secret-access-key": S3_SECRET, "sync-interval": "500ms"}, work,
        lambda: any("/wal/" in k for k in s3.keys(bucket, "app.db/")))


def volume_files(db: Path) -> list[str]:
    """Files beside the DB, leaving out sidecar's own state dir (rendered config, copies) and
    the DB's single-instance lock (an empty file that stays beside it on purpose)."""
    own = {".sidecar", preflight.db_lock_path(db).name}
    return sorted(p.name for p in db.parent.iterdir() if p.name not in own)


def get_json(url: str) -> Any:
    return get(url).json()


def test_litestream_03_backup_in_s3_is_restored_on_start(tmp_path: Path, s3, bucket,
                                                         litestream03, sidecars) -> None:
    """A prefix written by the real Litestream 0.3 and an empty volume: `sidecar run` restores
    every row (through Litestream 0.5), and the log and /status say the 0.3 layout was used."""
    values = [f"old-{i}" for i in range(200)]
    seed_03_in_s3(litestream03, s3, bucket, values, tmp_path)
    assert all(k.startswith("app.db/generations/") for k in s3.keys(bucket, "app.db/"))

    port = free_port()
    env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}")
    db = Path(env["SIDECAR_DB_PATH"])
    assert not db.exists()
    check = run_sidecar(["check"], env, tmp_path, timeout=60)
    assert "holds a Litestream 0.3 backup" in check.stdout, check.stdout + check.stderr
    sc = sidecars(env, ["sleep", "60"], tmp_path)
    decided = sc.wait_event("restore decided", timeout=90)
    assert decided["outcome"] == "restored", sc.output()
    assert decided["layout"] == "0.3"
    sc.wait_event("app started")
    last = wait_for(lambda: get_json(f"http://127.0.0.1:{port}/status").get("last_restore"),
                    20, what="/status last_restore")
    assert last["app.db"]["layout"] == "0.3"
    assert last["app.db"]["outcome"] == "restored"
    assert rows(db) == values
    sc.signal(signal.SIGTERM)
    assert sc.wait() in (0, 143)
    assert rows(db) == values


def test_litestream_03_file_replica_is_restored_on_start(tmp_path: Path, litestream03) -> None:
    """The same for a file:// replica: 0.3's `<dir>/generations/...` counts as a backup."""
    values = [f"f-{i}" for i in range(50)]
    seed = tmp_path / "old" / "app.db"
    seed.parent.mkdir()
    make_db(seed, values)
    rep = tmp_path / "replica"
    replicate_with_03(litestream03, seed, {"type": "file", "path": str(rep),
                                           "sync-interval": "500ms"}, tmp_path,
                      lambda: any(rep.glob("generations/*/wal/*")))
    env = base_env(tmp_path, SIDECAR_REPLICA_URL=f"file://{rep}")
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    decided = next(json.loads(ln) for ln in res.stderr.splitlines()
                   if '"restore decided"' in ln)
    assert decided["outcome"] == "restored" and decided["layout"] == "0.3"
    assert rows(Path(env["SIDECAR_DB_PATH"])) == values


def test_junk_under_an_otherwise_empty_prefix_stops_the_start(tmp_path: Path, s3,
                                                              bucket) -> None:
    """Objects that are neither layout: exit 4, the keys are named, nothing is created."""
    client = s3.client()
    client.put_object(Bucket=bucket, Key="app.db/notes/readme.txt", Body=b"not a backup")
    client.put_object(Bucket=bucket, Key="app.db/dump.sql", Body=b"-- sql")
    env = base_env(tmp_path, **s3_env(s3, bucket))
    db = Path(env["SIDECAR_DB_PATH"])
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=60)
    assert res.returncode == 4, res.stderr[-3000:]
    assert "not a Litestream backup" in res.stderr
    assert "app.db/dump.sql" in res.stderr and "app.db/notes/readme.txt" in res.stderr
    assert volume_files(db) == []
    check = run_sidecar(["check"], env, tmp_path, timeout=60)
    assert check.returncode == 1
    assert "not a Litestream backup: dump.sql, notes/readme.txt" in check.stdout + check.stderr
    assert volume_files(db) == []


def test_junk_in_a_file_replica_stops_the_start(tmp_path: Path) -> None:
    """The same for a file:// replica: a stray file is not a backup, and not empty either."""
    rep = tmp_path / "replica"
    (rep / "ltx").mkdir(parents=True)  # an empty directory is not data
    (rep / "backup.tar").write_bytes(b"x" * 10)
    env = base_env(tmp_path, SIDECAR_REPLICA_URL=f"file://{rep}")
    db = Path(env["SIDECAR_DB_PATH"])
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=60)
    assert res.returncode == 4, res.stderr[-3000:]
    assert "backup.tar" in res.stderr
    assert volume_files(db) == []


def test_only_the_exact_prefix_counts(tmp_path: Path, s3, bucket) -> None:
    """Prefix `a/b` never sees `a/bc/...`: objects beside it leave it genuinely empty."""
    s3.client().put_object(Bucket=bucket, Key="app.dbx/0000/0000000000000001-"
                           "0000000000000001.ltx", Body=b"x")
    s3.client().put_object(Bucket=bucket, Key="app.db.old", Body=b"x")
    env = base_env(tmp_path, **s3_env(s3, bucket))
    cfg = config.load(env, ["true"], cwd=tmp_path)
    store = replica.open_store(cfg.databases[0].replica)  # type: ignore[arg-type]
    assert store.contents().layout == "empty"
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "holds no backup (no object at all under it)" in res.stderr


def test_layouts_are_told_apart(tmp_path: Path, s3, bucket) -> None:
    """0.5 keys, 0.3 keys, junk and nothing, for S3 and for a directory (fast, no Litestream)."""
    client = s3.client()
    cases = {"v5": ["0000/0000000000000001-0000000000000001.ltx"],
             "v3": ["generations/0123456789abcdef/snapshots/00000000.snapshot.lz4"],
             "junk": ["0000/not-an-ltx-file", "generations/x"], "none": []}
    expected = {"v5": "0.5", "v3": "0.3", "junk": "unknown", "none": "empty"}
    for prefix, keys in cases.items():
        for k in keys:
            client.put_object(Bucket=bucket, Key=f"{prefix}/{k}", Body=b"x")
        env = base_env(tmp_path, **s3_env(s3, bucket, prefix))
        rep = config.load(env, ["true"], cwd=tmp_path).databases[0].replica
        assert rep is not None
        got = replica.open_store(rep).contents()
        assert got.layout == expected[prefix], (prefix, got)
        if prefix == "junk":
            assert set(got.keys) == {f"{k}" for k in keys}
    for name, layout in (("ltx/0/0000000000000001-0000000000000001.ltx", "0.5"),
                         ("generations/0123456789abcdef/wal/00000000_00000000.wal.lz4", "0.3"),
                         ("other/file", "unknown")):
        root = tmp_path / f"dir-{layout}"
        (root / name).parent.mkdir(parents=True)
        (root / name).write_bytes(b"x")
        assert replica.DirStore(root).contents().layout == layout
    assert replica.DirStore(tmp_path / "nothing-here").contents().layout == "empty"


APP_COUNTS = textwrap.dedent("""
    import os, sqlite3
    con = sqlite3.connect(os.environ["SIDECAR_DB_PATH"])
    print("rows", con.execute("SELECT count(*) FROM rows").fetchone()[0], flush=True)
""")


def test_replication_after_a_03_restore_keeps_the_rows(tmp_path: Path, s3, bucket,
                                                       litestream03) -> None:
    """After restoring a 0.3 backup, sidecar replicates in 0.5's layout beside it: a second
    empty volume restores the same rows, now from the 0.5 layout."""
    values = [f"r-{i}" for i in range(30)]
    seed_03_in_s3(litestream03, s3, bucket, values, tmp_path)
    env = base_env(tmp_path, **s3_env(s3, bucket))
    app = write_app(tmp_path, APP_COUNTS, "count.py")
    first = run_sidecar(["run", "--", *app], env, tmp_path, timeout=120)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "rows 30" in first.stdout
    db = Path(env["SIDECAR_DB_PATH"])
    lose_db(db)
    second = run_sidecar(["run", "--", *app], env, tmp_path, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    decided = next(json.loads(ln) for ln in second.stderr.splitlines()
                   if '"restore decided"' in ln)
    assert decided["layout"] == "0.5"
    assert rows(db) == values


def test_restore_output_and_dry_run_read_a_litestream_03_only_prefix(tmp_path: Path, s3, bucket,
                                                                    litestream03) -> None:
    """Litestream 0.5's `-dry-run` lists 0.5 files only and said "no matching backup files" for
    a 0.3 prefix, so `sidecar restore` refused a backup that its start-up restores. The plan
    now says it is a 0.3 backup, `--output` restores every row (latest, or at a timestamp),
    and a TXID target is refused by name (0.3 has none)."""
    values = [f"old-{i}" for i in range(120)]
    seed_03_in_s3(litestream03, s3, bucket, values, tmp_path)
    env = base_env(tmp_path, **s3_env(s3, bucket))
    dry = run_sidecar(["restore", "--dry-run"], env, tmp_path, timeout=90)
    assert dry.returncode == 0, dry.stdout + dry.stderr[-2000:]
    assert "Litestream 0.3 backup" in dry.stdout
    out = tmp_path / "copy.db"
    res = run_sidecar(["restore", "--output", str(out)], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert rows(out) == values
    later = tmp_path / "later.db"
    res = run_sidecar(["restore", "--output", str(later), "--timestamp", "2099-01-01T00:00:00Z"],
                      env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert rows(later) == values
    by_txid = run_sidecar(["restore", "--dry-run", "--txid", "0000000000000002"], env, tmp_path,
                          timeout=90)
    assert by_txid.returncode == 1, by_txid.stdout + by_txid.stderr[-2000:]
    assert "Litestream 0.3 (generations/) backup only, which has no" in by_txid.stderr
    assert "Traceback" not in by_txid.stderr
