"""Every database's lag for `sidecar run`: the checks on the scheduler, the file watching,
the heartbeat after a healthy check."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from sidecar import log
from sidecar.bucket.replica import Store, open_store
from sidecar.config import Config
from sidecar.lag import heartbeat
from sidecar.lag.db_lag import DbLag
from sidecar.lag.dir_lag import DirLag
from sidecar.lag.model import LagResult
from sidecar.lag.watcher import Watcher
from sidecar.litestream.control import Control


class LagMonitor:
    """Every database's lag: file watching, scheduled checks, the heartbeat."""

    def __init__(self, cfg: Config, control: Control | None,
                 litestream_running: Callable[[], bool] = lambda: True,
                 stores: dict[str, Store] | None = None):
        self.cfg = cfg
        self.litestream_running = litestream_running
        self.dbs: list[DbLag] = []
        timeout = min(5.0, max(1.0, cfg.lag_check_interval))
        for db in cfg.databases:
            store = (stores or {}).get(str(db.path))
            opener = None
            if store is None and db.replica is not None:
                opener = functools.partial(open_store, db.replica, timeout=timeout)
            self.dbs.append(DbLag(db, store, control, opener=opener,
                                  window_every=6 * cfg.lag_check_interval))
        from sidecar.config.pitr import configured

        promised = configured(cfg)["window_seconds"]
        for d in self.dbs:
            d.window_promised = promised
        self.dirs = [DirLag(e, control, timeout, cfg.db_metrics_limit) for e in cfg.directories]
        self.watcher: Watcher | None = None
        self._schedule: Callable[[], Any] | None = None
        self._log = log.get("lag")

    # -- results
    def results(self) -> dict[str, LagResult]:
        return {d.label: d.result for d in [*self.dbs, *self.dirs]}

    def healthy(self) -> bool:
        """Every bucket reachable and every lag under SIDECAR_MAX_LAG_SECONDS."""
        return all(r.measured and r.reachable and (r.lag_seconds or 0) < self.cfg.max_lag
                   for r in self.results().values())

    # -- the scheduled job
    def check_all(self) -> None:
        for d in self.dbs:
            d.check()
        for e in self.dirs:
            e.check()
        if self.cfg.heartbeat_url and self.healthy() and self.litestream_running():
            heartbeat.beat(self.cfg.heartbeat_url)

    # -- file watching
    def watch(self) -> None:
        """Start watching the databases' directories (once; later calls do nothing)."""
        if self.watcher is not None:
            return
        self.watcher = Watcher(self.dbs, self.dirs)
        self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    # -- the schedule
    def begin_checks(self) -> None:
        """Schedule the checks (the first one right away); once only, later calls do nothing."""
        schedule, self._schedule = self._schedule, None
        if schedule is not None:
            schedule()


def start(cfg: Config, control: Control | None, litestream_running: Callable[[], bool],
          scheduler_add: Callable[..., Any], defer_checks: bool = False) -> LagMonitor:
    """Create the monitor, start watching, and schedule its checks (first one right away),
    or with `defer_checks` only when `begin_checks()` is called: `sidecar run` does that once
    the start-up restore is over, because each check lists the bucket while Litestream
    downloads it (on a slow server that slowed a 1 GB restore from 56 s to 81 s), and there
    is no local position to compare with before Litestream runs. Until the first check the
    lag is unmeasured, so readiness says not ready.

    With `defer_checks` the file watching waits too, for `watch()`: a start-up restore writes
    its temporary file beside the database, in the watched directory, and the watcher's
    thread handled every one of those writes (2.3-3.1 s of CPU for 315 MB, which made
    Litestream's restore 1-3 s slower on two cores). There is nothing to time before the
    restore step is over: the app and Litestream start after it."""
    monitor = LagMonitor(cfg, control, litestream_running)
    if not defer_checks:
        monitor.watch()
    monitor._schedule = functools.partial(scheduler_add, monitor.check_all,
                                          cfg.lag_check_interval, "lag check")
    if not defer_checks:
        monitor.begin_checks()
    return monitor
