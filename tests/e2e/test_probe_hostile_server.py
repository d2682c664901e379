"""sidecar's S3 client (bucket.client: boto3 under a deadline and a cap) against servers that
answer badly on purpose: one that sends its answer a byte at a time (each read within the
socket timeout, the whole never), and one whose answer is far larger than any listing. Real
sockets on 127.0.0.1; the probe must give up within its budget and say why, and `sidecar run`
must then refuse to start as for any bucket it cannot read."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from sidecar import config
from sidecar.bucket import replica
from sidecar.bucket.client import Client
from testkit import S3_KEY, S3_SECRET, base_env, run_sidecar

pytestmark = pytest.mark.slow

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"


class Hostile:
    """Answers every request the way `mode` says: "drip-head" (the status line, then the
    headers a byte every 0.2 s), "drip-body" (whole headers, then the body a byte every
    0.2 s), each for 15 s and then the connection closed; "huge" (a 20 MB body as fast as it
    goes); "drip-tls" (a TLS handshake answered a byte every 0.2 s)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sent = 0  # bytes sent after the first, in all connections
        self.requests = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.endpoint = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                if self.mode == "drip-tls":
                    # A TLS handshake that never ends: the ClientHello is read, then a
                    # ServerHello record that claims 16 KB arrives a byte every 0.2 s.
                    conn.recv(65536)
                    self.requests += 1
                    conn.sendall(b"\x16\x03\x03\x40\x00")
                    end = time.monotonic() + 15
                    while not self._stop.wait(0.2) and time.monotonic() < end:
                        conn.sendall(b"\x02")
                        self.sent += 1
                    return
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                self.requests += 1
                if self.mode == "huge":
                    conn.sendall(HEAD + b"Content-Length: 20971520\r\n\r\n")
                    block = b"<" * 65536
                    for _ in range(320):
                        conn.sendall(block)
                        self.sent += len(block)
                    return
                if self.mode == "drip-head":
                    conn.sendall(b"HTTP/1.1 200 OK\r\n")
                    rest = b"X-Slow: " + b"a" * 100_000 + b"\r\n\r\n"
                else:
                    conn.sendall(HEAD + b"Content-Length: 100000\r\n\r\n")
                    rest = b"<" * 100_000
                end = time.monotonic() + 15  # a client without a deadline fails, not hangs
                for i in range(len(rest)):
                    if self._stop.wait(0.2) or time.monotonic() > end:
                        return
                    conn.sendall(rest[i:i + 1])
                    self.sent += 1
            except OSError:
                return


def _replica(endpoint: str) -> config.Replica:
    env = {"SIDECAR_DB_PATH": "/tmp/unused/app.db", "PATH": "/usr/bin:/bin",
           "SIDECAR_REPLICA_URL": "s3://b/app.db", "SIDECAR_S3_ENDPOINT": endpoint,
           "SIDECAR_S3_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": S3_KEY,
           "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    r = config.load(env, app_command=["true"], cwd=Path("/tmp")).databases[0].replica
    assert r is not None
    return r


@pytest.mark.parametrize("mode", ["drip-head", "drip-body"])
def test_an_answer_sent_a_byte_at_a_time_ends_at_the_deadline(mode: str) -> None:
    """Every byte comes well inside the read timeout (0.2 s against 1 s), so only a deadline
    on the whole request ends it: at connect + read timeout (2 s here), not never."""
    server = Hostile(mode)
    try:
        client = Client(_replica(server.endpoint), 1.0, env={})
        client.boto()  # made before the clock starts: the deadline is the request's
        t0 = time.monotonic()
        with pytest.raises(replica.ReplicaUnreachable, match="no whole answer within 2s"):
            client.list_objects_v2(Bucket="b", Prefix="app.db/", MaxKeys=1)
        took = time.monotonic() - t0
    finally:
        server.close()
    assert 1.9 <= took < 5.0, took
    assert server.sent >= 4  # it was still sending when the client gave up


def test_a_tls_handshake_sent_a_byte_at_a_time_ends_at_the_deadline() -> None:
    """An HTTPS endpoint whose handshake drips: the deadline ends it too (the socket is shut
    down before TLS is up), and it is unreachable, not a certificate problem."""
    server = Hostile("drip-tls")
    try:
        client = Client(_replica(server.endpoint.replace("http:", "https:")), 1.0, env={})
        client.boto()
        t0 = time.monotonic()
        with pytest.raises(replica.ReplicaUnreachable, match="no whole answer within 2s") as exc:
            client.list_objects_v2(Bucket="b", Prefix="app.db/", MaxKeys=1)
        took = time.monotonic() - t0
    finally:
        server.close()
    assert exc.value.kind == "unreachable"
    assert 1.9 <= took < 5.0, took
    assert server.sent >= 4


def test_an_answer_larger_than_any_listing_is_refused_not_held() -> None:
    """A 20 MB answer: the client stops reading past 16 MB and calls the bucket unreachable,
    and the probe (which retries an unreachable bucket until its budget is spent) says so."""
    server = Hostile("huge")
    try:
        client = Client(_replica(server.endpoint), 5.0, env={})
        with pytest.raises(replica.ReplicaUnreachable, match="larger than 16 MB"):
            client.list_objects_v2(Bucket="b", Prefix="app.db/", MaxKeys=1)
        with pytest.raises(replica.ReplicaUnreachable, match="larger than 16 MB"):
            replica.probe(_replica(server.endpoint), 1.0)
    finally:
        server.close()


def test_run_refuses_to_start_when_the_bucket_answers_a_byte_at_a_time(tmp_path: Path) -> None:
    """`sidecar run` with a missing database and a bucket that drips its answer: it exits 4
    (the replica cannot be read) within its replica timeout and the request deadline, starts
    no app, writes no database and leaves no restore file."""
    server = Hostile("drip-body")
    env = base_env(tmp_path, SIDECAR_REPLICA_URL="s3://b/app.db",
                   SIDECAR_S3_ENDPOINT=server.endpoint, SIDECAR_S3_REGION="us-east-1",
                   AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET,
                   SIDECAR_REPLICA_TIMEOUT="2s")
    db = Path(env["SIDECAR_DB_PATH"])
    marker = tmp_path / "app-ran"
    t0 = time.monotonic()
    try:
        res = run_sidecar(["run", "--", "touch", str(marker)], env, tmp_path, timeout=60)
    finally:
        server.close()
    took = time.monotonic() - t0
    assert res.returncode == 4, res.stderr[-3000:]
    assert "cannot be read" in res.stderr and "no whole answer within" in res.stderr
    assert "Traceback" not in res.stderr
    assert took < 20, took
    assert not marker.exists() and not db.exists()
    assert not list(db.parent.glob(".app.db.sidecar-restore-*"))
    assert server.requests >= 1
