"""The lab's network (testkit/shaper.py) does what the restore tests and the bench rely on: each
request waits the round trip, each connection gets its bandwidth and no more while parallel
connections add up, answers arrive byte for byte, a slow client holds the server back, a
client that leaves stops the server's answer, and closing the shaper does not wait.

A real rclone S3 server behind the shaper, or a plain socket server that sends as fast as it
may (`_Source`); boto3 and raw sockets as clients.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from testkit import S3Server
from testkit.shaper import Shaper

pytestmark = pytest.mark.slow

MB = 1_000_000


@pytest.fixture
def obj(s3: S3Server) -> tuple[str, bytes]:
    bucket = s3.make_bucket()
    data = os.urandom(8 * 1024 * 1024)
    s3.client().put_object(Bucket=bucket, Key="obj", Body=data)
    return bucket, data


def _client(endpoint: str, s3: S3Server) -> Any:
    import boto3
    from botocore.config import Config

    # The bytes are compared with what was put by the test itself; rclone's answer carries a
    # checksum header that does not match a put made with boto3's default trailing checksum.
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=s3.key,
                        aws_secret_access_key=s3.secret, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"},
                                      response_checksum_validation="when_required"))


def _get(endpoint: str, s3: S3Server, bucket: str, rng: str | None = None) -> tuple[bytes, float]:
    client = _client(endpoint, s3)
    kw = {"Range": rng} if rng else {}
    client.head_bucket(Bucket=bucket)  # the connection is open before the clock starts
    t0 = time.monotonic()
    body = client.get_object(Bucket=bucket, Key="obj", **kw)["Body"].read()
    return body, time.monotonic() - t0


def test_a_connection_is_held_to_its_rate_and_parallel_ones_add_up(
        s3: S3Server, obj: tuple[str, bytes]) -> None:
    bucket, data = obj
    sh = Shaper(s3.port, rate=4 * MB)
    try:
        got, took = _get(sh.endpoint, s3, bucket)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert took >= len(data) / (4 * MB) * 0.9, took  # 8.4 MB at 4 MB/s: ~2.1 s
        half = len(data) // 2
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda r: _get(sh.endpoint, s3, bucket, r),
                                    [f"bytes=0-{half - 1}", f"bytes={half}-{len(data) - 1}"]))
        assert b"".join(a[0] for a in answers) == data
        both = max(a[1] for a in answers)  # each timed from its own request
        # Two connections at 4 MB/s each: about half the time of one, well under all of it.
        assert both < took * 0.8, (both, took)
        assert both >= half / (4 * MB) * 0.9, both
    finally:
        sh.close()


def test_a_connection_gets_all_of_its_rate(s3: S3Server) -> None:
    """A shaper that paces in small sleeps, each a little late, gives a connection well under
    its rate (27-30 MB/s of 50 once): the lab's network would then be slower than it says,
    and the one-connection restore it is compared against slower still."""
    bucket = s3.make_bucket()
    data = os.urandom(32 * 1024 * 1024)
    s3.client().put_object(Bucket=bucket, Key="obj", Body=data)
    sh = Shaper(s3.port, rate=50 * MB)
    try:
        got, took = _get(sh.endpoint, s3, bucket)
        assert got == data
        ideal = len(data) / (50 * MB)  # 0.67 s
        # 0.68-0.69 s measured; 1.15-1.23 s when paced by late sleeps alone.
        assert ideal * 0.9 <= took <= ideal * 1.4, (took, ideal)
    finally:
        sh.close()


def test_every_request_waits_the_round_trip(s3: S3Server, obj: tuple[str, bytes]) -> None:
    bucket, data = obj
    sh = Shaper(s3.port, delay=0.15)
    try:
        shaped = _client(sh.endpoint, s3)  # made before the clock starts
        t0 = time.monotonic()
        shaped.head_bucket(Bucket=bucket)
        first = time.monotonic() - t0
        assert first >= 0.3, first  # a new connection's handshake, then the request
        got, took = _get(sh.endpoint, s3, bucket, "bytes=0-99")
        assert got == data[:100]
        assert took >= 0.15, took  # on an open connection: the request alone
        assert sh.requests and sh.requests[-1][0] == "GET"
    finally:
        sh.close()


def test_a_client_that_reads_slowly_gets_every_byte(s3: S3Server, obj: tuple[str, bytes]) -> None:
    """A raw socket with a small receive buffer that reads 64 KiB every 10 ms gets every
    byte of a real S3 answer (how far the server gets ahead: the test with _Source below)."""
    bucket, data = obj
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=s3.endpoint, aws_access_key_id=s3.key,
                          aws_secret_access_key=s3.secret, region_name="us-east-1",
                          config=Config(signature_version="s3v4",
                                        s3={"addressing_style": "path"}))
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "obj"})
    path = url.split(str(s3.port), 1)[1]
    sh = Shaper(s3.port)
    try:
        with socket.create_connection(("127.0.0.1", sh.port), timeout=30) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{s3.port}\r\n"
                         f"Connection: close\r\n\r\n".encode())
            got = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
                time.sleep(0.01)
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        assert body == data
    finally:
        sh.close()


def test_an_answer_on_an_open_connection_takes_its_round_trip_and_its_bytes(
        s3: S3Server, obj: tuple[str, bytes]) -> None:
    """A 4 MiB range at 30 ms / 50 MB/s on an open connection: 30 ms plus 84 ms of transfer.
    The link's time between answers (the request's round trip) is not credit for the next."""
    bucket, data = obj
    sh = Shaper(s3.port, delay=0.03, rate=50 * MB)
    try:
        client = _client(sh.endpoint, s3)
        client.head_bucket(Bucket=bucket)
        size = 4 * 1024 * 1024
        model = 0.03 + size / (50 * MB)
        for _ in range(3):
            t0 = time.monotonic()
            got = client.get_object(Bucket=bucket, Key="obj",
                                    Range=f"bytes=0-{size - 1}")["Body"].read()
            took = time.monotonic() - t0
            assert got == data[:size]
            assert took >= model * 0.95, (took, model)
    finally:
        sh.close()


class _Source:
    """A server on 127.0.0.1 that answers any request with `total` bytes, as fast as it may,
    and counts what it got out."""

    def __init__(self, total: int):
        self.total, self.sent = total, 0
        self.done = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {self.total}\r\n\r\n".encode())
            piece = b"x" * 65536
            while self.sent < self.total:
                self.sent += conn.send(piece[:self.total - self.sent])
        except OSError:
            pass
        finally:
            conn.close()
            self.done.set()


def _ask(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock


def test_a_client_that_leaves_mid_answer_stops_the_server() -> None:
    """The rest of a 200 MB answer is not pulled from the server for nobody."""
    source = _Source(200_000_000)
    sh = Shaper(source.port)
    try:
        sock = _ask(sh.port)
        got = 0
        while got < 65536:
            got += len(sock.recv(65536))
        sock.close()
        assert source.done.wait(10), source.sent
        assert source.sent < 50_000_000, source.sent
    finally:
        sh.close()


def test_a_slow_client_holds_the_server_back_and_close_does_not_wait() -> None:
    """A client that reads 64 KiB every 10 ms: the server gets no further ahead of it than
    the shaper's bounded hold and the sockets' buffers. Closing the shaper with that answer
    in flight returns at once."""
    source = _Source(200_000_000)
    sh = Shaper(source.port, rate=20 * MB)
    try:
        sock = _ask(sh.port)
        got = 0
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            got += len(sock.recv(65536))
            time.sleep(0.01)
        assert source.sent - got < 16_000_000, (source.sent, got)
        t0 = time.monotonic()
        sh.close()
        assert time.monotonic() - t0 < 2, time.monotonic() - t0
        sock.close()
    finally:
        sh.close()
