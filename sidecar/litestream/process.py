"""Running Litestream: its environment, its command lines, and its log lines folded into ours."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sidecar.bucket import trust
from sidecar.config import HIDDEN_FROM_CHILDREN, Database


def child_env(base: Mapping[str, str]) -> dict[str, str]:
    """The environment of every Litestream sidecar runs (replicate, restore, verification,
    helpers): no admin token (it is for sidecar's own listener only); AWS_CA_BUNDLE's CA
    given as SSL_CERT_FILE instead (bucket/trust.py: 0.5 cannot start with AWS_CA_BUNDLE
    set); the S3 credentials under the names it reads (a Railway Bucket's ACCESS_KEY_ID /
    SECRET_ACCESS_KEY as fallbacks, as in config), and a session token only with the
    AWS_ACCESS_KEY_ID it was issued with, as sidecar's own client sends it."""
    env = {k: v for k, v in base.items() if k not in HIDDEN_FROM_CHILDREN}
    trust.litestream_env(env)
    for aws, railway in (("AWS_ACCESS_KEY_ID", "ACCESS_KEY_ID"),
                         ("AWS_SECRET_ACCESS_KEY", "SECRET_ACCESS_KEY")):
        if not env.get(aws) and env.get(railway):
            env[aws] = env[railway]
            for token in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
                env.pop(token, None)
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replicate_argv(binary: str, config_path: Path) -> list[str]:
    return [binary, "replicate", "-config", str(config_path), "-no-expand-env"]


def restore_argv(binary: str, config_path: Path, db: Database, output: Path,
                 txid: str | None = None, timestamp: str | None = None,
                 dry_run: bool = False) -> list[str]:
    argv = [binary, "restore", "-config", str(config_path), "-no-expand-env", "-o", str(output)]
    if txid:
        argv += ["-txid", txid]
    if timestamp:
        argv += ["-timestamp", timestamp]
    if dry_run:
        argv.append("-dry-run")
    else:
        argv += ["-json"]
    argv.append(str(db.path))
    return argv


# Litestream's slog levels, as the logger method that writes them in sidecar's stream (where
# sidecar/log.py turns `warning` into Railway's `warn`).
_LEVEL_METHOD = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning",
                 "error": "error"}
# Keys of a Litestream line that would collide with the fields of ours (or with structlog's
# own `event` argument): kept, under `ls_`.
_OURS = ("event", "message", "level", "timestamp", "component", "logger", "exception",
         "exc_info")


def log_line(line: str, logger: Any, on_error: Callable[[str], None] | None = None,
             **extra: Any) -> None:
    """One of Litestream's lines as one of ours: its `msg` as our message, its level mapped
    (`WARN` is a warning, `ERROR` an error), its other fields kept; a line that is not
    Litestream's JSON is logged whole as `litestream output`."""
    line = line.strip()
    if not line:
        return
    try:
        rec = json.loads(line)
    except ValueError:
        rec = None
    if not isinstance(rec, dict):
        logger.info("litestream output", **extra, line=line)
        return
    level = str(rec.pop("level", "INFO")).lower()
    msg = str(rec.pop("msg", "") or "") or "litestream output"
    rec.pop("time", None)
    fields = dict(extra)
    for key, value in rec.items():
        fields[f"ls_{key}" if key in _OURS or key in extra else key] = value
    if level == "error" and on_error is not None:
        on_error(f"{msg}: {rec.get('error', '')}".strip(": "))
    getattr(logger, _LEVEL_METHOD.get(level, "info"))(msg, **fields)


def fold_output(lines: Iterable[bytes], logger: Any, on_error: Callable[[str], None]) -> None:
    """Fold Litestream's JSON log lines into ours (log_line); each error line also goes to
    `on_error` (the supervisor keeps the last one to explain an exit)."""
    for raw in lines:
        log_line(raw.decode(errors="replace"), logger, on_error)
