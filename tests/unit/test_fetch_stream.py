"""The streamed file of a fetch (fetch.Fetch._fetch with a file of STREAM_MIN or more): the
other files are whole and stamped before `ready`, the link in the streamed file's place is
over 100 bytes long and carries its header's time, the pipe gives exactly the file's bytes in
order; a range that fails after `ready` never ends the pipe before `reader_done`.

A fake bucket in memory stands in for S3 here (the logic only); tests/e2e/test_restore_fetch.py
runs the same path with real Litestream and a real S3 server.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.replica_config import Database
from sidecar.recovery import fetch
from sidecar.recovery.fetch import CHUNK, PIPE_BYTES, STREAM_MIN, Fetch, PlanFile
from testkit.poll import wait_for


def ltx(size: int, ts_ms: int, seed: int) -> bytes:
    head = (b"LTX1" + bytes(4) + (4096).to_bytes(4, "big") + (10).to_bytes(4, "big")
            + bytes(16) + ts_ms.to_bytes(8, "big", signed=True))
    body = bytes((seed + i) % 251 for i in range(min(size, 65536)))
    data = head + (body * (size // len(body) + 1))[: size - len(head)]
    assert len(data) == size
    return data


class Body:
    def __init__(self, data: bytes):
        self.data = data

    def iter_chunks(self, n: int) -> Any:
        for i in range(0, len(self.data), n):
            yield self.data[i:i + n]

    def close(self) -> None:
        pass


class Refused(Exception):
    """Not retried: no status, not an OSError."""


class Bucket:
    """get_object over objects in memory; `hold` (an Event per key and start) keeps a range
    back until set; `refuse` (key, start) answers an error."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.hold: dict[tuple[str, int], threading.Event] = {}
        self.refuse: set[tuple[str, int]] = set()

    def get_object(self, Bucket: str, Key: str, Range: str) -> dict[str, Any]:
        a, b = (int(x) for x in Range.removeprefix("bytes=").split("-"))
        gate = self.hold.get((Key, a))
        if gate is not None:
            gate.wait(10)
        if (Key, a) in self.refuse:
            raise Refused(f"refused {Key} at {a}")
        return {"Body": Body(self.objects[Key][a:b + 1])}


class Store:
    prefix, bucket = "p/", "b"


SMALL = PlanFile(0, 2, 2, 300)
BIG = PlanFile(9, 1, 1, STREAM_MIN + 12345)


def make(tmp_path: Path, bucket: Bucket) -> Fetch:
    out = tmp_path / "app.db"
    f = Fetch(Database(out, None), out, 4, 5.0)
    f._client, f._store = bucket, Store()  # what _connect would make
    fetch.make_mirror(out)
    return f


def objects() -> dict[str, bytes]:
    return {"p/" + SMALL.s3_key: ltx(SMALL.size, 1_700_000_000_123, 1),
            "p/" + BIG.s3_key: ltx(BIG.size, 1_700_000_000_456, 7)}

def _fetching(f: Fetch, plan: list[PlanFile]) -> tuple[threading.Thread, list[BaseException]]:
    """`f._fetch(plan)` running in a thread of its own, and where its error lands."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            f._fetch(plan)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors



@pytest.mark.parametrize("splice", ["spliced", "unsupported", "gone-midway"])
def test_the_stream_comes_whole_and_in_order_once_the_rest_is_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, splice: str) -> None:
    """The streamed file's bytes through its pipe are the object's, whether the mirror's
    file is spliced into the pipe, or read and written where the filesystem cannot splice
    (from the start, or from the second call on)."""
    assert BIG.size >= STREAM_MIN
    calls: list[int] = []
    real = os.splice

    def splicing(*args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if splice == "unsupported" or (splice == "gone-midway" and len(calls) > 1):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(*args, **kwargs)

    monkeypatch.setattr(fetch.os, "splice", splicing)
    objs = objects()
    bucket = Bucket(objs)
    f = make(tmp_path, bucket)
    t, errors = _fetching(f, [BIG, SMALL])
    assert f.ready.wait(10), errors
    small = f.root / SMALL.local
    assert small.read_bytes() == objs["p/" + SMALL.s3_key]
    assert small.stat().st_mtime_ns == 1_700_000_000_123 * 1_000_000
    link = f.root / BIG.local
    st = os.lstat(link)
    assert link.is_symlink() and st.st_size >= 100  # Litestream refuses a file under 100 bytes
    assert st.st_mtime_ns == 1_700_000_000_456 * 1_000_000
    with open(link, "rb") as r:  # as Litestream opens it: through the link
        got = r.read()
    f.reader_done.set()
    t.join(10)
    assert not errors and not t.is_alive()
    assert got == objs["p/" + BIG.s3_key]
    assert f.streamed == (BIG,) and f.fetched_files == 2 and not f.failed.is_set()
    assert f._splice is (splice == "spliced")
    if splice == "spliced":
        assert len(calls) > 1  # a call per range at least
    else:
        assert len(calls) == {"unsupported": 1, "gone-midway": 2}[splice]  # then no more


def test_a_range_refused_after_ready_holds_the_pipe_open_until_the_reader_is_gone(
        tmp_path: Path) -> None:
    bucket = Bucket(objects())
    key = "p/" + BIG.s3_key
    gate = bucket.hold[(key, 2 * CHUNK)] = threading.Event()
    bucket.refuse.add((key, 2 * CHUNK))
    f = make(tmp_path, bucket)
    t, errors = _fetching(f, [BIG, SMALL])
    assert f.ready.wait(10)
    fd = os.open(f.root / BIG.local, os.O_RDONLY | os.O_NONBLOCK)
    try:
        got = b""
        deadline = time.monotonic() + 10
        while len(got) < 2 * CHUNK and time.monotonic() < deadline:
            try:
                got += os.read(fd, 1 << 20)
            except BlockingIOError:
                time.sleep(0.01)
        assert len(got) == 2 * CHUNK  # the first two ranges, and nothing more yet
        gate.set()  # the third range is now refused
        assert f.failed.wait(10)
        time.sleep(0.2)
        with pytest.raises(OSError) as e:
            os.read(fd, 1)  # no end of file: the pipe is held open, only empty
        assert e.value.errno == errno.EAGAIN
        assert t.is_alive()
        f.reader_done.set()  # the caller killed Litestream
        t.join(10)
        assert not t.is_alive()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        assert os.read(fd, 1) == b""  # closed only now
    finally:
        os.close(fd)
    assert len(errors) == 1 and isinstance(errors[0], Refused), errors


def test_a_planned_file_that_is_no_ltx_fails_the_fetch_instead_of_holding_the_stream(
        tmp_path: Path) -> None:
    """Its bytes all arrive, then finishing it fails: the feeder waiting for every other
    file to be whole hears of it, and the fetch ends with that error (it waited for ever)."""
    objs = objects()
    objs["p/" + SMALL.s3_key] = b"X" * SMALL.size
    f = make(tmp_path, Bucket(objs))
    t, errors = _fetching(f, [BIG, SMALL])
    t.join(10)
    assert not t.is_alive(), "the fetch hung"
    assert not f.ready.is_set()
    assert len(errors) == 1 and "is not an LTX file" in str(errors[0]), errors


def test_a_plan_with_a_file_smaller_than_an_ltx_header_restores_directly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file with no byte range to fetch would never be whole: no mirror, no wait."""
    tiny = PlanFile(0, 3, 3, 0)
    f = make(tmp_path, Bucket(objects()))
    fetch.remove_mirror(f.output)
    monkeypatch.setattr(f, "_connect", lambda: None)
    monkeypatch.setattr(f, "plan", lambda: [BIG, tiny])
    with pytest.raises(fetch.Skip, match="less than an LTX header"):
        f.run()
    assert not f.committed.is_set()
    assert not fetch.mirror_path(f.output).exists()


def test_the_stream_pipe_is_enlarged_where_the_system_allows(tmp_path: Path) -> None:
    """Litestream reads a page at a time: through a 64 KiB pipe each page costs a wake-up of
    the feeder and of Litestream; the feeder asks for PIPE_BYTES once Litestream opened it."""
    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    expect = PIPE_BYTES if os.geteuid() == 0 or limit >= PIPE_BYTES else 65536
    objs = objects()
    f = make(tmp_path, Bucket(objs))
    t, errors = _fetching(f, [BIG, SMALL])
    assert f.ready.wait(10), errors
    with open(f.root / BIG.local, "rb") as r:
        wait_for(lambda: fcntl.fcntl(r.fileno(), fcntl.F_GETPIPE_SZ) == expect, timeout=10,
                 interval=0.01, what=f"a pipe of {expect} bytes")
        got = r.read()
    f.reader_done.set()
    t.join(10)
    assert not errors and got == objs["p/" + BIG.s3_key]


BIG2 = PlanFile(1, 1, 4, STREAM_MIN + 777)  # an L1 file that overlaps the snapshot


def test_every_large_file_is_streamed_and_fed_side_by_side(tmp_path: Path) -> None:
    """Litestream merges the plan's files page by page, reading them all at once: with two
    large files both are streamed (a pipe each), `ready` comes while the second's later ranges
    are still on their way, and a reader that takes from the two pipes in turn, as Litestream
    does, gets each file whole and in order."""
    objs = objects()
    key2 = "p/" + BIG2.s3_key
    objs[key2] = ltx(BIG2.size, 1_700_000_000_789, 3)
    bucket = Bucket(objs)
    gate = bucket.hold[(key2, 2 * CHUNK)] = threading.Event()
    f = make(tmp_path, bucket)
    t, errors = _fetching(f, [BIG, BIG2, SMALL])
    assert f.ready.wait(10), errors
    assert not gate.is_set()  # ready before the second file is whole
    for big in (BIG, BIG2):
        link = f.root / big.local
        assert link.is_symlink() and os.lstat(link).st_size >= 100
    assert (f.root / SMALL.local).read_bytes() == objs["p/" + SMALL.s3_key]
    got = {BIG: b"", BIG2: b""}
    fds = {b: os.open(f.root / b.local, os.O_RDONLY) for b in (BIG, BIG2)}
    try:
        # In turn, a MiB at a time from each, as a merge reads: the first file's feeder is
        # not held back by the second's range that has not come yet.
        for _ in range(2):
            for b in (BIG, BIG2):
                got[b] += os.read(fds[b], 1 << 20)
        while len(got[BIG]) < BIG.size:
            got[BIG] += os.read(fds[BIG], 1 << 20)
        gate.set()
        while len(got[BIG2]) < BIG2.size:
            got[BIG2] += os.read(fds[BIG2], 1 << 20)
        assert os.read(fds[BIG], 1) == b"" and os.read(fds[BIG2], 1) == b""
    finally:
        for fd in fds.values():
            os.close(fd)
    f.reader_done.set()
    t.join(10)
    assert not errors and not t.is_alive()
    assert got[BIG] == objs["p/" + BIG.s3_key] and got[BIG2] == objs[key2]
    assert f.streamed == (BIG, BIG2) and f.fetched_files == 3


def test_a_stream_that_fails_stops_the_other_and_holds_both_pipes_open(tmp_path: Path) -> None:
    """A range of one streamed file refused after `ready`, while the other waits for a range
    of its own: the fetch fails, and neither pipe ends (Litestream would read an early end as
    the file's) until the reader is gone; then the fetch ends."""
    objs = objects()
    key2 = "p/" + BIG2.s3_key
    objs[key2] = ltx(BIG2.size, 1_700_000_000_789, 3)
    bucket = Bucket(objs)
    gate = bucket.hold[(key2, 2 * CHUNK)] = threading.Event()
    bucket.refuse.add((key2, 2 * CHUNK))
    later = bucket.hold[("p/" + BIG.s3_key, 2 * CHUNK)] = threading.Event()  # BIG's last
    f = make(tmp_path, bucket)
    t, errors = _fetching(f, [BIG, BIG2, SMALL])
    assert f.ready.wait(10), errors
    # Opened as Litestream opens them (waiting for the feeder's end), then read without
    # waiting: a pipe no writer has opened yet would read as ended.
    fds = [os.open(f.root / b.local, os.O_RDONLY) for b in (BIG, BIG2)]
    for fd in fds:
        os.set_blocking(fd, False)
    ended: list[int] = []

    def drain() -> None:  # a reader taking from both pipes in turn, as a merge does
        for fd in fds:
            with contextlib.suppress(BlockingIOError):
                while True:
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        ended.append(fd)
                        break

    try:
        gate.set()
        wait_for(lambda: drain() or f.failed.is_set(), timeout=10, interval=0.01,
                 what="the fetch to fail")
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            drain()
            time.sleep(0.01)
        assert not ended, "a pipe ended before the reader was gone"
        assert t.is_alive()
    finally:
        for fd in fds:  # the caller killed Litestream: its ends of the pipes are closed
            os.close(fd)
    f.reader_done.set()
    later.set()
    t.join(10)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], Refused), errors
