"""Small SQLite databases shaped as the test apps write them: table `rows(id, v, at)`."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar import dbfile


def make_db(path: Path, values: list[str]) -> None:
    """A WAL-mode database at `path` whose table rows holds `values`, in order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
        for v in values:
            con.execute("INSERT INTO rows(v, at) VALUES (?, ?)", (v, time.time()))
    finally:
        con.close()


def lose_db(path: Path) -> None:
    """Remove the database at `path` with its -wal and -shm, as a lost volume would."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every row `sql` returns from exactly this file, read through sidecar's own read-only
    URI (percent-encoded, so any file name works)."""
    con = dbfile.connect_ro(Path(db))
    try:
        return list(con.execute(sql, params))
    finally:
        con.close()


def rows(db: Path, where: str = "") -> list[str]:
    """Column v of table rows, in insertion order."""
    return [r[0] for r in query(db, f"SELECT v FROM rows {where} ORDER BY id")]


def integrity(db: Path) -> str:
    """What SQLite's integrity check says of the file: "ok" when it is sound."""
    return str(query(db, "PRAGMA integrity_check")[0][0])


def plain_db(path: Path, table: str = "t", value: str = "old") -> bytes:
    """A rollback-journal database (no WAL, no Litestream tables) whose `table` holds the one
    row `value`; returns its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute(f"CREATE TABLE {table}(v TEXT)")
    con.execute(f"INSERT INTO {table} VALUES (?)", (value,))
    con.commit()
    con.close()
    return path.read_bytes()


def make_tenants(directory: Path, n: int, width: int = 4,
                 rows_of: Callable[[int], int] = lambda i: 3) -> dict[str, list[str]]:
    """`n` small WAL-mode databases `t<i>.db` (i zero-padded to `width`) in `directory`, each
    with table rows(id, v, at) holding `rows_of(i)` values `t<i>-<j>`, written in one
    transaction. Returns {file name: its values, in order}: what a restore must bring back."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[str]] = {}
    for i in range(n):
        name, values = f"t{i:0{width}d}.db", [f"t{i:0{width}d}-{j}" for j in range(rows_of(i))]
        con = sqlite3.connect(directory / name, isolation_level=None, timeout=10)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
            con.execute("BEGIN")
            con.executemany("INSERT INTO rows(v, at) VALUES (?, ?)",
                            [(v, time.time()) for v in values])
            con.execute("COMMIT")
        finally:
            con.close()
        out[name] = values
    return out


def write_tenant_config(path: Path, directory: Path, bucket: str, endpoint: str) -> Path:
    """A project litestream.yml with one `dir:` entry for `directory` (`*.db`, watched), each
    database under `tenants/<name>` in `bucket` on the S3 server at `endpoint`; Litestream's
    defaults otherwise. Returns `path`."""
    path.write_text(f"""dbs:
  - dir: {directory}
    pattern: "*.db"
    watch: true
    replica:
      type: s3
      bucket: {bucket}
      path: tenants
      endpoint: {endpoint}
      region: us-east-1
      force-path-style: true
""")
    return path
