"""Configuration: one frozen Config built from the environment (and flags) by one loop over
settings.SETTINGS, plus the few rules that join several settings. Every problem is reported
at once, each naming the variable, the value (never a secret's) and what was expected.

settings.py holds the table, parsers.py the parsers; replica_config.py the databases, their replicas
and the Litestream config file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import names
from sidecar.config.parsers import database_path_from_url, parse_addr, parse_duration, path_problem
from sidecar.config.replica_config import (
    S3,
    Database,
    DbDir,
    Replica,
    databases_from_litestream,
    db_path_problem,
    parse_replica_url,
    project_config,
    s3_settings,
)
from sidecar.config.settings import (
    BY_NAME,
    HIDDEN_FROM_CHILDREN,
    SECRET_ENV,
    SETTINGS,
    Problems,
    checked_env,
    environment_with_flags,
    for_children,
    given,
    parse,
    read,
    show,
)
from sidecar.errors import ConfigError

# The names the rest of sidecar (and its tests) import from here.
__all__ = ["HIDDEN_FROM_CHILDREN", "S3", "SECRET_ENV", "SETTINGS", "Config", "ConfigError",
           "Database", "DbDir", "Replica", "database_path_from_url", "describe", "environment_with_flags",
           "for_children", "load", "parse_addr", "parse_duration", "secrets_of"]

DB_NAME_MAX = names.NAME_ROOM  # a file name leaves room for sidecar's names beside it


@dataclass(frozen=True)
class Config:
    databases: tuple[Database, ...]
    state_dir: Path
    user_litestream_config: Path | None
    user_litestream_doc: dict[str, Any] | None = field(repr=False)
    http_host: str | None
    http_port: int
    http_max_connections: int
    admin_token: str | None = field(repr=False)
    migrate_command: tuple[str, ...] | None  # None: disabled
    app_command: tuple[str, ...]
    max_lag: float
    lag_check_interval: float
    sync_interval: float
    verify_schedule: str | None
    app_stop_timeout: float
    app_restart: str
    on_start_failure: str
    heartbeat_url: str | None
    volume_path: Path | None
    volume_var: str | None
    replica_timeout: float
    ready_timeout: float
    litestream_stop_timeout: float
    litestream_bin: str | None
    keep_copies: int
    local_default_replica: bool
    prisma_schema: Path | None
    draining_seconds: float | None
    cwd: Path
    directories: tuple[DbDir, ...] = ()
    restore_parallelism: int = 8
    restore_concurrency: int = 8
    db_metrics_limit: int = 100
    bucket_bad_names: str = "refuse"  # refuse | skip (see names.py)
    restore_max_databases: int = 10000
    pitr_window: float = 86400.0
    # Temporary credentials' token (AWS_SESSION_TOKEN, or the older AWS_SECURITY_TOKEN): not
    # a setting of sidecar's, read only so that no output ever shows it.
    session_token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None  # AWS_CA_BUNDLE, else SSL_CERT_FILE (a readable PEM file)


def find_prisma_schema(cwd: Path) -> Path | None:
    """Where Prisma would look for its schema, in Prisma's order."""
    pkg = cwd / "package.json"
    if pkg.is_file():
        try:
            data = json.loads(pkg.read_text())
            custom = (data.get("prisma") or {}).get("schema")
            if custom and (cwd / custom).exists():
                return (cwd / custom).resolve()
        except (ValueError, AttributeError, OSError):
            pass
    for candidate in ("prisma/schema.prisma", "schema.prisma", "prisma/schema"):
        if (cwd / candidate).exists():
            return (cwd / candidate).resolve()
    return None


def load(env: Mapping[str, str], app_command: list[str] | None = None,
         cwd: Path | None = None, need_app: bool = True) -> Config:
    """Build and validate the configuration; raise ConfigError listing every problem."""
    cwd = (cwd or Path.cwd()).resolve()
    problems = Problems()
    env = checked_env(env, problems)
    v = {s.env: read(env, s, problems) for s in SETTINGS}
    # Not a setting (never shown): read so replica_config can tell which keys it goes with.
    v["AWS_SESSION_TOKEN"] = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN")
    source = {s.env: found[0] for s in SETTINGS if (found := given(env, s))}

    # --- the rules that join several settings
    app = tuple(app_command or ()) or v["SIDECAR_APP_COMMAND"] or ()
    if need_app and not app:
        problems.note("APP_COMMAND: nothing to run; give it after `--` "
                      "(sidecar run -- node server.js) or set SIDECAR_APP_COMMAND")
    elif need_app and not _runnable(app[0], env, cwd):
        problems.note(f"APP_COMMAND: {app[0]!r} is not an executable on PATH or a path to one")
    admin_token = _admin_token(env, v, problems)
    prisma_schema = find_prisma_schema(cwd)
    user_cfg_path, user_doc = project_config(env, cwd, problems)
    if user_doc is not None:
        assert user_cfg_path is not None
        databases, directories = databases_from_litestream(user_doc, user_cfg_path, v, problems)
        db_var = "LITESTREAM_CONFIG"
        local_default = False
        if v["SIDECAR_DB_DIR"] is not None:  # a directory must come from one place only
            problems.add("SIDECAR_DB_DIR", env["SIDECAR_DB_DIR"], "must not be set when the "
                         f"project's Litestream config ({user_cfg_path}) lists the databases: "
                         "put a `dir:` entry there instead")
        db_path = _db_path(v, source, cwd, prisma_schema)
        if db_path is not None and databases and not directories and \
                db_path not in {d.path for d in databases}:
            listed = ", ".join(str(d.path) for d in databases)
            problems.note(f"DATABASE_URL/SIDECAR_DB_PATH: {db_path} is not among the databases "
                          f"in {user_cfg_path} ({listed}); it would not be backed up")
    elif v["SIDECAR_DB_DIR"] is not None:
        databases, db_var, local_default = [], "SIDECAR_DB_DIR", False
        if "SIDECAR_DB_PATH" in source:
            problems.add("SIDECAR_DB_DIR", env["SIDECAR_DB_DIR"], "must not be set together with "
                         "SIDECAR_DB_PATH (one database or one directory of them)")
        directories = _env_directory(env, v, cwd, problems)
    else:
        directories = []
        databases, db_var, local_default = _env_database(env, v, source, cwd, prisma_schema,
                                                         problems)
    state_dir = _state_dir(v, cwd, databases, directories)
    _check_lengths(databases, state_dir, db_var, source, problems)
    migrate = _migrate_command(env, v, cwd, prisma_schema, need_app, problems)

    if problems.items:
        # `run` starts; the operator commands only read the configuration.
        raise ConfigError(f"cannot {'start' if need_app else 'read the configuration'}: "
                          f"{len(problems.items)} configuration "
                          f"problem{'s' if len(problems.items) > 1 else ''}",
                          problems=problems.items)
    assert state_dir is not None
    if local_default:
        d = databases[0]
        databases[0] = Database(path=d.path, replica=Replica(
            url=f"file://{state_dir / 'replica' / d.name}", dir=state_dir / "replica" / d.name))
    http_host, http_port = v["SIDECAR_HTTP_ADDR"]
    return Config(
        **{s.field: v[s.env] for s in SETTINGS if s.field},
        databases=tuple(databases), state_dir=state_dir,
        user_litestream_config=user_cfg_path, user_litestream_doc=user_doc,
        http_host=http_host, http_port=http_port, admin_token=admin_token,
        migrate_command=migrate, app_command=app,
        volume_var=source.get("SIDECAR_VOLUME_PATH"), local_default_replica=local_default,
        prisma_schema=prisma_schema, cwd=cwd, directories=tuple(directories),
        session_token=env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None,
    )


def _db_path(v: Mapping[str, Any], source: Mapping[str, str], cwd: Path,
             prisma_schema: Path | None) -> Path | None:
    """SIDECAR_DB_PATH, else DATABASE_URL's path; a relative URL path is Prisma's: against
    the schema's directory."""
    if (raw := v["SIDECAR_DB_PATH"]) is not None:
        return Path(raw) if Path(raw).is_absolute() else (cwd / raw).resolve()
    if (rel := v["DATABASE_URL"]) is not None:
        # Prisma resolves relative SQLite paths against the schema file's directory (or the
        # folder itself for a multi-file schema folder).
        base = cwd if prisma_schema is None else (
            prisma_schema if prisma_schema.is_dir() else prisma_schema.parent)
        return Path(rel) if Path(rel).is_absolute() else (base / rel).resolve()
    return None


def _env_database(env: Mapping[str, str], v: Mapping[str, Any], source: Mapping[str, str],
                  cwd: Path, prisma_schema: Path | None,
                  problems: Problems) -> tuple[list[Database], str, bool]:
    """The one database the variables name, and its replica: SIDECAR_REPLICA_URL, else a
    Railway BUCKET, else (off Railway) a local one under the state dir."""
    db_var = "SIDECAR_DB_PATH" if "SIDECAR_DB_PATH" in source else "DATABASE_URL"
    db_path = _db_path(v, source, cwd, prisma_schema)
    raw_url = v["SIDECAR_REPLICA_URL"]
    if db_path is None:
        if "DATABASE_URL" not in source and not problems.dropped & {"SIDECAR_DB_PATH",
                                                                     "DATABASE_URL"}:
            problems.note("SIDECAR_DB_PATH: no database given; set "
                          "SIDECAR_DB_PATH=/data/app.db or DATABASE_URL=file:/data/app.db")
        if raw_url is not None:
            parse_replica_url(raw_url, v, problems)
        return [], db_var, False
    replica: Replica | None = None
    if raw_url is not None:
        replica = parse_replica_url(raw_url, v, problems)
    elif v["BUCKET"] is not None:
        replica = Replica(url=f"s3://{v['BUCKET']}/{db_path.name}",
                          s3=s3_settings(v, v["BUCKET"], db_path.name, problems))
    elif v["RAILWAY_ENVIRONMENT"] is not None and not v["SIDECAR_ALLOW_NO_BACKUP"]:
        problems.note("SIDECAR_REPLICA_URL: no replica configured on Railway; add a Bucket "
                      "and set SIDECAR_REPLICA_URL=s3://${{Bucket.BUCKET}}/app.db (or "
                      "BUCKET=${{Bucket.BUCKET}}), or SIDECAR_ALLOW_NO_BACKUP=1")
    if (why := db_path_problem(db_path)) is not None:
        problems.add(db_var, env[db_var], why)
    local_default = replica is None and raw_url is None and not problems.items
    return [Database(path=db_path, replica=replica)], db_var, local_default


def _env_directory(env: Mapping[str, str], v: Mapping[str, Any], cwd: Path,
                   problems: Problems) -> list[DbDir]:
    """SIDECAR_DB_DIR + SIDECAR_DB_PATTERN (+ SIDECAR_DB_RECURSIVE): a generated `dir:` entry
    that always watches, so databases created while the app runs are replicated. Its replica
    must be S3: each database goes under PREFIX/<its path relative to the directory>."""
    raw_dir = v["SIDECAR_DB_DIR"]
    path = Path(raw_dir) if Path(raw_dir).is_absolute() else (cwd / raw_dir).resolve()
    # A bad pattern or recursive flag is already reported by its row (None here).
    ok = v["SIDECAR_DB_PATTERN"] is not None and v["SIDECAR_DB_RECURSIVE"] is not None
    if path.exists() and not path.is_dir():
        problems.add("SIDECAR_DB_DIR", env["SIDECAR_DB_DIR"], "must be a directory (or not exist yet)")
        ok = False
    # Every database's path starts with it: the URI rule holds for it too.
    elif (why := path_problem(str(path / ("n" * 64)), "database directory")
          or db_path_problem(path)) is not None:
        problems.add("SIDECAR_DB_DIR", env["SIDECAR_DB_DIR"], why)
        ok = False
    rep: Replica | None = None
    raw_url = v["SIDECAR_REPLICA_URL"]
    if raw_url is not None:
        rep = parse_replica_url(raw_url, v, problems)
    elif v["BUCKET"] is not None:
        rep = Replica(url=f"s3://{v['BUCKET']}/{path.name}",
                      s3=s3_settings(v, v["BUCKET"], path.name, problems))
    else:
        problems.note("SIDECAR_REPLICA_URL: a database directory needs a replica: set "
                      "SIDECAR_REPLICA_URL=s3://BUCKET/PREFIX (each database goes under "
                      "PREFIX/<its file name>)")
    if rep is not None and rep.s3 is None:
        problems.add("SIDECAR_REPLICA_URL", raw_url, "must be an s3:// URL with SIDECAR_DB_DIR")
        rep = None
    if rep is None or not ok:
        return []
    return [DbDir(dir=path, pattern=v["SIDECAR_DB_PATTERN"], recursive=v["SIDECAR_DB_RECURSIVE"],
                  watch=True, replica=rep)]


def _state_dir(v: Mapping[str, Any], cwd: Path, databases: list[Database],
               directories: list[DbDir]) -> Path | None:
    if (raw := v["SIDECAR_STATE_DIR"]) is not None:
        return (cwd / raw).resolve()
    if databases:
        return databases[0].path.parent / ".sidecar"
    return directories[0].dir / ".sidecar" if directories else None


def _check_lengths(databases: list[Database], state_dir: Path | None, db_var: str,
                   source: Mapping[str, str], problems: Problems) -> None:
    """The names sidecar builds from the paths must fit Linux's limits too."""
    for d in databases:
        why = path_problem(str(d.path), "database path")
        if why is None and len(d.name.encode()) > DB_NAME_MAX:
            why = (f"the database file name is {len(d.name.encode())} bytes long; at most "
                   f"{DB_NAME_MAX} (sidecar writes temporary files named after it beside it)")
        if why is not None:
            problems.note(f"{db_var}: {why}")
    if state_dir is not None:
        why = path_problem(str(state_dir / "pre-restore" / "x" / ("n" * 64)), "state dir path")
        if why is not None:
            problems.note(f"{'SIDECAR_STATE_DIR' if 'SIDECAR_STATE_DIR' in source else db_var}: "
                          f"{why}")


def _migrate_command(env: Mapping[str, str], v: Mapping[str, Any], cwd: Path,
                     prisma_schema: Path | None, need_app: bool,
                     problems: Problems) -> tuple[str, ...] | None:
    """The migration command: unset means Prisma's when a schema and npx exist; empty
    disables."""
    if given(env, BY_NAME["SIDECAR_MIGRATE_COMMAND"]) is None:
        if prisma_schema is not None and shutil.which("npx", path=env.get("PATH")):
            return ("npx", "prisma", "migrate", "deploy")
        return None
    migrate = v["SIDECAR_MIGRATE_COMMAND"]
    if not migrate:  # disabled, or reported
        return None
    if need_app and not _runnable(migrate[0], env, cwd):
        problems.add("SIDECAR_MIGRATE_COMMAND", env["SIDECAR_MIGRATE_COMMAND"],
                     f"must start with an executable ({migrate[0]!r} was not found)")
    return migrate


def _runnable(program: str, env: Mapping[str, str], cwd: Path) -> bool:
    """Whether `program` would start: a path to an executable file, or a name on PATH."""
    if "/" in program:
        p = Path(program) if Path(program).is_absolute() else cwd / program
        return p.is_file() and os.access(p, os.X_OK)
    return shutil.which(program, path=env.get("PATH", os.defpath)) is not None


def _admin_token(env: Mapping[str, str], v: Mapping[str, Any],
                 problems: Problems) -> str | None:
    """SIDECAR_ADMIN_TOKEN, or the contents of SIDECAR_ADMIN_TOKEN_FILE (one trailing newline
    dropped); never echoed."""
    path = v["SIDECAR_ADMIN_TOKEN_FILE"]
    if path is None:
        return v["SIDECAR_ADMIN_TOKEN"]
    if given(env, BY_NAME["SIDECAR_ADMIN_TOKEN"]) is not None:
        problems.note("SIDECAR_ADMIN_TOKEN_FILE: give it or SIDECAR_ADMIN_TOKEN, not both")
        return None
    try:
        raw = Path(path).read_bytes()
        if len(raw) > 4096:
            raise ValueError("longer than 4096 bytes")
        text = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.note(f"SIDECAR_ADMIN_TOKEN_FILE: cannot read the token from {show(path)} "
                      f"({why})")
        return None
    return parse(BY_NAME["SIDECAR_ADMIN_TOKEN"], "SIDECAR_ADMIN_TOKEN_FILE", text, problems)


def secrets_of(cfg: Config) -> list[str]:
    """Every secret value the config holds, for scrubbing output."""
    out: list[str] = []
    if cfg.admin_token:
        out.append(cfg.admin_token)
    if cfg.session_token:
        out.append(cfg.session_token)
    for rep in [db.replica for db in cfg.databases] + [d.replica for d in cfg.directories]:
        if rep and rep.s3 and rep.s3.secret_access_key:
            out.append(rep.s3.secret_access_key)
    return out


def describe(cfg: Config) -> dict[str, Any]:
    """A loggable summary (no secrets)."""
    return {
        "databases": [{"path": str(d.path), "replica": d.replica.url if d.replica else None}
                      for d in cfg.databases],
        **({"directories": [{"dir": str(d.dir), "pattern": d.pattern, "recursive": d.recursive,
                             "watch": d.watch, "replica": d.replica.url}
                            for d in cfg.directories]} if cfg.directories else {}),
        "state_dir": str(cfg.state_dir),
        "litestream_config": str(cfg.user_litestream_config or "generated"),
        "http": f"[{cfg.http_host}]:{cfg.http_port}" if cfg.http_host else "off",
        "migrate": " ".join(cfg.migrate_command) if cfg.migrate_command else None,
        "python": sys.version.split()[0],
    }
