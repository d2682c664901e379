"""Prove the backup restores: restore the latest backup into a temporary directory, run
PRAGMA integrity_check on it and compare its TXID with what Litestream has uploaded. Runs inside
the daemon when one is running (so /status and the
sidecar_backup_verify_last_success_timestamp_seconds metric show it), else here.

Without --db every database is verified: each configured one and every database of a
directory entry that is on the volume (SIDECAR_RESTORE_PARALLELISM at a time), one line each,
then the failures by name. Exit 0 when every database verifies; 4 when the only failures are
replicas that cannot be read within SIDECAR_REPLICA_TIMEOUT; 1 otherwise.
SIDECAR_VERIFY_SCHEDULE runs the same check on a cron.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sidecar import config
from sidecar.api import VerifyRequest
from sidecar.cli import add_settings, settings_from_args
from sidecar.daemon.control_client import NoDaemon, call, socket_path
from sidecar.errors import OperatorError
from sidecar.recovery import verification
from sidecar.recovery.backups import standalone_tools


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="PATH",
                        help="only this database (a path, or a file of a database directory); "
                             "default: every database, each directory's included")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_settings(parser)


def main(args: argparse.Namespace) -> int:
    cfg = config.load(config.environment_with_flags(settings_from_args(args)), need_app=False)
    dbs = verification.targets(cfg, args.db)
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
            results = verification.verify_all(cfg, dbs, tools)
    failed = [r for r in results if not r.get("ok")]
    if args.json:
        print(json.dumps({"ok": not failed, "verified_by": where, "databases": results},
                         indent=2))
    else:
        for r in results:
            print(f"{'OK  ' if r.get('ok') else 'FAIL'}  {r['db']}  backup txid "
                  f"{r.get('backup_txid') or '-'}  local txid {r.get('local_txid') or '-'}  "
                  f"uploaded txid {r.get('replicated_txid') or '-'}  "
                  f"integrity_check {r.get('integrity_check') or '-'}  "
                  f"({r.get('duration_seconds')}s)")
            if r.get("error"):
                print(f"      {r['error']}")
        if not results:
            print("no database to verify")
        if failed:
            names = ", ".join(r["db"] for r in failed[:20]) + (
                f" and {len(failed) - 20} more" if len(failed) > 20 else "")
            print(f"{len(failed)} of {len(results)} failed: {names}")
        print(f"verified by {where}")
    return verification.exit_code(results)
