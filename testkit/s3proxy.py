"""A tiny fault-injecting TCP proxy in front of a real S3 server, on 127.0.0.1 only.

Modes: `pass` (bytes go through untouched, so request signatures stay valid), `error` (every
request is answered `500 InternalError` the way S3 does), `reset` (connections are accepted and
reset at once). Switching mode drops every open connection, so keep-alive sockets cannot carry
requests across an outage. `throttle(rate)` caps the bytes per second sent back to the clients
(all connections together), to make downloads slow without changing a byte.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ERROR_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
              b"<Message>We encountered an internal error. Please try again.</Message></Error>")
ERROR_RESPONSE = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
                  b"Connection: close\r\nContent-Length: " + str(len(ERROR_BODY)).encode()
                  + b"\r\n\r\n" + ERROR_BODY)


_NUMBERS = re.compile(r"[0-9a-f]{16}|(?<=[a-z])\d+")


def shape(method: str, target: str) -> str:
    """`GET /<bucket>/tenants/t0042.db/0001/<16 hex>-<16 hex>.ltx` -> `GET tenants/tN.db/0001/X-X
    .ltx`: the bucket dropped, names' numbers and TXIDs folded, a listing shown as LIST with
    its prefix."""
    url = urlsplit(target)
    parts = unquote(url.path).lstrip("/").split("/", 1)
    key = parts[1] if len(parts) > 1 else ""
    query = parse_qs(url.query, keep_blank_values=True)
    if method == "GET" and query.get("list-type") == ["2"]:
        method, key = "LIST", query.get("prefix", [""])[0]
        if "delimiter" in query:
            key += " (delimiter)"
    elif url.query:
        key += "?" + "&".join(sorted(query))  # e.g. multipart uploads
    return f"{method} {_NUMBERS.sub(lambda m: 'X' if len(m[0]) == 16 else 'N', key)}"


class RequestCounter:
    """Counts the HTTP requests clients send, by `shape`. Each connection's bytes are read as
    HTTP/1.1: a head up to its blank line, then `Content-Length` bytes of body skipped
    unread, so an object body is never taken for a request. Cheap: a `find` per head."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_shape: Counter[str] = Counter()

    def stream(self) -> Callable[[bytes], None]:
        """A feeder for one connection's client-to-server bytes."""
        state = {"buf": b"", "skip": 0}

        def feed(data: bytes) -> None:
            while data:
                if state["skip"]:
                    n = min(state["skip"], len(data))
                    state["skip"] -= n
                    data = data[n:]
                    continue
                buf = state["buf"] + data
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    state["buf"] = buf[-65536:]
                    return
                head, data, state["buf"] = buf[:end], buf[end + 4:], b""
                self._head(head, state)

        return feed

    def _head(self, head: bytes, state: dict[str, Any]) -> None:
        line, _, fields = head.partition(b"\r\n")
        parts = line.decode("latin-1").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return  # not a request head (the end of a chunked body, say)
        for f in fields.split(b"\r\n"):
            name, _, value = f.partition(b":")
            if name.strip().lower() == b"content-length":
                state["skip"] = int(value.strip() or 0)
        with self._lock:
            self.by_shape[shape(parts[0], parts[1])] += 1

    def total(self) -> int:
        with self._lock:
            return sum(self.by_shape.values())

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.by_shape)


class S3Proxy:
    def __init__(self, upstream_port: int, counter: RequestCounter | None = None):
        self.upstream = ("127.0.0.1", upstream_port)
        self.counter = counter
        self.mode = "pass"
        self.rate: float | None = None  # bytes/s from the server to the clients, None: no cap
        self._sent = 0
        self._since = 0.0
        self.requests = {"pass": 0, "error": 0, "reset": 0}
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="s3proxy").start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str) -> None:
        assert mode in ("pass", "error", "reset"), mode
        with self._lock:
            self.mode = mode
            conns, self._open = self._open, set()
        for c in conns:
            _reset(c)

    def throttle(self, rate: float | None) -> None:
        """Cap the download rate (bytes/s over all connections); None lifts the cap."""
        with self._lock:
            self.rate, self._sent, self._since = rate, 0, time.monotonic()

    def _pace(self, n: int) -> None:
        """Sleep until sending `n` more bytes keeps the total under the rate."""
        with self._lock:
            rate = self.rate
            if not rate:
                return
            self._sent += n
            due = self._since + self._sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def close(self) -> None:
        self._closed = True
        self.set("reset")
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            mode = self.mode
            self.requests[mode] += 1
            if mode == "reset":
                _reset(conn)
            elif mode == "error":
                threading.Thread(target=self._answer_500, args=(conn,), daemon=True).start()
            else:
                threading.Thread(target=self._splice, args=(conn,), daemon=True).start()

    def _answer_500(self, conn: socket.socket) -> None:
        """Read the request (head and whatever body follows), answer 500, close."""
        conn.settimeout(0.3)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            while True:  # drain a body, if any, until the client pauses
                if not conn.recv(65536):
                    break
        except OSError:
            pass
        with contextlib.suppress(OSError):
            conn.sendall(ERROR_RESPONSE)
        conn.close()

    def _splice(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _reset(conn)  # the real server is down: the client sees a reset connection
            return
        up.settimeout(None)
        with self._lock:
            if self.mode != "pass":
                _reset(conn)
                _reset(up)
                return
            self._open |= {conn, up}

        def pipe(a: socket.socket, b: socket.socket, paced: bool = False,
                 counter: Callable[[bytes], None] | None = None) -> None:
            try:
                while True:
                    data = a.recv(8192 if paced and self.rate else 65536)
                    if not data:
                        break
                    if counter is not None:
                        counter(data)
                    if paced:
                        self._pace(len(data))
                    b.sendall(data)
            except OSError:
                pass
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

        t = threading.Thread(target=pipe, args=(up, conn, True), daemon=True)
        t.start()
        pipe(conn, up, counter=self.counter.stream() if self.counter else None)
        t.join()
        with self._lock:
            self._open -= {conn, up}
        conn.close()
        up.close()


def _reset(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv() on it
    with contextlib.suppress(OSError):
        s.close()
