"""Everything about talking to Litestream: its config, its environment, its command lines and
its control socket (HTTP over a Unix socket).

Both a generated config and the project's own litestream.yml are rendered by us into the state
dir (mode 0600) with variables already expanded, and Litestream runs with -no-expand-env, so a
`$` inside a secret is never mangled.
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import json
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .config import Config, Database, Replica

# Variables Litestream must not see: 0.5 refuses to start with AWS_CA_BUNDLE set.
_DROP_ENV = ("AWS_CA_BUNDLE",)


def short_socket_path(state_dir: Path, name: str) -> Path:
    """A Unix socket path under the 108-byte limit: in the state dir when it fits, else /tmp."""
    p = state_dir / name
    if len(str(p).encode()) < 100:
        return p
    digest = hashlib.sha256(str(p).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"sidecar-{digest}-{name}"


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def replica_section(replica: Replica, sync_interval: float | None) -> dict[str, Any]:
    if replica.s3 is not None:
        s3 = replica.s3
        out: dict[str, Any] = {"type": "s3", "bucket": s3.bucket, "path": s3.prefix,
                               "region": s3.region, "force-path-style": s3.force_path_style}
        if s3.endpoint:
            out["endpoint"] = s3.endpoint
        if s3.access_key_id:
            out["access-key-id"] = s3.access_key_id
            out["secret-access-key"] = s3.secret_access_key
    else:
        out = {"type": "file", "path": str(replica.dir)}
    if sync_interval is not None:
        out["sync-interval"] = _duration(sync_interval)
    return out


def _align_addressing(doc: dict[str, Any], cfg: Config) -> None:
    """Where the project's litestream.yml leaves `force-path-style` unset, write sidecar's
    choice in, so Litestream and sidecar's own S3 client address the bucket the same way
    (Litestream alone would pick path style for any endpoint, which Railway Buckets reject).
    cfg.databases were built from doc's `dbs`, in order."""
    for entry, db in zip(doc.get("dbs") or [], cfg.databases, strict=False):
        s3 = db.replica.s3 if db.replica else None
        if s3 is None or not isinstance(entry, dict):
            continue
        for rep in [entry.get("replica"), *(entry.get("replicas") or [])]:
            if isinstance(rep, dict) and not rep.get("url") and "force-path-style" not in rep:
                rep["force-path-style"] = s3.force_path_style


def render_config(cfg: Config, metrics_port: int, dbs: tuple[Database, ...] | None = None
                  ) -> dict[str, Any]:
    """The config Litestream runs with: the project's (expanded) or one generated from cfg."""
    sock = short_socket_path(cfg.state_dir, "litestream.sock")
    if cfg.user_litestream_doc is not None:
        doc = copy.deepcopy(cfg.user_litestream_doc)
        doc.pop("exec", None)  # sidecar supervises the app itself
        _align_addressing(doc, cfg)
    else:
        doc = {"dbs": [{"path": str(db.path),
                        "replica": replica_section(db.replica, cfg.sync_interval)}
                       for db in (dbs or cfg.databases) if db.replica is not None]}
    doc["addr"] = f"127.0.0.1:{metrics_port}"
    doc["socket"] = {"enabled": True, "path": str(sock), "permissions": 0o600}
    doc["logging"] = {"type": "json", "level": "info", "stderr": False}
    # Litestream retries its final sync at shutdown for this long; the supervisor waits for it.
    doc.setdefault("shutdown-sync-timeout", _duration(cfg.litestream_stop_timeout))
    return doc


def write_config(cfg: Config, metrics_port: int, path: Path | None = None) -> Path:
    """Write the rendered config (default: into the state dir), mode 0600, atomically."""
    doc = render_config(cfg, metrics_port)
    path = path or cfg.state_dir / "litestream.generated.yml"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# Written by sidecar at start; edit your litestream.yml or the variables.\n")
        yaml.safe_dump(doc, f, sort_keys=False)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def child_env(base: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in _DROP_ENV}
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


# ------------------------------------------------------------------ control socket


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class ControlError(Exception):
    pass


def unix_request(path: Path, method: str, url: str, body: Any = None,
                 timeout: float = 5.0, headers: Mapping[str, str] | None = None
                 ) -> tuple[int, Any]:
    """One HTTP request over a Unix socket; returns (status, decoded JSON or text)."""
    conn = _UnixConnection(str(path), timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json"} if data else {}
        hdrs.update(headers or {})
        conn.request(method, url, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read().decode(errors="replace")
        try:
            return resp.status, json.loads(raw) if raw.strip() else None
        except ValueError:
            return resp.status, raw
    except (OSError, http.client.HTTPException) as exc:
        raise ControlError(f"cannot reach {path}: {exc}") from None
    finally:
        conn.close()


class Control:
    """Litestream's control socket: list, txid, sync, start, stop."""

    def __init__(self, path: Path):
        self.path = path

    def _ok(self, method: str, url: str, body: Any = None, timeout: float = 5.0) -> Any:
        status, data = unix_request(self.path, method, url, body, timeout)
        if status >= 300:
            detail = data.get("error") if isinstance(data, dict) else data
            raise ControlError(f"litestream {method} {url.split('?')[0]}: {status} {detail}")
        return data

    def list(self) -> list[dict[str, Any]]:
        return list((self._ok("GET", "/list") or {}).get("databases") or [])

    def txid(self, db: Path) -> int:
        from urllib.parse import quote

        return int((self._ok("GET", f"/txid?path={quote(str(db))}") or {}).get("txid", 0))

    def sync(self, db: Path, wait: bool = True, timeout: float = 10.0) -> dict[str, Any]:
        return dict(self._ok("POST", "/sync", {"path": str(db), "wait": wait,
                                                "timeout": max(1, int(timeout))},
                             timeout=timeout + 5) or {})

    def stop(self, db: Path, timeout: float = 30.0) -> dict[str, Any]:
        return dict(self._ok("POST", "/stop", {"path": str(db), "timeout": max(1, int(timeout))},
                             timeout=timeout + 5) or {})

    def start(self, db: Path, timeout: float = 30.0) -> dict[str, Any]:
        return dict(self._ok("POST", "/start", {"path": str(db), "timeout": max(1, int(timeout))},
                             timeout=timeout + 5) or {})
