"""Migrations: a consistent copy of every database first, then the command, once per start."""

from __future__ import annotations

import glob
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import dbfile, log, procs
from .config import Config
from .errors import MigrationError


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


def safety_copy(cfg: Config) -> list[str]:
    """Back up each existing database into state_dir/pre-migrate, keeping the newest few."""
    out = []
    d = cfg.state_dir / "pre-migrate"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    for db in cfg.databases:
        if not db.path.exists() or db.path.stat().st_size == 0:
            continue
        dst = d / f"{db.name}.{stamp}"
        dbfile.backup(db.path, dst)
        out.append(str(dst))
        copies = sorted(d.glob(f"{glob.escape(db.name)}.*[0-9]Z"), key=lambda p: p.name)
        for old in copies[:-cfg.keep_copies]:
            old.unlink(missing_ok=True)
    return out


def database_url(path: Path) -> str:
    # Not percent-encoded: Prisma reads a `file:` URL's path literally up to the first `?`.
    # Config refuses the characters that would make this ambiguous (`?`, `#`, `%XX`).
    return f"file:{path}"


def run(cfg: Config, env: dict[str, str],
        should_stop: Callable[[], bool] | None = None) -> MigrationResult:
    logger = log.get("migrate")
    t0 = time.monotonic()
    if not cfg.migrate_command:
        return MigrationResult("skipped", "no migration command", 0.0)
    copies = safety_copy(cfg)
    for c in copies:
        logger.info("pre-migration copy", path=c)
    menv = dict(env)
    menv["DATABASE_URL"] = database_url(cfg.databases[0].path)
    menv.setdefault("SIDECAR_DB_PATH", str(cfg.databases[0].path))
    cmd = list(cfg.migrate_command)
    logger.info("migration started", command=" ".join(cmd))

    def on_line(line: str) -> None:
        logger.info("migration output", line=line)

    try:
        code, _ = procs.run(cmd, menv, on_line=on_line, should_stop=should_stop,
                            cwd=str(cfg.cwd))
    except FileNotFoundError:
        raise MigrationError(f"cannot run the migration command: {cmd[0]} not found",
                             hint="fix SIDECAR_MIGRATE_COMMAND, or set it empty to disable") from None
    except OSError as exc:
        raise MigrationError(f"cannot run the migration command {cmd[0]}: {exc.strerror}") from None
    duration = time.monotonic() - t0
    if code != 0:
        where = ", ".join(copies) if copies else "none (no database existed yet)"
        raise MigrationError(
            f"cannot start: the migration command exited {code}; the app was not started",
            problems=[f"pre-migration copy: {where}"],
            hint="fix the migration and redeploy; the database as it was before the migration "
                 "is in the copy above")
    return MigrationResult("succeeded", f"{' '.join(cmd)} exited 0", duration, copies)

