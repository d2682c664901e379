"""Migrations: a consistent copy of every database first, then the command, once per start."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sidecar import dbfile, log, nolinks
from sidecar.config import Config, Database
from sidecar.errors import MigrationError, exec_reason
from sidecar.supervise import procs


@dataclass
class MigrationResult:
    outcome: str  # succeeded | failed | skipped
    detail: str
    duration: float = 0.0
    copies: list[str] = field(default_factory=list)
    finished_at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "detail": self.detail,
                "duration_seconds": round(self.duration, 3), "copies": self.copies,
                "finished_at": datetime.fromtimestamp(self.finished_at, UTC).isoformat()}


def safety_copy(cfg: Config, databases: Sequence[Database] | None = None,
                on_tick: Callable[[], object] | None = None) -> list[str]:
    """Back up each existing database (all of them unless `databases` is given) into
    state_dir/pre-migrate, keeping the newest few of each."""
    out = []
    d = cfg.state_dir / "pre-migrate"
    nolinks.private_dir(d, "the directory of the pre-migration copies")
    stamp = dbfile.stamp()
    for db in cfg.databases if databases is None else databases:
        if not db.path.exists() or db.path.stat().st_size == 0:
            continue
        base = dbfile.copy_base(db, cfg.databases)
        dst = d / f"{base}.{stamp}"
        dbfile.backup(db.path, dst, on_tick)
        out.append(str(dst))
        for old in dbfile.stamped_copies(d, base)[:-cfg.keep_copies]:
            old.unlink(missing_ok=True)
    return out


def database_url(path: Path) -> str:
    # Not percent-encoded: Prisma reads a `file:` URL's path literally up to the first `?`.
    # Config refuses the characters that would make this ambiguous (`?`, `#`, `%XX`).
    return f"file:{path}"


def run(cfg: Config, env: dict[str, str],
        should_stop: Callable[[], bool] | None = None,
        databases: Sequence[Database] | None = None,
        target: Database | None = None) -> MigrationResult:
    """Safety copies (of `databases`, default all), then the command, with DATABASE_URL
    pointing at `target` (default the first database). Raises MigrationError (exit 5)."""
    logger = log.get("migrate")
    t0 = time.monotonic()
    if not cfg.migrate_command:
        return MigrationResult("skipped", "no migration command", 0.0)
    copies = safety_copy(cfg, databases, should_stop)
    for c in copies:
        logger.info("pre-migration copy", path=c)
    menv = dict(env)
    target = target or cfg.databases[0]
    menv["DATABASE_URL"] = database_url(target.path)
    if cfg.databases and target is cfg.databases[0]:
        menv.setdefault("SIDECAR_DB_PATH", str(target.path))
    else:
        menv["SIDECAR_DB_PATH"] = str(target.path)
    cmd = list(cfg.migrate_command)
    logger.info("migration started", command=" ".join(cmd))

    def on_line(line: str) -> None:
        logger.info("migration output", line=line)

    try:
        code, _ = procs.run(cmd, menv, on_line=on_line, should_stop=should_stop,
                            cwd=str(cfg.cwd))
    except OSError as exc:
        raise MigrationError(f"cannot run the migration command: {cmd[0]}: "
                             f"{exec_reason(exc, cmd[0])}; the app was not started",
                             hint="fix SIDECAR_MIGRATE_COMMAND, or set it empty to disable"
                             ) from None
    duration = time.monotonic() - t0
    if code != 0:
        where = ", ".join(copies) if copies else "none (no database existed yet)"
        raise MigrationError(
            f"cannot start: the migration command exited {code}; the app was not started",
            problems=[f"pre-migration copy: {where}"],
            hint="fix the migration and redeploy; the database as it was before the migration "
                 "is in the copy above")
    return MigrationResult("succeeded", f"{' '.join(cmd)} exited 0", duration, copies)



def run_all(cfg: Config, env: dict[str, str],
            should_stop: Callable[[], bool] | None = None) -> MigrationResult:
    """The command once for the configured databases (as `run`), then once per database of
    each directory entry, with DATABASE_URL and SIDECAR_DB_PATH naming that database (a
    tenant's schema is its own; the first failure stops the start and names the database)."""
    from sidecar.bucket import tenants

    if not cfg.directories:
        return run(cfg, env, should_stop)
    t0 = time.monotonic()
    if not cfg.migrate_command:
        return MigrationResult("skipped", "no migration command", 0.0)
    copies: list[str] = []
    done = 0
    if cfg.databases:
        copies += run(cfg, env, should_stop).copies
        done += 1
    for entry in cfg.directories:
        for rel in tenants.local_members(entry):
            m = tenants.member(entry, rel)
            try:
                res = run(cfg, env, should_stop, databases=[m], target=m)
            except MigrationError as exc:
                raise MigrationError(f"{exc.message} (database {m.path})",
                                     problems=exc.problems, hint=exc.hint) from None
            copies += res.copies
            done += 1
            if should_stop and should_stop():
                break
    return MigrationResult("succeeded", f"{' '.join(cfg.migrate_command)} exited 0 for "
                           f"{done} database(s)", time.monotonic() - t0, copies)
