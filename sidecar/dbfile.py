"""The SQLite file itself: what state it is in, is it sound, and consistent copies of it."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class FileState:
    kind: str  # missing | ghost | present | corrupt
    detail: str
    size: int = 0


def wal_path(db: Path) -> Path:
    return db.with_name(db.name + "-wal")


def shm_path(db: Path) -> Path:
    return db.with_name(db.name + "-shm")


def uri(path: Path, **params: str) -> str:
    """A SQLite `file:` URI for `path`, percent-encoded: in a URI SQLite reads `?` and `#` as
    delimiters and `%XX` as an escape, so an unencoded name with them opens another file."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{quote(str(path.absolute()), safe='/')}" + (f"?{query}" if query else "")


def connect_ro(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    return sqlite3.connect(uri(path, mode="ro"), uri=True, timeout=timeout)


def quick_check(path: Path, full: bool = False) -> str:
    """'ok', or SQLite's first complaint."""
    try:
        con = connect_ro(path)
        try:
            pragma = "integrity_check" if full else "quick_check"
            rows = con.execute(f"PRAGMA {pragma}").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    text = "; ".join(str(r[0]) for r in rows[:5])
    return "ok" if text == "ok" else text


def table_count(path: Path) -> int:
    con = connect_ro(path)
    try:
        return int(con.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0])
    finally:
        con.close()


def inspect(path: Path, check: bool = True) -> FileState:
    """missing, ghost (0 bytes, or no tables and no -wal), present, or corrupt."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return FileState("missing", "no database file")
    if size == 0:
        return FileState("ghost", "the database file is empty (0 bytes)", 0)
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    if head != MAGIC:
        return FileState("corrupt", "the file is not a SQLite database (bad header)", size)
    wal = wal_path(path)
    has_wal = wal.exists() and wal.stat().st_size > 0
    try:
        tables = table_count(path)
    except sqlite3.DatabaseError as exc:
        return FileState("corrupt", f"SQLite cannot read it: {exc}", size)
    if tables == 0 and not has_wal:
        return FileState("ghost", "the database has no tables", size)
    if check:
        result = quick_check(path)
        if result != "ok":
            return FileState("corrupt", f"quick_check failed: {result}", size)
    return FileState("present", f"{tables} tables, {size} bytes", size)


def settle(path: Path) -> None:
    """Fold any -wal into the file and drop the -wal/-shm that reading it left, so the file
    alone is the whole database and can be renamed on its own."""
    con = sqlite3.connect(path, timeout=10)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    wal = wal_path(path)
    if wal.exists() and wal.stat().st_size > 0:
        raise sqlite3.OperationalError(f"{wal} could not be checkpointed")
    wal.unlink(missing_ok=True)
    shm_path(path).unlink(missing_ok=True)
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(src: Path, dst: Path) -> int:
    """A consistent copy of a live database (SQLite online backup API), fsynced, written to a
    temporary name first so a crash never leaves a partial copy under `dst`. Returns its size."""
    tmp = dst.with_name(f".{dst.name}.partial")
    tmp.unlink(missing_ok=True)
    source = sqlite3.connect(uri(src, mode="ro"), uri=True, timeout=30)
    try:
        target = sqlite3.connect(tmp)
        try:
            source.backup(target, pages=1024)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    finally:
        source.close()
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)
    fsync_dir(dst.parent)
    return dst.stat().st_size
