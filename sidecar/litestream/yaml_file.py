"""The config Litestream runs with, rendered by sidecar.

Both a generated config and the project's own litestream.yml are rendered by us with variables
already expanded, and Litestream runs with -no-expand-env, so a `$` inside a secret is never
mangled. No secret is ever written to the volume: the generated config holds no credentials
(Litestream reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment child_env()
gives it), and a project's own config that holds a secret or needed expansion is rendered on a
tmpfs (/dev/shm, /run, ...), mode 0600, created with O_EXCL|O_NOFOLLOW and removed at exit.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from sidecar import nolinks
from sidecar.config import Config, Database, Replica, secrets_of
from sidecar.config.pitr import snapshot_section
from sidecar.litestream.control import short_socket_path
from sidecar.tmpfs import private_file


def _duration(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def replica_section(replica: Replica, sync_interval: float | None) -> dict[str, Any]:
    if replica.s3 is not None:
        s3 = replica.s3
        out: dict[str, Any] = {"type": "s3", "bucket": s3.bucket, "path": s3.prefix,
                               "region": s3.region, "force-path-style": s3.force_path_style}
        if s3.endpoint:
            out["endpoint"] = s3.endpoint
        # No credentials here: Litestream takes them from its environment (child_env).
    else:
        out = {"type": "file", "path": str(replica.dir)}
    if sync_interval is not None:
        out["sync-interval"] = _duration(sync_interval)
    return out


def _align_addressing(doc: dict[str, Any], cfg: Config) -> None:
    """Where the project's litestream.yml leaves `force-path-style` unset, write sidecar's
    choice in, so Litestream and sidecar's own S3 client address the bucket the same way
    (Litestream alone would pick path style for any endpoint, which Railway Buckets reject).
    cfg.databases (path entries) and cfg.directories (dir entries) were built from doc's
    `dbs`, each in order."""
    paths, dirs = iter(cfg.databases), iter(cfg.directories)
    for entry in doc.get("dbs") or []:
        if not isinstance(entry, dict):
            continue
        db = next(dirs, None) if entry.get("dir") and not entry.get("path") else next(paths, None)
        s3 = db.replica.s3 if db is not None and db.replica else None
        if s3 is None:
            continue
        for rep in [entry.get("replica"), *(entry.get("replicas") or [])]:
            if isinstance(rep, dict) and not rep.get("url") and "force-path-style" not in rep:
                rep["force-path-style"] = s3.force_path_style


def render_config(cfg: Config, metrics_port: int) -> dict[str, Any]:
    """The config Litestream runs with: the project's (expanded) or one generated from cfg."""
    sock = short_socket_path(cfg.state_dir, "litestream.sock")
    if cfg.user_litestream_doc is not None:
        doc = copy.deepcopy(cfg.user_litestream_doc)
        doc.pop("exec", None)  # sidecar supervises the app itself
        _align_addressing(doc, cfg)
    else:
        doc = {"dbs": [{"path": str(db.path),
                        "replica": replica_section(db.replica, cfg.sync_interval)}
                       for db in cfg.databases if db.replica is not None]}
        doc["dbs"] += [{"dir": str(d.dir), "pattern": d.pattern, "recursive": d.recursive,
                        "watch": d.watch,
                        "replica": replica_section(d.replica, cfg.sync_interval)}
                       for d in cfg.directories]
        # SIDECAR_PITR_WINDOW: every moment of the window restorable (see pitr.py).
        doc["snapshot"] = snapshot_section(cfg.pitr_window)
    doc["addr"] = f"127.0.0.1:{metrics_port}"
    doc["socket"] = {"enabled": True, "path": str(sock), "permissions": 0o600}
    doc["logging"] = {"type": "json", "level": "info", "stderr": False}
    # Litestream retries its final sync at shutdown for this long; the supervisor waits for it.
    doc.setdefault("shutdown-sync-timeout", _duration(cfg.litestream_stop_timeout))
    return doc


_HEADER = "# Written by sidecar at start; edit your litestream.yml or the variables.\n"


def needs_private_file(cfg: Config, doc: dict[str, Any]) -> bool:
    """Whether the rendered config must not touch the volume: it holds a secret, or it is the
    project's own config and needed `$VAR` expansion (whatever a variable holds, it stays off
    the disk)."""
    # Looked for in the values themselves, not in the YAML text, where a secret may be
    # quoted or escaped.
    if any(s and s in value for value in _strings(doc) for s in secrets_of(cfg)):
        return True
    if cfg.user_litestream_config is not None:
        try:
            return "$" in cfg.user_litestream_config.read_text()
        except OSError:
            return True
    return False


def _strings(node: Any) -> list[str]:
    """Every string in a config document, keys included."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in (*_strings(k), *_strings(v))]
    if isinstance(node, (list, tuple)):
        return [x for v in node for x in _strings(v)]
    return []


def member_doc(cfg: Config, members: list[Database]) -> dict[str, Any]:
    """A config naming each database of a directory entry as a `path` entry: `litestream
    restore -config` does not find the databases of a `dir` entry. A member of the project's
    own entry keeps that entry's replica settings (credentials and all) with the database's
    prefix, as Litestream derives it."""
    entries: list[dict[str, Any]] = []
    user = [e for e in ((cfg.user_litestream_doc or {}).get("dbs") or [])
            if isinstance(e, dict) and e.get("dir") and not e.get("path")]
    for m in members:
        assert m.replica is not None
        section = replica_section(m.replica, None)
        for entry, d in zip(user, cfg.directories, strict=False):
            if m.path.is_relative_to(d.dir) and isinstance(entry.get("replica"), dict):
                section = {k: v for k, v in copy.deepcopy(entry["replica"]).items()
                           if k not in ("url", "sync-interval")}
                section.update(replica_section(m.replica, None))
                break
        entries.append({"path": str(m.path), "replica": section})
    return {"dbs": entries, "logging": {"type": "json", "level": "info", "stderr": False}}


def write_member_config(cfg: Config, members: list[Database], name: str) -> Path:
    """Write member_doc like write_config writes the main config (a secret stays off disk)."""
    return write_doc(cfg, member_doc(cfg, members), cfg.state_dir / name)


def write_config(cfg: Config, metrics_port: int, path: Path | None = None) -> Path:
    """Write the rendered config, mode 0600: into `path` (default: the state dir) when it holds
    no secret, else into a private file on a tmpfs (see tmpfs.private_file). Returns where."""
    return write_doc(cfg, render_config(cfg, metrics_port),
                      path or cfg.state_dir / "litestream.generated.yml")


def dump(doc: dict[str, Any]) -> str:
    """The config as YAML, written by the YAML library: block style, keys in the order
    rendered, no line folding (a long path or URL stays on one line), non-ASCII as is."""
    return _HEADER + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False,
                                    allow_unicode=True, width=float("inf"))


def write_doc(cfg: Config, doc: dict[str, Any], path: Path) -> Path:
    text = dump(doc)
    if needs_private_file(cfg, doc):
        target = private_file("litestream.yml")
        fd = os.open(target, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return target
    if path.parent == cfg.state_dir:
        nolinks.private_dir(path.parent, "the state directory")
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path
