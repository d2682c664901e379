"""The restore on start of a directory entry: every database the bucket holds under the
entry's prefix and the volume lacks, restored one by one exactly like a single database
(restore.on_start), a few at a time, after the checks that keep a bucket from writing where
it should not (a name that is not a safe database name, a path that is not a place for a
database, more databases or bytes than the volume should take).

What the bucket holds under the prefix comes from one listing (bucket/tenants.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

from sidecar import names
from sidecar.bucket.tenants import Listing, local_scan, member, remote_members
from sidecar.config import Config, Database, DbDir
from sidecar.litestream.yaml_file import write_member_config
from sidecar.recovery.restore import RestoreResult


def place_problem(cfg: Config, entry: DbDir, rel: str) -> str | None:
    """Why the database `rel` of the bucket cannot be put at its path in the directory, or
    None: its path is sidecar's state dir or inside it, a directory on the way is a file or
    a link (a link could lead anywhere), or the path itself is a directory or a link to one."""
    path = entry.dir / rel
    if path == cfg.state_dir or path.is_relative_to(cfg.state_dir):
        return f"the name {rel!r} lies inside sidecar's state dir {cfg.state_dir}"
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        p = entry.dir.joinpath(*parts[:i])
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"cannot look at {p}: {exc.strerror}"
        last = i == len(parts)
        if stat.S_ISLNK(st.st_mode) and not last:
            return f"the directory {p} on the way to {rel!r} is a symbolic link"
        if not last and not stat.S_ISDIR(st.st_mode):
            return f"{p} on the way to {rel!r} is a file, not a directory"
        if last and (stat.S_ISDIR(st.st_mode)
                     or (stat.S_ISLNK(st.st_mode) and os.path.isdir(p))):
            return f"{p} is a directory"
    return None


def _refuse_or_skip_bad(cfg: Config, entry: DbDir, listing: Listing, local: set[str]) -> None:
    """The backups whose names break the rule (Listing.bad), and those whose path in the
    directory is not a place for a database (place_problem), taken out of the listing's
    members; then refuse the start naming them (RestoreError, exit 4) or, with
    SIDECAR_BUCKET_BAD_NAMES=skip, log them as left alone."""
    from sidecar import log
    from sidecar.errors import RestoreError

    for rel in sorted(listing.members):
        if rel in local:
            continue
        if (why := place_problem(cfg, entry, rel)) is not None:
            del listing.members[rel]
            listing.positions.pop(rel, None)
            listing.bad[rel] = (rel + "/", why)
    if not listing.bad:
        return
    url = entry.replica.url.rstrip("/")
    found = [f"{url}/{key}: {why}" for _, (key, why) in sorted(listing.bad.items())]
    if cfg.bucket_bad_names == "skip":
        log.get("restore").warning(
            "backups whose names break the database-name rule left alone", dir=str(entry.dir),
            replica=entry.replica.url, count=len(found), found=found[:20])
        return
    raise RestoreError(
        f"cannot start: the replica {entry.replica.url} of {entry.dir} holds "
        f"{len(found)} backup{'s' if len(found) > 1 else ''} under a name that is not a "
        f"safe database name: {found[0]}",
        problems=[f"found: {f}" for f in found[:20]],
        hint="move or delete these objects in the bucket (a bucket is shared more widely "
             "than the volume: check who wrote them), or set SIDECAR_BUCKET_BAD_NAMES=skip "
             "to start without them; nothing was restored")


# What a restore writes beyond its snapshot's size: Litestream's temporary file and the page
# overhead (as scratch.copy_estimate), and at least this much per database.
_SIZE_MARGIN = 1.25
_PER_DB = 1024 * 1024


def _check_cap(cfg: Config, entry: DbDir, listing: Listing, needed: list[str]) -> None:
    """Refuse (RestoreError, exit 4, naming the figures) a directory restore that a bucket
    could make without bound: more databases than SIDECAR_RESTORE_MAX_DATABASES, or more
    bytes than the directory's filesystem has free (the newest snapshots' sizes)."""
    from sidecar.errors import RestoreError
    from sidecar.recovery import scratch

    if len(needed) > cfg.restore_max_databases:
        raise RestoreError(
            f"cannot start: the replica {entry.replica.url} holds {len(needed)} databases to "
            f"restore into {entry.dir}; at most {cfg.restore_max_databases} "
            "(SIDECAR_RESTORE_MAX_DATABASES)",
            hint="raise SIDECAR_RESTORE_MAX_DATABASES if the bucket really holds that many "
                 "tenants, or remove the backups that do not belong there; nothing was "
                 "restored")
    need = sum(int(listing.sizes.get(rel, 0) * _SIZE_MARGIN) + _PER_DB for rel in needed)
    free = scratch.free_bytes(entry.dir)
    if need > free:
        raise RestoreError(
            f"cannot start: restoring {len(needed)} databases into {entry.dir} needs about "
            f"{scratch.mb(need)} (their newest snapshots in {entry.replica.url}, with a "
            f"margin) and its filesystem has {scratch.mb(free)} free",
            hint="make room on the volume (or a larger one), or remove the backups that do "
                 "not belong there; nothing was restored")


def restore_on_start(cfg: Config, entry: DbDir, binary: str,
                     should_stop: Callable[[], bool] | None = None) -> list[RestoreResult]:
    """Restore every database the bucket holds under the entry's prefix and the volume lacks
    (or holds as a ghost), `cfg.restore_parallelism` at a time, each exactly like a single
    database (restore.on_start: temporary file, quick_check, rename). Raises RestoreError:
    the bucket cannot be listed; it holds unknown objects and something needs a restore; or
    a restore failed (the first failure, naming the database; the others stop early)."""
    from sidecar import dbfile, log
    from sidecar.bucket import replica
    from sidecar.errors import RestoreError
    from sidecar.recovery import restore

    logger = log.get("restore")
    # Litestream's directory scan fails on a directory that does not exist.
    entry.dir.mkdir(parents=True, exist_ok=True)
    try:
        listing = remote_members(entry, cfg.replica_timeout)
    except replica.ReplicaUnreachable as exc:
        raise RestoreError(
            f"cannot start: the databases in {entry.dir} may need a restore and the replica "
            f"{entry.replica.url} cannot be read: {exc.message}",
            hint="starting with empty databases would replace the real backups; fix the "
                 "bucket, endpoint or credentials and start again") from None
    local_list, local_bad = local_scan(entry)
    local = set(local_list)
    if local_bad:
        logger.warning("files whose names break the database-name rule left alone",
                       dir=str(entry.dir), files=local_bad[:20],
                       why=[names.problem(r) for r in local_bad[:3]])
    _refuse_or_skip_bad(cfg, entry, listing, local)
    # A damaged file goes to restore.on_start too, which refuses it as for one database
    # (sidecar never replaces a damaged database automatically).
    needed = sorted(rel for rel in listing.members
                    if rel not in local
                    or dbfile.inspect(entry.dir / rel, check=False).kind != "present")
    if listing.ignored:
        logger.info("backups not matching the pattern left alone", dir=str(entry.dir),
                    pattern=entry.pattern, databases=listing.ignored[:20])
    if listing.unknown and (needed or not local):
        shown = [f"{entry.replica.url}/{k}" for k in listing.unknown[:3]]
        raise RestoreError(
            f"cannot start: the databases in {entry.dir} need a restore and the replica "
            f"{entry.replica.url} holds objects that are not a Litestream backup: "
            + ", ".join(shown),
            problems=[f"found: {entry.replica.url}/{k}" for k in listing.unknown[:20]],
            hint="point the directory's replica at the prefix that holds its databases' "
                 "backups (each under PREFIX/<file name>); sidecar will not start over data "
                 "it does not understand")
    results = [restore.RestoreResult(rel, "skipped", "database present", 0.0)
               for rel in sorted(local) if rel not in needed]
    if not needed:
        return results
    _check_cap(cfg, entry, listing, needed)
    members = [member(entry, rel) for rel in needed]
    for rel in needed:  # a recursive entry's subdirectories
        (entry.dir / rel).parent.mkdir(parents=True, exist_ok=True)
    config_path = write_member_config(
        cfg, members, f"litestream.restore.{hashlib.sha256(str(entry.dir).encode()).hexdigest()[:8]}.yml")
    failed = threading.Event()

    def stop() -> bool:
        return failed.is_set() or bool(should_stop and should_stop())

    def one(m: Database) -> restore.RestoreResult:
        layout = listing.members[str(m.path.relative_to(entry.dir))]
        try:
            res = restore.on_start(cfg, m, binary, config_path, should_stop=stop,
                                   contents=replica.Contents(layout))
        except BaseException:
            failed.set()
            raise
        res.db = str(m.path.relative_to(entry.dir))
        return res

    t0 = time.monotonic()
    logger.info("directory restore started", dir=str(entry.dir), replica=entry.replica.url,
                databases=len(members), parallelism=cfg.restore_parallelism,
                s3_requests=listing.requests)
    first: BaseException | None = None
    with ThreadPoolExecutor(max_workers=cfg.restore_parallelism,
                            thread_name_prefix="restore") as pool:
        futures = {pool.submit(one, m): m for m in members}
        for fut in as_completed(futures):
            try:
                results.append(fut.result())
            except RestoreError as exc:
                m = futures[fut]
                if first is None:
                    first = RestoreError(f"{exc.message} (database {m.path} of the directory "
                                         f"{entry.dir})", problems=exc.problems, hint=exc.hint)
            except BaseException as exc:
                first = first or exc
    with contextlib.suppress(OSError):
        if config_path.is_relative_to(cfg.state_dir):
            config_path.unlink()
    if first is not None:
        raise first
    logger.info("directory restore finished", dir=str(entry.dir),
                restored=sum(r.outcome == "restored" for r in results),
                duration_seconds=round(time.monotonic() - t0, 3))
    return results
