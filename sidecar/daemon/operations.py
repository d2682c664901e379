"""What an operator can ask a running sidecar: status, a live restore, verify, snapshot, resume.

The control socket and the HTTP admin routes both call these, so there is one implementation.
A live restore never runs in a request thread: the request validates the target (read-only, so
bad input never stops the app), then posts a `RestoreRequested` event; the supervisor loop runs the whole
fenced sequence (stop the app, stop replication of the DB, restore into a temporary file, check
it, move the old DB aside, rename the new one into place, resume replication, start the app).
The pieces that need no daemon (the plan, restore into a file, verify, snapshot, the undo's
copy) are in recovery/. What remains (~450 lines) is the live restore's one fenced sequence
with its hold, resume and the verify/snapshot requests: split further, the order of its steps
would no longer read top to bottom.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import cron, dbfile, log, metrics, nolinks
from sidecar.api import (
    Accepted,
    Failed,
    NotFound,
    NotNow,
    RestoreRequest,
    RestoreStatusRequest,
    Target,
    UndoRequest,
    VerifyRequest,
    parse_target,
)
from sidecar.bucket import replica
from sidecar.config import Config, Database
from sidecar.daemon import jobs, status
from sidecar.daemon.runtime import Runtime
from sidecar.errors import ExecError, MigrationError, OperatorError, RestoreError
from sidecar.litestream.control import ControlError
from sidecar.recovery import bookmarks, fetch, restore, scratch, verification
from sidecar.recovery.backups import Tools, metric_label, pick_database, plan, restore_file, snapshot
from sidecar.startup import migrate
from sidecar.supervise.events import ChildRestarted, RestoreRequested, RestoreResume, Resume

__all__ = ["NotNow", "Operations", "Target", "parse_target", "schedule_verify"]

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
    undo: dict[str, Any] | None = None  # the bookmark an undo puts back
    bookmark: dict[str, Any] | None = None  # what this restore replaced, for the next undo

    def describe(self) -> str:
        if self.undo is not None:
            return f"the database kept at {self.undo['kept']} (undo)"
        return self.target.describe()

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
                "bytes_written": written,
                # A restore from S3 fetches its files first (fetch.py): bytes and files of
                # the plan fetched so far, and the rate.
                "fetch": fetch.progress_of(self.tmp) if self.state == "restoring" else None,
                "requested_at": replica.utc(self.requested_at),
                "finished_at": replica.utc(self.finished_at) if self.finished_at else None,
                "undo_of": self.undo, "bookmark": self.bookmark}


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
        rt.supervisor.on(RestoreRequested, self._run_restore)
        rt.supervisor.on(RestoreResume, self._resume_after_restore)
        rt.supervisor.on(ChildRestarted, self._keep_held_db_stopped)

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
        return self._queue(RestoreJob(db=db, target=target, plan=p), req.wait, req.timeout)

    def request_undo(self, req: UndoRequest) -> dict[str, Any] | Accepted:
        """Put back the database the last live restore (or undo) of `req.db` replaced: the
        same fenced sequence, with the kept copy instead of the bucket as the source."""
        db = pick_database(self.cfg, req.db)
        mark = bookmarks.get(self.cfg.state_dir, db.path)
        if mark is None:
            raise NotFound(f"cannot undo: no live restore of {db.path} to undo (nothing was "
                           "changed)", hint="`sidecar restore --list` shows the moments the "
                           "backup can be restored to")
        if not Path(mark["kept"]).is_file():
            raise NotFound(f"cannot undo: the database the last restore of {db.path} replaced "
                           f"is no longer kept at {mark['kept']} (nothing was changed)",
                           hint="restore a point in time from the backup instead: "
                                "`sidecar restore --list`")
        state = self.state()
        if state not in ("running", "held"):
            raise NotNow(f"cannot undo now: the sidecar is {state}",
                         hint="wait for the current start, restore or shutdown to finish")
        return self._queue(RestoreJob(db=db, target=Target(), plan={"txid": mark.get("txid")},
                                      undo=mark), req.wait, req.timeout)

    def _queue(self, job: RestoreJob, wait: bool, timeout: float | None
               ) -> dict[str, Any] | Accepted:
        with self._lock:
            if self.busy():
                raise NotNow("cannot restore now: another restore is running "
                                    f"(id {self.last_job.id if self.last_job else '?'})")
            self.jobs[job.id] = job
            self.last_job = job
        self.log.info("undo requested" if job.undo else "restore requested",
                      db=str(job.db.path), target=job.describe(), txid=job.plan.get("txid"),
                      download_bytes=job.plan.get("download_bytes"), id=job.id)
        assert self.rt.supervisor is not None
        self.rt.supervisor.post(RestoreRequested(job))
        if wait:
            job.done.wait(timeout or 3600)
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

    def _run_restore(self, event: RestoreRequested) -> None:
        """The fenced live restore; runs in the supervisor loop's thread only."""
        job: RestoreJob = event.job
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
        replaced_txid: int | None = None
        tmp = restore.temp_path(db.path)
        job.tmp = tmp
        try:
            job.state = "stopping-app"
            if not held:
                sup.pause_app("live restore")
                self.log.info("app stopped for the restore", id=job.id,
                              was_running=app_was_running)
            if sup.litestream_running() and rt.control is not None:
                # The bookmark names the TXID of the database this replaces.
                with contextlib.suppress(ControlError, ValueError, TypeError):
                    replaced_txid = rt.control.txid(db.path)
                # (already stopped when held on this DB: Litestream answers already_stopped)
                job.state = "stopping-replication"
                rt.control.stop(db.path, timeout=max(5.0, cfg.litestream_stop_timeout))
                replication_stopped = True
                self.log.info("replication stopped for the restore", db=str(db.path))
            job.state = "restoring"
            restore.clean_leftovers(db.path)
            if job.undo is not None:
                bookmarks.copy_kept(Path(job.undo["kept"]), tmp)
                job.txid = job.undo.get("txid")
            else:
                summary = restore_file(tools, db, job.target, tmp, should_stop=sup.working)
                job.txid = summary.get("txid")
            if sup.stop_requested():
                raise OperatorError("cannot restore: the sidecar was told to stop")
            job.state = "swapping"
            job.moved_aside = restore.swap_in(tmp, db.path, restore.aside_dir(cfg, "pre-restore"),
                                              dbfile.copy_base(db, cfg.databases))
            swapped = True
            self._bookmark(job, replaced_txid)
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
            f"{job.describe()}" if swapped else (job.error or "failed"), duration,
            txid=job.txid, trigger="undo" if job.undo else "manual", aside=job.moved_aside)
        if swapped:
            metrics.RESTORE_DURATION.set(duration)
            self.log.info("restore completed", id=job.id, db=str(db.path), txid=job.txid,
                          target=job.describe(), moved_aside=job.moved_aside,
                          bookmark=job.bookmark,
                          migrated=migrated, duration_seconds=round(duration, 3))

    def _bookmark(self, job: RestoreJob, replaced_txid: int | None) -> None:
        """Record what this restore replaced, for `sidecar restore --undo`. A bookmark that
        cannot be written does not undo the restore: it is noted instead."""
        kept = [p for p in job.moved_aside if not p.endswith(("-wal", "-shm"))]
        if not kept:
            # There was no database to keep (an empty or missing file): nothing to undo to,
            # and an older restore's bookmark must not be what --undo reaches for now.
            with contextlib.suppress(OSError):
                bookmarks.put(self.cfg.state_dir, job.db.path, None)
            return
        several = len(self.cfg.databases) + len(self.cfg.directories) > 1
        mark = {"db": str(job.db.path), "kept": kept[0],
                "txid": f"{replaced_txid:016x}" if replaced_txid else None,
                "replaced_at": replica.utc(time.time()), "by": job.id,
                "kind": "undo" if job.undo else "restore",
                "undo": bookmarks.undo_command(job.db.path, several)}
        try:
            bookmarks.put(self.cfg.state_dir, job.db.path, mark)
        except OSError as exc:
            job.notes.append(f"no undo bookmark was written: {exc}; the replaced database is "
                             f"kept at {kept[0]}")
            self.log.error("undo bookmark not written", db=str(job.db.path), error=str(exc))
            return
        job.bookmark = mark

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
                f"{job.describe()}: {exc.message.removeprefix('cannot start: ')}",
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

    def _keep_held_db_stopped(self, event: ChildRestarted) -> None:
        """Litestream restarted while a restore is held: it opened every DB again, so stop the
        held one again (its migration needs the exclusive lock, and its un-migrated state is
        not to become the newest backup). Bounded; runs in the loop."""
        sup, job, control = self.rt.supervisor, self.held_restore, self.rt.control
        assert sup is not None
        if event.name != "litestream" or job is None or control is None:
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
        dbs = verification.targets(self.cfg, db_name)
        if not self._verify_lock.acquire(blocking=False):
            raise NotNow("cannot verify now: a verification is already running")
        single = {db.path for db in self.cfg.databases}

        def record(db: Database, res: dict[str, Any]) -> None:
            if res["ok"]:
                # Per-database series for the configured databases (and one named with
                # --db): a directory's thousand tenants would explode its cardinality.
                if db.path in single or db_name:
                    metrics.BACKUP_VERIFY_LAST_SUCCESS.labels(db=metric_label(db)).set(
                        time.time())
                self.log.info("backup verified", **res)
            else:
                self.log.error("backup verification failed", **res)

        try:
            tools = self._tools()
            sup = self.rt.supervisor
            running = sup is not None and sup.litestream_running()
            results = verification.verify_all(self.cfg, dbs, tools,
                                              self.rt.control if running else None, record)
            self.rt.verification = {"databases": results, "ok": all(r["ok"] for r in results)}
        finally:
            self._verify_lock.release()
        return {"ok": all(r["ok"] for r in results), "databases": results}

    def snapshot(self, db_name: str | None = None) -> dict[str, Any]:
        """Over HTTP the output goes into the state dir (a caller cannot pick server paths)."""
        db = pick_database(self.cfg, db_name)
        stamp = dbfile.stamp()
        out_dir = self.cfg.state_dir / "snapshots"
        nolinks.private_dir(out_dir, "the directory of the snapshots")
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
            self.rt.supervisor.post(RestoreResume())
        else:
            self.rt.supervisor.post(Resume())
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
    ops.log.info("backup verification scheduled", schedule=schedule,
                 next=cron.iso(cron.next_run(schedule)))
