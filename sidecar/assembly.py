"""`sidecar run`: config, preflight, restore, migrate, replication, app, supervise.

Each step logs one event when it finishes, with what it decided and how long it took.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar import __version__, log, metrics
from sidecar.bucket import tenants
from sidecar.config import Config, Database, DbDir, describe
from sidecar.daemon import http, jobs
from sidecar.daemon.control_client import socket_path
from sidecar.daemon.health import Probes
from sidecar.daemon.operations import Operations, schedule_verify
from sidecar.daemon.router import Router, routes
from sidecar.daemon.runtime import Runtime
from sidecar.errors import SidecarError
from sidecar.lag import monitor as lag_monitor
from sidecar.litestream.control import Control, short_socket_path
from sidecar.litestream.process import free_loopback_port
from sidecar.litestream.yaml_file import write_config
from sidecar.recovery import directory_restore, fetch, restore, scratch
from sidecar.startup import migrate, preflight
from sidecar.supervise import procs
from sidecar.supervise.supervisor import Supervisor

__all__ = ["Runtime", "run"]


def _step(logger: Any, event: str, t0: float, **kw: Any) -> None:
    logger.info(event, duration_seconds=round(time.monotonic() - t0, 3), **kw)


def warn_draining(cfg: Config) -> None:
    needed = cfg.app_stop_timeout + min(cfg.litestream_stop_timeout, 15.0)
    if cfg.draining_seconds is not None and cfg.draining_seconds < needed:
        log.get("run").warning(
            "draining time too short", RAILWAY_DEPLOYMENT_DRAINING_SECONDS=cfg.draining_seconds,
            needed_seconds=needed,
            consequence="the platform may SIGKILL before the app stops and the final sync ends",
            fix=f"set RAILWAY_DEPLOYMENT_DRAINING_SECONDS={int(needed) + 5}")


def prepare(cfg: Config, env: dict[str, str],
            version: preflight.VersionQuery | None = None) -> Runtime:
    """Preflight and the Litestream config; nothing is started yet."""
    logger = log.get("run")
    rt = Runtime(cfg=cfg, env=env)
    t0 = time.monotonic()
    rt.pre = preflight.run(cfg, version)
    rt.litestream_bin = rt.pre.litestream_bin
    rt.litestream_version = rt.pre.litestream_version
    # Everything we start holds the database locks too: if sidecar dies alone, whatever
    # escaped the death signal keeps a second sidecar off the database until it ends.
    procs.hold_in_children([f.fileno() for f in rt.pre.db_locks])
    _step(logger, "preflight passed", t0, checks={c.name: c.detail for c in rt.pre.checks})
    if cfg.local_default_replica:
        logger.warning("no replica configured: backing up to a local directory on the same disk",
                       replica=cfg.databases[0].replica.url if cfg.databases[0].replica else None,
                       fix="set SIDECAR_REPLICA_URL=s3://BUCKET/PREFIX for a real backup")
    warn_draining(cfg)
    metrics.watch(rt)  # the state families (lag, positions, children, sizes) read from rt
    for db in cfg.databases:
        metrics.init_db(str(db.path))  # the same `db` label value Litestream uses
    port = free_loopback_port()
    while port == cfg.http_port:  # never hand Litestream the port our own listener will take
        port = free_loopback_port()
    rt.metrics_url = f"http://127.0.0.1:{port}/metrics"
    rt.litestream_config = write_config(cfg, port)
    logger.info("litestream config written", path=str(rt.litestream_config),
                private=not rt.litestream_config.is_relative_to(cfg.state_dir))
    rt.control = Control(short_socket_path(cfg.state_dir, "litestream.sock"))
    return rt


def start(rt: Runtime) -> None:
    """Restore, migrations, replication, app: the part `hold` can retry."""
    started = False
    try:
        if not _restore_step(rt):
            return
        # The file watching and the lag checks start once the restore step is over (see
        # lag.start), and watching before anything writes: before migrations when there are
        # any, else while Litestream starts (it changes no TXID doing so), before the app.
        # In the main thread, in that wait: a thread of its own fought the main thread for
        # the GIL and made Litestream's and the app's spawns 20 ms slower each. The checks
        # and the scheduler begin after the app is up: nothing the app needs waits on them.
        watch = rt.lag.watch if rt.lag is not None else (lambda: None)
        if rt.cfg.migrate_command:
            watch()
        _replicate_and_launch(rt, watch)
        started = True
    finally:
        if rt.lag is not None:  # when a step failed or was stopped first (once only)
            rt.lag.watch()
        # The checks and the scheduler: once the app is up, or for a start held for an
        # operator (its /status shows the bucket); never for a process on its way out, where
        # a thread started now races the interpreter's exit (a traceback after exit 5).
        sup = rt.supervisor
        stopping = sup is not None and sup.stop_requested()
        held = rt.cfg.on_start_failure == "hold"
        if rt.begin_jobs is not None and (started or held) and not stopping:
            rt.begin_jobs()


def _restore_step(rt: Runtime) -> bool:
    """Every database's restore decision; False when a stop was requested meanwhile."""
    cfg, logger = rt.cfg, log.get("run")
    sup = rt.supervisor
    assert sup is not None and rt.litestream_bin and rt.litestream_config
    for db in cfg.databases:
        t0 = time.monotonic()
        try:
            res = restore.on_start(cfg, db, rt.litestream_bin, rt.litestream_config,
                                   should_stop=sup.stop_requested)
        except SidecarError as exc:
            metrics.RESTORES.labels(trigger="startup", outcome="failed").inc()
            rt.restores[db.name] = restore.RestoreResult(db.name, "failed", exc.message,
                                                         time.monotonic() - t0)
            raise
        rt.restores[db.name] = res
        metrics.RESTORES.labels(trigger="startup", outcome=res.outcome).inc()
        if res.outcome == "restored":
            metrics.RESTORE_DURATION.set(res.duration)
        log_fn = logger.warning if res.outcome == "fresh" else logger.info
        log_fn("restore decided", db=db.name, outcome=res.outcome, detail=res.detail,
               duration_seconds=round(res.duration, 3), txid=res.txid,
               **({"layout": res.layout} if res.layout else {}),
               **({"moved_aside": res.aside} if res.aside else {}))
        if sup.stop_requested():
            return False
    for entry in cfg.directories:
        t0 = time.monotonic()
        try:
            results = directory_restore.restore_on_start(cfg, entry, rt.litestream_bin,
                                                         should_stop=sup.stop_requested)
        except SidecarError as exc:
            metrics.RESTORES.labels(trigger="startup", outcome="failed").inc()
            rt.restores[str(entry.dir)] = restore.RestoreResult(
                str(entry.dir), "failed", exc.message, time.monotonic() - t0)
            raise
        for res in results:
            metrics.RESTORES.labels(trigger="startup", outcome=res.outcome).inc()
        restored = [r for r in results if r.outcome == "restored"]
        rt.restores[str(entry.dir)] = restore.RestoreResult(
            str(entry.dir), "restored" if restored else "skipped",
            f"{len(restored)} of {len(results)} databases restored from "
            f"{entry.replica.url}", time.monotonic() - t0)
        if restored:
            metrics.RESTORE_DURATION.set(time.monotonic() - t0)
        logger.info("restore decided", dir=str(entry.dir), outcome=(
            "restored" if restored else "skipped"), databases=len(results),
            restored=len(restored),
            names=sorted(r.db for r in restored)[:50],  # a bounded log line
            duration_seconds=round(time.monotonic() - t0, 3))
        if sup.stop_requested():
            return False
    return True


def _replicate_and_launch(rt: Runtime, while_litestream_starts: Callable[[], None]) -> None:
    """Migrations, Litestream, the app; `while_litestream_starts` runs once Litestream is
    spawned, before waiting for it to open the databases."""
    cfg, logger = rt.cfg, log.get("run")
    sup = rt.supervisor
    assert sup is not None
    # Migrations run before Litestream starts: Prisma's schema engine takes an exclusive
    # lock (locking_mode=EXCLUSIVE) that it cannot get while Litestream holds its read
    # transaction, so `prisma migrate deploy` fails on any existing database otherwise.
    # Litestream then picks the migrated database up as a whole when it starts.
    t0 = time.monotonic()
    try:
        res_m = migrate.run_all(cfg, rt.env, should_stop=sup.stop_requested)
    except SidecarError as exc:
        metrics.MIGRATIONS.labels(outcome="failed").inc()
        rt.migration = migrate.MigrationResult("failed", exc.message, time.monotonic() - t0)
        raise
    rt.migration = res_m
    metrics.MIGRATIONS.labels(outcome=res_m.outcome).inc()
    _step(logger, "migrations finished", t0, outcome=res_m.outcome, detail=res_m.detail,
          copies=res_m.copies)
    if sup.stop_requested():
        return

    t0 = time.monotonic()
    sup.start_litestream()
    while_litestream_starts()
    sup.wait_litestream_ready()
    if sup.stop_requested():
        return
    _step(logger, "replication started", t0, databases=[str(d.path) for d in cfg.databases],
          pid=sup.litestream.pid)

    t0 = time.monotonic()
    sup.start_app()
    _step(logger, "app started", t0, pid=sup.app.pid if sup.app else None,
          command=list(cfg.app_command))


def run(cfg: Config, env: dict[str, str], version: preflight.VersionQuery | None = None) -> int:
    """The whole lifecycle; returns the process exit code. `version`: the preflight's
    `litestream version`, when the caller started it already."""
    logger = log.get("run")
    logger.info("config loaded", version=__version__, **describe(cfg))
    procs.setpriv()  # looked at once here, before a thread of ours could reap its probe
    rt = prepare(cfg, env, version)
    sup = Supervisor(cfg, env, rt.litestream_bin or "litestream", rt.litestream_config or Path(),
                     rt.control or Control(Path()), members=_tenants_on_volume)
    rt.supervisor = sup
    sup.install_signals()
    sup.adopt_orphans()
    services = _start_services(rt)

    def attempt() -> None:
        rt.failure = None  # /status shows "starting" while a held start is retried
        try:
            start(rt)
        except SidecarError as exc:
            rt.failure = exc
            raise

    try:
        code = sup.serve(attempt, hold=cfg.on_start_failure == "hold")
        logger.info("sidecar exiting", code=code)
        return code
    except BaseException:
        sup.kill_all()
        raise
    finally:
        for stop in services:
            stop()
        fetch.wait_removals()  # a restore's mirror, removed off the path to the app's start


def _tenants_on_volume(entry: DbDir) -> list[Database]:
    """A directory entry's databases on the volume (for the final sync)."""
    return [tenants.member(entry, rel) for rel in tenants.local_members(entry)]


def _start_services(rt: Runtime) -> list[Callable[[], None]]:
    """The operations, the one route table on the control socket and the HTTP listener, the
    lag checks and the scheduler; returns their stop functions."""
    cfg, sup = rt.cfg, rt.supervisor
    assert sup is not None
    scratch.clean_verify_leftovers(cfg)  # what a verification killed with the last run left
    ops = Operations(rt)
    router = Router(routes(ops, Probes(rt, ops.busy)), cfg.admin_token)
    addr = (cfg.http_host, cfg.http_port) if cfg.http_host is not None else None
    stops = [http.serve(router, socket_path(cfg), addr, cfg.http_max_connections)]

    # Lag checks run in the scheduler's thread once the restore step is over (start() begins
    # them): until Litestream answers they report the bucket's reachability and an unknown
    # position; until the first one the lag is unmeasured and /readyz says not ready.
    rt.lag = lag_monitor.start(cfg, rt.control, sup.litestream_running, jobs.add_interval,
                       defer_checks=True)
    stops.append(rt.lag.stop)
    stops.append(jobs.stop)
    monitor = rt.lag

    def begin_jobs() -> None:
        schedule_verify(ops)
        monitor.begin_checks()
        jobs.start()

    # Once the app is up, in a thread of its own: importing apscheduler
    # and starting the scheduler's thread overlap with the app's own start.
    once = threading.Lock()

    def begin_jobs_once() -> None:
        if once.acquire(blocking=False):
            threading.Thread(target=begin_jobs, name="begin-jobs", daemon=True).start()

    rt.begin_jobs = begin_jobs_once
    return stops
