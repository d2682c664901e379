"""The process's one scheduler (apscheduler, in a background thread) for periodic work.

Jobs run in the scheduler's worker threads. Like every other thread here they never touch a
process: a job that needs the app or Litestream stopped posts an event to the supervisor.

    jobs.add_interval(check, seconds=10, name="lag check")
    jobs.add_cron(verify, "17 3 * * 0", name="backup verification")  # Sundays
    stop = jobs.start()   # idempotent; `stop()` shuts the scheduler down

A job's exception is logged with the job's name and does not stop later runs. A run that is
still going when the next one is due is skipped (max_instances=1), and runs missed while the
process was busy collapse into one (coalesce), so a slow bucket never piles up checks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sidecar import cron, log

if TYPE_CHECKING:  # apscheduler is imported on first use: it is not needed to start the app
    from apscheduler.schedulers.background import BackgroundScheduler

_lock = threading.Lock()
_scheduler: BackgroundScheduler | None = None


def scheduler() -> BackgroundScheduler:
    """The process's scheduler, created (not started) on first use."""
    global _scheduler
    from apscheduler.schedulers.background import BackgroundScheduler

    with _lock:
        if _scheduler is None:
            _scheduler = BackgroundScheduler(
                timezone=UTC,
                job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
                # Only sidecar's own short jobs run here; two workers keep a slow verification
                # from delaying the lag check.
                executors={"default": {"type": "threadpool", "max_workers": 2}},
            )
        return _scheduler


def _guarded(func: Callable[[], Any], name: str) -> Callable[[], None]:
    def run() -> None:
        try:
            func()
        # A job's bug must not be swallowed by apscheduler's stdlib logging: report it in
        # sidecar's log, and keep the schedule going.
        except Exception as exc:
            log.get("jobs").error("job failed", job=name, error=str(exc), exc_info=True)

    return run


def add_interval(func: Callable[[], Any], seconds: float, name: str,
                 run_now: bool = True) -> Any:
    """Run `func` every `seconds`; the first run is right away unless `run_now` is False."""
    extra: dict[str, Any] = {}
    if run_now:  # apscheduler's default is one interval from now; None would pause the job
        extra["next_run_time"] = datetime.now(UTC)
    return scheduler().add_job(_guarded(func, name), "interval", seconds=seconds, id=name,
                               name=name, replace_existing=True, **extra)


def add_cron(func: Callable[[], Any], crontab: str, name: str) -> Any:
    """Run `func` on a cron line (UTC) as crontab(5) reads it (Sunday is 0 and 7), e.g.
    SIDECAR_VERIFY_SCHEDULE; sidecar/cron.py turns it into apscheduler's explicit fields."""
    return scheduler().add_job(_guarded(func, name), cron.parse(crontab).trigger(), id=name,
                               name=name, replace_existing=True)


def start() -> Callable[[], None]:
    """Start the scheduler (once) and return the callable that stops it."""
    sched = scheduler()
    with _lock:
        if not sched.running:
            sched.start()
    return stop


def stop() -> None:
    """Stop the scheduler without waiting for a running job (they are bounded and daemonic)."""
    global _scheduler
    with _lock:
        sched, _scheduler = _scheduler, None
    if sched is not None and sched.running:
        sched.shutdown(wait=False)
