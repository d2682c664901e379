"""A restore from S3 fetches the plan's files in parallel into a mirror beside the database,
then Litestream restores from the mirror (sidecar/recovery/fetch.py).

Real Litestream and a real S3 server (rclone) behind testkit/shaper.py, which adds a real
bucket's round trip and per-connection bandwidth on loopback, answers chosen requests with
503, or changes the bucket just before a chosen request is forwarded.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.recovery.fetch import CHUNK
from testkit import S3Server, Sidecar, base_env, run_sidecar, s3_env
from testkit.backup import seed_shaped
from testkit.poll import wait_for
from testkit.shaper import Shaper
from testkit.sidecar import side_restore, tool

pytestmark = pytest.mark.slow

MIRRORS = ".app.db.sidecar-restore-*.mirror*"  # and a .gone being removed
# The app prints the values of table rows, as JSON, and exits.
APP = ("import json, os, sqlite3\n"
       "c = sqlite3.connect(os.environ['SIDECAR_DB_PATH'])\n"
       "print(json.dumps([r[0] for r in c.execute('SELECT v FROM rows ORDER BY id')]))\n")


@pytest.fixture
def shapers() -> Iterator[Callable[..., Shaper]]:
    made: list[Shaper] = []

    def make(server: S3Server, **kw: Any) -> Shaper:
        sh = Shaper(server.port, **kw)
        made.append(sh)
        return sh

    yield make
    for sh in made:
        sh.close()


def _setup(tmp_path: Path, s3: S3Server, shaper: Shaper | None, **seed: Any
           ) -> tuple[dict[str, str], list[str], list[str], dict[int, str]]:
    bucket = s3.make_bucket()
    values, marks = seed_shaped(s3, bucket, tmp_path / "seed", **seed)
    env = base_env(tmp_path, **s3_env(s3, bucket))
    if shaper is not None:
        env["SIDECAR_S3_ENDPOINT"] = shaper.endpoint
    app = tmp_path / "app.py"
    app.write_text(APP)
    return env, [sys.executable, str(app)], values, marks


def _start(env: dict[str, str], app: list[str], cwd: Path, timeout: float = 120
           ) -> tuple[list[str], Sidecar]:
    """`sidecar run` of the app to the end: (the rows the app read, the sidecar)."""
    sc = Sidecar(env, app, cwd).start()
    code = sc.wait(timeout)
    assert code == 0, sc.output()
    printed = [ln for ln in sc.stdout if ln.startswith("[")]
    assert printed, sc.output()
    return json.loads(printed[-1]), sc


def _objects(target: str) -> bool:
    """A GET of an LTX object (not a listing)."""
    return target.split("?")[0].endswith(".ltx") and "list-type" not in target


def test_many_files_and_a_large_snapshot_are_fetched_in_parallel(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper]) -> None:
    """At 30 ms a request and 20 MB/s a connection, a plan of a 24 MB snapshot and a dozen
    small files is fetched into a mirror, the snapshot in byte ranges over several
    connections, and the app reads exactly the rows written; the mirror is gone after."""
    shaper = shapers(s3, delay=0.03, rate=20e6)
    env, app, values, _ = _setup(tmp_path, s3, shaper, small=12)
    got, sc = _start(env, app, tmp_path)
    assert got == values
    fetched = sc.event("restore fetched")
    assert fetched is not None, sc.output()
    assert fetched["files_planned"] >= 10 and fetched["files_fetched"] == fetched["files_planned"]
    assert fetched["bytes_fetched"] == fetched["bytes_planned"] > 20_000_000
    assert fetched["streamed"] is True  # Litestream read the snapshot while it came
    assert 30 <= fetched["round_trip_ms"] < 1000, fetched  # why the mirror: the bucket is far
    snapshot_gets = [t for m, t in shaper.requests if m == "GET" and "/0009/" in t]
    # The snapshot (just under 24 MiB) in ranges of CHUNK, one GET each.
    assert len(snapshot_gets) == 24 * 2**20 // CHUNK, snapshot_gets
    assert shaper.connections >= 3
    assert not list((tmp_path / "data").glob(MIRRORS))


def test_two_large_files_of_a_plan_are_both_streamed(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper]) -> None:
    """A plan with two large files (a 24 MB snapshot, then a 20 MB transaction of its own):
    Litestream merges them page by page, so both are streamed, side by side, and Litestream
    starts before either is whole. The restored database holds every row of both."""
    shaper = shapers(s3, delay=0.03, rate=20e6)
    env, app, values, _ = _setup(tmp_path, s3, shaper, small=4, then_mb=20)
    got, sc = _start(env, app, tmp_path)
    assert got == values
    fetched = sc.event("restore fetched")
    assert fetched is not None, sc.output()
    assert fetched["streamed"] is True and fetched.get("streamed_files") == 2, fetched
    assert fetched["bytes_fetched"] == fetched["bytes_planned"] > 40_000_000
    gets = [t for m, t in shaper.requests if m == "GET" and _objects(t)]
    assert len([t for t in gets if "/0009/" in t]) == 24 * 2**20 // CHUNK  # in ranges
    assert len([t for t in gets if "/0000/" in t]) >= 20 * 2**20 // CHUNK + 4  # and 4 small
    with sqlite3.connect(tmp_path / "data" / "app.db") as c:
        assert c.execute("SELECT count(*) FROM blobs").fetchone()[0] == (24 + 20) * 512
    assert not list((tmp_path / "data").glob(MIRRORS))


def test_a_bucket_next_door_is_restored_by_litestream_alone(tmp_path: Path, s3: S3Server
                                                          ) -> None:
    """On loopback (no shaper: a request costs well under 10 ms) the mirror would only add a
    pass over the data: Litestream restores straight from the bucket, the log says why, and
    every row comes back."""
    env, app, values, _ = _setup(tmp_path, s3, None, small=3, blob_mb=4)
    got, sc = _start(env, app, tmp_path)
    assert got == values
    skipped = sc.event("restore fetch skipped")
    assert skipped is not None and "ms: Litestream alone" in skipped["reason"], sc.output()
    assert sc.event("restore fetched") is None


def test_a_file_deleted_during_the_fetch_replans(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper]) -> None:
    """Retention at the worst moment: just before the first GET of a planned L0 file, that
    file is compacted into L1 (copied there) and deleted from L0. The GET answers 404, the
    plan is made again (it now takes the L1 copy), and every row comes back."""
    moved: list[str] = []
    state: dict[str, Any] = {}

    def compact(method: str, target: str) -> None:
        path = target.split("?")[0]
        if method == "GET" and _objects(target) and "/0000/" in path and not moved:
            bucket, key = path.lstrip("/").split("/", 1)
            client = state["client"]
            client.copy_object(Bucket=bucket, Key=key.replace("/0000/", "/0001/"),
                               CopySource={"Bucket": bucket, "Key": key})
            client.delete_object(Bucket=bucket, Key=key)
            moved.append(key)

    shaper = shapers(s3, delay=0.02, on_request=compact)
    state["client"] = s3.client()
    env, app, values, _ = _setup(tmp_path, s3, shaper, small=8)
    got, sc = _start(env, app, tmp_path)
    assert moved, "no L0 file was requested"
    assert got == values
    assert sc.event("restore plan changed") is not None, sc.output()
    fetched = sc.event("restore fetched")
    assert fetched is not None and fetched["replans"] == 1, sc.output()
    assert sc.event("restore fetch failed") is None and sc.event("restore fetch skipped") is None


def test_503_answers_are_retried(tmp_path: Path, s3: S3Server,
                                 shapers: Callable[..., Shaper]) -> None:
    """The first six of sidecar's GETs of LTX objects are answered 503 SlowDown: more than
    the S3 client's own retries cover, so sidecar retries with backoff too (and says so), and
    the restore completes through the mirror with every row. (Not Litestream's GETs: the
    direct restore started beside the fetch reaches them now and then before the fetch
    commits, and took most of the six once in 14 runs.)"""
    failed: list[str] = []

    def slow_down(method: str, target: str, headers: dict[str, str]) -> int | None:
        ours = not headers.get("user-agent", "").startswith("litestream")
        if method == "GET" and _objects(target) and ours and len(failed) < 6:
            failed.append(target)
            return 503
        return None

    shaper = shapers(s3, delay=0.02, fail=slow_down)
    env, app, values, _ = _setup(tmp_path, s3, shaper, small=6)
    got, sc = _start(env, app, tmp_path)
    assert got == values
    assert [s for s, _ in shaper.answered] == [503] * 6, shaper.answered
    fetched = sc.event("restore fetched")
    assert fetched is not None and fetched["retries"] >= 2, sc.output()
    assert fetched["files_fetched"] == fetched["files_planned"]
    retries = [e for e in sc.events if e.get("message") == "restore fetch retry"]
    assert len(retries) == fetched["retries"] and all("503" in e["error"] for e in retries)


def test_a_volume_too_small_for_the_mirror_restores_directly(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper]) -> None:
    """`sidecar restore --output` onto a real 40 MB tmpfs (a mount namespace of its own): the
    25 MB database fits, the database and a 24 MB mirror do not. The restore goes straight
    from the bucket, says why, and the file holds every row. (--output, not a start: after a
    start Litestream keeps a local copy of its own beside the database, which no 40 MB
    volume holds either.)"""
    unshare = shutil.which("unshare")
    assert unshare, "util-linux unshare is needed"
    shaper = shapers(s3, delay=0.02)
    env, _, values, _ = _setup(tmp_path, s3, shaper, small=4)
    vol = tmp_path / "vol"
    vol.mkdir()
    script = ('mount -t tmpfs -o size=40m tmpfs "$1" && "$2" restore --output "$1/x.db" && '
              '"$3" -c "import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); '
              'print(json.dumps([r[0] for r in c.execute(\'SELECT v FROM rows ORDER BY id\')]))" '
              '"$1/x.db"')
    res = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c", script,
                          "sh", str(vol), str(Path(sys.executable).parent / "sidecar"),
                          sys.executable], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = [ln for ln in res.stdout.splitlines() if ln.startswith("[")]
    assert printed and json.loads(printed[-1]) == values, res.stdout[-2000:]
    events = [json.loads(ln) for ln in res.stderr.splitlines() if ln.startswith("{")]
    skipped = [e for e in events if e.get("message") == "restore fetch skipped"]
    assert skipped and "bytes free" in skipped[0]["reason"], res.stderr[-3000:]
    assert not any(e.get("message") == "restore fetched" for e in events)
    assert not list(vol.iterdir()), "the tmpfs was the restore's own"


def test_sigkill_during_the_fetch_leaves_no_database_and_the_mirror_is_cleaned(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper]) -> None:
    """SIGKILL while the mirror is half fetched (2 MB/s a connection): no database at the
    path, no partial restore file; the next start removes the mirror and restores every
    row."""
    shaper = shapers(s3, delay=0.02, rate=2e6)
    env, app, values, _ = _setup(tmp_path, s3, shaper, small=4)
    data = tmp_path / "data"
    sc = Sidecar(env, app, tmp_path).start()

    def half() -> bool:
        return any(sum(p.stat().st_blocks * 512 for p in m.rglob("*.ltx")) > 3_000_000
                   for m in data.glob(MIRRORS))

    wait_for(half, 60, interval=0.05, what="a mirror being fetched")
    sc.kill()
    assert not (data / "app.db").exists()
    left = sorted(p.name for p in data.glob(".app.db.sidecar-restore-*"))
    assert len(left) == 1 and left[0].endswith(".mirror"), left  # no partial database
    shaper.rate = None
    got, sc2 = _start(env, app, tmp_path)
    assert got == values
    removed = [e["path"] for e in sc2.events if e.get("message") == "removed partial restore"]
    assert any(p.endswith(".mirror") for p in removed), sc2.output()
    assert not list(data.glob(".app.db.sidecar-restore-*"))


def test_a_timestamp_restore_from_the_mirror_equals_the_bucket(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper]) -> None:
    """`sidecar restore --output --timestamp` through the mirror (each file's time taken from
    its LTX header) gives what the same restore gives straight from the bucket
    (SIDECAR_RESTORE_CONCURRENCY=1: Litestream alone), for times between the writes: the
    same rows, the same exit."""
    shaper = shapers(s3, delay=0.02)
    env, _, values, marks = _setup(tmp_path, s3, shaper, small=8, gap=0.6, marks=(1, 3, 5, 7))
    direct = {**env, "SIDECAR_RESTORE_CONCURRENCY": "1"}
    for i, at in marks.items():
        outs = {}
        for label, e in (("mirror", env), ("bucket", direct)):
            out = tmp_path / f"{label}-{i}.db"
            res = run_sidecar(["restore", "--output", str(out), "--timestamp", at], e, tmp_path)
            events = [json.loads(ln) for ln in res.stderr.splitlines() if ln.startswith("{")]
            fetched = [ev for ev in events if ev.get("message") == "restore fetched"]
            assert bool(fetched) == (label == "mirror"), res.stderr[-3000:]
            assert all(ev["streamed"] is True for ev in fetched), fetched  # the snapshot
            outs[label] = (res.returncode, _values(out) if res.returncode == 0 else None)
        assert outs["mirror"] == outs["bucket"], (i, at, outs)
        if i < 7:
            assert outs["mirror"] == (0, values[:i + 1]), (i, at, outs)
    # And plain `litestream restore -timestamp` of the bucket agrees (a time inside the range).
    ref = side_restore({**env, "SIDECAR_S3_ENDPOINT": s3.endpoint}, tmp_path / "plain.db",
                       timestamp=marks[3])
    assert _values(ref) == values[:4]


def _values(db: Path) -> list[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT v FROM rows ORDER BY id")]
    finally:
        con.close()

def test_a_live_restore_shows_the_fetch_progress(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper],
        sidecars: Callable[..., Sidecar]) -> None:
    """A live restore (POST /restore on the control socket) through a slow bucket (0.5 MB/s a
    connection): while it fetches, the job in /restore and /status shows the bytes and files
    of the plan fetched so far and the rate, and the log has a progress line every few
    seconds; the database then holds every row."""
    from sidecar.litestream import unix_request

    shaper = shapers(s3, delay=0.02)
    env, _app, values, _ = _setup(tmp_path, s3, shaper, small=4)
    idle = tmp_path / "idle.py"
    idle.write_text("import signal, sys, time\n"
                    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
                    "print('app up', flush=True)\nwhile True:\n    time.sleep(0.2)\n")
    sc = sidecars(env, [sys.executable, str(idle)], tmp_path)
    decided = sc.wait_event("restore decided", timeout=60)
    sc.wait_stdout("app up", timeout=60)
    sock = tmp_path / "data" / ".sidecar" / "sidecar.sock"
    wait_for(sock.exists, 20, what="control socket")
    shaper.rate = 0.5e6  # the fetch takes over PROGRESS_EVERY: a progress line is due
    code, job = unix_request(sock, "POST", "/restore", {"txid": decided["txid"]})
    assert code == 202, job
    seen: list[dict[str, Any]] = []

    def done() -> bool:
        _c, j = unix_request(sock, "GET", f"/restore?id={job['id']}")
        if j.get("fetch"):
            seen.append(j["fetch"])
            _c, status = unix_request(sock, "GET", "/status")
            seen.append((status.get("manual_restore") or {}).get("fetch") or {})
        return j["state"] == "done"

    wait_for(done, 120, interval=0.2, what="the live restore")
    shaper.rate = None
    _c, j = unix_request(sock, "GET", f"/restore?id={job['id']}")
    assert j["outcome"] == "restored", j
    partial = [p for p in seen if p and 0 < p["bytes_fetched"] < p["bytes_planned"]]
    assert partial, seen
    assert all(p["bytes_planned"] > 20_000_000 and p["files_planned"] >= 2
               and "rate_mb_s" in p and p["db"] == "app.db" for p in partial), partial
    assert any(p["bytes_fetched"] > partial[0]["bytes_fetched"] for p in partial), seen
    lines = [e for e in sc.events if e.get("message") == "restore fetch progress"]
    assert lines and all(0 <= e["bytes_fetched"] <= e["bytes_planned"] for e in lines)
    assert _values(tmp_path / "data" / "app.db") == values
    # The mirror was removed beside the integrity_check, and waited for before the job ended.
    left = [p.name for p in (tmp_path / "data").iterdir() if ".mirror" in p.name]
    assert left == [], left


def test_verify_restores_through_the_mirror(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper]) -> None:
    """`sidecar verify` (a restore into a temporary directory) goes through the mirror too,
    and passes with the backup's TXID."""
    shaper = shapers(s3, delay=0.02)
    env, _, _values, _ = _setup(tmp_path, s3, shaper, small=3, blob_mb=4)
    res = run_sidecar(["verify", "--json"], env, tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    events = [json.loads(ln) for ln in res.stderr.splitlines() if ln.startswith("{")]
    fetched = [e for e in events if e.get("message") == "restore fetched"]
    assert fetched and fetched[0]["files_fetched"] == fetched[0]["files_planned"] >= 2, \
        res.stderr[-3000:]
    assert '"ok": true' in res.stdout, res.stdout


def test_each_database_of_a_directory_restores_through_the_mirror(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper]) -> None:
    """A start with SIDECAR_DB_DIR and an empty volume: each database the bucket holds under
    the prefix is fetched into a mirror of its own and restored, every row of each."""
    shaper = shapers(s3, delay=0.02)
    bucket = s3.make_bucket()
    want = {}
    for name in ("t1.db", "t2.db"):
        want[name], _ = seed_shaped(s3, bucket, tmp_path / f"seed-{name}",
                                    prefix=f"tenants/{name}", small=3, blob_mb=3)
    env = base_env(tmp_path, **s3_env(s3, bucket, "tenants"),
                   SIDECAR_DB_DIR=str(tmp_path / "data" / "tenants"))
    del env["SIDECAR_DB_PATH"]
    env["SIDECAR_S3_ENDPOINT"] = shaper.endpoint
    (tmp_path / "data" / "tenants").mkdir(parents=True)
    sc = Sidecar(env, [sys.executable, "-c", "print('up')"], tmp_path).start()
    assert sc.wait(120) == 0, sc.output()
    fetched = [e for e in sc.events if e.get("message") == "restore fetched"]
    assert sorted(e["db"] for e in fetched) == ["t1.db", "t2.db"], sc.output()
    for name, values in want.items():
        assert _values(tmp_path / "data" / "tenants" / name) == values
    assert not list((tmp_path / "data" / "tenants").glob(".*.mirror*"))


def test_a_stream_cut_after_litestream_started_restores_directly(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper]) -> None:
    """The snapshot is streamed to Litestream while its ranges are fetched; once Litestream
    is writing its file, a later range of the snapshot is refused (403: not retried). The
    fetch fails mid-stream: that Litestream is killed and its file removed, never taken as
    good, the restore runs again straight from the bucket, the app reads exactly the rows
    written, and no mirror or partial file is left."""
    data = tmp_path / "data"
    refused: list[str] = []

    def cut(method: str, target: str, _headers: dict[str, str]) -> int | None:
        writing = list(data.glob(".app.db.sidecar-restore-*.tmp"))
        if method == "GET" and "/0009/" in target and writing and not refused:
            refused.append(target)
            return 403
        return None

    shaper = shapers(s3, delay=0.02, rate=8e6, fail=cut)
    env, app, values, _ = _setup(tmp_path, s3, shaper, small=4, blob_mb=48)
    env["SIDECAR_RESTORE_CONCURRENCY"] = "2"
    got, sc = _start(env, app, tmp_path)
    assert refused, "no snapshot range was asked for while Litestream was writing"
    assert got == values
    failed = sc.event("restore fetch failed")
    assert failed is not None and "GetObject" in failed["error"], sc.output()
    assert sc.event("restore fetched") is None
    exits = [e for e in sc.events if e.get("message") == "litestream restore exited"]
    assert [e["code"] for e in exits] == [0], exits  # the killed one is not the restore's
    assert not list(data.glob(".app.db.sidecar-restore-*"))


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "fetched-whole"])
def test_litestream_failing_on_the_mirror_restores_directly(
        tmp_path: Path, s3: S3Server, shapers: Callable[..., Shaper], stream: bool) -> None:
    """A Litestream that fails on the mirror by itself (here a wrapper that refuses any
    restore from a file replica, as a future Litestream reading the mirror differently
    might) is not the end of the start: what it wrote is removed, the restore runs straight
    from the bucket, and the app reads exactly the rows written."""
    wrapper = tmp_path / "litestream"
    wrapper.write_text("#!/bin/sh\n"
                       'for a in "$@"; do case "$a" in *.mirror/restore.yml)\n'
                       '  echo "refusing the mirror" >&2; exit 7;; esac; done\n'
                       f'exec {tool("litestream")} "$@"\n')
    wrapper.chmod(0o755)
    shaper = shapers(s3, delay=0.03, rate=20e6)
    env, app, values, _ = _setup(tmp_path, s3, shaper, small=4,
                                 **({} if stream else {"blob_mb": 2}))
    env["SIDECAR_LITESTREAM_BIN"] = str(wrapper)
    got, sc = _start(env, app, tmp_path)
    assert got == values
    failed = sc.event("restore from the mirror failed")
    assert failed is not None and failed["code"] == 7, sc.output()
    assert failed["streamed"] is stream and "refusing the mirror" in failed["output"]
    exits = [e["code"] for e in sc.events if e.get("message") == "litestream restore exited"]
    assert exits == [0], exits
    assert not list((tmp_path / "data").glob(".app.db.sidecar-restore-*"))


def test_litestream_reads_a_linked_pipe_once_and_refuses_an_early_end(tmp_path: Path) -> None:
    """What the streamed restore relies on, asked of the installed Litestream: in a file
    replica, a snapshot that is a link (over 100 bytes of target) to a named pipe is listed
    and read once, from its start, and restores every row; a pipe that ends early fails the
    restore and leaves no file."""
    import os
    import threading
    import time

    from sidecar.recovery.fetch import header_info
    from testkit.sidecar import tool

    src = tmp_path / "src.db"
    con = sqlite3.connect(src, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE b(id INTEGER PRIMARY KEY, x BLOB)")
    con.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                "WHERE i < 5000) INSERT INTO b(x) SELECT randomblob(2000) FROM n")
    rep = tmp_path / "rep"
    cfg = tmp_path / "ls.yml"
    cfg.write_text(f"dbs:\n  - path: {src}\n    replica:\n      type: file\n"
                   f"      path: {rep}\n      sync-interval: 100ms\n")
    proc = subprocess.Popen([tool("litestream"), "replicate", "-config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any((rep / "ltx" / "9").glob("*.ltx")), 30, what="a snapshot")
        time.sleep(1.0)
    finally:
        proc.terminate()
        proc.wait(10)
    con.close()
    snap = sorted((rep / "ltx" / "9").glob("*.ltx"))[-1]
    body = snap.read_bytes()
    info = header_info(body[:100])
    assert info is not None
    pipe = tmp_path / ("pipe-" + "0" * 120)
    os.mkfifo(pipe)
    snap.unlink()
    snap.symlink_to(pipe)
    os.utime(snap, ns=(info[2] * 1_000_000,) * 2, follow_symlinks=False)

    def restore(feed: bytes) -> tuple[int, Path, int]:
        opened = []

        def writer() -> None:
            fd = os.open(pipe, os.O_WRONLY)  # waits for Litestream to open its end
            opened.append(1)
            view = memoryview(feed)
            try:
                while view:
                    view = view[os.write(fd, view):]
            except BrokenPipeError:
                pass  # Litestream stopped reading: what it does then is the question
            finally:
                os.close(fd)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        out = tmp_path / f"out-{len(feed)}.db"
        res = subprocess.run([tool("litestream"), "restore", "-o", str(out), f"file://{rep}"],
                             capture_output=True, text=True, timeout=60)
        t.join(10)
        return res.returncode, out, len(opened)

    code, out, opened = restore(body)
    assert code == 0 and opened == 1
    got = sqlite3.connect(out)
    assert got.execute("SELECT count(*) FROM b").fetchone() == (5000,)
    assert got.execute("PRAGMA quick_check").fetchone() == ("ok",)
    got.close()
    for cut in (len(body) // 2, len(body) - 1):
        code, out, opened = restore(body[:cut])
        assert code != 0 and opened == 1
        assert not out.exists() and not out.with_name(out.name + ".tmp").exists()
