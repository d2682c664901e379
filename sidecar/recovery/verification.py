"""`sidecar verify` and the daemon's verification: restore the latest backup of a database
into a temporary directory, integrity_check it and compare its TXID with what Litestream says
it has uploaded.

Without --db every database is verified: each configured one and each database a directory
entry holds on the volume (its tenants), `cfg.restore_parallelism` at a time, one result per
database. A database whose replica cannot be read within SIDECAR_REPLICA_TIMEOUT is marked
`unreachable` (exit 4 when that is the only kind of failure, as at start); any other failure
is exit 1.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sidecar.api import Target
from sidecar.bucket import replica, tenants
from sidecar.config import Config, Database
from sidecar.errors import OperatorError, RestoreError
from sidecar.litestream.control import Control, ControlError
from sidecar.recovery import reachable, scratch
from sidecar.recovery.backups import Tools, pick_database, restore_file


def targets(cfg: Config, name: str | None) -> list[Database]:
    """The named database, or every one: the configured databases and every database the
    directory entries hold on the volume now."""
    if name:
        return [pick_database(cfg, name)]
    out = list(cfg.databases)
    for entry in cfg.directories:
        out += [tenants.member(entry, rel) for rel in tenants.local_members(entry)]
    return out


def verify_all(cfg: Config, dbs: list[Database], tools: Tools, control: Control | None = None,
               on_result: Callable[[Database, dict[str, Any]], None] | None = None
               ) -> list[dict[str, Any]]:
    """verify() for each database, `cfg.restore_parallelism` at a time; results in the
    order of `dbs`."""
    scratch.clean_verify_leftovers(cfg, dbs)  # once: then the workers' directories live

    def one(db: Database) -> dict[str, Any]:
        res = verify(cfg, db, tools, control)
        if on_result is not None:
            on_result(db, res)
        return res

    if len(dbs) <= 1:
        return [one(db) for db in dbs]
    with ThreadPoolExecutor(max_workers=max(1, min(cfg.restore_parallelism, len(dbs))),
                            thread_name_prefix="verify") as pool:
        return list(pool.map(one, dbs))


def exit_code(results: list[dict[str, Any]]) -> int:
    """0 all verified; 4 when every failure is a replica that could not be read; else 1."""
    failed = [r for r in results if not r.get("ok")]
    if not failed:
        return 0
    return 4 if all(r.get("unreachable") for r in failed) else 1


def verify(cfg: Config, db: Database, tools: Tools, control: Control | None = None
           ) -> dict[str, Any]:
    """Restore the latest backup into a temporary directory, integrity_check it, and compare its
    TXID with what Litestream says it has uploaded (asked for with a sync first, when running).
    verify_all() calls it, after cleaning what killed verifications left behind."""
    t0 = time.monotonic()
    out: dict[str, Any] = {"db": str(db.path), "replica": db.replica.url if db.replica else None,
                           "ok": False, "checked_at": replica.utc(time.time())}
    try:
        if db.replica is None:
            raise OperatorError(f"cannot verify {db.name}: no replica is configured")
        # First, so a dead bucket costs the replica timeout, not the sync's wait too.
        reachable.require(cfg, db, "verify")
        if control is not None:
            try:
                res = control.sync(db.path, wait=True, timeout=min(30.0, cfg.replica_timeout))
                out["local_txid"] = f"{int(res.get('txid') or 0):016x}"
                out["replicated_txid"] = f"{int(res.get('replicated_txid') or 0):016x}"
            except (ControlError, ValueError) as exc:
                out["sync_error"] = str(exc)
        # The copy goes off the database's volume when it can, and only where it fits.
        tmpdir = scratch.verify_dir(cfg, db, scratch.copy_estimate(db))
    except RestoreError as exc:  # the replica cannot be read (exit 4)
        out["error"] = str(exc)
        out["unreachable"] = True
        out["duration_seconds"] = round(time.monotonic() - t0, 3)
        return out
    except OperatorError as exc:
        out["error"] = str(exc)
        out["duration_seconds"] = round(time.monotonic() - t0, 3)
        return out
    out["scratch_dir"] = str(tmpdir.parent)
    try:
        summary = restore_file(tools, db, Target(), tmpdir / db.name, stall=cfg.replica_timeout)
        out["backup_txid"] = str(summary.get("txid") or "")
        out["integrity_check"] = "ok"
        out["size"] = (tmpdir / db.name).stat().st_size
        behind = (int(out["backup_txid"] or "0", 16) < int(out["replicated_txid"], 16)
                  if "replicated_txid" in out else False)
        if behind:
            out["error"] = (f"the restored backup stops at txid {out['backup_txid']} but "
                            f"Litestream reports {out['replicated_txid']} uploaded")
        else:
            out["ok"] = True
    except RestoreError as exc:
        out["error"] = str(exc)
        out["unreachable"] = True
    except OperatorError as exc:
        out["error"] = str(exc)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        scratch.release(tmpdir)
    out["duration_seconds"] = round(time.monotonic() - t0, 3)
    return out
