"""The settings table: every variable sidecar reads, declared once with its flag, its parser,
its default and what it expects (the words of the error when a value does not parse).

The CLI turns the rows with a flag into options (flags override the environment), config.load
reads every row in one loop, and the tests check the table against the README. Adding a
setting is one row here (plus its Config field, or the cross-field rule that uses it).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.config.parsers import (
    Invalid,
    absolute_path,
    ca_file,
    choice,
    command,
    cron,
    database_path_from_url,
    db_pattern,
    endpoint_url,
    http_url,
    litestream_duration,
    parse_addr,
    parse_bool,
    parse_duration,
    path_problem,
    positive_duration,
    positive_number,
    text,
    token,
    whole,
)

# ---------------------------------------------------------------- the table

DURATION = "must be a positive duration like 30s"


@dataclass(frozen=True)
class Setting:
    env: str
    flag: str | None  # None: no flag (a secret's flag value would show in every `ps`)
    help: str
    parse: Callable[[str], Any] = text
    expects: str = "must be text"  # the error when `parse` raises a plain ValueError
    default: str | None = None  # text, parsed like a given value, shown in --help
    field: str | None = None  # the Config field it fills; None: a cross-field rule reads it
    fallback: str | None = None  # a Railway Bucket / platform name read when env is unset
    secret: bool = False  # never echoed in an error
    path: bool = False  # holds a path: its length and encoding are checked before anything
    blank_is_value: bool = False  # set but blank is a value ("disable"), not "unset"
    instead_of: str | None = None  # read only when that setting is unset


SETTINGS: tuple[Setting, ...] = (
    Setting("SIDECAR_DB_PATH", "--db-path", "the SQLite database file (else DATABASE_URL)",
            path=True),
    Setting("DATABASE_URL", "--database-url", "Prisma-style URL file:PATH[?params]",
            database_path_from_url, "must be a SQLite URL like file:/data/app.db", path=True,
            instead_of="SIDECAR_DB_PATH"),
    Setting("SIDECAR_DB_DIR", "--db-dir",
            "a directory of databases (one per tenant), instead of SIDECAR_DB_PATH", path=True),
    # Parsed even without SIDECAR_DB_DIR: a typo there is still a typo.
    Setting("SIDECAR_DB_PATTERN", "--db-pattern", "which files of SIDECAR_DB_DIR are databases",
            db_pattern, "must be a file-name pattern like *.db", "*.db"),
    Setting("SIDECAR_DB_RECURSIVE", "--db-recursive",
            "1 to look in subdirectories of SIDECAR_DB_DIR too", parse_bool,
            "must be 1/0 or true/false", "0"),
    Setting("SIDECAR_RESTORE_PARALLELISM", "--restore-parallelism",
            "databases of a directory restored at once at start", whole(1, 64),
            "must be a whole number from 1 to 64", "8", field="restore_parallelism"),
    Setting("SIDECAR_BUCKET_BAD_NAMES", "--bucket-bad-names",
            "a backup in a directory's prefix whose name breaks the database-name rule: "
            "refuse the start, or skip it with a warning", choice("refuse", "skip"),
            "must be `refuse` or `skip`", "refuse", field="bucket_bad_names"),
    Setting("SIDECAR_RESTORE_MAX_DATABASES", "--restore-max-databases",
            "databases of a directory restored at start, at most (a bucket holding more "
            "refuses the start)", whole(1), "must be a whole number >= 1", "10000",
            field="restore_max_databases"),
    Setting("SIDECAR_RESTORE_CONCURRENCY", "--restore-concurrency",
            "downloads at once per restore from S3 (a restore's files and byte ranges fetched "
            "in parallel into a mirror beside the database); 1 lets Litestream fetch alone",
            whole(1, 64), "must be a whole number from 1 to 64", "8",
            field="restore_concurrency"),
    Setting("SIDECAR_DB_METRICS_LIMIT", "--db-metrics-limit",
            "per-database lag series of a directory entry, at most (sorted by path)",
            whole(0, 10000), "must be a whole number from 0 to 10000", "100",
            field="db_metrics_limit"),
    Setting("SIDECAR_REPLICA_URL", "--replica-url", "s3://BUCKET/PREFIX or file:///DIR",
            path=True),
    Setting("SIDECAR_S3_ENDPOINT", "--s3-endpoint", "S3-compatible endpoint URL (else ENDPOINT)",
            endpoint_url, "must be an http:// or https:// URL", fallback="ENDPOINT"),
    Setting("SIDECAR_S3_REGION", "--s3-region", "S3 region (else REGION)", default="us-east-1",
            fallback="REGION"),
    Setting("SIDECAR_S3_FORCE_PATH_STYLE", "--s3-force-path-style",
            "true/false; default true with a custom endpoint, false for storage.railway.app",
            parse_bool, "must be true or false"),
    Setting("AWS_ACCESS_KEY_ID", None, "S3 access key id (else ACCESS_KEY_ID)",
            fallback="ACCESS_KEY_ID"),
    Setting("AWS_SECRET_ACCESS_KEY", None, "S3 secret key (else SECRET_ACCESS_KEY)",
            fallback="SECRET_ACCESS_KEY", secret=True),
    # AWS's own variable (boto3, the AWS CLI and SDKs read it); SSL_CERT_FILE is what Python's
    # ssl and Go read. No flag: other tools read these names as they are.
    Setting("AWS_CA_BUNDLE", None,
            "a CA bundle (PEM) to trust for an HTTPS endpoint (else SSL_CERT_FILE)", ca_file,
            "must name a readable PEM file of CA certificates", field="ca_bundle",
            fallback="SSL_CERT_FILE", path=True),
    Setting("BUCKET", None, "a Railway Bucket's name: s3://BUCKET/<db file name> as replica"),
    Setting("LITESTREAM_CONFIG", "--litestream-config",
            "use this Litestream config (default ./litestream.yml when present)", path=True),
    Setting("SIDECAR_STATE_DIR", "--state-dir",
            "copies, control socket, generated config (default DB_DIR/.sidecar)", path=True),
    Setting("SIDECAR_HTTP_ADDR", "--http-addr", "metrics/health/admin listener, or 'off'",
            parse_addr, "must be HOST:PORT like [::]:9090, or `off`", "[::]:9090"),
    Setting("SIDECAR_HTTP_MAX_CONNECTIONS", "--http-max-connections",
            "concurrent connections the HTTP listener accepts", whole(1, 1024),
            "must be a whole number from 1 to 1024", "32", field="http_max_connections"),
    Setting("SIDECAR_ADMIN_TOKEN", None, "bearer token enabling /admin/* endpoints", token,
            secret=True),
    Setting("SIDECAR_ADMIN_TOKEN_FILE", "--admin-token-file",
            "file holding the bearer token (instead of SIDECAR_ADMIN_TOKEN)", path=True),
    Setting("SIDECAR_MIGRATE_COMMAND", "--migrate-command",
            "migration command; empty disables (default: npx prisma migrate deploy if a schema "
            "exists)", command, path=True, blank_is_value=True),
    Setting("SIDECAR_APP_COMMAND", "--app-command", "app command when none follows `--`",
            command, path=True),
    Setting("SIDECAR_MAX_LAG_SECONDS", "--max-lag", "readiness fails above this lag",
            positive_number, "must be a positive number of seconds", "60", field="max_lag"),
    Setting("SIDECAR_LAG_CHECK_INTERVAL", "--lag-check-interval",
            "how often the bucket is checked", positive_duration,
            "must be a positive duration like 10s, 500ms or 1m", "10s",
            field="lag_check_interval"),
    Setting("SIDECAR_SYNC_INTERVAL", "--sync-interval", "Litestream sync interval",
            litestream_duration, "must be a positive duration like 1s or 500ms", "1s",
            field="sync_interval"),
    Setting("SIDECAR_PITR_WINDOW", "--pitr-window",
            "how far back every moment stays restorable (generated config: snapshots every "
            "half of it, kept for 1.5 times it)", litestream_duration,
            "must be a positive duration like 24h or 90m", "24h", field="pitr_window"),
    Setting("SIDECAR_VERIFY_SCHEDULE", "--verify-schedule",
            "cron schedule for backup verification; empty disables", cron,
            "must be a 5-field cron expression like '17 3 * * *', or empty", "17 3 * * *",
            field="verify_schedule", blank_is_value=True),
    Setting("SIDECAR_APP_STOP_TIMEOUT", "--app-stop-timeout", "grace period before SIGKILL",
            parse_duration, "must be a duration like 10s (0 allowed)", "10s",
            field="app_stop_timeout"),
    Setting("SIDECAR_APP_RESTART", "--app-restart", "no | on-failure", choice("no", "on-failure"),
            "must be `no` or `on-failure`", "no", field="app_restart"),
    # Read by the CLI itself, before the config (the config's own errors are logged in it).
    Setting("SIDECAR_LOG_FORMAT", "--log-format", "json | console (default: json unless a "
            "terminal)", choice("json", "console"), "must be `json` or `console`"),
    Setting("SIDECAR_ON_START_FAILURE", "--on-start-failure", "exit | hold", choice("exit", "hold"),
            "must be `exit` or `hold`", "exit", field="on_start_failure"),
    Setting("SIDECAR_HEARTBEAT_URL", "--heartbeat-url", "called after each healthy backup check",
            http_url, "must be an http:// or https:// URL", field="heartbeat_url"),
    Setting("SIDECAR_VOLUME_PATH", "--volume-path",
            "the persistent volume's mount point (else RAILWAY_VOLUME_MOUNT_PATH)", absolute_path,
            "must be an absolute path like /data", field="volume_path",
            fallback="RAILWAY_VOLUME_MOUNT_PATH", path=True),
    Setting("RAILWAY_ENVIRONMENT", None, "set by Railway: a replica is required there"),
    Setting("SIDECAR_ALLOW_NO_BACKUP", "--allow-no-backup",
            "1 to run on Railway without a replica", parse_bool, "must be 1/0 or true/false", "0"),
    Setting("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", None,
            "set by Railway: the grace between SIGTERM and SIGKILL", parse_duration,
            "must be a number of seconds", field="draining_seconds"),
    Setting("SIDECAR_REPLICA_TIMEOUT", "--replica-timeout",
            "bound on deciding whether the replica holds backups at start", positive_duration,
            DURATION, "30s", field="replica_timeout"),
    Setting("SIDECAR_READY_TIMEOUT", "--ready-timeout",
            "bound on waiting for Litestream to open every DB", positive_duration, DURATION, "30s",
            field="ready_timeout"),
    Setting("SIDECAR_LITESTREAM_STOP_TIMEOUT", "--litestream-stop-timeout",
            "bound on Litestream's final sync at shutdown", litestream_duration, DURATION, "30s",
            field="litestream_stop_timeout"),
    Setting("SIDECAR_LITESTREAM_BIN", "--litestream-bin", "the Litestream binary (default: on PATH)",
            field="litestream_bin", path=True),
    Setting("SIDECAR_KEEP_COPIES", "--keep-copies", "pre-migration copies to keep", whole(1),
            "must be a whole number >= 1", "3", field="keep_copies"),
)

BY_NAME = {s.env: s for s in SETTINGS}
# Every name a value can come from: the settings and their fallbacks.
VARIABLES = tuple(s.env for s in SETTINGS) + tuple(s.fallback for s in SETTINGS if s.fallback)
SECRET_ENV = tuple(n for s in SETTINGS if s.secret for n in (s.env, s.fallback) if n)
# Never passed to a child (app, Litestream, migration command): the token is sidecar's own.
HIDDEN_FROM_CHILDREN = ("SIDECAR_ADMIN_TOKEN", "SIDECAR_ADMIN_TOKEN_FILE")


# ---------------------------------------------------------------- reading values


def show(value: str) -> str:
    """A value as an error quotes it: JSON-quoted, cut short, a URL's password masked (a
    DATABASE_URL for another engine may carry one)."""
    value = re.sub(r"//[^/@]*@", "//***@", value)
    if len(value) > 80:  # a thousand digits say nothing more than the first eighty
        return json.dumps(value[:77]) + f"... ({len(value)} characters)"
    return json.dumps(value)


class Problems:
    """Every problem found, in order, each once; a secret's value is never quoted."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.dropped: set[str] = set()  # variables already reported as unusable

    def add(self, var: str, value: str | None, expected: str, secret: bool = False) -> None:
        shown = "(secret)" if secret or var in SECRET_ENV else show(value or "")
        self.note(f"{var}: {expected} (got {shown})")

    def note(self, text: str) -> None:
        if text not in self.items:  # one S3 setting shared by several databases: said once
            self.items.append(text)


def given(env: Mapping[str, str], s: Setting) -> tuple[str, str] | None:
    """(variable, raw value) the setting takes its value from, or None when unset."""
    for name in (s.env, s.fallback):
        if name is None:
            continue
        raw = env.get(name)
        if raw is not None and (s.blank_is_value or raw.strip() != ""):
            return name, raw
    return None


def parse(s: Setting, var: str, raw: str, problems: Problems) -> Any:
    """`raw` through the setting's parser; a failure becomes one problem naming `var`."""
    try:
        return s.parse(raw)
    except Invalid as exc:
        problems.add(var, raw, str(exc), s.secret)
    except (ValueError, TypeError):
        problems.add(var, raw, s.expects, s.secret)
    return None


def read(env: Mapping[str, str], s: Setting, problems: Problems) -> Any:
    """The setting's value: given, else its default, else None."""
    if s.instead_of is not None and given(env, BY_NAME[s.instead_of]) is not None:
        return None
    found = given(env, s)
    if found is None:
        return None if s.default is None else s.parse(s.default)
    return parse(s, found[0], found[1], problems)


def _utf8(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def checked_env(env: Mapping[str, str], problems: Problems) -> dict[str, str]:
    """`env` without the values that cannot be used at all (not UTF-8, over-long paths), each
    reported by name, so nothing later stumbles on them."""
    out = dict(env)
    paths = {n for s in SETTINGS if s.path for n in (s.env, s.fallback) if n}
    for name in sorted(VARIABLES):
        value = env.get(name)
        if value is None:
            continue
        why = path_problem(value, "value") if name in paths else (
            None if _utf8(value) else "the value must be valid UTF-8 (it holds bytes that are not)")
        if why is not None:
            problems.note(f"{name}: {why}")
            problems.dropped.add(name)
            out.pop(name)
    return out


def for_children(env: Mapping[str, str]) -> dict[str, str]:
    """The environment every child gets: the admin token taken out."""
    return {k: v for k, v in env.items() if k not in HIDDEN_FROM_CHILDREN}


def environment_with_flags(values: Mapping[str, str | None]) -> dict[str, str]:
    """The process environment with flag values (by variable name) laid over it."""
    env = dict(os.environ)
    for name, value in values.items():
        if value is not None:
            env[name] = value
    return env
