"""A shaping TCP proxy in front of a real S3 server, on 127.0.0.1 only: what a real bucket's
network does to a client, on loopback.

- `delay`: seconds each request waits before it is forwarded (the round trip a real bucket
  costs every request), and a new connection before its first byte (its handshake);
- `rate`: bytes per second each connection receives at most (one S3 stream's bandwidth), a
  token bucket per connection, so parallel connections add up as they do on a real link;
- `fail(method, target, headers)`: a status to answer instead of forwarding (a 503
  SlowDown, say), with an S3 error body, on the same keep-alive connection; `headers` are the
  request's, names in lower case (Litestream's `user-agent` starts with `litestream`);
- `on_request(method, target)`: called (in a worker thread) before a request is forwarded,
  for a test to change the bucket at an exact moment.

Bytes are forwarded untouched, so request signatures stay valid. Request heads are found
as in s3proxy.RequestCounter (a head up to its blank line, then `Content-Length` bytes of
body); a chunked request body is passed through unparsed (tests and the bench upload
directly, not through the shaper).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

# Bytes read from the server at most at once, and the stream buffer's limit. Reads of 64 KiB
# cost the shaper (a thread of the bench's process) 1.3 CPU-s per 512 MB at 30 ms / 50 MB/s
# over 8 connections, 1 MiB reads 0.85 CPU-s, on a 2-core machine that the restore it shapes
# shares: the real network's relays are not on the client's CPU.
READ = 1024 * 1024
# A connection's rate is a token bucket this many seconds deep: a pause that oversleeps (a
# timer fires a millisecond or so late, every 256 KiB read) is made up for by the next reads,
# so a connection gets its rate, not 60-80 % of it (32 MB at 50 MB/s: 27-30 MB/s with pauses
# alone before, in 64 KiB slices; 39 MB/s with 256 KiB reads and no credit).
BURST = 0.02
_REASONS = {408: "Request Timeout", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable", 404: "Not Found"}
_CODES = {408: "RequestTimeout", 429: "SlowDown", 500: "InternalError", 503: "SlowDown",
          404: "NoSuchKey"}


def error_response(status: int) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{_CODES.get(status, "Error")}'
            f"</Code><Message>shaped answer</Message></Error>").encode()
    return (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/xml\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


class Shaper:
    def __init__(self, upstream_port: int, delay: float = 0.0, rate: float | None = None,
                 fail: Callable[[str, str, dict[str, str]], int | None] | None = None,
                 on_request: Callable[[str, str], None] | None = None):
        self.upstream = ("127.0.0.1", upstream_port)
        self.delay, self.rate = delay, rate
        self.fail, self.on_request = fail, on_request
        self.requests: list[tuple[str, str]] = []  # (method, target) forwarded
        self.answered: list[tuple[int, str]] = []  # (status, target) answered by the shaper
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None

        async def start() -> None:
            self._server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
            ready.set()

        self._thread = threading.Thread(target=self._run, args=(start,), daemon=True,
                                        name="shaper")
        self._thread.start()
        ready.wait(10)
        assert self._server is not None
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _run(self, start: Callable[[], object]) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(start())  # type: ignore[arg-type]
        self._loop.run_forever()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stop listening, cancel every connection still open (their tasks end here, not
        as "destroyed but pending" when the loop is collected), and end the loop."""
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(asyncio.CancelledError):  # the shaper is closing
            await self._relay(reader, writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, answers = await loop.create_connection(
                lambda: _Answers(self, writer.transport), *self.upstream)
        except OSError:
            writer.close()
            return
        if self.delay:
            await asyncio.sleep(self.delay)  # the connection's handshake
        try:
            await self._up(reader, answers, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            answers.write_eof()
            try:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(answers.done), 60)
            finally:  # closed when the shaper closes (cancelled) too
                answers.close()
                with contextlib.suppress(Exception):
                    writer.close()

    async def _up(self, reader: asyncio.StreamReader, up_w: _Answers,
                  writer: asyncio.StreamWriter) -> None:
        """Client to server: each request head waits `delay`, may be answered here instead."""
        buf, body, raw, dropping = b"", 0, False, False
        loop = asyncio.get_running_loop()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            if raw:
                up_w.write(data)
                await up_w.drain()
                continue
            while data:
                if body:
                    n = min(body, len(data))
                    if not dropping:
                        up_w.write(data[:n])
                    body, data = body - n, data[n:]
                    continue
                buf += data
                data = b""
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head, data, buf = buf[:end + 4], buf[end + 4:], b""
                method, target, fields = _parse(head)
                body = int(fields.get("content-length") or 0)
                if "chunked" in fields.get("transfer-encoding", "").lower():
                    raw = True
                status = self.fail(method, target, fields) if self.fail else None
                if self.delay:
                    await asyncio.sleep(self.delay)
                if status:
                    dropping = True
                    self.answered.append((status, target))
                    writer.write(error_response(status))
                    await writer.drain()
                    continue
                dropping = False
                if self.on_request is not None:
                    await loop.run_in_executor(None, self.on_request, method, target)
                self.requests.append((method, target))
                up_w.write(head)
                if raw:
                    up_w.write(data)
                    data = b""
            await up_w.drain()


class _Answers(asyncio.Protocol):
    """The connection to the server: its answers go straight to the client's transport as
    they arrive (no stream buffer between), paced to the shaper's `rate` for this connection
    by pausing the reading; requests are written to it by `_up`."""

    def __init__(self, shaper: Shaper, client: asyncio.BaseTransport):
        self.shaper, self.client = shaper, client
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._free_at = time.monotonic()
        self._resume: asyncio.TimerHandle | None = None
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=READ)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client.is_closing():
            return
        client.write(data)  # type: ignore[attr-defined]
        rate = self.shaper.rate
        now = time.monotonic()
        wait = 0.0
        if rate:
            self._free_at = max(self._free_at, now - BURST) + len(data) / rate
            wait = self._free_at - now
        # The client reads slower than the server sends: wait for its buffer to drain.
        if client.get_write_buffer_size() > READ:  # type: ignore[attr-defined]
            wait = max(wait, 0.005)
        if wait > 0 and self.transport is not None and self._resume is None:
            self.transport.pause_reading()
            self._resume = asyncio.get_running_loop().call_later(wait, self._go_on)

    def _go_on(self) -> None:
        self._resume = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.client.get_write_buffer_size() > READ:  # type: ignore[attr-defined]
            self._resume = asyncio.get_running_loop().call_later(0.005, self._go_on)
            return
        self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError("the server's connection is closed")
        await self._writable.wait()

    def write_eof(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write_eof()

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        with contextlib.suppress(Exception):
            self.client.close()
        if not self.done.done():
            self.done.set_result(None)


def _parse(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, header fields by lower-case name) of a request head."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.decode("latin-1").split(" ")
    method, target = (parts[0], parts[1]) if len(parts) == 3 else ("?", "?")
    fields: dict[str, str] = {}
    for f in rest.split(b"\r\n"):
        name, sep, value = f.partition(b":")
        if sep:
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return method, target, fields
