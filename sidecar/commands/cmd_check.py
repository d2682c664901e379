"""Run every preflight check, test the bucket and report the latest backup's age, as a table
with OK/FAIL and how to fix each failure. Changes nothing. Exit 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping

from sidecar import config, cron
from sidecar.bucket import replica, tenants, trust
from sidecar.bucket.client import CA_HINT
from sidecar.cli import add_settings, settings_from_args
from sidecar.config import pitr
from sidecar.errors import ConfigError
from sidecar.startup import preflight
from sidecar.startup.preflight import Check


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    add_settings(parser)


def addressing_check(db: config.Database, overridden: bool) -> Check:
    """Which S3 addressing the backups use, and why: a wrong one reads as a missing bucket."""
    assert db.replica is not None and db.replica.s3 is not None
    s3 = db.replica.s3
    where = f"{s3.bucket}.HOST" if not s3.force_path_style else f"HOST/{s3.bucket}"
    why = ("set by SIDECAR_S3_FORCE_PATH_STYLE" if overridden
           else f"default for {s3.endpoint or 'AWS S3'}; SIDECAR_S3_FORCE_PATH_STYLE overrides")
    return Check(f"addressing ({db.name})", True, f"{s3.addressing} ({where}), {why}")


def fix_for(exc: replica.ReplicaUnreachable) -> str:
    if exc.kind == "certificate":
        return CA_HINT
    return "check the endpoint, bucket name and credentials"


def tls_check(name: str, rep: config.Replica, env: Mapping[str, str]) -> Check | None:
    """For an HTTPS endpoint the bucket just answered: that its certificate was verified, and
    with which bundle (a private CA works because this bundle holds it)."""
    s3 = rep.s3
    if s3 is None or (s3.endpoint or "https://").split(":", 1)[0] != "https":
        return None
    given = trust.given(env)
    bundle = f"{given[0]}={given[1]}" if given else "botocore's default CA bundle"
    return Check(f"tls ({name})", True, f"the certificate of {rep.endpoint_label} was verified "
                 f"with {bundle}")


def bucket_checks(cfg: config.Config, timeout: float, path_style_set: bool = False,
                  env: Mapping[str, str] = os.environ) -> list[Check]:
    out = []
    for db in cfg.databases:
        name = f"replica ({db.name})"
        if db.replica is None:
            out.append(Check(name, False, "no replica configured", "set SIDECAR_REPLICA_URL"))
            continue
        if db.replica.s3 is not None:
            out.append(addressing_check(db, path_style_set))
        try:
            store = replica.open_store(db.replica, timeout=timeout)
            contents = store.contents()
        except replica.ReplicaUnreachable as exc:
            out.append(Check(name, False, exc.message, fix_for(exc)))
            continue
        if (tls := tls_check(db.name, db.replica, env)) is not None:
            out.append(tls)
        if contents.layout == "empty":
            out.append(Check(name, True, f"{db.replica.url} reachable, no backup yet"))
            continue
        if contents.layout == "unknown":
            out.append(Check(name, False, f"{db.replica.url} holds objects that are not a "
                             f"Litestream backup: {', '.join(contents.keys)}",
                             "point SIDECAR_REPLICA_URL at this database's backup prefix"))
            continue
        if contents.layout == "0.3":
            out.append(Check(name, True, f"{db.replica.url} reachable; holds a Litestream 0.3 "
                             "backup (generations/), which is restored when the DB is missing"))
            continue
        try:
            latest = replica.latest_position(store)
        except replica.ReplicaUnreachable as exc:
            out.append(Check(name, False, exc.message, "check the bucket"))
            continue
        age = time.time() - latest.last_modified if latest else float("nan")
        out.append(Check(name, True, f"{db.replica.url} reachable; latest backup txid "
                         f"{latest.max_txid:016x} at {replica.utc(latest.last_modified)} "
                         f"({age:,.0f}s ago)" if latest else f"{db.replica.url} reachable"))
        out.append(window_check(cfg, db, store))
    for entry in cfg.directories:
        out.append(directory_check(entry, timeout))
        if out[-1].ok and (tls := tls_check(f"{entry.dir.name}/", entry.replica, env)):
            out.append(tls)
    return out


def window_check(cfg: config.Config, db: config.Database, store: replica.Store) -> Check:
    """The point-in-time window: what the config promises, how far back the bucket reaches
    now, and roughly what keeping it costs at this database's write rate (measured from the
    bucket's newest files: every sync's files, else the first compactions)."""
    name = f"restore window ({db.name})"
    w = pitr.configured(cfg)
    try:
        snaps = store.list_ltx(9)
        rate = pitr.write_rate(store.list_ltx(0)) or pitr.write_rate(store.list_ltx(1))
    except replica.ReplicaUnreachable as exc:
        return Check(name, False, exc.message, "check the bucket")
    try:
        db_bytes = db.path.stat().st_size
    except OSError:  # not on this volume: the newest snapshot is a whole copy
        db_bytes = max((o.size for o in snaps), default=0)
    cost = pitr.estimate(w, db_bytes, rate, cfg.sync_interval)
    promised = (f"{pitr.seconds_text(w['window_seconds'])} ({w['source']}: snapshots every "
                f"{pitr.seconds_text(w['snapshot_interval_seconds'])}, kept "
                f"{pitr.seconds_text(w['snapshot_retention_seconds'])})")
    oldest = min((o.last_modified for o in snaps), default=None)
    now = (f"reaches back to {replica.utc(oldest)} "
           f"({pitr.seconds_text(round(time.time() - oldest))})" if oldest is not None
           else "no snapshot yet")
    detail = (f"{promised}; {now}; costs about {cost['objects']:,} objects, "
              f"{pitr.bytes_text(cost['bytes'])} in the bucket at "
              f"{pitr.bytes_text(rate)}/s of changes ({cost['snapshots']} snapshots of "
              f"{pitr.bytes_text(db_bytes)})")
    if w["window_seconds"] <= 0:
        return Check(name, True, detail + "; the snapshot interval is not shorter than its "
                     "retention, so the window can shrink to the newest snapshot")
    return Check(name, True, detail)


def directory_check(entry: config.DbDir, timeout: float) -> Check:
    """A directory entry's bucket: one listing of its prefix (one attempt, bounded)."""
    name = f"replica ({entry.dir.name}/)"
    url = entry.replica.url
    try:
        listing = tenants.remote_members(entry, timeout, retry=False)
    except replica.ReplicaUnreachable as exc:
        return Check(name, False, exc.message, fix_for(exc))
    if listing.unknown:
        return Check(name, False, f"{url} holds objects that are not a Litestream backup: "
                     + ", ".join(f"{url}/{k}" for k in listing.unknown[:3]),
                     "point the directory's replica at the prefix that holds its databases' "
                     "backups (each under PREFIX/<file name>)")
    return Check(name, True, f"{url} reachable; backups of {len(listing.members)} "
                 f"database(s) ({listing.requests} request(s))")


def verification_check(cfg: config.Config) -> Check:
    """When the scheduled backup verification runs next (the schedule read as cron reads it)."""
    if not cfg.verify_schedule:
        return Check("verification", True, "not scheduled (SIDECAR_VERIFY_SCHEDULE is empty)")
    when = cron.next_run(cfg.verify_schedule)
    return Check("verification", True, f"schedule '{cfg.verify_schedule}' (UTC); next at "
                 + (f"{cron.iso(when)} ({when:%A})" if when else "never"))


def main(args: argparse.Namespace) -> int:
    env = config.environment_with_flags(settings_from_args(args))
    try:
        cfg = config.load(env, need_app=False)
    except ConfigError as exc:
        checks = [Check("config", False, p) for p in exc.problems] or [
            Check("config", False, exc.message)]
    else:
        urls = [d.replica.url for d in cfg.databases if d.replica] + [
            e.replica.url for e in cfg.directories]
        checks = [Check("config", True, f"{len(cfg.databases)} database(s)"
                        + (f", {len(cfg.directories)} directory(ies)" if cfg.directories else "")
                        + f"; replica {', '.join(urls)}")]
        checks.append(verification_check(cfg))
        checks += preflight.inspect(cfg).checks
        running = preflight.lock_is_held(cfg)
        checks.append(Check("daemon", True, "a sidecar is running on this database" if running
                            else "no sidecar is running on this database"))
        checks += bucket_checks(cfg, min(cfg.replica_timeout, 10.0),
                                path_style_set=bool(env.get("SIDECAR_S3_FORCE_PATH_STYLE")),
                                env=env)
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{'OK  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}")
            if not c.ok and c.fix:
                print(f"{'':<6}{'':<{width}}  fix: {c.fix}")
    return 0 if all(c.ok for c in checks) else 1
