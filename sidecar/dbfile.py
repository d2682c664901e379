"""The SQLite file itself: what state it is in, is it sound, and consistent copies of it."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
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


def quick_check(path: Path, full: bool = False,
                on_tick: Callable[[], object] | None = None, mapped: bool = False,
                immutable: bool = False, abort: Callable[[], bool] | None = None) -> str:
    """'ok', or SQLite's first complaint. `on_tick` is called now and then while it runs (a
    liveness beat: a full check of a large file takes minutes).

    `mapped` reads the file through mmap instead of read() into SQLite's page cache: half the
    time of a quick_check on a file the kernel still caches (0.14 against 0.28 s on 315 MB).
    Only for a file nothing else uses (a restore's own temporary file): an I/O error on a mapped
    page is a SIGBUS, not an error SQLite can report.
    `immutable` opens it as a file no one changes (no locks, no -wal/-shm read or created): for
    a file that is a whole database and that no SQLite connection writes. `abort` is asked now
    and then; true stops the check, which then answers "interrupted" (not "ok")."""
    try:
        con = sqlite3.connect(uri(path, mode="ro", **({"immutable": "1"} if immutable else {})),
                              uri=True, timeout=5.0)
        if mapped:
            con.execute(f"PRAGMA mmap_size={max(path.stat().st_size, 1)}")
        if on_tick is not None or abort is not None:
            beat = on_tick

            def handler() -> int:
                if beat is not None:
                    beat()
                return 1 if abort is not None and abort() else 0

            con.set_progress_handler(handler, 100_000)
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
    checkpoint(path)
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


def backup(src: Path, dst: Path, on_tick: Callable[[], object] | None = None) -> int:
    """A consistent copy of a live database (SQLite online backup API), fsynced, written to a
    temporary name first so a crash never leaves a partial copy under `dst`. Returns its size.
    `on_tick` is called after each step of the copy (a liveness beat)."""
    tmp = dst.with_name(f".{dst.name}.partial")
    tmp.unlink(missing_ok=True)
    # Created 0600 before SQLite opens it: a copy of the data is readable by its owner only.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    source = sqlite3.connect(uri(src, mode="ro"), uri=True, timeout=30)
    try:
        target = sqlite3.connect(tmp)
        try:
            source.backup(target, pages=1024,
                          progress=(lambda *_: on_tick()) if on_tick is not None else None)
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


# ------------------------------------------------------------------ checkpoints


class CheckpointBusy(sqlite3.OperationalError):
    """Another connection kept the checkpoint from finishing: the database is in use."""


def checkpoint(path: Path, attempts: int = 3, timeout: float = 2.0) -> tuple[int, int]:
    """PRAGMA wal_checkpoint(TRUNCATE), acting on its answer (busy, log, checkpointed).

    busy=1 means another connection holds a read or write lock, so part of the WAL is still
    not in the file: moving the file (or its -wal) now would split the database. It is retried
    a few times (each waits up to `timeout` for the other connection), then CheckpointBusy
    is raised. Returns (log, checkpointed) frames; (-1, -1) when not in WAL mode."""
    busy, frames, done = 1, -1, -1
    for _ in range(attempts):
        con = sqlite3.connect(path, timeout=timeout)
        try:
            row = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            con.close()
        busy, frames, done = (int(x) for x in row) if row else (0, -1, -1)
        if not busy:
            return frames, done
    raise CheckpointBusy(f"cannot checkpoint {path}: another process is using the database "
                         f"(the checkpoint stayed busy, {done} of {frames} WAL frames copied)")


# ------------------------------------------------------------------ names of copies

_STAMP = r"\d{8}T\d{12}Z"


def stamp(now: float | None = None) -> str:
    """The UTC time stamp in the names of copies; sorts like the time."""
    when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return when.strftime("%Y%m%dT%H%M%S%fZ")


def copy_base(db: Any, databases: Sequence[Any]) -> str:
    """The name copies of `db` start with: its file name, plus a tag of its directory when
    another database of the same config has the same file name (/a/app.db and /b/app.db), so
    their copies (made with the same stamp) never overwrite or rotate away each other. A
    database not among `databases` (a member of a directory entry: its file names repeat
    across subdirectories and may match a configured database's) is always tagged."""
    if db in databases and sum(1 for d in databases if d.path.name == db.path.name) <= 1:
        return str(db.path.name)
    tag = hashlib.sha256(str(db.path.parent).encode()).hexdigest()[:8]
    return f"{db.path.name}.{tag}"


def stamped_copies(directory: Path, base: str) -> list[Path]:
    """The copies `<base>.<stamp>` in `directory`, oldest first (not their -wal/-shm)."""
    pattern = re.compile(re.escape(base) + r"\." + _STAMP)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if pattern.fullmatch(p.name)),
                  key=lambda p: p.name)


def paired(db_copy: Path) -> tuple[Path, Path, Path]:
    """A moved-aside database and where its -wal and -shm go: SQLite finds a WAL at
    `<file>-wal`, so `app.db.STAMP` pairs with `app.db.STAMP-wal`, never `app.db-wal.STAMP`."""
    return db_copy, wal_path(db_copy), shm_path(db_copy)
