"""A shaping TCP proxy in front of a real S3 server, on 127.0.0.1 only: what a real bucket's
network does to a client, on loopback.

- `delay`: seconds each request waits before it is forwarded (the round trip a real bucket
  costs every request), and a new connection before its first byte (its handshake);
- `rate`: bytes per second each connection receives (one S3 stream's bandwidth), paced
  every 20 ms per connection (TICK), so parallel connections add up as they do on a real
  link; an answer's bytes cost their time even after a pause (no credit is saved up);
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
import collections
import contextlib
import threading
import time
from collections.abc import Callable

# A client this many bytes behind (the shaper's write buffer to it) stops the server's
# answers being read until it catches up; the server's own write buffer is held to it too.
READ = 1024 * 1024
# A connection's rate is paced every TICK seconds: what the link could have carried since it
# was last paced is sent, from bytes held as they came from the server. The link's clock only
# moves with the bytes sent, so a tick that fires late loses nothing (paced by late sleeps, a
# connection once got 27-30 MB/s of 50), and it restarts at the first byte of an answer after
# the link was idle (a request's round trip is not saved up as credit). Credit is never more
# than TICK (a client that was behind does not get a burst).
TICK = 0.02
HOLD = 2 * READ  # bytes held for pacing before the server's answers stop being read
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
        self._closed = False
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
        if self._closed:
            return
        self._closed = True

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(RuntimeError, TimeoutError):
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
        except asyncio.CancelledError:  # the shaper is closing: nothing is waited for
            answers.close()
            writer.close()
            raise
        # The client is done sending: the server's answer (if the client still reads) goes
        # on to its end, then both close.
        answers.write_eof()
        try:
            if not writer.transport.is_closing():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(answers.done), 60)
        finally:  # closed when the shaper closes (cancelled) meanwhile too
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
    """The connection to the server: its answers go to the client's transport, paced to the
    shaper's `rate` for this connection (read at every tick, so a test may change it) from
    bytes held here (see TICK), or at once without a rate; requests are written to it by
    `_up`. The server's answers stop being read while HOLD bytes are held or the client is
    READ bytes behind; a client that is gone closes the server's connection at once."""

    def __init__(self, shaper: Shaper, client: asyncio.BaseTransport):
        self.shaper, self.client = shaper, client
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held = _Held()
        self._link = 0.0  # the link's clock: when the bytes sent so far were all through
        self._tick: asyncio.TimerHandle | None = None
        self._paused = False
        self._ended = False  # the server closed: the client's end follows the held bytes
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=READ)

    def _client_gone(self) -> bool:
        if self.client.is_closing():
            self._held.clear()
            if self.transport is not None:
                self.transport.close()  # stop pulling what nobody will read
            return True
        return False

    def data_received(self, data: bytes) -> None:
        if self._client_gone():
            return
        if not self._held and self._tick is None:
            self._link = max(self._link, time.monotonic())  # an idle link saves no credit
        self._held += data
        if self._tick is None:
            self._pace()
        elif len(self._held) >= HOLD and not self._paused and self.transport is not None:
            self._paused = True  # the tick to come sends, and reads again
            self.transport.pause_reading()

    def _pace(self) -> None:
        """Send what the link has carried by now, then wait for the next tick, or for more
        of the answer."""
        self._tick = None
        if self._client_gone():
            return
        client = self.client
        now = time.monotonic()
        rate = self.shaper.rate
        behind = client.get_write_buffer_size() > READ  # type: ignore[attr-defined]
        if not behind and self._held:
            if not rate:
                n = len(self._held)
            else:
                self._link = max(self._link, now - TICK)
                n = min(len(self._held), int((now - self._link) * rate))
                if not n and len(self._held) / rate <= 0.001:
                    n = len(self._held)  # a small answer goes now; the link's clock runs ahead
                self._link += n / rate
            if n:
                for piece in self._held.take(n):
                    client.write(piece)  # type: ignore[attr-defined]
        if self._held or behind:
            wait = TICK if behind or not rate else min(TICK, max(0.001, len(self._held) / rate))
            self._tick = asyncio.get_running_loop().call_later(wait, self._pace)
        elif self._ended:
            self._finish()
            return
        hold = len(self._held) >= HOLD or behind
        if self.transport is not None and hold != self._paused and not self._ended:
            self._paused = hold
            (self.transport.pause_reading if hold else self.transport.resume_reading)()

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
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self._held.clear()
        if self.transport is not None:
            self.transport.close()
        self._finish()

    def eof_received(self) -> bool | None:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._writable.set()
        self._ended = True
        if not self._held and self._tick is None:
            self._finish()

    def _finish(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()  # after what it was sent (a transport flushes on close)
        if not self.done.done():
            self.done.set_result(None)


class _Held:
    """Bytes from the server waiting for their time: the chunks as they came, handed on as
    views of them (no copy here; the transport copies only what it cannot send at once)."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._at = 0  # bytes of the first chunk already handed on
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iadd__(self, data: bytes) -> _Held:
        self._chunks.append(data)
        self._len += len(data)
        return self

    def clear(self) -> None:
        self._chunks.clear()
        self._at = self._len = 0

    def take(self, n: int) -> list[memoryview]:
        out = []
        self._len -= n
        while n:
            first = self._chunks[0]
            k = min(n, len(first) - self._at)
            out.append(memoryview(first)[self._at:self._at + k])
            n -= k
            self._at += k
            if self._at == len(first):
                self._chunks.popleft()
                self._at = 0
        return out


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
