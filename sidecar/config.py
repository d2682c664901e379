"""Configuration: one frozen dataclass tree built from the environment (and flags), validated
in one place, with every problem reported at once.

Every setting is a row of SETTINGS: its variable, its flag and its help. The CLI turns the
table into flags, and flags override the environment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class Setting:
    env: str
    flag: str | None  # None: no flag, because a flag's value shows in every `ps` (a secret)
    help: str
    default: str | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting("SIDECAR_DB_PATH", "--db-path", "the SQLite database file (else DATABASE_URL)"),
    Setting("DATABASE_URL", "--database-url", "Prisma-style URL file:PATH[?params]"),
    Setting("SIDECAR_DB_DIR", "--db-dir",
            "a directory of databases (one per tenant), instead of SIDECAR_DB_PATH"),
    Setting("SIDECAR_DB_PATTERN", "--db-pattern", "which files of SIDECAR_DB_DIR are databases",
            "*.db"),
    Setting("SIDECAR_DB_RECURSIVE", "--db-recursive",
            "1 to look in subdirectories of SIDECAR_DB_DIR too", "0"),
    Setting("SIDECAR_RESTORE_PARALLELISM", "--restore-parallelism",
            "databases of a directory restored at once at start", "8"),
    Setting("SIDECAR_DB_METRICS_LIMIT", "--db-metrics-limit",
            "per-database lag series of a directory entry, at most (sorted by path)", "100"),
    Setting("SIDECAR_REPLICA_URL", "--replica-url", "s3://BUCKET/PREFIX or file:///DIR"),
    Setting("SIDECAR_S3_ENDPOINT", "--s3-endpoint", "S3-compatible endpoint URL (else ENDPOINT)"),
    Setting("SIDECAR_S3_REGION", "--s3-region", "S3 region (else REGION; default us-east-1)"),
    Setting("SIDECAR_S3_FORCE_PATH_STYLE", "--s3-force-path-style",
            "true/false; default true with a custom endpoint, false for storage.railway.app"),
    Setting("LITESTREAM_CONFIG", "--litestream-config",
            "use this Litestream config (default ./litestream.yml when present)"),
    Setting("SIDECAR_STATE_DIR", "--state-dir",
            "copies, control socket, generated config (default DB_DIR/.sidecar)"),
    Setting("SIDECAR_HTTP_ADDR", "--http-addr", "metrics/health/admin listener, or 'off'", "[::]:9090"),
    Setting("SIDECAR_HTTP_MAX_CONNECTIONS", "--http-max-connections",
            "concurrent connections the HTTP listener accepts", "32"),
    Setting("SIDECAR_ADMIN_TOKEN", None, "bearer token enabling /admin/* endpoints"),
    Setting("SIDECAR_ADMIN_TOKEN_FILE", "--admin-token-file",
            "file holding the bearer token (instead of SIDECAR_ADMIN_TOKEN)"),
    Setting("SIDECAR_MIGRATE_COMMAND", "--migrate-command",
            "migration command; empty disables (default: npx prisma migrate deploy if a schema exists)"),
    Setting("SIDECAR_APP_COMMAND", "--app-command", "app command when none follows `--`"),
    Setting("SIDECAR_MAX_LAG_SECONDS", "--max-lag", "readiness fails above this lag", "60"),
    Setting("SIDECAR_LAG_CHECK_INTERVAL", "--lag-check-interval", "how often the bucket is checked", "10s"),
    Setting("SIDECAR_SYNC_INTERVAL", "--sync-interval", "Litestream sync interval", "1s"),
    Setting("SIDECAR_VERIFY_SCHEDULE", "--verify-schedule",
            "cron schedule for backup verification; empty disables", "17 3 * * *"),
    Setting("SIDECAR_APP_STOP_TIMEOUT", "--app-stop-timeout", "grace period before SIGKILL", "10s"),
    Setting("SIDECAR_APP_RESTART", "--app-restart", "no | on-failure", "no"),
    Setting("SIDECAR_LOG_FORMAT", "--log-format", "json | console (default: json unless a terminal)"),
    Setting("SIDECAR_ON_START_FAILURE", "--on-start-failure", "exit | hold", "exit"),
    Setting("SIDECAR_HEARTBEAT_URL", "--heartbeat-url", "called after each healthy backup check"),
    Setting("SIDECAR_VOLUME_PATH", "--volume-path",
            "the persistent volume's mount point (else RAILWAY_VOLUME_MOUNT_PATH)"),
    Setting("SIDECAR_ALLOW_NO_BACKUP", "--allow-no-backup",
            "1 to run on Railway without a replica", "0"),
    Setting("SIDECAR_REPLICA_TIMEOUT", "--replica-timeout",
            "bound on deciding whether the replica holds backups at start", "30s"),
    Setting("SIDECAR_READY_TIMEOUT", "--ready-timeout",
            "bound on waiting for Litestream to open every DB", "30s"),
    Setting("SIDECAR_LITESTREAM_STOP_TIMEOUT", "--litestream-stop-timeout",
            "bound on Litestream's final sync at shutdown", "30s"),
    Setting("SIDECAR_LITESTREAM_BIN", "--litestream-bin", "the Litestream binary (default: on PATH)"),
    Setting("SIDECAR_KEEP_COPIES", "--keep-copies", "pre-migration copies to keep", "3"),
)

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "SECRET_ACCESS_KEY", "SIDECAR_ADMIN_TOKEN")
# Never passed to a child (app, Litestream, migration command): the token is sidecar's own.
HIDDEN_FROM_CHILDREN = ("SIDECAR_ADMIN_TOKEN", "SIDECAR_ADMIN_TOKEN_FILE")


@dataclass(frozen=True)
class S3:
    bucket: str
    prefix: str
    endpoint: str | None
    region: str
    force_path_style: bool
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)

    @property
    def addressing(self) -> str:
        """How requests name the bucket, as `sidecar check` shows it."""
        return "path-style" if self.force_path_style else "virtual-hosted"


# Railway Buckets answer only virtual-hosted requests (https://BUCKET.storage.railway.app);
# a path-style request gets NoSuchBucket, which reads as "bucket does not exist".
VIRTUAL_HOSTED_ENDPOINTS = ("storage.railway.app",)


def default_path_style(endpoint: str | None) -> bool:
    """Path style for a custom endpoint (MinIO and most self-hosted servers need it), except
    the hosts known to answer only virtual-hosted requests; AWS itself (no endpoint) is
    virtual-hosted."""
    if endpoint is None:
        return False
    return (urlparse(endpoint).hostname or "") not in VIRTUAL_HOSTED_ENDPOINTS


@dataclass(frozen=True)
class Replica:
    """Where one database's backups live: an S3 prefix or a local directory."""

    url: str  # display form, never carries a secret
    s3: S3 | None = None
    dir: Path | None = None

    @property
    def endpoint_label(self) -> str:
        if self.s3:
            return self.s3.endpoint or f"s3 ({self.s3.region})"
        return str(self.dir)


@dataclass(frozen=True)
class Database:
    path: Path
    replica: Replica | None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class DbDir:
    """A directory entry: every file in `dir` matching `pattern` is a database, replicated
    under `<replica prefix>/<its path relative to dir>` (see tenants.py)."""

    dir: Path
    pattern: str
    recursive: bool
    watch: bool
    replica: Replica


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
    migrate_is_default: bool
    app_command: tuple[str, ...]
    max_lag: float
    lag_check_interval: float
    sync_interval: float
    verify_schedule: str | None
    app_stop_timeout: float
    app_restart: str
    log_format: str | None
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
    db_metrics_limit: int = 100


# ---------------------------------------------------------------- value parsers

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


MAX_DURATION = 366 * 86400.0  # beyond this a timer overflows somewhere (timedelta, Go, waits)
PATH_MAX = 4095  # bytes, Linux
NAME_MAX = 255  # bytes per file name
DB_NAME_MAX = 200  # a DB's file name leaves room for sidecar's names beside it (.NAME.sidecar-...)


class OutOfRange(ValueError):
    """A well-formed value outside what can work; its message says the range."""


def parse_duration(text: str) -> float:
    """`2`, `0.5`, `500ms`, `2s`, `1m`, `1h` -> seconds. Raises ValueError."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError
    value = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if not value <= MAX_DURATION:  # also catches inf from a thousand digits
        raise OutOfRange(f"must be at most {MAX_DURATION / 86400:g} days")
    return value


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError


def _show(value: str) -> str:
    if len(value) > 80:  # a thousand digits say nothing more than the first eighty
        return json.dumps(value[:77]) + f"... ({len(value)} characters)"
    return json.dumps(value)


def parse_addr(text: str) -> tuple[str | None, int]:
    """`[::]:9090`, `0.0.0.0:9090`, `:9090`, `9090` -> (host, port); `off` -> (None, 0)."""
    t = text.strip()
    if t.lower() in ("off", "none", "disabled"):
        return None, 0
    m = re.match(r"^(?:\[([0-9a-fA-F:.]*)\]|([^:\[\]]*)):(\d+)$", t) or re.match(r"^()()(\d+)$", t)
    if not m:
        raise ValueError
    host = m.group(1) if m.group(1) is not None else (m.group(2) or "::")
    port = int(m.group(3))
    if not 0 <= port <= 65535:
        raise ValueError
    return host or "::", port


def database_path_from_url(url: str) -> str:
    """Prisma's `file:PATH[?params]` -> PATH (still relative if it was)."""
    if not url.startswith("file:"):
        raise ValueError
    path = url[len("file:"):].split("?", 1)[0]
    if path.startswith("//"):  # file:///abs/path
        path = path[2:]
    if not path:
        raise ValueError
    # Taken literally, as Prisma does (it does not percent-decode), so both open one file.
    return path


# Litestream 0.5 opens each database through a SQLite URI it builds from the path without
# escaping: `?` starts the URI's query, `#` its fragment, and `%XX` is decoded, so a path with
# them makes Litestream open (and back up) another file while the app writes this one.
_URI_SPECIAL = re.compile(r"[?#]|%[0-9A-Fa-f]{2}")
_URI_ROLE = {"?": "starts a URI's query", "#": "starts a URI's fragment"}


def db_path_problem(path: Path) -> str | None:
    """Why this database path cannot be backed up exactly, or None."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return ("must be valid UTF-8: Litestream's config and DATABASE_URL are text, so a "
                "path with other bytes cannot be named exactly")
    m = _URI_SPECIAL.search(text)
    if m is None:
        return None
    char = m.group(0)
    role = _URI_ROLE.get(char, "is decoded as a URI escape")
    return (f"must not contain {char!r}: Litestream opens the database through a SQLite URI, "
            f"where {char!r} {role}, so it would back up another file; rename the file or "
            "its directory")


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


def _prisma_base_dir(schema: Path) -> Path:
    # Prisma resolves relative SQLite paths against the schema file's directory
    # (or against the folder itself for a multi-file schema folder).
    return schema if schema.is_dir() else schema.parent


# ---------------------------------------------------------------- the builder


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped: set[str] = set()  # variables already reported as unusable

    def add(self, var: str, value: str | None, expected: str) -> None:
        shown = "(secret)" if var in SECRET_ENV else _show(value or "")
        self.items.append(f"{var}: {expected} (got {shown})")

    def note(self, text: str) -> None:
        self.items.append(text)


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else None


def _default(name: str) -> str | None:
    for s in SETTINGS:
        if s.env == name:
            return s.default
    raise KeyError(name)


def _typed(env: Mapping[str, str], name: str, parse: Callable[[str], Any], expected: str,
           problems: _Problems) -> Any:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        raw = _default(name)
        if raw is None:
            return None
    try:
        return parse(raw)
    except OutOfRange as exc:
        problems.add(name, raw, str(exc))
        return None
    except (ValueError, TypeError):
        problems.add(name, raw, expected)
        return None


def _litestream_duration(text: str) -> float:
    """A duration handed to Litestream, which sidecar writes in whole milliseconds."""
    v = _positive_duration(text)
    if v < 0.001:
        raise OutOfRange("must be at least 1ms (Litestream's durations are written in "
                         "milliseconds; a shorter one would be 0)")
    return v


def path_problem(value: str, what: str = "path") -> str | None:
    """Why `value` cannot be a path here (not UTF-8, too long), or None."""
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return f"the {what} must be valid UTF-8 (it holds bytes that are not)"
    if b"\0" in raw:
        return f"the {what} must not contain a NUL byte"
    if len(raw) > PATH_MAX:
        return f"the {what} is {len(raw)} bytes long; at most {PATH_MAX}"
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > NAME_MAX:
        return f"a file name in the {what} is {longest} bytes long; at most {NAME_MAX}"
    return None


# Variables holding a path (or a URL holding one): checked before anything touches the disk.
PATH_VARS = ("SIDECAR_DB_PATH", "DATABASE_URL", "SIDECAR_STATE_DIR", "LITESTREAM_CONFIG",
             "SIDECAR_VOLUME_PATH", "RAILWAY_VOLUME_MOUNT_PATH", "SIDECAR_LITESTREAM_BIN",
             "SIDECAR_ADMIN_TOKEN_FILE", "SIDECAR_REPLICA_URL", "SIDECAR_APP_COMMAND",
             "SIDECAR_MIGRATE_COMMAND")


def _checked_env(env: Mapping[str, str], problems: _Problems) -> dict[str, str]:
    """`env` without the values that cannot be used at all (not UTF-8, over-long paths), each
    reported by name, so nothing later stumbles on them."""
    out = dict(env)
    names = {s.env for s in SETTINGS} | set(PATH_VARS) | {
        "BUCKET", "ENDPOINT", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAILWAY_ENVIRONMENT",
        "RAILWAY_DEPLOYMENT_DRAINING_SECONDS"}
    for name in sorted(names):
        value = env.get(name)
        if value is None:
            continue
        why = path_problem(value, "value") if name in PATH_VARS else (
            None if _utf8(value) else "the value must be valid UTF-8 (it holds bytes that are not)")
        if why is not None:
            problems.note(f"{name}: {why}")
            problems.dropped.add(name)
            out.pop(name)
    return out


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _positive_duration(text: str) -> float:
    v = parse_duration(text)
    if v <= 0:
        raise ValueError
    return v


def _positive_number(text: str) -> float:
    v = float(text)
    if not v > 0 or v != v or v == float("inf"):
        raise ValueError
    return v


def _cron(text: str) -> str | None:
    if text.strip() == "":
        return None
    from apscheduler.triggers.cron import CronTrigger

    CronTrigger.from_crontab(text.strip(), timezone="UTC")
    return text.strip()


def _s3_settings(env: Mapping[str, str], bucket: str, prefix: str,
                 problems: _Problems) -> S3:
    endpoint = _get(env, "SIDECAR_S3_ENDPOINT") or _get(env, "ENDPOINT")
    if endpoint is not None:
        parsed = urlparse(endpoint)
        var = "SIDECAR_S3_ENDPOINT" if _get(env, "SIDECAR_S3_ENDPOINT") else "ENDPOINT"
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            problems.add(var, endpoint, "must be an http:// or https:// URL")
        elif parsed.username or parsed.password:
            problems.note(f"{var}: must not carry credentials in the URL (use AWS_ACCESS_KEY_ID)")
    region = _get(env, "SIDECAR_S3_REGION") or _get(env, "REGION") or "us-east-1"
    fps_raw = _get(env, "SIDECAR_S3_FORCE_PATH_STYLE")
    force_path_style = default_path_style(endpoint)
    if fps_raw is not None:
        try:
            force_path_style = parse_bool(fps_raw)
        except ValueError:
            problems.add("SIDECAR_S3_FORCE_PATH_STYLE", fps_raw, "must be true or false")
    key_id = _get(env, "AWS_ACCESS_KEY_ID") or _get(env, "ACCESS_KEY_ID")
    secret = _get(env, "AWS_SECRET_ACCESS_KEY") or _get(env, "SECRET_ACCESS_KEY")
    if bool(key_id) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
        problems.note(f"{missing}: must be set too when the other credential is set "
                      f"(or SECRET_ACCESS_KEY / ACCESS_KEY_ID from a Railway Bucket)")
    return S3(bucket=bucket, prefix=prefix.strip("/"), endpoint=endpoint, region=region,
              force_path_style=force_path_style, access_key_id=key_id, secret_access_key=secret)


def parse_replica_url(url: str, env: Mapping[str, str], problems: _Problems,
                      var: str = "SIDECAR_REPLICA_URL") -> Replica | None:
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            problems.add(var, url, "must be s3://BUCKET/PREFIX with a bucket name")
            return None
        if "@" in parsed.netloc:
            problems.note(f"{var}: must not carry credentials (use AWS_ACCESS_KEY_ID)")
            return None
        prefix = parsed.path.strip("/")
        if not prefix:
            problems.add(var, url, "needs a non-empty PREFIX after the bucket (s3://BUCKET/PREFIX)")
            return None
        s3 = _s3_settings(env, parsed.netloc, prefix, problems)
        return Replica(url=f"s3://{parsed.netloc}/{prefix}", s3=s3)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            problems.add(var, url, "must be file:///ABSOLUTE/DIR")
            return None
        return Replica(url=f"file://{parsed.path}", dir=Path(unquote(parsed.path)))
    problems.add(var, url, "must be s3://BUCKET/PREFIX or file:///DIR")
    return None


def _expand_env(value: Any, env: Mapping[str, str]) -> Any:
    """Expand $VAR / ${VAR} in a Litestream config the way Litestream does, but on our side,
    so the rendered config runs with -no-expand-env and a `$` inside a secret survives."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                      lambda m: env.get(m.group(1) or m.group(2), ""), value)
    if isinstance(value, list):
        return [_expand_env(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _expand_env(v, env) for k, v in value.items()}
    return value


def _replica_from_litestream(db: dict[str, Any], env: Mapping[str, str], where: str,
                             problems: _Problems) -> Replica | None:
    rep = db.get("replica")
    if rep is None and db.get("replicas"):
        reps = db["replicas"]
        if not isinstance(reps, list) or len(reps) != 1:
            problems.note(f"{where}: exactly one replica per database is supported")
            return None
        rep = reps[0]
    if rep is None:
        problems.note(f"{where}: has no replica; every database needs one to be backed up")
        return None
    if not isinstance(rep, dict):
        problems.note(f"{where}.replica: must be a mapping")
        return None
    url = rep.get("url")
    rtype = rep.get("type") or ("s3" if rep.get("bucket") else None)
    # Values in the file win over the environment; the environment fills the rest.
    local_env = dict(env)
    for key, var in (("endpoint", "SIDECAR_S3_ENDPOINT"), ("region", "SIDECAR_S3_REGION"),
                     ("access-key-id", "AWS_ACCESS_KEY_ID"),
                     ("secret-access-key", "AWS_SECRET_ACCESS_KEY")):
        if rep.get(key):
            local_env[var] = str(rep[key])
    if rep.get("force-path-style") is not None:
        local_env["SIDECAR_S3_FORCE_PATH_STYLE"] = str(rep["force-path-style"]).lower()
    if url:
        return parse_replica_url(str(url), local_env, problems, var=f"{where}.replica.url")
    if rtype == "s3":
        bucket, path = rep.get("bucket"), str(rep.get("path") or "").strip("/")
        if not bucket or not path:
            problems.note(f"{where}.replica: an s3 replica needs `bucket` and a non-empty `path`")
            return None
        s3 = _s3_settings(local_env, str(bucket), path, problems)
        return Replica(url=f"s3://{bucket}/{path}", s3=s3)
    if rtype == "file":
        path = rep.get("path")
        if not path or not str(path).startswith("/"):
            problems.note(f"{where}.replica.path: a file replica needs an absolute path")
            return None
        return Replica(url=f"file://{path}", dir=Path(str(path)))
    problems.note(f"{where}.replica: only s3 and file replicas are supported (got type "
                  f"{_show(str(rtype))})")
    return None


def load(env: Mapping[str, str], app_command: list[str] | None = None,
         cwd: Path | None = None, need_app: bool = True) -> Config:
    """Build and validate the configuration; raise ConfigError listing every problem."""
    cwd = (cwd or Path.cwd()).resolve()
    problems = _Problems()
    env = _checked_env(env, problems)

    # --- timing and simple values
    max_lag = _typed(env, "SIDECAR_MAX_LAG_SECONDS", _positive_number,
                     "must be a positive number of seconds", problems)
    lag_interval = _typed(env, "SIDECAR_LAG_CHECK_INTERVAL", _positive_duration,
                          "must be a positive duration like 10s, 500ms or 1m", problems)
    sync_interval = _typed(env, "SIDECAR_SYNC_INTERVAL", _litestream_duration,
                           "must be a positive duration like 1s or 500ms", problems)
    stop_timeout = _typed(env, "SIDECAR_APP_STOP_TIMEOUT", parse_duration,
                          "must be a duration like 10s (0 allowed)", problems)
    replica_timeout = _typed(env, "SIDECAR_REPLICA_TIMEOUT", _positive_duration,
                             "must be a positive duration like 30s", problems)
    ready_timeout = _typed(env, "SIDECAR_READY_TIMEOUT", _positive_duration,
                           "must be a positive duration like 30s", problems)
    ls_stop_timeout = _typed(env, "SIDECAR_LITESTREAM_STOP_TIMEOUT", _litestream_duration,
                             "must be a positive duration like 30s", problems)
    verify_schedule = None
    raw_sched = env.get("SIDECAR_VERIFY_SCHEDULE")
    if raw_sched is None:
        raw_sched = _default("SIDECAR_VERIFY_SCHEDULE") or ""
    try:
        verify_schedule = _cron(raw_sched)
    except (ValueError, TypeError):
        problems.add("SIDECAR_VERIFY_SCHEDULE", raw_sched,
                     "must be a 5-field cron expression like '17 3 * * *', or empty")
    keep_copies = _typed(env, "SIDECAR_KEEP_COPIES", lambda t: _nonneg_int(t),
                         "must be a whole number >= 1", problems)
    app_restart = (_get(env, "SIDECAR_APP_RESTART") or "no").strip().lower()
    if app_restart not in ("no", "on-failure"):
        problems.add("SIDECAR_APP_RESTART", env.get("SIDECAR_APP_RESTART"),
                     "must be `no` or `on-failure`")
    log_format = _get(env, "SIDECAR_LOG_FORMAT")
    if log_format is not None:
        log_format = log_format.strip().lower()
        if log_format not in ("json", "console"):
            problems.add("SIDECAR_LOG_FORMAT", env.get("SIDECAR_LOG_FORMAT"),
                         "must be `json` or `console`")
    on_fail = (_get(env, "SIDECAR_ON_START_FAILURE") or "exit").strip().lower()
    if on_fail not in ("exit", "hold"):
        problems.add("SIDECAR_ON_START_FAILURE", env.get("SIDECAR_ON_START_FAILURE"),
                     "must be `exit` or `hold`")
    http_host, http_port = None, 0
    raw_addr = _get(env, "SIDECAR_HTTP_ADDR") or _default("SIDECAR_HTTP_ADDR") or ""
    try:
        http_host, http_port = parse_addr(raw_addr)
    except ValueError:
        problems.add("SIDECAR_HTTP_ADDR", raw_addr, "must be HOST:PORT like [::]:9090, or `off`")
    max_conns = _typed(env, "SIDECAR_HTTP_MAX_CONNECTIONS", _connection_cap,
                       "must be a whole number from 1 to 1024", problems)
    heartbeat = _get(env, "SIDECAR_HEARTBEAT_URL")
    if heartbeat is not None and urlparse(heartbeat).scheme not in ("http", "https"):
        problems.add("SIDECAR_HEARTBEAT_URL", heartbeat, "must be an http:// or https:// URL")
    admin_token = _admin_token(env, problems)
    allow_no_backup = False
    try:
        allow_no_backup = parse_bool(env.get("SIDECAR_ALLOW_NO_BACKUP", "0"))
    except ValueError:
        problems.add("SIDECAR_ALLOW_NO_BACKUP", env.get("SIDECAR_ALLOW_NO_BACKUP"),
                     "must be 1/0 or true/false")
    draining = None
    if _get(env, "RAILWAY_DEPLOYMENT_DRAINING_SECONDS") is not None:
        try:
            draining = parse_duration(env["RAILWAY_DEPLOYMENT_DRAINING_SECONDS"])
        except ValueError:
            problems.add("RAILWAY_DEPLOYMENT_DRAINING_SECONDS",
                         env["RAILWAY_DEPLOYMENT_DRAINING_SECONDS"], "must be a number of seconds")

    # --- the app command
    app: tuple[str, ...] = tuple(app_command or ())
    if not app and _get(env, "SIDECAR_APP_COMMAND"):
        try:
            app = tuple(shlex.split(env["SIDECAR_APP_COMMAND"]))
        except ValueError as exc:
            problems.add("SIDECAR_APP_COMMAND", env["SIDECAR_APP_COMMAND"],
                         f"must be a command line with balanced quotes ({exc})")
    if need_app and not app:
        problems.note("APP_COMMAND: nothing to run; give it after `--` "
                      "(sidecar run -- node server.js) or set SIDECAR_APP_COMMAND")
    elif need_app and not _runnable(app[0], env, cwd):
        problems.note(f"APP_COMMAND: {app[0]!r} is not an executable on PATH or a path to one")

    # --- the Litestream config, when the project has one
    user_cfg_path: Path | None = None
    user_doc: dict[str, Any] | None = None
    raw_lc = _get(env, "LITESTREAM_CONFIG")
    if raw_lc is not None:
        user_cfg_path = (cwd / raw_lc).resolve()
        if not user_cfg_path.is_file():
            problems.add("LITESTREAM_CONFIG", raw_lc, "must name an existing Litestream config file")
            user_cfg_path = None
    elif (cwd / "litestream.yml").is_file():
        user_cfg_path = cwd / "litestream.yml"
    if user_cfg_path is not None:
        try:
            doc = yaml.safe_load(user_cfg_path.read_text()) or {}
            if not isinstance(doc, dict):
                raise ValueError("the top level must be a mapping")
            user_doc = _expand_env(doc, env)
        except (yaml.YAMLError, ValueError, OSError) as exc:
            problems.note(f"LITESTREAM_CONFIG: cannot read {user_cfg_path}: "
                          f"{str(exc).splitlines()[0]}")

    # --- databases
    prisma_schema = find_prisma_schema(cwd)
    db_path: Path | None = None
    raw_db = _get(env, "SIDECAR_DB_PATH")
    if raw_db is not None:
        db_path = (cwd / raw_db).resolve() if not Path(raw_db).is_absolute() else Path(raw_db)
    elif _get(env, "DATABASE_URL") is not None:
        try:
            rel = database_path_from_url(env["DATABASE_URL"])
            base = _prisma_base_dir(prisma_schema) if prisma_schema else cwd
            db_path = Path(rel) if Path(rel).is_absolute() else (base / rel).resolve()
        except ValueError:
            problems.add("DATABASE_URL", _redact_url(env["DATABASE_URL"]),
                         "must be a SQLite URL like file:/data/app.db")

    databases: list[Database] = []
    directories: list[DbDir] = []
    local_default = False
    parallelism = _typed(env, "SIDECAR_RESTORE_PARALLELISM", _restore_parallelism,
                         "must be a whole number from 1 to 64", problems)
    metrics_limit = _typed(env, "SIDECAR_DB_METRICS_LIMIT", _metrics_limit,
                           "must be a whole number from 0 to 10000", problems)
    raw_dir = _get(env, "SIDECAR_DB_DIR")
    if raw_dir is None:  # checked even when unused: a typo there is still a typo
        if (raw_pat := _get(env, "SIDECAR_DB_PATTERN")) is not None and (
                why := _pattern_problem(raw_pat)) is not None:
            problems.add("SIDECAR_DB_PATTERN", raw_pat, why)
        if _get(env, "SIDECAR_DB_RECURSIVE") is not None:
            try:
                parse_bool(env["SIDECAR_DB_RECURSIVE"])
            except ValueError:
                problems.add("SIDECAR_DB_RECURSIVE", env["SIDECAR_DB_RECURSIVE"],
                             "must be 1/0 or true/false")
    if user_doc is None and raw_dir is not None:
        if raw_db is not None:
            problems.add("SIDECAR_DB_DIR", raw_dir, "must not be set together with "
                         "SIDECAR_DB_PATH (one database or one directory of them)")
        if (dd := _dir_from_env(env, raw_dir, cwd, problems)) is not None:
            directories.append(dd)
    elif user_doc is not None:
        dbs = user_doc.get("dbs")
        if not isinstance(dbs, list) or not dbs:
            problems.note(f"LITESTREAM_CONFIG: {user_cfg_path} lists no databases under `dbs:`")
        else:
            for i, entry in enumerate(dbs):
                where = f"LITESTREAM_CONFIG dbs[{i}]"
                if isinstance(entry, dict) and entry.get("dir") and not entry.get("path"):
                    if (dd := _dir_entry(entry, user_cfg_path.parent, env, where,
                                         problems)) is not None:
                        directories.append(dd)
                    continue
                if not isinstance(entry, dict) or not entry.get("path"):
                    problems.note(f"{where}: needs a `path` or a `dir` with a `pattern`")
                    continue
                p = str(entry["path"])
                if p.startswith("file:"):
                    problems.note(f"{where}.path: Litestream needs a plain path, not {_show(p)}")
                    continue
                path = Path(p) if Path(p).is_absolute() else (user_cfg_path.parent / p).resolve()
                if (why := db_path_problem(path)) is not None:
                    problems.add(f"{where}.path", str(path), why)
                databases.append(Database(path=path, replica=_replica_from_litestream(
                    entry, env, where, problems)))
            if db_path is not None and databases and not directories and \
                    db_path not in {d.path for d in databases}:
                listed = ", ".join(str(d.path) for d in databases)
                problems.note(f"DATABASE_URL/SIDECAR_DB_PATH: {db_path} is not among the databases "
                              f"in {user_cfg_path} ({listed}); it would not be backed up")
    else:
        if db_path is None:
            if not problems.dropped & {"SIDECAR_DB_PATH", "DATABASE_URL"}:
                problems.note("SIDECAR_DB_PATH: no database given; set "
                              "SIDECAR_DB_PATH=/data/app.db or DATABASE_URL=file:/data/app.db")
            if _get(env, "SIDECAR_REPLICA_URL") is not None:
                parse_replica_url(env["SIDECAR_REPLICA_URL"], env, problems)
        else:
            raw_url = _get(env, "SIDECAR_REPLICA_URL")
            replica: Replica | None = None
            if raw_url is not None:
                replica = parse_replica_url(raw_url, env, problems)
            elif _get(env, "BUCKET") is not None:
                replica = Replica(url=f"s3://{env['BUCKET']}/{db_path.name}",
                                  s3=_s3_settings(env, env["BUCKET"], db_path.name, problems))
            elif _get(env, "RAILWAY_ENVIRONMENT") is not None and not allow_no_backup:
                problems.note("SIDECAR_REPLICA_URL: no replica configured on Railway; add a Bucket "
                              "and set SIDECAR_REPLICA_URL=s3://${{Bucket.BUCKET}}/app.db (or "
                              "BUCKET=${{Bucket.BUCKET}}), or SIDECAR_ALLOW_NO_BACKUP=1")
            if (why := db_path_problem(db_path)) is not None:
                if raw_db is not None:
                    problems.add("SIDECAR_DB_PATH", raw_db, why)
                else:
                    problems.add("DATABASE_URL", _redact_url(env["DATABASE_URL"]), why)
            if replica is None and raw_url is None and not problems.items:
                local_default = True
            databases.append(Database(path=db_path, replica=replica))

    # S3 settings are checked even when no S3 replica uses them: a typo there is still a typo.
    if not any(d.replica and d.replica.s3 for d in databases) and not directories and any(
            _get(env, v) for v in ("SIDECAR_S3_ENDPOINT", "SIDECAR_S3_FORCE_PATH_STYLE")):
        _s3_settings(env, "", "", problems)

    # --- state dir
    state_dir: Path | None = None
    raw_state = _get(env, "SIDECAR_STATE_DIR")
    if raw_state is not None:
        state_dir = (cwd / raw_state).resolve()
    elif databases:
        state_dir = databases[0].path.parent / ".sidecar"
    elif directories:
        state_dir = directories[0].dir / ".sidecar"
    db_var = ("LITESTREAM_CONFIG" if user_doc is not None else
              "SIDECAR_DB_PATH" if raw_db is not None else "DATABASE_URL")
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
            problems.note(f"{'SIDECAR_STATE_DIR' if raw_state else db_var}: {why}")
    if local_default and state_dir is not None and databases:
        d = databases[0]
        databases[0] = Database(path=d.path, replica=Replica(
            url=f"file://{state_dir / 'replica' / d.name}", dir=state_dir / "replica" / d.name))

    # --- migration command
    migrate: tuple[str, ...] | None = None
    migrate_default = False
    raw_mig = env.get("SIDECAR_MIGRATE_COMMAND")
    if raw_mig is None:
        if prisma_schema is not None and shutil.which("npx", path=env.get("PATH")):
            migrate, migrate_default = ("npx", "prisma", "migrate", "deploy"), True
    elif raw_mig.strip():
        try:
            migrate = tuple(shlex.split(raw_mig))
        except ValueError as exc:
            problems.add("SIDECAR_MIGRATE_COMMAND", raw_mig,
                         f"must be a command line with balanced quotes ({exc})")
        else:
            if need_app and not _runnable(migrate[0], env, cwd):
                problems.add("SIDECAR_MIGRATE_COMMAND", raw_mig,
                             f"must start with an executable ({migrate[0]!r} was not found)")

    volume_var = "SIDECAR_VOLUME_PATH" if _get(env, "SIDECAR_VOLUME_PATH") else (
        "RAILWAY_VOLUME_MOUNT_PATH" if _get(env, "RAILWAY_VOLUME_MOUNT_PATH") else None)
    volume_path = None
    if volume_var:
        raw_vol = env[volume_var]
        if not raw_vol.startswith("/"):
            problems.add(volume_var, raw_vol, "must be an absolute path like /data")
        else:
            volume_path = Path(os.path.normpath(raw_vol))

    if problems.items:
        raise ConfigError(f"cannot start: {len(problems.items)} configuration "
                          f"problem{'s' if len(problems.items) > 1 else ''}",
                          problems=problems.items)
    assert state_dir is not None
    return Config(
        databases=tuple(databases), state_dir=state_dir,
        user_litestream_config=user_cfg_path, user_litestream_doc=user_doc,
        http_host=http_host, http_port=http_port, http_max_connections=max_conns,
        admin_token=admin_token,
        migrate_command=migrate, migrate_is_default=migrate_default, app_command=app,
        max_lag=max_lag, lag_check_interval=lag_interval, sync_interval=sync_interval,
        verify_schedule=verify_schedule, app_stop_timeout=stop_timeout, app_restart=app_restart,
        log_format=log_format, on_start_failure=on_fail, heartbeat_url=heartbeat,
        volume_path=volume_path, volume_var=volume_var, replica_timeout=replica_timeout,
        ready_timeout=ready_timeout, litestream_stop_timeout=ls_stop_timeout,
        litestream_bin=_get(env, "SIDECAR_LITESTREAM_BIN"), keep_copies=keep_copies,
        local_default_replica=local_default, prisma_schema=prisma_schema,
        draining_seconds=draining, cwd=cwd,
        directories=tuple(directories), restore_parallelism=parallelism,
        db_metrics_limit=metrics_limit,
    )


def _int_in(text: str, low: int, high: int) -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit()) or not low <= int(t) <= high:
        raise ValueError(text)
    return int(t)


def _restore_parallelism(text: str) -> int:
    return _int_in(text, 1, 64)


def _metrics_limit(text: str) -> int:
    return _int_in(text, 0, 10000)


def _pattern_problem(pattern: str) -> str | None:
    if not pattern.strip() or "/" in pattern or pattern.strip().startswith("."):
        return ("must be a file-name pattern like *.db (no `/`, not starting with `.`: "
                "sidecar's own files beside the databases start with `.`)")
    return None


def _dir_from_env(env: Mapping[str, str], raw_dir: str, cwd: Path,
                  problems: _Problems) -> DbDir | None:
    """SIDECAR_DB_DIR + SIDECAR_DB_PATTERN (+ SIDECAR_DB_RECURSIVE): a generated `dir:` entry
    that always watches, so databases created while the app runs are replicated."""
    path = Path(raw_dir) if Path(raw_dir).is_absolute() else (cwd / raw_dir).resolve()
    ok = True
    if path.exists() and not path.is_dir():
        problems.add("SIDECAR_DB_DIR", raw_dir, "must be a directory (or not exist yet)")
        ok = False
    elif (why := path_problem(str(path / ("n" * 64)), "database directory")) is not None:
        problems.add("SIDECAR_DB_DIR", raw_dir, why)
        ok = False
    pattern = _get(env, "SIDECAR_DB_PATTERN") or "*.db"
    if (why := _pattern_problem(pattern)) is not None:
        problems.add("SIDECAR_DB_PATTERN", pattern, why)
        ok = False
    recursive = False
    try:
        recursive = parse_bool(env.get("SIDECAR_DB_RECURSIVE") or "0")
    except ValueError:
        problems.add("SIDECAR_DB_RECURSIVE", env.get("SIDECAR_DB_RECURSIVE"),
                     "must be 1/0 or true/false")
        ok = False
    rep: Replica | None = None
    raw_url = _get(env, "SIDECAR_REPLICA_URL")
    if raw_url is not None:
        rep = parse_replica_url(raw_url, env, problems)
    elif _get(env, "BUCKET") is not None:
        rep = Replica(url=f"s3://{env['BUCKET']}/{path.name}",
                      s3=_s3_settings(env, env["BUCKET"], path.name, problems))
    else:
        problems.note("SIDECAR_REPLICA_URL: a database directory needs a replica: set "
                      "SIDECAR_REPLICA_URL=s3://BUCKET/PREFIX (each database goes under "
                      "PREFIX/<its file name>)")
    if rep is not None and rep.s3 is None:
        problems.add("SIDECAR_REPLICA_URL", raw_url, "must be an s3:// URL with SIDECAR_DB_DIR")
        rep = None
    if rep is None or not ok:
        return None
    return DbDir(dir=path, pattern=pattern, recursive=recursive, watch=True, replica=rep)


def _dir_entry(entry: dict[str, Any], base: Path, env: Mapping[str, str], where: str,
               problems: _Problems) -> DbDir | None:
    """A `dir:` entry of the project's litestream.yml, read the way Litestream reads it."""
    d = str(entry["dir"])
    path = Path(d) if Path(d).is_absolute() else (base / d).resolve()
    pattern = entry.get("pattern")
    if not isinstance(pattern, str) or _pattern_problem(pattern) is not None:
        problems.note(f"{where}.pattern: a `dir` entry needs a file-name pattern like \"*.db\" "
                      f"(got {_show(str(pattern))})")
        return None
    flags = {}
    for key in ("recursive", "watch"):
        v = entry.get(key, False)
        if not isinstance(v, bool):
            problems.note(f"{where}.{key}: must be true or false (got {_show(str(v))})")
            return None
        flags[key] = v
    rep = _replica_from_litestream(entry, env, where, problems)
    if rep is None:
        return None
    if rep.s3 is None:
        problems.note(f"{where}.replica: a `dir` entry needs an s3 replica")
        return None
    return DbDir(dir=path, pattern=pattern, recursive=flags["recursive"], watch=flags["watch"],
                 replica=rep)


def _runnable(program: str, env: Mapping[str, str], cwd: Path) -> bool:
    """Whether `program` would start: a path to an executable file, or a name on PATH."""
    if "/" in program:
        p = Path(program) if Path(program).is_absolute() else cwd / program
        return p.is_file() and os.access(p, os.X_OK)
    return shutil.which(program, path=env.get("PATH", os.defpath)) is not None


def _admin_token(env: Mapping[str, str], problems: _Problems) -> str | None:
    """SIDECAR_ADMIN_TOKEN, or the contents of SIDECAR_ADMIN_TOKEN_FILE (one trailing newline
    dropped); never echoed."""
    token, var = _get(env, "SIDECAR_ADMIN_TOKEN"), "SIDECAR_ADMIN_TOKEN"
    path = _get(env, "SIDECAR_ADMIN_TOKEN_FILE")
    if path is not None:
        if token is not None:
            problems.note("SIDECAR_ADMIN_TOKEN_FILE: give it or SIDECAR_ADMIN_TOKEN, not both")
            return None
        var = "SIDECAR_ADMIN_TOKEN_FILE"
        try:
            raw = Path(path).read_bytes()
            if len(raw) > 4096:
                raise ValueError("longer than 4096 bytes")
            token = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.note(f"SIDECAR_ADMIN_TOKEN_FILE: cannot read the token from {_show(path)} "
                          f"({why})")
            return None
    if token is None:
        return None
    if len(token) < 16:
        problems.note(f"{var}: the token must be at least 16 characters (got a shorter one)")
        return None
    if token != token.strip() or any(not c.isprintable() for c in token):
        problems.note(f"{var}: the token must be printable, without surrounding spaces")
        return None
    return token


def for_children(env: Mapping[str, str]) -> dict[str, str]:
    """The environment every child gets: the admin token taken out."""
    return {k: v for k, v in env.items() if k not in HIDDEN_FROM_CHILDREN}


def _connection_cap(text: str) -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit()) or not 1 <= int(t) <= 1024:
        raise ValueError
    return int(t)


def _nonneg_int(text: str) -> int:
    v = int(text.strip())
    if v < 1:
        raise ValueError
    return v


def _redact_url(url: str) -> str:
    # A DATABASE_URL for another engine may carry a password: never echo it.
    return re.sub(r"//[^/@]*@", "//***@", url)


def environment_with_flags(values: Mapping[str, str | None]) -> dict[str, str]:
    """The process environment with flag values (by variable name) laid over it."""
    env = dict(os.environ)
    for name, value in values.items():
        if value is not None:
            env[name] = value
    return env


def secrets_of(cfg: Config) -> list[str]:
    """Every secret value the config holds, for scrubbing output."""
    out: list[str] = []
    if cfg.admin_token:
        out.append(cfg.admin_token)
    for db in cfg.databases:
        if db.replica and db.replica.s3 and db.replica.s3.secret_access_key:
            out.append(db.replica.s3.secret_access_key)
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
