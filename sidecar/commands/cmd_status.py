"""Show what the running sidecar is doing: its state (running, held and why, restoring), the
app and Litestream processes, each database's positions, the last restore and verification.
Asks the daemon over its control socket in the state dir; exit 1 when no sidecar is running.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sidecar import config
from sidecar.cli import add_settings, settings_from_args
from sidecar.daemon.control_client import NoDaemon, call, socket_path
from sidecar.errors import OperatorError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the status document as JSON")
    add_settings(parser)


def fetch(cfg: config.Config) -> dict[str, Any]:
    try:
        code, data = call(socket_path(cfg), "GET", "/status", timeout=15)
    except NoDaemon as exc:
        raise OperatorError(f"cannot get the status: {exc}",
                            hint="start it with `sidecar run`; `sidecar check` works without it"
                            ) from None
    if code != 200 or not isinstance(data, dict):
        raise OperatorError(f"cannot get the status: the daemon answered {code}")
    return data


def _line(label: str, value: Any) -> None:
    print(f"{label:<18} {value}")


def show(doc: dict[str, Any]) -> None:
    _line("state", doc.get("state"))
    _line("pid", doc.get("pid"))
    failure = doc.get("failure")
    if failure:
        _line("held because", failure.get("error"))
        for p in failure.get("problems") or []:
            _line("", f"- {p}")
        if failure.get("fix"):
            _line("fix", failure["fix"])
        _line("then", "sidecar resume")
    for name, child in (doc.get("children") or {}).items():
        if isinstance(child, dict):
            state = (f"pid {child.get('pid')}, up {child.get('uptime_seconds')}s"
                     if child.get("running") else f"not running (last exit {child.get('last_exit_code')})")
            _line(name, f"{state}, restarts {child.get('restarts', 0)}")
    for db in doc.get("databases") or []:
        if not isinstance(db, dict):
            continue
        _line("database", db.get("path"))
        for key in ("replica", "size_bytes", "local_txid", "replica_txid", "lag_seconds",
                    "last_upload"):
            if db.get(key) is not None:
                _line(f"  {key}", db[key])
    job = doc.get("manual_restore")
    if job:
        _line("manual restore", f"{job.get('state')} ({job.get('target')}) txid {job.get('txid')}"
              + (f": {job['error']}" if job.get("error") else ""))
        for path in job.get("moved_aside") or []:
            _line("  kept", path)
    sched = doc.get("verification")
    if isinstance(sched, dict):
        _line("next verification", f"{sched['next']} ({sched['schedule']}, UTC)"
              if sched.get("schedule") else "none (SIDECAR_VERIFY_SCHEDULE is empty)")
    ver = doc.get("last_verification")
    if isinstance(ver, dict):
        for res in ver.get("databases") or []:
            if isinstance(res, dict) and "ok" in res:
                _line("verification", f"{'OK' if res['ok'] else 'FAIL'} at {res.get('checked_at')}"
                      f" txid {res.get('backup_txid')}"
                      + (f": {res['error']}" if res.get("error") else ""))


def main(args: argparse.Namespace) -> int:
    cfg = config.load(config.environment_with_flags(settings_from_args(args)), need_app=False)
    doc = fetch(cfg)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        show(doc)
    return 0
