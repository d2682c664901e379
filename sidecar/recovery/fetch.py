"""A restore's files fetched in parallel into a private mirror, for Litestream to restore from.

Litestream 0.5 restores from S3 one request after another: its listings, then one GET per
planned LTX file, the snapshot over one connection. Against a real bucket (tens of ms a
request, tens of MB/s a connection) that is most of a restore's time. Here the plan is made
the way Litestream makes it (`CalcRestorePlan`: the newest snapshot, then the files of levels
8..0 that extend the TXID chain furthest) from the levels listed all at once, or, for a
`-timestamp` target, asked of Litestream itself (`restore -dry-run -json`: the timestamps are
in each object's metadata). The plan's files are downloaded `concurrency` ranges at a time
(large files in CHUNK-sized byte ranges) into `<output>.mirror/ltx/<level>/<min>-<max>.ltx`,
the `file://` replica layout, each file's modification time set to the timestamp of its LTX
header (what Litestream's file replica reads for `-timestamp`). Litestream then restores from
the mirror, so it still decodes, checks and writes the database.

Every planned file of STREAM_MIN or more (the snapshot, and an L1 file that overlaps it, which
Litestream's plan also takes) is streamed: its ranges are fetched into `stream/` in the mirror,
and, in order, as each arrives, written into a named pipe that Litestream reads in that file's
place, so Litestream decodes while the rest is still on its way. Litestream opens every planned
file at once and merges them page by page (`ltx.Compactor`), so it reads the streamed files
side by side: their ranges are fetched interleaved, each at about the same fraction of its file,
and each has a feeder of its own. `ready` is set once the other files are whole and the pipes
are in place: the caller then starts Litestream. The file replica lists a level with lstat
and opens the file (following a link), and it refuses a file listed smaller than an LTX
header, so the pipe is reached through a link whose own size (the length of its target) is
over 100 bytes; its time is set to the header's, as any other file's. A pipe cannot be read
twice or from an offset: Litestream reads each planned file once, from the start; a reopen at
an offset fails. When the fetch fails after Litestream started, `failed` is set and the pipe
is held open until the caller says Litestream is gone (`reader_done`): Litestream is killed,
never shown an early end (which it would also refuse: an LTX file ends with its trailer and
checksum).

A file gone between the plan and its GET (retention) means a new plan; 408, 429 and 5xx
answers and dropped connections are retried with backoff. Where the mirror and the database
do not both fit on the volume, or the replica is not a Litestream 0.5 backup on S3, `prepare`
returns None and the caller restores directly, as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sidecar import log
from sidecar.bucket import replica
from sidecar.config import Database

MIRROR_SUFFIX = ".mirror"
GONE_SUFFIX = ".gone"  # a mirror being removed (remove_mirror)
# Bytes per ranged GET of a large file. Litestream starts on a streamed file once its first
# range is whole, and the first ranges of all connections arrive together: 4 MiB starts it
# sooner than 8 (100 MB at 30 ms / 50 MB/s: 1.91 s median against 1.99 s, 4 runs each; 300 MB
# and 1 GB the same within noise).
CHUNK = 4 * 1024 * 1024
SNAPSHOT_LEVEL = 9
MAX_REPLANS = 5
MARGIN = 4 * 1024 * 1024  # free space kept beyond the mirror and the database
PROGRESS_EVERY = 5.0  # seconds between progress lines
# A bucket that answers faster than this is next door (loopback, the same host or zone): Litestream's
# one-request-at-a-time restore loses nothing there, and the mirror's extra pass over the data
# would only add to it, so such a restore goes direct.
NEAR_SECONDS = 0.01
STREAM_MIN = 4 * CHUNK  # a planned file this large is streamed to Litestream as it comes
LINK_MIN = 128  # the length of the stream's link target (Litestream wants >= 100 bytes)
OPEN_WAIT = 120.0  # seconds the stream waits for Litestream to open its pipe
PIPE_BYTES = 1024 * 1024  # the stream's pipe buffer asked for (Linux's usual maximum)
FILL_WAIT = 0.005  # seconds the feeder sleeps when the pipe is full (Litestream drains ~1 MB in 8 ms)
LTX_HEADER = 100  # bytes: an LTX header; no planned file can be smaller

_active_lock = threading.Lock()
_active: dict[str, dict[str, Any]] = {}  # output path -> progress of a running fetch


def _cause(errors: list[BaseException]) -> BaseException:
    """The error that made the others stop: the first that is not Stopped, else the first."""
    return next((e for e in errors if not isinstance(e, Stopped)), errors[0])


def progress_of(output: Path | None) -> dict[str, Any] | None:
    """The progress of the fetch restoring into `output`, None when there is none."""
    with _active_lock:
        got = _active.get(str(output)) if output is not None else None
        return {k: v for k, v in got.items() if k != "output"} if got else None


class Gone(Exception):
    """A planned file is no longer in the bucket (retention removed it): plan again."""


class LocalError(Exception):
    """Writing the mirror failed (the volume), or an answer cannot be written right (longer
    than the range asked for): not retried."""


class Stopped(Exception):
    """The restore was cancelled."""


class Skip(Exception):
    """No mirror for this restore: `reason` says why (the caller restores directly)."""

    def __init__(self, reason: str, quiet: bool = False):
        super().__init__(reason)
        self.reason, self.quiet = reason, quiet


@dataclass(frozen=True)
class PlanFile:
    level: int
    min_txid: int
    max_txid: int
    size: int
    created: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.min_txid:016x}-{self.max_txid:016x}.ltx"

    @property
    def s3_key(self) -> str:  # relative to the replica prefix
        return f"{self.level:04x}/{self.name}"

    @property
    def local(self) -> str:  # relative to the mirror root
        return f"ltx/{self.level}/{self.name}"


def calc_plan(levels: dict[int, list[PlanFile]], txid: int | None = None) -> list[PlanFile]:
    """Litestream's CalcRestorePlan (replica.go) without a timestamp: the newest snapshot at or
    below `txid`, then, from levels 8..0, the file that extends the contiguous TXID chain
    furthest (ties: the lower min TXID, then the higher level), until none does. Empty when
    nothing qualifies, `txid` is not reached, or (the latest state) files lie beyond a gap:
    the caller then leaves the restore, and its error, to Litestream."""
    out: list[PlanFile] = []
    snaps = sorted(levels.get(SNAPSHOT_LEVEL, []), key=lambda f: (f.min_txid, f.max_txid))
    for f in snaps:
        if txid is None or f.max_txid <= txid:
            snap = f
            out = [snap]
    current = out[-1].max_txid if out else 0
    if txid is not None and current >= txid:
        return out
    files = [f for lv in range(SNAPSHOT_LEVEL - 1, -1, -1) for f in levels.get(lv, [])]
    while True:
        best: PlanFile | None = None
        for f in files:
            if f.min_txid > current + 1 or f.max_txid <= current:
                continue
            if txid is not None and f.max_txid > txid:
                continue
            if best is None or (f.max_txid, -f.min_txid, f.level) > (
                    best.max_txid, -best.min_txid, best.level):
                best = f
        if best is None:
            break
        out.append(best)
        current = best.max_txid
        if txid is not None and current >= txid:
            break
    if txid is not None and (not out or out[-1].max_txid < txid):
        return []
    if txid is None and any(f.min_txid > current + 1 for f in files):
        return []  # a gap: Litestream refuses ("non-contiguous ltx files"), and says so
    return out


def mirror_path(output: Path) -> Path:
    return output.with_name(output.name + MIRROR_SUFFIX)


def remove_mirror(output: Path, later: bool = False) -> None:
    """Remove whatever is at the mirror's path, never following a link planted there (rmtree
    refuses a link and would leave it).

    `later`: the directory is renamed aside (`.gone`) at once and removed by a thread of its
    own, off the path to what comes next (the app's start, a restored file's integrity_check:
    unlinking a 1 GB file took 0.3-1.0 s here); `wait_removals(output)` waits for it, and
    `wait_removals()` for all of them before the process exits. A run killed meanwhile leaves
    it to the next start (the name still matches restore.clean_leftovers). If the rename fails
    (an earlier one still being removed), it is removed now."""
    path = mirror_path(output)
    try:
        st = os.lstat(path)
    except OSError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    if later:
        gone = path.with_name(path.name + GONE_SUFFIX)
        try:
            os.rename(path, gone)
        except OSError:
            pass
        else:
            removal = threading.Thread(target=shutil.rmtree, args=(gone,),
                                       kwargs={"ignore_errors": True}, daemon=True,
                                       name="mirror-removal")
            removal.start()
            with _removals_lock:
                _removals.append((str(output), removal))
            return
    shutil.rmtree(path, ignore_errors=True)


_removals_lock = threading.Lock()
_removals: list[tuple[str, threading.Thread]] = []  # (output, its mirror's removal)


def wait_removals(output: Path | None = None, timeout: float = 60.0) -> None:
    """Return once the mirror of `output` (every mirror, without one) given to
    `remove_mirror(later=True)` is removed, or after `timeout` seconds."""
    end = time.monotonic() + timeout
    with _removals_lock:
        mine = [r for r in _removals if output is None or r[0] == str(output)]
        for r in mine:
            _removals.remove(r)
    for _, removal in mine:
        removal.join(max(0.0, end - time.monotonic()))


def make_mirror(output: Path) -> Path:
    """A new, empty, private (0700) mirror directory of this process's own: whatever was at
    its path (a killed run's mirror, a link or a directory someone planted where the name is
    predictable, as beside `--output /tmp/x.db`) is removed first, and the directory is then
    created exclusively, so nothing written into it can go through another's link."""
    remove_mirror(output)
    root = mirror_path(output)
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        raise Skip(f"{root} appeared while it was being made: restoring directly") from None
    return root


def header_info(head: bytes) -> tuple[int, int, int] | None:
    """(page size, page count after the file's transaction, timestamp in ms) from an LTX
    header (magic `LTX1`, then flags, page size, commit, min and max TXID, timestamp)."""
    if len(head) < 40 or head[:4] != b"LTX1":
        return None
    return (int.from_bytes(head[8:12], "big"), int.from_bytes(head[12:16], "big"),
            int.from_bytes(head[32:40], "big", signed=True))


def _status(exc: BaseException) -> tuple[str, int | None]:
    resp = getattr(exc, "response", None) or {}
    return (str(resp.get("Error", {}).get("Code", "")),
            resp.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def _retryable(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    from sidecar.bucket.client import certificate_problem

    if certificate_problem(exc) is not None:  # final at once, as everywhere else
        return False

    if isinstance(exc, ClientError):
        code, status = _status(exc)
        return status in (408, 429) or (status or 0) >= 500 or code in (
            "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable")
    return isinstance(exc, BotoCoreError | OSError)


def _gone(exc: BaseException) -> bool:
    code, status = _status(exc)
    return code in ("NoSuchKey", "404") or status == 404


class Fetch:
    """One restore's mirror: `run()` plans, checks the space, fetches, and returns the mirror
    root (Skip when there is none to make). `stop` (an Event) cancels it between requests."""

    def __init__(self, db: Database, output: Path, concurrency: int, timeout: float, *,
                 txid: str | None = None, timestamp: str | None = None,
                 dry_run: Callable[[], list[dict[str, Any]]] | None = None,
                 stop: threading.Event | None = None, stream: bool = True,
                 free_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
                 round_trip: float | None = None):
        self.db, self.output = db, output
        self.round_trip = round_trip  # seconds, as measured to choose the mirror (logged)
        self.root = mirror_path(output)
        self.concurrency, self.timeout = concurrency, timeout
        self.txid = int(txid, 16) if txid else None
        self.timestamp = timestamp
        self.dry_run = dry_run
        self.stop = stop or threading.Event()
        self.free_bytes = free_bytes
        self.logger = log.get("restore")
        self.replans = 0
        self.retries = 0
        self.planned_bytes = 0
        self.planned_files = 0
        self.fetched_bytes = 0
        self.fetched_files = 0
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._abort = threading.Event()  # one range failed: the others of this round stop
        self._client: Any = None
        self._store: replica.S3Store | None = None
        self.stream = stream
        # Streaming: `ready` once Litestream may start on the mirror; `failed` when the fetch
        # failed after that (the caller kills Litestream), `reader_done` once it has.
        self.ready = threading.Event()
        self.committed = threading.Event()  # planned, and the mirror fits: it is being made
        # Set with `committed` and `ready`, and by the caller when `run` has returned: what
        # the caller waits on, so it acts on each at once rather than at its next poll.
        self.news = threading.Event()
        self.failed = threading.Event()
        self.reader_done = threading.Event()
        self.streamed: tuple[PlanFile, ...] = ()
        self._cond = threading.Condition(self._lock)
        self._ranges_done: set[tuple[PlanFile, int]] = set()
        self._pending_whole = 0  # files of the plan not streamed and not yet whole
        self._splice = hasattr(os, "splice")  # the streams are spliced (_pour_range)
        self._range_error: BaseException | None = None

    # ---------------------------------------------------------------- planning

    def _connect(self) -> None:
        assert self.db.replica is not None and self.db.replica.s3 is not None
        from sidecar.bucket.client import make_boto3_client

        # Downloads on boto3's own client (streamed bodies, a connection per download);
        # listings on the store's, with its deadline, answer cap and error meanings.
        self._client = make_boto3_client(self.db.replica, self.timeout,
                                         pool=self.concurrency + 2)
        self._store = replica.S3Store(self.db.replica, self.timeout)

    def _level(self, level: int) -> list[PlanFile]:
        store = self._store
        assert store is not None
        objs = self._with_retries(lambda: store.list_level(level), what="list")
        return [PlanFile(level, o.min_txid, o.max_txid, o.size, o.last_modified) for o in objs]

    def plan(self) -> list[PlanFile]:
        if self.timestamp:
            assert self.dry_run is not None
            return [PlanFile(int(f["level"]), int(f["min_txid"], 16), int(f["max_txid"], 16),
                             int(f["size"])) for f in self.dry_run()]
        with ThreadPoolExecutor(max_workers=10, thread_name_prefix="restore-list") as pool:
            found = dict(zip(range(10), pool.map(self._level, range(10)), strict=True))
        if not any(found.values()):
            raise Skip("the replica holds no Litestream 0.5 files", quiet=True)
        return calc_plan(found, self.txid)

    # ---------------------------------------------------------------- requests

    def _with_retries(self, fn: Callable[[], Any], what: str) -> Any:
        """`fn()`, retried with backoff on 408/429/5xx and dropped connections until the
        replica timeout has passed since the last success. Gone on a 404 of an object."""
        from botocore.exceptions import ClientError

        delay, end = 0.1, time.monotonic() + max(self.timeout, 5.0)
        while True:
            if self.stop.is_set() or self._abort.is_set():
                raise Stopped()
            try:
                return fn()
            except replica.ReplicaUnreachable as exc:
                if exc.kind != "unreachable" or time.monotonic() + delay > end:
                    raise
                err: BaseException = exc
            except Exception as exc:
                if isinstance(exc, ClientError) and _gone(exc):
                    raise Gone() from None
                if not _retryable(exc) or time.monotonic() + delay > end:
                    raise
                err = exc
            with self._lock:
                self.retries += 1
            self.logger.info("restore fetch retry", db=self.db.name, request=what,
                             error=_describe(err), delay_seconds=round(delay, 2))
            if self.stop.wait(delay):
                raise Stopped()
            delay = min(delay * 2, 2.0)

    def _get(self, f: PlanFile, start: int, end: int, into: int | None) -> bytes:
        """Bytes start..end (inclusive) of `f`: written at `start` into the open file `into`,
        or returned when `into` is None."""
        assert self._store is not None
        key = self._store.prefix + f.s3_key

        def once() -> bytes:
            resp = self._client.get_object(Bucket=self._store.bucket, Key=key,  # type: ignore
                                           Range=f"bytes={start}-{end}")
            body, pos, kept = resp["Body"], start, b""
            try:
                for chunk in body.iter_chunks(1024 * 1024):
                    if self.stop.is_set() or self._abort.is_set():
                        raise Stopped()
                    if pos + len(chunk) > end + 1:
                        # A server that ignores Range sends the whole object: written at
                        # `pos` it would overrun the next range. Not retried.
                        raise LocalError(f"the answer for {f.name} is longer than the "
                                         f"{end + 1 - start} bytes asked for")
                    if into is None:
                        kept += chunk
                    else:
                        try:
                            os.pwrite(into, chunk, pos)
                        except OSError as exc:  # the volume's, not the bucket's: no retry
                            raise LocalError(f"cannot write the mirror: {exc.strerror}"
                                             ) from None
                        self._count(len(chunk))
                    pos += len(chunk)
                if pos != end + 1:
                    # A short answer is a dropped connection: retried.
                    raise OSError(f"short read of {f.name}: {pos - start} of "
                                  f"{end + 1 - start} bytes")
            except BaseException:
                if into is not None:
                    self._count(start - pos)  # what this attempt counted, taken back
                raise
            finally:
                body.close()
            return kept

        return self._with_retries(once, what=f"get {f.s3_key}")  # type: ignore[no-any-return]

    def _count(self, n: int) -> None:
        with self._lock:
            self.fetched_bytes += n
        self._publish()

    # ---------------------------------------------------------------- fetching

    def _space(self, plan: list[PlanFile]) -> None:
        """Skip unless the mirror and the restored database both fit, with a margin. The
        database's size is the last planned file's page count times its page size."""
        head = self._get(plan[-1], 0, min(99, plan[-1].size - 1), None)
        info = header_info(head)
        db_bytes = info[0] * info[1] if info else sum(f.size for f in plan)
        need = sum(f.size for f in plan) + db_bytes + MARGIN
        free = self.free_bytes(self.output.parent)
        if free < need:
            raise Skip(f"the mirror needs {need} bytes free beside {self.output.name} "
                       f"(the plan's {sum(f.size for f in plan)} and the database's "
                       f"{db_bytes}) and {free} are free")

    def _fetch(self, plan: list[PlanFile]) -> None:
        """Every file of `plan` into the mirror (files already there whole are kept, files
        of an older plan removed), the large ones streamed (see the module's text). Raises
        Gone, Stopped or the request's error."""
        # A file fetched whole by an earlier plan (its .ok beside it) is kept, not fetched again.
        keep = {f.local for f in plan} | {f.local + ".ok" for f in plan}
        for p in sorted(self.root.glob("ltx/*/*")):
            if str(p.relative_to(self.root)) not in keep:
                p.unlink(missing_ok=True)
        shutil.rmtree(self.root / "stream", ignore_errors=True)
        todo = [f for f in plan if not self._done(f)]
        streams = tuple(f for f in todo if f.size >= STREAM_MIN) if self.stream else ()
        with self._lock:
            self.planned_bytes = sum(f.size for f in plan)
            self.planned_files = len(plan)
            self.fetched_bytes = sum(f.size for f in plan if f not in todo)
            self.fetched_files = len(plan) - len(todo)
            self._ranges_done.clear()
            self._pending_whole = len(todo) - len(streams)
            self._range_error = None
            self.streamed = streams
        fds: dict[PlanFile, int] = {}
        left: dict[PlanFile, int] = {}
        tasks: list[tuple[PlanFile, int, int]] = []
        try:
            for f in todo:
                path = self._staged(f) if f in streams else self.root / f.local
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                fds[f] = fd
                os.ftruncate(fd, f.size)
                ranges = [(a, min(a + CHUNK, f.size) - 1) for a in range(0, f.size, CHUNK)]
                left[f] = len(ranges)
                tasks += [(f, a, b) for a, b in ranges]
            if not streams:
                # The biggest first: the snapshot's ranges start at once, the small files fill in.
                tasks.sort(key=lambda t: -t[0].size)
            else:
                # The other files first (Litestream starts once they are whole), then the
                # streamed files' ranges in the order they are fed: each file's in order, the
                # files interleaved by how far into each a range is (Litestream merges them).
                tasks.sort(key=lambda t: (t[0] in streams,
                                          t[1] / t[0].size if t[0] in streams else t[1]))
            with ThreadPoolExecutor(max_workers=self.concurrency,
                                    thread_name_prefix="restore-fetch") as pool:
                futures = [pool.submit(self._range, f, a, b, fds[f], left) for f, a, b in tasks]
                fed: BaseException | None = None
                if streams:
                    try:
                        self._feed(streams, fds)
                    except BaseException as exc:
                        fed = exc
                        self._abort.set()  # the ranges still to come stop
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                errors = [fu.exception() for fu in done if fu.exception() is not None]
                errors += [fed] if fed is not None else []
                if errors:
                    self._abort.set()  # the other ranges stop at their next chunk
                    for fu in pending:
                        fu.cancel()
                    raise _cause(errors)
        finally:
            self._abort.clear()
            for fd in fds.values():
                os.close(fd)

    def _staged(self, f: PlanFile) -> Path:
        """Where a streamed file's ranges land before they are fed to its pipe."""
        return self.root / "stream" / f"data-{f.name}"

    def _range(self, f: PlanFile, a: int, b: int, fd: int, left: dict[PlanFile, int]) -> None:
        # Any failure, the file's finishing included (fsync, a body that is no LTX file), is
        # the fetch's error: the feeder waiting for the files to be whole must hear of it.
        try:
            self._get(f, a, b, fd)
            with self._cond:
                left[f] -= 1
                last = left[f] == 0
                self._ranges_done.add((f, a))
                self._cond.notify_all()
            if last and f not in self.streamed:
                self._finish_file(f, fd)
        except BaseException as exc:
            with self._cond:
                self._range_error = exc
                self._cond.notify_all()
            raise

    def _finish_file(self, f: PlanFile, fd: int) -> None:
        """The whole file is there: stamp it with its header's time (Litestream's file
        replica reads the modification time as the file's creation time)."""
        os.fsync(fd)
        info = header_info(os.pread(fd, 100, 0))
        if info is None:
            raise OSError(f"{f.s3_key} is not an LTX file")
        ns = info[2] * 1_000_000
        os.utime(self.root / f.local, ns=(ns, ns))
        (self.root / f.local).with_name(f.name + ".ok").touch()
        with self._cond:
            self.fetched_files += 1
            self._pending_whole -= 1
            self._cond.notify_all()
        self._publish()

    # ---------------------------------------------------------------- streaming

    def _wait_for(self, ready: Callable[[], bool]) -> None:
        """Until `ready()` (asked under the lock); Stopped when a range failed or the fetch
        is stopped."""
        with self._cond:
            while not ready():
                if self._range_error is not None or self.stop.is_set() or self._abort.is_set():
                    raise Stopped()
                self._cond.wait(0.1)

    def _feed(self, streams: tuple[PlanFile, ...], fds: dict[PlanFile, int]) -> None:
        """Put a pipe in each streamed file's place once the other files are whole and each
        streamed file's first range (its header) is there, set `ready`, and write each file
        into its pipe range by range as the ranges arrive, a thread per file: Litestream
        reads them side by side, so one waiting to be read must not hold back the others."""
        self._wait_for(lambda: self._pending_whole == 0
                       and all((f, 0) in self._ranges_done for f in streams))
        pipes = [(f, self._make_pipe(f, fds[f])) for f in streams]
        self.ready.set()
        self.news.set()
        errors: list[BaseException] = []

        def pour(f: PlanFile, pipe: Path) -> None:
            try:
                self._pour(f, fds[f], pipe)
            except BaseException as exc:
                errors.append(exc)
                self._abort.set()  # the other streams and ranges stop at their next step

        others = [threading.Thread(target=pour, args=fp, daemon=True, name="restore-feed")
                  for fp in pipes[1:]]
        for t in others:
            t.start()
        pour(*pipes[0])
        for t in others:
            t.join()
        if errors:
            raise _cause(errors)

    def _pour(self, f: PlanFile, fd: int, pipe: Path) -> None:
        """`f`'s ranges into its pipe, in order, each as it arrives."""
        out: int | None = None
        try:
            out = self._open_pipe(pipe)
            # In a full-size pipe the feeder writes what fits and sleeps FILL_WAIT when it is
            # full, instead of blocking in write(): a blocked writer is woken as soon as
            # Litestream frees a page, so each side woke the other every few KB (Litestream
            # reads ~1.3 KB at a time). In a small pipe a sleep could starve Litestream.
            blocking = fcntl.fcntl(out, fcntl.F_GETPIPE_SZ) < PIPE_BYTES
            os.set_blocking(out, blocking)
            for a in range(0, f.size, CHUNK):
                self._wait_for(lambda a=a: (f, a) in self._ranges_done)  # type: ignore[misc]
                self._pour_range(fd, out, a, min(CHUNK, f.size - a), blocking)
            with self._cond:
                self.fetched_files += 1
        except BaseException:
            # Litestream is killed by the caller before it can see the pipe end early.
            self.failed.set()
            if out is not None:
                self.reader_done.wait(OPEN_WAIT)
            raise
        finally:
            if out is not None:
                os.close(out)

    def _pour_range(self, fd: int, out: int, at: int, n: int, blocking: bool) -> None:
        """Bytes at..at+n of a mirror's file (a whole range, never written again) into its
        pipe. Spliced: the kernel hands the file's cached pages to the pipe (0.15-0.24 CPU-s a
        GB here, against 0.69-0.94 for a read and a write through Python); read and written
        where the volume's filesystem cannot splice. A non-blocking pipe is spliced with
        SPLICE_F_NONBLOCK too (before Linux 5.1 splice ignored the pipe's own flag)."""
        flags = 0 if blocking else getattr(os, "SPLICE_F_NONBLOCK", 0)
        view: memoryview | None = None
        while n:
            try:
                if not view and self._splice:
                    try:
                        k = os.splice(fd, out, n, offset_src=at, flags=flags)
                    except OSError as exc:
                        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                            raise
                        self._splice = False
                        continue
                else:
                    if not view:
                        view = memoryview(os.pread(fd, n, at))
                    k = os.write(out, view)  # 0 when the read came back empty
                    view = view[k:]
                if k == 0:
                    raise OSError(f"the mirror's file ends before byte {at}")
                at, n = at + k, n - k
            except BlockingIOError:  # full: Litestream has not read it yet
                if self._feed_over():
                    raise Stopped() from None
                time.sleep(FILL_WAIT)

    def _make_pipe(self, f: PlanFile, fd: int) -> Path:
        """The named pipe, and the link to it at `f`'s place in the mirror, stamped with the
        time of `f`'s header (its first range is there)."""
        info = header_info(os.pread(fd, 100, 0))
        if info is None:
            raise OSError(f"{f.s3_key} is not an LTX file")
        # The link's target is padded to LINK_MIN characters: its length is the link's size.
        base = os.path.abspath(self.root / "stream" / f"pipe-{f.name}")
        pipe = Path(base).with_name("pipe-" + "0" * max(0, LINK_MIN - len(base)) + f.name)
        os.mkfifo(pipe, 0o600)
        link = self.root / f.local
        link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.symlink(pipe, link)
        ns = info[2] * 1_000_000
        os.utime(link, ns=(ns, ns), follow_symlinks=False)
        return pipe

    def _feed_over(self) -> bool:
        """A feeder waiting on its pipe stops: the fetch is stopped or failed, or Litestream
        is gone."""
        return self.stop.is_set() or self._abort.is_set() or self.reader_done.is_set()

    def _open_pipe(self, pipe: Path) -> int:
        """The pipe opened for writing once Litestream has opened it for reading (an open
        that would wait for a reader is retried, so a Litestream that never opens it does
        not hold the fetch)."""
        end = time.monotonic() + OPEN_WAIT
        while True:
            if self._feed_over():
                raise Stopped()
            try:
                fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                if time.monotonic() > end:
                    raise LocalError(f"Litestream did not open the stream of the mirror in "
                                     f"{OPEN_WAIT:g} s") from None
                time.sleep(0.005)
                continue
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            # A pipe of 1 MiB instead of 64 KiB: Litestream reads an LTX file a page at a
            # time, and a small pipe hands it over a page per wake-up of each side (1 GB at
            # 30 ms / 50 MB/s: 12.7 s median against 13.6 s, 4 runs each, bench/PROFILE.md).
            # Where the system refuses the size, the default pipe still works.
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            return fd

    def _done(self, f: PlanFile) -> bool:
        p = self.root / f.local
        ok = p.with_name(f.name + ".ok")
        try:
            return ok.exists() and p.stat().st_size == f.size
        except FileNotFoundError:
            return False

    # ---------------------------------------------------------------- progress

    def _publish(self) -> None:
        with _active_lock:
            _active[str(self.output)] = self.progress()

    def progress(self) -> dict[str, Any]:
        took = max(time.monotonic() - self._t0, 1e-6)
        with self._lock:
            return {"db": self.db.name, "output": str(self.output),
                    "bytes_fetched": self.fetched_bytes,
                    "bytes_planned": self.planned_bytes, "files_fetched": self.fetched_files,
                    "files_planned": self.planned_files,
                    "rate_mb_s": round(self.fetched_bytes / took / 1e6, 2),
                    "seconds": round(took, 1)}

    def _report(self, done: threading.Event) -> None:
        while not done.wait(PROGRESS_EVERY):
            self.logger.info("restore fetch progress", **self._fields())

    def _fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.progress().items() if k != "output"}

    # ---------------------------------------------------------------- the whole

    def run(self) -> Path:
        """Plan, check the space, fetch; the mirror root. Raises Skip (restore directly),
        Stopped, or an error of the bucket (the mirror is removed on every raise)."""
        done = threading.Event()
        threading.Thread(target=self._report, args=(done,), daemon=True,
                         name="restore-progress").start()
        try:
            self._connect()
            made = False
            while True:
                try:
                    plan = self.plan()
                    if not plan:
                        raise Skip("no plan reaches the target", quiet=True)
                    tiny = next((f for f in plan if f.size < LTX_HEADER), None)
                    if tiny is not None:  # no range to fetch: it would never be whole
                        raise Skip(f"{tiny.s3_key} holds {tiny.size} bytes, less than an LTX "
                                   "header: Litestream reads the bucket itself")
                    self._space(plan)
                    if self.stop.is_set():  # stopped while the space was checked
                        raise Stopped()
                    if not made:
                        self.committed.set()
                        self.news.set()
                        make_mirror(self.output)
                        made = True
                    self._fetch(plan)
                    break
                except Gone:
                    if self.ready.is_set():  # Litestream has made its plan from the mirror
                        raise Skip("a planned file went away while Litestream was restoring "
                                   "from the mirror") from None
                    self.replans += 1
                    if self.replans > MAX_REPLANS:
                        raise Skip(f"the bucket's files kept changing ({self.replans} plans)"
                                   ) from None
                    self.logger.info("restore plan changed", db=self.db.name,
                                     detail="a planned file is gone (retention): planning "
                                     "again", replans=self.replans)
            for ok in self.root.glob("ltx/*/*.ok"):
                ok.unlink()
            rtt = ({"round_trip_ms": round(self.round_trip * 1000, 1)}
                   if self.round_trip is not None else {})
            self.logger.info("restore fetched", replans=self.replans, retries=self.retries,
                             concurrency=self.concurrency, streamed=bool(self.streamed),
                             streamed_files=len(self.streamed), **rtt, **self._fields())
            return self.root
        except BaseException:
            if self.ready.is_set():
                # Litestream may be reading the mirror: the caller kills it, then the mirror goes.
                self.failed.set()
                self.reader_done.wait(OPEN_WAIT)
            remove_mirror(self.output)
            raise
        finally:
            done.set()
            with _active_lock:
                _active.pop(str(self.output), None)


def near(db: Database) -> tuple[str | None, float | None]:
    """(Why this restore should go straight from the bucket, when it is next door: Litestream
    alone is as fast there; the round trip measured, None without one). Measured while that
    direct restore already runs (the caller starts it first), so a near restore does not
    wait for the measure."""
    rtt = round_trip(db)
    if rtt is not None and rtt < NEAR_SECONDS:
        return (f"the bucket answers in {rtt * 1000:.1f} ms: Litestream alone restores as "
                "fast from so near"), rtt
    return None, rtt


def round_trip(db: Database, timeout: float = 1.0) -> float | None:
    """Seconds a small request to the replica takes on an open connection (a listing of one
    key, through the one S3 client: the user's CA and addressing apply); None when the
    endpoint is AWS's own (far enough by definition) or gives no answer."""
    s3 = db.replica.s3 if db.replica is not None else None
    if db.replica is None or s3 is None or not s3.endpoint:
        return None
    store = replica.S3Store(db.replica, timeout)

    def once() -> float:
        t0 = time.monotonic()
        store.list_ltx(9, max_keys=1)
        return time.monotonic() - t0

    try:
        once()  # opens the connection (and the TLS session): not a round trip
        # The least of up to five answers (a loaded server, or one busy with the direct
        # restore started beside this measure, is slow now and then): one answer settles it
        # when it is clearly near or clearly far.
        best = timeout
        for _ in range(5):
            best = min(best, once())
            if best < NEAR_SECONDS or best >= 3 * NEAR_SECONDS:
                break
        return best
    except replica.ReplicaUnreachable:
        return None


def _describe(exc: BaseException) -> str:
    code, status = _status(exc)
    if code or status:
        return f"{code or ''} {status or ''}".strip()
    return f"{type(exc).__name__}: {exc}"[:200]


def mirror_config(root: Path, output: Path) -> Path:
    """A Litestream config that restores `output` from the mirror at `root` (no secret in
    it: a file replica), written inside the mirror."""
    path = root / "restore.yml"
    doc = {"dbs": [{"path": str(output), "replica": {"type": "file", "path": str(root)}}]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.chmod(path, 0o600)
    return path


def usable(db: Database, concurrency: int) -> bool:
    """Whether this restore can go through a mirror: an S3 replica and more than one download
    at a time."""
    return concurrency > 1 and db.replica is not None and db.replica.s3 is not None


def dry_run_plan(out: str) -> list[dict[str, Any]]:
    """The `files` of `litestream restore -dry-run -json`'s answer."""
    start = out.find("{")
    doc = json.loads(out[start:]) if start >= 0 else {}
    files = doc.get("files") or []
    return [{"level": f["level"], "min_txid": f["min_txid"], "max_txid": f["max_txid"],
             "size": f["size"]} for f in files]

