"""Any file name: a DB whose name has spaces or non-ASCII characters is replicated, restored and
copied exactly; a name Litestream cannot open exactly (`?`, `#`, `%XX`) is refused at config
time (exit 2) with the reason, never a ready sidecar that backs up another file."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from sidecar import config, dbfile
from sidecar.startup import preflight
from testkit import base_env, run_sidecar, s3_env
from testkit.db import query

pytestmark = pytest.mark.slow

SEED = textwrap.dedent("""
    import os, sqlite3
    db = sqlite3.connect(os.environ["SIDECAR_DB_PATH"], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(int(os.environ["N_ROWS"])):
        db.execute("INSERT INTO rows(v) VALUES (?)", (f"{os.environ['TAG']}-{i}",))
""")

COUNT = textwrap.dedent("""
    import os, sqlite3
    con = sqlite3.connect(os.environ["SIDECAR_DB_PATH"])
    print("rows", con.execute("SELECT count(*) FROM rows").fetchone()[0], flush=True)
""")


def rows_of(path: Path) -> list[str]:
    """The rows of exactly this file (a percent-encoded read-only URI)."""
    return [r[0] for r in query(path, "SELECT v FROM rows ORDER BY rowid")]


def expected_files(name: str) -> set[str]:
    """What may sit beside the DB: the file, its -wal/-shm, Litestream's own metadata
    directory, sidecar's state dir and the DB's lock. Anything else is a file opened by
    mistake."""
    return {name, f"{name}-wal", f"{name}-shm", f".{name}-litestream", ".sidecar",
            preflight.db_lock_path(Path(name)).name}


@pytest.mark.parametrize("name", ["données é 日本.db", "q'uote;semi&amp=[1] $x.db"])
def test_unusual_names_are_replicated_and_restored_exactly(tmp_path: Path, s3, bucket,
                                                           name: str) -> None:
    """Spaces, non-ASCII and shell/glob characters: the very file is replicated (a side restore
    into an equally odd --output path has its rows), restored on start after it is lost, and
    nothing else appears on the volume."""
    data = tmp_path / "data"
    db = data / name
    env = base_env(tmp_path, **s3_env(s3, bucket, name), SIDECAR_DB_PATH=str(db),
                   N_ROWS="40", TAG="a")
    seed = tmp_path / "seed.py"
    seed.write_text(SEED)
    res = run_sidecar(["run", "--", sys.executable, str(seed)], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    values = [f"a-{i}" for i in range(40)]
    assert rows_of(db) == values
    assert {p.name for p in data.iterdir()} <= expected_files(name)
    keys = s3.keys(bucket, f"{name}/")
    assert keys, "nothing was uploaded under the DB's own prefix"

    out_dir = tmp_path / "side out é"
    out_dir.mkdir()
    out = out_dir / "side restore.db"
    res = run_sidecar(["restore", "--output", str(out)], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert rows_of(out) == values
    assert sorted(p.name for p in out_dir.iterdir()) == ["side restore.db"]

    for p in (db, dbfile.wal_path(db), dbfile.shm_path(db)):
        p.unlink(missing_ok=True)
    count = tmp_path / "count.py"
    count.write_text(COUNT)
    res = run_sidecar(["run", "--", sys.executable, str(count)], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "rows 40" in res.stdout
    assert '"outcome": "restored"' in res.stderr
    assert rows_of(db) == values
    assert {p.name for p in data.iterdir()} <= expected_files(name)


@pytest.mark.parametrize("name,char", [("my#app?.db", "#"), ("a b%20c.db", "%20"),
                                       ("what?.db", "?")])
def test_names_litestream_cannot_open_exactly_are_refused(tmp_path: Path, s3, bucket,
                                                           name: str, char: str) -> None:
    """`?`, `#` and `%XX` in the path: exit 2 naming the character and why; nothing created,
    nothing uploaded."""
    db = tmp_path / "data" / name
    # In DATABASE_URL a `?` starts the query for Prisma too (`file:what?.db` is the file
    # `what`), so that spelling names another, ordinary file; the plain path is refused.
    for how in ("SIDECAR_DB_PATH",) + (("DATABASE_URL",) if char != "?" else ()):
        env = base_env(tmp_path, **s3_env(s3, bucket), SIDECAR_DB_PATH=str(db))
        if how == "DATABASE_URL":
            del env["SIDECAR_DB_PATH"]
            env["DATABASE_URL"] = f"file:{db}"
        res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=60)
        assert res.returncode == 2, res.stderr[-2000:]
        assert f"{how}: must not contain '{char}'" in res.stderr
        assert "SQLite URI" in res.stderr
        assert list((tmp_path / "data").iterdir()) == []
    assert not s3.keys(bucket)


def test_litestream_config_path_is_checked_too(tmp_path: Path) -> None:
    """A project litestream.yml naming such a path is refused the same way, by its entry."""
    (tmp_path / "litestream.yml").write_text(
        f"dbs:\n  - path: {tmp_path}/x%41.db\n    replica:\n      type: file\n"
        f"      path: {tmp_path}/rep\n")
    env = base_env(tmp_path)
    del env["SIDECAR_DB_PATH"]
    with pytest.raises(config.ConfigError) as err:
        config.load(env, ["true"], cwd=tmp_path)
    assert "LITESTREAM_CONFIG dbs[0].path: must not contain '%41'" in str(err.value)


def test_database_url_is_read_literally_like_prisma(tmp_path: Path) -> None:
    """Prisma does not percent-decode a `file:` URL; neither does sidecar, so a `%` that is no
    escape stays in the name both open, and the query is dropped."""
    assert config.database_path_from_url("file:/data/50%.db?connection_limit=1") == \
        "/data/50%.db"
    assert config.database_path_from_url("file:/data/a b é.db") == "/data/a b é.db"


def test_sqlite_uri_is_percent_encoded(tmp_path: Path) -> None:
    """dbfile opens exactly the named file, whatever characters its name has."""
    for name in ("my#app?.db", "a b%20c.db", "é.db"):
        p = tmp_path / name
        con = sqlite3.connect(p)
        con.execute("CREATE TABLE rows(v)")
        con.execute("INSERT INTO rows VALUES ('x')")
        con.commit()
        con.close()
        assert dbfile.quick_check(p) == "ok"
        assert dbfile.inspect(p).kind == "present"
        copy = tmp_path / f"copy of {name}"
        dbfile.backup(p, copy)
        assert rows_of(copy) == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [n for n in ("my#app?.db", "a b%20c.db", "é.db")] +
        [f"copy of {n}" for n in ("my#app?.db", "a b%20c.db", "é.db")])
