"""Restore a database from its backup, to the latest state, a point in time (--timestamp) or a
transaction (--txid).

With --output PATH the backup is restored into that file only; the live database is untouched
and no daemon is needed.

Without --output it is a fenced live restore done by the running sidecar: it stops the app,
stops replication of the database, restores into a temporary file, integrity-checks it, moves
the current database (with its -wal/-shm) aside into the state dir (nothing is deleted), renames
the restored file into place, runs the migration command on it (after a safety copy: an older
point in time may predate the app's migrations), resumes replication (so the restored state
becomes the newest backup) and starts the app again. Any failure before the rename changes
nothing and restarts the app on the old database. A failing migration holds (exit 1): the app
and the database's replication stay stopped until `sidecar resume` or another restore.

--dry-run prints the plan (files, TXID, bytes to download). Without --yes the live restore asks
for confirmation on a terminal and refuses when there is none.

--list prints the moments each database can be restored to, read from the bucket (no daemon
needed): the oldest and newest, the granularity of each stretch, and the points themselves
(newest first, --limit N of them). Every listed time restores exactly its TXID.

--undo puts back the database the last live restore (or undo) replaced, through the same
fenced steps; the database it replaces is kept, so a second --undo redoes.

--dry-run and --output probe the replica within SIDECAR_REPLICA_TIMEOUT first, and --output
stops a restore whose file has not grown for as long: a dead or black-holed bucket ends them
with one error and exit 4, leaving nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sidecar import config
from sidecar.api import RestoreRequest, RestoreStatusRequest, Target, UndoRequest, parse_target
from sidecar.bucket import restore_points
from sidecar.cli import add_settings, settings_from_args
from sidecar.daemon.control_client import NoDaemon, call, socket_path
from sidecar.errors import OperatorError, ReplicaUnreachable
from sidecar.recovery import reachable, restore
from sidecar.recovery.backups import pick_database, plan, restore_to_output, standalone_tools


def add_arguments(parser: argparse.ArgumentParser) -> None:
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--list", action="store_true",
                      help="list the moments each database can be restored to (from the "
                           "bucket; no daemon needed)")
    when.add_argument("--undo", action="store_true",
                      help="put back the database the last live restore replaced (a second "
                           "--undo redoes)")
    when.add_argument("--timestamp", metavar="RFC3339",
                      help="restore the state as of this time, e.g. 2025-01-31T13:45:00Z")
    when.add_argument("--txid", metavar="HEX", help="restore up to this transaction (hex)")
    parser.add_argument("--output", "-o", type=Path, metavar="PATH",
                        help="restore into this file instead of the live database (no daemon "
                             "needed)")
    parser.add_argument("--force", action="store_true",
                        help="with --output: replace PATH if it exists")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask for confirmation before a live restore")
    parser.add_argument("--db", metavar="PATH",
                        help="which database, when there are several (a path, or a file of a "
                             "database directory: t1.db)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="with --list: print at most N points per database (newest first)")
    add_settings(parser)


def _bytes(n: Any) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return str(n)


def print_plan(p: dict[str, Any], live: bool, aside: Path) -> None:
    print(f"database:     {p['db']}")
    print(f"replica:      {p['replica']}")
    if p.get("layout") == "0.3":
        when = f"the state at {p['target']['timestamp']}" if p["target"].get("timestamp") \
            else "the latest state"
        print(f"restore to:   {when} of a Litestream 0.3 backup (generations/)")
        print("download:     the latest generation's snapshot and WAL (no 0.5 plan to list)")
    else:
        print(f"restore to:   txid {p['txid']}" + (
            f" (range {p['txid_range'][0]}-{p['txid_range'][1]})" if p.get("txid_range") else ""))
        print(f"download:     {len(p['files'])} files, {_bytes(p['download_bytes'])}")
    for f in p["files"]:
        print(f"  level {f['level']}  {f['file']}  {_bytes(f['size']):>10}  {f['created']}")
    if live:
        print("steps:        stop the app; stop replication of the database; restore into a "
              "temporary file;\n              integrity_check it; move the current database "
              f"and its -wal/-shm aside into\n              {aside}; rename the restored file "
              "into place; run the migration\n              command on it (after a safety "
              "copy); resume replication; start the app")


def _confirm(db: str, target: Target) -> None:
    if not sys.stdin.isatty():
        raise OperatorError("cannot restore the live database without --yes: there is no "
                            "terminal to ask for confirmation",
                            hint="add --yes, or --dry-run to see the plan first")
    answer = input(f"Replace {db} with {target.describe()}? The app will be stopped while it "
                   "runs. Type 'yes' to continue: ")
    if answer.strip().lower() not in ("yes", "y"):
        raise OperatorError("restore cancelled; nothing was changed")


def _request(sock: Path, method: str, url: str, body: RestoreRequest | UndoRequest | None = None,
             timeout: float = 300) -> dict[str, Any]:
    try:
        code, data = call(sock, method, url, body, timeout=timeout)
    except NoDaemon as exc:
        raise OperatorError(f"cannot restore: {exc}") from None
    if code >= 400 or not isinstance(data, dict):
        if not isinstance(data, dict):
            raise OperatorError(f"cannot restore: the daemon answered {code}: {data}")
        raise OperatorError(str(data.get("error")), problems=data.get("problems"),
                            hint=data.get("fix"))
    return data


def live_restore(cfg: config.Config, target: Target, db_arg: str | None, as_json: bool,
                 undo: bool = False) -> int:
    sock = socket_path(cfg)
    if undo:
        job = _request(sock, "POST", "/undo", UndoRequest(db=db_arg))
        what = f"the database kept at {job['undo_of']['kept']}"
        print(f"undo {job['id']} of {job['db']}: putting back {what} (txid "
              f"{job['txid'] or 'unknown'}, replaced {job['undo_of']['replaced_at']}) started",
              file=sys.stderr)
    else:
        job = _request(sock, "POST", "/restore",
                       RestoreRequest(txid=target.txid, timestamp=target.timestamp, db=db_arg))
        print(f"restore {job['id']} of {job['db']} to {target.describe()} (txid "
              f"{job['txid']}) started", file=sys.stderr)
    last_state, last_print = None, time.monotonic()
    while job["state"] not in ("done", "failed", "held"):
        time.sleep(0.3)
        job = _request(sock, "GET", "/restore?" + urlencode(RestoreStatusRequest(id=job["id"]).as_json()))
        now = time.monotonic()
        if job["state"] != last_state:
            print(f"  {job['state']}", file=sys.stderr)
            last_state, last_print = job["state"], now
        elif job["state"] == "restoring" and now - last_print >= 2:
            total = job.get("download_bytes")
            print(f"  restoring: {_bytes(job.get('bytes_written'))} written"
                  + (f" (download {_bytes(total)})" if total else ""), file=sys.stderr)
            last_print = now
    if as_json:
        print(json.dumps(job, indent=2))
    if job["outcome"] == "migration-failed":
        status = _request(sock, "GET", "/status")
        failure = status.get("failure") or {}
        raise OperatorError(f"restored, but {job.get('error') or 'the migration failed'}",
                            problems=failure.get("problems"),
                            hint=failure.get("fix") or "fix the migration, then `sidecar resume`")
    if job["outcome"] != "restored":
        raise OperatorError(f"cannot restore: {job.get('error') or 'the restore failed'}",
                            hint="the old database is still in place and the app was restarted "
                                 "on it")
    if not as_json:
        if undo:
            print(f"undone: {job['db']} is the database kept at {job['undo_of']['kept']} "
                  f"again; the database it replaced is kept at:")
        else:
            print(f"restored {job['db']} to txid {job['txid']}; the previous database is kept "
                  "at:")
        for p in job.get("moved_aside") or []:
            print(f"  {p}")
        mark = job.get("bookmark")
        if mark:
            print(f"bookmark:     txid {mark['txid'] or 'unknown'} as of {mark['replaced_at']}, "
                  f"kept at {mark['kept']}")
            print(f"undo with:    {mark['undo']}")
        for note in job.get("notes") or []:
            print(f"warning: {note}")
    return 0


def undo(cfg: config.Config, args: argparse.Namespace) -> int:
    if args.output or args.dry_run or args.force or args.timestamp or args.txid:
        raise OperatorError("cannot undo: --undo takes only --db, --yes and --json (it puts "
                            "back the database the last live restore replaced)")
    db = pick_database(cfg, args.db)
    if not socket_path(cfg).exists():
        raise OperatorError(f"cannot undo: no sidecar is running here (no control socket at "
                            f"{socket_path(cfg)})", hint="start the sidecar, then undo")
    if not args.yes:
        if not sys.stdin.isatty():
            raise OperatorError("cannot undo without --yes: there is no terminal to ask for "
                                "confirmation", hint="add --yes")
        answer = input(f"Put back the database the last restore of {db.path} replaced? The "
                       "app will be stopped while it runs. Type 'yes' to continue: ")
        if answer.strip().lower() not in ("yes", "y"):
            raise OperatorError("undo cancelled; nothing was changed")
    return live_restore(cfg, Target(), args.db, args.json, undo=True)


def _list_databases(cfg: config.Config, name: str | None) -> list[config.Database]:
    if name is not None or (not cfg.databases and cfg.directories):
        return [pick_database(cfg, name)]
    return [db for db in cfg.databases if db.replica is not None]


def list_points(cfg: config.Config, args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise OperatorError(f"cannot list restore points: --limit {args.limit}: expected a "
                            "whole number of points, 1 or more")
    out = []
    for db in _list_databases(cfg, args.db):
        if db.replica is None:
            raise OperatorError(f"cannot list the restore points of {db.name}: no replica is "
                                "configured")
        try:
            files = restore_points.read_files(db, timeout=cfg.replica_timeout)
        except ReplicaUnreachable as exc:
            raise reachable.unreachable(db, "list the restore points of", exc.message,
                                        cfg.replica_timeout) from None
        out.append(restore_points.listing(db, files, args.limit))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for n, item in enumerate(out):
        if n:
            print()
        print(f"database:     {item['db']}")
        print(f"replica:      {item['replica']}")
        if not item["points"]:
            print("restorable:   nothing (the replica holds no backup)")
            continue
        print(f"oldest:       {item['oldest']}  (txid {item['oldest_txid']})")
        print(f"newest:       {item['newest']}  (txid {item['newest_txid']})")
        print("granularity:")
        for s in reversed(item["stretches"]):
            print(f"  {restore_points.stretch_text(s)}")
        shown = len(item["points"])
        print(f"points ({shown} of {item['count']}, newest first; restore one with "
              "`sidecar restore --timestamp TIME`):")
        for p in item["points"]:
            print(f"  {p['time']}  txid {p['txid']}  level {p['level']}")
    return 0


def main(args: argparse.Namespace) -> int:
    os.umask(0o077)  # what this command writes (--output, its temp files) is the owner's only
    cfg = config.load(config.environment_with_flags(settings_from_args(args)), need_app=False)
    if args.limit is not None and not args.list:
        raise OperatorError("cannot restore: --limit only applies with --list")
    if args.list:
        if args.output or args.dry_run or args.force:
            raise OperatorError("cannot list restore points: --list takes only --db, --json "
                                "and --limit")
        return list_points(cfg, args)
    if args.undo:
        return undo(cfg, args)
    target = parse_target(args.txid, args.timestamp)
    db = pick_database(cfg, args.db)
    if args.force and not args.output:
        raise OperatorError("cannot restore: --force only applies with --output "
                            "(a live restore never deletes the current database)")
    if args.dry_run:
        with standalone_tools(cfg) as tools:
            p = plan(tools, db, target)
        if args.json:
            print(json.dumps(p, indent=2))
        else:
            if args.output:
                print(f"output:       {args.output} (the live database is not touched)")
            print_plan(p, not args.output, restore.aside_dir(cfg, "pre-restore"))
            print("dry run: nothing was changed")
        return 0
    if args.output:
        res = restore_to_output(cfg, db, target, args.output, force=args.force)
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            print(f"restored {res['db']} ({target.describe()}, txid {res['txid']}) into "
                  f"{res['output']} ({res['size']:,} bytes, integrity_check ok)")
        return 0
    if not socket_path(cfg).exists():
        raise OperatorError(f"cannot restore the live database: no sidecar is running here (no "
                            f"control socket at {socket_path(cfg)})",
                            hint="start the sidecar, or restore into a file with --output PATH")
    if not args.yes:
        with standalone_tools(cfg) as tools:
            print_plan(plan(tools, db, target), True, restore.aside_dir(cfg, "pre-restore"))
        _confirm(str(db.path), target)
    return live_restore(cfg, target, args.db, args.json)
