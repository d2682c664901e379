"""Prove the backup restores: restore the latest backup into a temporary directory, run
PRAGMA integrity_check on it and compare its TXID with what Litestream has uploaded. Runs inside
the daemon when one is running (so /status and the
sidecar_backup_verify_last_success_timestamp_seconds metric show it), else here. Exit 0 when
every database verifies, 1 otherwise. SIDECAR_VERIFY_SCHEDULE runs the same check on a cron.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sidecar import config
from sidecar.backups import pick_database, standalone_tools, verify
from sidecar.cli import add_settings, settings_from_args
from sidecar.daemon.api import VerifyRequest
from sidecar.daemon.control import NoDaemon, call, socket_path
from sidecar.errors import OperatorError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="PATH",
                        help="only this database (a path, or a file of a database directory)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_settings(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config.load(config.environment_with_flags(settings_from_args(args)), need_app=False)
    dbs = [pick_database(cfg, args.db)] if args.db else list(cfg.databases)
    where = "the running sidecar"
    try:
        code, data = call(socket_path(cfg), "POST", "/verify",
                          VerifyRequest(db=args.db), timeout=3600)
        if code not in (200, 500) or not isinstance(data, dict) or "databases" not in data:
            err = data.get("error") if isinstance(data, dict) else data
            raise OperatorError(f"cannot verify: {err}")
        results: list[dict[str, Any]] = data["databases"]
    except NoDaemon:
        where = "this shell (no sidecar running: the local txid is not compared)"
        with standalone_tools(cfg) as tools:
            results = [verify(cfg, db, tools) for db in dbs]
    ok = all(r.get("ok") for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "verified_by": where, "databases": results}, indent=2))
    else:
        for r in results:
            print(f"{'OK  ' if r.get('ok') else 'FAIL'}  {r['db']}  backup txid "
                  f"{r.get('backup_txid') or '-'}  local txid {r.get('local_txid') or '-'}  "
                  f"uploaded txid {r.get('replicated_txid') or '-'}  "
                  f"integrity_check {r.get('integrity_check') or '-'}  "
                  f"({r.get('duration_seconds')}s)")
            if r.get("error"):
                print(f"      {r['error']}")
        print(f"verified by {where}")
    return 0 if ok else 1
