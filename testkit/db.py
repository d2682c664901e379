"""Small SQLite databases shaped as the test apps write them: table `rows(id, v, at)`."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

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


def rows(db: Path, where: str = "") -> list[str]:
    """Column v of table rows, in insertion order, read through sidecar's own read-only URI."""
    con = dbfile.connect_ro(Path(db))
    try:
        return [r[0] for r in con.execute(f"SELECT v FROM rows {where} ORDER BY id")]
    finally:
        con.close()
