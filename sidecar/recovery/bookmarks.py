"""Undo bookmarks: what the last live restore (or undo) of each database replaced.

Every live restore keeps the database it replaces in the state dir (restore.swap_in). The
bookmark names that copy with the replaced database's TXID and the time it was replaced, so
`sidecar restore --undo` can put it back through the same fenced steps, and the undo keeps
the database it replaces in turn: a second undo is a redo.

One small JSON file in the state dir (0600), written whole to a temporary name and renamed,
keyed by the database's path.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from sidecar import dbfile
from sidecar.errors import OperatorError, RestoreError

FILE = "restore-bookmarks.json"


def _path(state_dir: Path) -> Path:
    return state_dir / FILE


def _load(state_dir: Path, keep_bad: bool = False) -> dict[str, Any]:
    """The bookmarks; none when the file is missing. A file that is not a bookmarks document
    reads as none, and before a write (`keep_bad`) it is renamed aside, never overwritten:
    the other databases' bookmarks in it stay readable by hand."""
    path = _path(state_dir)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        doc = None
    if isinstance(doc, dict):
        return doc
    if keep_bad:
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(f"{FILE}.unreadable-{int(time.time())}"))
    return {}


def get(state_dir: Path, db: Path) -> dict[str, Any] | None:
    mark = _load(state_dir).get(str(db))
    return mark if isinstance(mark, dict) and mark.get("kept") else None


def put(state_dir: Path, db: Path, mark: dict[str, Any] | None) -> None:
    """Record `mark` as the database's bookmark; None forgets it (a swap that kept nothing
    to undo to: an undo must never reach back past it to an older restore's copy)."""
    doc = _load(state_dir, keep_bad=True)
    if mark is None:
        if str(db) not in doc:
            return
        del doc[str(db)]
    else:
        doc[str(db)] = mark
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = _path(state_dir).with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, _path(state_dir))
    dbfile.fsync_dir(state_dir)


def undo_command(db: Path, several: bool) -> str:
    return "sidecar restore --undo --yes" + (f" --db {db}" if several else "")


def copy_kept(kept: Path, tmp: Path) -> None:
    """A consistent copy of a kept database into `tmp` (the kept copy stays: a second undo
    needs it), in WAL mode as Litestream's restores are, integrity-checked."""
    if not kept.is_file():
        raise OperatorError(f"cannot undo: the database to put back is no longer kept at {kept}")
    dbfile.backup(kept, tmp)
    con = sqlite3.connect(tmp)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()
    result = dbfile.quick_check(tmp)
    if result != "ok":
        tmp.unlink(missing_ok=True)
        raise RestoreError(f"cannot undo: the kept database {kept} fails its integrity check: "
                           f"{result}")
