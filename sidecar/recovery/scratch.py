"""Scratch space for verification and snapshots, so neither can fill the database's volume.

A verification restores a whole copy of the database. It goes into a temporary directory off
the volume when there is one (the system temp dir when it is another filesystem), only after
checking that the copy fits; a verification killed half-way leaves a directory whose name
carries the database's tag and the verifying process's pid, so the next one removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from sidecar import dbfile, log
from sidecar.bucket import replica
from sidecar.config import Config, Database
from sidecar.errors import OperatorError

VERIFY_MARK = "sidecar-verify-"
_LEGACY_VERIFY = "verify-"  # what earlier versions left in the state dir
_LEFTOVER = re.compile(rf"^{VERIFY_MARK}([0-9a-f]{{10}})-(\d+)-")
# Never leave less than this free on the database's own volume (the app needs room to write).
VOLUME_RESERVE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Place:
    path: Path
    free: int
    on_volume: bool


def tag(db: Database) -> str:
    return hashlib.sha256(str(db.path).encode()).hexdigest()[:10]


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def copy_estimate(db: Database, timeout: float = 10.0) -> int:
    """Bytes a restored copy needs: the larger of the local DB (+ -wal) and the newest snapshot
    in the bucket, with a margin for Litestream's temporary file and SQLite's -shm."""
    local = 0
    for p in (db.path, dbfile.wal_path(db.path)):
        with contextlib.suppress(OSError):
            local += p.stat().st_size
    remote = 0
    if db.replica is not None:
        with contextlib.suppress(replica.ReplicaUnreachable, OSError):
            snaps = replica.open_store(db.replica, timeout).list_ltx(9)
            if snaps:
                remote = max(snaps, key=lambda o: o.max_txid).size
    return int(max(local, remote) * 1.25) + 1024 * 1024


def places(cfg: Config, db: Database) -> list[Place]:
    """Where a copy could go, off the database's volume first."""
    try:
        volume_dev = db.path.parent.stat().st_dev
    except OSError:
        volume_dev = None
    out = []
    for base in (Path(tempfile.gettempdir()), cfg.state_dir):
        try:
            if not os.access(base, os.W_OK | os.X_OK) or not base.is_dir():
                continue
            on_volume = base.stat().st_dev == volume_dev
            out.append(Place(base, free_bytes(base), on_volume))
        except OSError:
            continue
    return sorted(out, key=lambda p: p.on_volume)


# Bytes promised to the copies of verifications in flight, by the place they were given: the
# free space a place reports does not yet count what those copies will still write, so
# verifications run side by side (every tenant) would otherwise each count the same room.
_promised: dict[Path, int] = {}
_given: dict[Path, tuple[Path, int]] = {}
_promise_lock = threading.Lock()


def verify_dir(cfg: Config, db: Database, need: int) -> Path:
    """A fresh private directory for a restored copy of `db`, where `need` bytes fit beside the
    copies already promised there. Raises OperatorError (and writes nothing) when no place has
    room. Give the directory back with `release` once it is removed."""
    candidates = places(cfg, db)
    with _promise_lock:
        for place in candidates:
            room = (place.free - (VOLUME_RESERVE if place.on_volume else 0)
                    - _promised.get(place.path, 0))
            if room >= need:
                d = Path(tempfile.mkdtemp(prefix=f"{VERIFY_MARK}{tag(db)}-{os.getpid()}-",
                                          dir=place.path))
                _promised[place.path] = _promised.get(place.path, 0) + need
                _given[d] = (place.path, need)
                return d
    where = "; ".join(f"{p.path} has {mb(p.free)} free"
                      + (f" (the database's volume: {mb(VOLUME_RESERVE)} stay reserved)"
                         if p.on_volume else "") for p in candidates) or "no writable temp dir"
    raise OperatorError(
        f"cannot verify {db.name}: not enough free space for the restored copy, which needs "
        f"about {mb(need)}; {where}",
        hint="free some space, or point TMPDIR at a filesystem with room (best off the "
             "database's volume); nothing was written")


def release(d: Path) -> None:
    """The space promised with `d` (from verify_dir) is free again."""
    with _promise_lock:
        place, need = _given.pop(d, (None, 0))
        if place is not None:
            _promised[place] -= need
            if _promised[place] <= 0:
                del _promised[place]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_verify_leftovers(cfg: Config, dbs: list[Database] | None = None) -> list[Path]:
    """Remove what killed verifications of these databases (`dbs`, default the configured
    ones) left behind: directories of a process that is gone (or of this process, called
    before it starts verifying)."""
    tags = {tag(db) for db in (cfg.databases if dbs is None else [*cfg.databases, *dbs])}
    removed = []
    for base in {Path(tempfile.gettempdir()), cfg.state_dir}:
        try:
            entries = list(base.iterdir())
        except OSError:
            continue
        for p in entries:
            m = _LEFTOVER.match(p.name)
            if m is not None:
                pid = int(m.group(2))
                if m.group(1) not in tags or (pid != os.getpid() and _alive(pid)):
                    continue
            elif not (base == cfg.state_dir and p.name.startswith(_LEGACY_VERIFY)):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    if removed:
        log.get("operator").info("removed verification leftovers",
                                 paths=[str(p) for p in removed])
    return removed


def check_room(directory: Path, need: int, what: str) -> None:
    """Refuse (OperatorError) when `need` bytes would not fit in `directory` with the
    volume's reserve left over."""
    free = free_bytes(directory)
    if free - VOLUME_RESERVE < need:
        raise OperatorError(
            f"cannot {what}: not enough free space in {directory}: about {mb(need)} needed, "
            f"{mb(free)} free ({mb(VOLUME_RESERVE)} stay reserved for the database)",
            hint="free some space (old snapshots in the state dir can go), then try again")


def rotate(directory: Path, name: str, keep: int) -> list[Path]:
    """Keep the newest `keep` files named `<name>.<UTC stamp>` in `directory`."""
    copies = dbfile.stamped_copies(directory, name)
    gone = copies[:-keep] if keep > 0 else copies
    for old in gone:
        old.unlink(missing_ok=True)
    return gone
