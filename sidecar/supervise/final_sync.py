"""The final sync at shutdown: after the app stopped, ask Litestream (control socket, `POST
/sync` with wait) to push every database that may hold writes the bucket lacks, within one
budget (the Litestream stop timeout, at most shutdown.FINAL_SYNC_MAX).

Which databases: every configured one that exists, and each database of a directory entry
(a tenant) whose file or -wal changed since this sidecar started, newest change first, so
the busiest tenants are pushed before the budget runs out; a tenant nobody wrote to during
the run has nothing to push (what an earlier run left, Litestream pushed when it opened it).
Tenants are synced `parallelism` at a time. A database that cannot be synced in time is
logged by name; Litestream's own shutdown sync (SIGTERM) still follows for all of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sidecar.bucket import tenants
from sidecar.config import Config, Database
from sidecar.dbfile import wal_path
from sidecar.litestream.control import Control, ControlError

SHOWN = 20  # tenants named in one log line


def changed_at(db: Database) -> float:
    """The newest mtime of the database file and its -wal (0 when neither exists)."""
    newest = 0.0
    for p in (db.path, wal_path(db.path)):
        with contextlib.suppress(OSError):
            newest = max(newest, os.stat(p).st_mtime)
    return newest


def tenants_written_since(cfg: Config, since: float) -> list[Database]:
    """Every directory entry's database on the volume written at or after `since` (wall
    clock), newest first."""
    found: list[tuple[float, Database]] = []
    for entry in cfg.directories:
        for rel in tenants.local_members(entry):
            m = tenants.member(entry, rel)
            t = changed_at(m)
            if t >= since:
                found.append((t, m))
    found.sort(key=lambda x: -x[0])
    return [m for _, m in found]


SLACK = 1.0  # seconds the socket waits past Litestream's own wait for its answer
MIN_LEFT = 1.1  # Litestream's shortest wait (1 s) and a moment for its answer


def _sync(control: Control, db: Database, left: float) -> dict[str, Any]:
    """One sync that ends within `left` seconds (at least MIN_LEFT): Litestream's wait is in
    whole seconds, and the socket waits up to SLACK past it for the answer, both inside what
    is left."""
    wait = max(1, int(left - SLACK))
    return control.sync(db.path, wait=True, timeout=wait, slack=min(SLACK, left - wait))


def run(cfg: Config, control: Control, budget: float, since: float, log: Any,
        clock: Callable[[], float], parallelism: int = 8) -> list[str]:
    """Sync; returns the databases that could not be synced (their paths)."""
    t0 = clock()
    end = t0 + budget
    failed: list[str] = []
    for db in cfg.databases:
        if not db.path.exists():
            continue  # nothing was ever written: nothing to push
        if end - clock() < MIN_LEFT:
            log.warning("final sync failed", db=db.name,
                        error="no time left in the final sync's budget")
            failed.append(str(db.path))
            continue
        try:
            res = _sync(control, db, end - clock())
            log.info("final sync", db=db.name, txid=res.get("txid"),
                     replicated_txid=res.get("replicated_txid"),
                     seconds=round(clock() - t0, 3))
        except ControlError as exc:
            log.warning("final sync failed", db=db.name, error=str(exc))
            failed.append(str(db.path))
    members = tenants_written_since(cfg, since)
    if not members:
        return failed

    def one(db: Database) -> str | None:
        left = end - clock()
        if left < MIN_LEFT:
            return "no time left in the final sync's budget"
        try:
            _sync(control, db, left)
            return None
        except ControlError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max(1, min(parallelism, len(members))),
                            thread_name_prefix="final-sync") as pool:
        outcomes = list(pool.map(one, members))
    missed = [(m, why) for m, why in zip(members, outcomes, strict=True) if why is not None]
    log.info("final sync of directory databases", written_during_run=len(members),
             synced=len(members) - len(missed), seconds=round(clock() - t0, 3))
    if missed:
        log.warning("final sync missed directory databases: Litestream's own shutdown sync is "
                    "their last chance", count=len(missed),
                    databases=[str(m.path) for m, _ in missed[:SHOWN]],
                    first_error=missed[0][1])
        failed += [str(m.path) for m, _ in missed]
    return failed
