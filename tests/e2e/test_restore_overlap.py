"""A start's restore runs while the bucket probe is still out: whatever the probe then says
decides, and a restore it does not confirm leaves nothing behind.

Real Litestream and a real S3 server, with a gate in front of it that holds the probe's first
listing until the restore is writing its temporary file, then answers it the way the scenario
says (an empty prefix, junk under it, no answer at all, or the real listing).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import struct
import threading
import time
from pathlib import Path

import pytest

from testkit import base_env, run_sidecar, s3_env
from testkit.db import lose_db

pytestmark = pytest.mark.slow

TMP_GLOB = ".app.db.sidecar-restore-*"

EMPTY = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
         'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>app.db/</Prefix>'
         '<KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>'
         '</ListBucketResult>')
JUNK = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
        'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>app.db/</Prefix>'
        '<KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>'
        '<Contents><Key>app.db/notes.txt</Key><LastModified>2024-01-01T00:00:00.000Z'
        '</LastModified><ETag>"x"</ETag><Size>5</Size></Contents></ListBucketResult>')


class ProbeGate:
    """A TCP proxy to the S3 server that reads the first request of each connection. The
    probe's listings (`prefix=app.db/` with or without a delimiter, a new connection each) wait
    until a restore file beside the DB holds `min_bytes`, then get `answer`: "pass" (the
    server's own answer), "empty" or "junk" (a canned listing), "reset" (no answer). Everything
    else (Litestream's requests) is passed through at `rate` bytes/s, so the restore is still
    writing when the probe is answered."""

    def __init__(self, upstream: int, data_dir: Path, answer: str, rate: float = 8e6,
                 min_bytes: int = 2_000_000):
        self.upstream, self.dir, self.answer = upstream, data_dir, answer
        self.rate, self.min_bytes = rate, min_bytes
        self.seen_while_writing: list[int] = []  # restore file sizes when a probe was answered
        self.probes = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _restore_bytes(self) -> int:
        """The bytes of the restore so far: Litestream's file, or (a restore from S3 fetches
        its files first, sidecar/recovery/fetch.py) the bytes written into the mirror directory."""
        sizes = [0]
        for p in self.dir.glob(TMP_GLOB):
            with contextlib.suppress(FileNotFoundError):
                if p.is_dir():
                    sizes.append(sum(f.stat().st_blocks * 512 for f in p.rglob("*.ltx")))
                else:
                    sizes.append(p.stat().st_size)
        return max(sizes)

    def _serve(self, conn: socket.socket) -> None:
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                head += chunk
        line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if line.startswith("GET ") and "list-type=2" in line and "prefix=app.db%2F&" in (
                line.split(" ")[1].split("?", 1)[-1] + "&"):
            self._probe(conn, head)
            return
        self._splice(conn, head)

    def _probe(self, conn: socket.socket, head: bytes) -> None:
        self.probes += 1
        end = time.monotonic() + 60
        while self._restore_bytes() < self.min_bytes and time.monotonic() < end:
            time.sleep(0.01)
        self.seen_while_writing.append(self._restore_bytes())
        if self.answer == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        if self.answer == "pass":
            self._splice(conn, head)
            return
        body = (EMPTY if self.answer == "empty" else JUNK).encode()
        with contextlib.suppress(OSError):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nConnection: close"
                         b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        conn.close()

    def _splice(self, conn: socket.socket, head: bytes) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
        except OSError:
            conn.close()
            return
        up.settimeout(None)

        def pipe(a: socket.socket, b: socket.socket, paced: bool) -> None:
            with contextlib.suppress(OSError):
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    if paced:
                        time.sleep(len(data) / self.rate)
                    b.sendall(data)
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

        with contextlib.suppress(OSError):
            up.sendall(head)
        t = threading.Thread(target=pipe, args=(up, conn, True), daemon=True)
        t.start()
        pipe(conn, up, False)
        t.join()
        conn.close()
        up.close()


def _seeded(tmp_path: Path, s3, bucket: str, mb: int = 40) -> tuple[dict[str, str], int]:
    """A bucket holding a backup of a ~`mb` MB database (made by a real sidecar run); the DB
    is then deleted. Returns the env and the row count."""
    env = base_env(tmp_path, **s3_env(s3, bucket))
    db = Path(env["SIDECAR_DB_PATH"])
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v BLOB)")
    with con:
        con.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < ?) "
                    "INSERT INTO rows(v) SELECT randomblob(1900) FROM c", (mb * 512,))
    con.close()
    res = run_sidecar(["run", "--", "true"], env, tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lose_db(db)
    return env, mb * 512


def _restore_processes(marker: str) -> list[int]:
    """Processes whose command line names a restore file of this test (there must be none
    once sidecar has exited)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker.encode() in (d / "cmdline").read_bytes():
                found.append(int(d.name))
    return found


@pytest.mark.parametrize("answer", ["empty", "junk", "reset", "pass"])
def test_the_probe_decides_while_the_restore_runs(tmp_path: Path, s3, bucket: str,
                                                   answer: str) -> None:
    """The probe is answered while Litestream is writing the restore: "empty" starts fresh
    (exit 0) and "junk" or no answer refuse (exit 4), each as without the overlap, with no
    restore file, no restored data at the live path and no restore process left; the real
    answer restores every row."""
    env, count = _seeded(tmp_path, s3, bucket)
    db = Path(env["SIDECAR_DB_PATH"])
    gate = ProbeGate(s3.port, db.parent, answer)
    env["SIDECAR_S3_ENDPOINT"] = gate.endpoint
    env["SIDECAR_REPLICA_TIMEOUT"] = "3s"
    marker = tmp_path / "app-ran"
    before = set(os.listdir(db.parent))
    try:
        res = run_sidecar(["run", "--", "touch", str(marker)], env, tmp_path, timeout=180)
    finally:
        gate.close()
    # The race happened: the probe was answered while the restore file was being written.
    assert gate.probes >= 1 and gate.seen_while_writing, res.stderr[-2000:]
    assert gate.seen_while_writing[0] >= gate.min_bytes
    assert gate.seen_while_writing[0] < count * 2048 * 0.9  # mid-way, not done
    assert not list(db.parent.glob(TMP_GLOB)), list(db.parent.iterdir())
    assert not _restore_processes(".sidecar-restore-")
    if answer == "pass":
        assert res.returncode == 0, res.stderr[-3000:]
        assert '"outcome": "restored"' in res.stderr
        con = sqlite3.connect(db)
        assert con.execute("SELECT count(*) FROM rows").fetchone()[0] == count
        assert con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        con.close()
        return
    # Nothing of the restore ever reached the log: the probe alone decided.
    assert '"litestream restore exited"' not in res.stderr
    assert '"restore started"' not in res.stderr
    if answer == "empty":
        assert res.returncode == 0, res.stderr[-3000:]
        assert '"outcome": "fresh"' in res.stderr
        assert "holds no backup" in res.stderr
        assert marker.exists()
        con = sqlite3.connect(db)
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        con.close()
        assert "rows" not in tables  # not the backup's data: a fresh database
        return
    assert res.returncode == 4, res.stderr[-3000:]
    assert not marker.exists()
    assert not db.exists() and not Path(str(db) + "-wal").exists()
    if answer == "junk":
        assert "not a Litestream backup" in res.stderr and "notes.txt" in res.stderr
    else:
        assert "cannot be read" in res.stderr
    assert set(os.listdir(db.parent)) <= before  # nothing new beside the DB
