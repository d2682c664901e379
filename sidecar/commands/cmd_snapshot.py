"""Write a consistent copy of the live database to a file while the app keeps writing (SQLite
online backup API), then integrity_check the copy. Needs no daemon and changes nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sidecar import config
from sidecar.cli import add_settings, settings_from_args
from sidecar.recovery.backups import pick_database, snapshot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", required=True, type=Path, metavar="PATH",
                        help="where to write the copy (must not exist unless --force)")
    parser.add_argument("--force", action="store_true", help="replace PATH if it exists")
    parser.add_argument("--db", metavar="PATH",
                        help="which database, when there are several (a path, or a file of a "
                             "database directory: t1.db)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_settings(parser)


def main(args: argparse.Namespace) -> int:
    os.umask(0o077)  # the copy holds the whole database: readable by its owner only
    cfg = config.load(config.environment_with_flags(settings_from_args(args)), need_app=False)
    res = snapshot(cfg, pick_database(cfg, args.db), args.output, force=args.force)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"snapshot of {res['db']} written to {res['output']} ({res['size']:,} bytes, "
              "integrity_check ok)")
    return 0
