"""The listeners: the HTTP listener (SIDECAR_HTTP_ADDR) and the control socket, served by one
bounded server over the one route table (router.py). One module of ~470 lines on purpose: the
selector loop, its limits and the request parser share one connection state, and each limit
below is only checkable with the others in view.

Bounded by construction, so slow or hostile clients cannot grow memory or threads:
- one thread runs a selector loop over every socket; a slow client holds a socket, not a thread;
- at most `max_connections` connections per listener; past the cap the oldest connection that
  is still sending its request is dropped (so a crowd of slow clients cannot lock /healthz out),
  one that has had GRACE seconds to send it, and only after the turn has read what every
  connection sent. While every connection held is that young, newcomers are held over the
  cap, by at most OVERFLOW, and the cap is restored as they age. Past the overflow (a flood of
  over OVERFLOW / GRACE connections a second) the oldest still sending is dropped however
  young, as long as it was accepted in an earlier turn; only when none can be (every one is
  being answered, or arrived in this turn) is a newcomer answered 503 at once. (Protecting
  only the connections of the current turn let a flood of ~600 connections a second drop a
  /healthz whose client took ~20 ms to send its request after connecting: a probe sharing a
  busy process, or a descheduled one. The grace alone would have answered 503 to everything
  past ~1,150 connections a second.)
- the overflow is bounded by the descriptor limit too (a quarter of it for a listener), and a
  failing accept (EMFILE) rests the listener, 5 ms doubling to 1 s, instead of spinning on a
  socket that stays readable; it is logged once every SAY_EVERY seconds at most;
- a request must arrive whole (headers and body) within REQUEST_DEADLINE seconds;
- headers are limited to MAX_HEAD bytes; the route, its bearer token and its body limit are
  decided from them before one byte of body is read (so a 1 MiB declared body without a token
  is answered 401 at once, and over the route's limit 413);
- complete requests go to a few fixed worker threads (slow operator routes to their own two);
- every connection is closed after its answer (`Connection: close`).
A client that hangs up or sends garbage is closed quietly: it is not an error of ours.

Why not waitress (a well-kept pure-Python server with connection_limit and channel_timeout):
it reads and buffers a whole request body before the application sees the headers, so the
token and the per-route limit could not be decided first; its timeout is for inactivity (a
client trickling a byte every few seconds stays forever), and its body limit is one for all
routes. The loop below is small and does exactly those three things.

`[::]` (the default address) is one dual-stack socket, so IPv4 clients (127.0.0.1) and IPv6
clients (Railway's private network) reach the same port; where the host has no IPv6 it falls
back to 0.0.0.0.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import ipaddress
import os
import queue
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sidecar import api, log
from sidecar.daemon.router import CONTROL, HTTP, Call, Response, Router, error_response, json_body
from sidecar.errors import PreflightError, SidecarError

MAX_HEAD = 16 * 1024  # request line and headers
REQUEST_DEADLINE = 10.0  # seconds for a whole request, headers and body
ACCEPT_SLICE = 64  # connections accepted per turn of the loop: a burst cannot stall it
# A connection is not dropped to make room before it has had GRACE seconds to send its request;
# meanwhile at most OVERFLOW are held over the cap (a socket and at most MAX_HEAD of headers
# each: 4 MiB for the whole overflow).
GRACE = 0.25
OVERFLOW = 256
# Accept failing (EMFILE: the process is out of file descriptors): the listener rests instead
# of spinning on a socket that stays readable, from 5 ms doubling to 1 s, and the failure is
# logged at most once every SAY_EVERY seconds (with how many there were).
ACCEPT_REST = (0.005, 1.0)
SAY_EVERY = 10.0
# accept(2) errors that are the waiting client's, not the listener's (Linux's man page says to
# treat the network ones as EAGAIN): the next connection is taken at once.
CLIENT_GONE = {getattr(errno, name) for name in (
    "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
    "EOPNOTSUPP", "ENETUNREACH") if hasattr(errno, name)}
WRITE_DEADLINE = 30.0  # seconds for a client to take its answer
QUICK_WORKERS = 4  # /metrics, /healthz, /readyz, /status
SLOW_WORKERS = 2  # restore, verify, snapshot: minutes at most, one at a time anyway
DEFAULT_MAX_CONNECTIONS = 32
REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           409: "Conflict", 411: "Length Required", 413: "Content Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


class _Reject(Exception):
    """The request is refused before it reaches a handler (bad framing)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False)
class _Listener:
    sock: socket.socket
    face: str  # router.HTTP or router.CONTROL
    max_connections: int
    name: str
    open: int = 0
    overflow: int = OVERFLOW  # at most this many held over the cap (bounded by the fd limit)
    rest: float = 0.0  # the current rest after a failed accept (0: accepting)
    resume_at: float = 0.0  # when a resting listener accepts again (0: not resting)
    failed: int = 0  # failed accepts not yet logged (of the last SAY_EVERY seconds)
    failed_at: float = float("-inf")  # the last failed accept
    said_at: float = float("-inf")  # when a failed accept was last logged


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    listener: _Listener
    client: str
    deadline: float
    opened: float
    buf: bytearray = field(default_factory=bytearray)
    state: str = "head"  # head -> body -> work -> write
    call: Call | None = None
    need: int = 0
    out: bytes = b""
    head_only: bool = False
    turn: int = 0  # the loop's turn when it was accepted


def _render(resp: Response, head_only: bool) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Unknown')}",
             f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}",
             "Connection: close", "Server: sidecar"]
    lines += [f"{k}: {v}" for k, v in resp.headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + resp.body


def _plain_error(status: int, message: str) -> Response:
    return Response(status, json_body({"error": message}), headers={"Cache-Control": "no-store"})


def _parse_head(raw: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes anything; kept for clarity
        raise _Reject(400, "malformed request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _Reject(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _Reject(400, "malformed header line")
        key = name.lower()
        if key in headers and key in ("content-length", "authorization", "transfer-encoding"):
            raise _Reject(400, f"header {name} is given twice")
        headers[key] = value.strip()
    return parts[0].upper(), parts[1], headers


def _content_length(headers: dict[str, str]) -> int:
    if "transfer-encoding" in headers:
        raise _Reject(411, "chunked bodies are not accepted; send Content-Length")
    raw = headers.get("content-length")
    if raw is None or raw == "":
        return 0
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise _Reject(400, "malformed Content-Length")
    return int(raw)


class Server:
    """One selector loop serving every listener added to it; see the module's docstring."""

    def __init__(self, router: Router, request_deadline: float = REQUEST_DEADLINE):
        self.router = router
        self.request_deadline = request_deadline
        self.log = log.get("http")
        self.sel = selectors.DefaultSelector()
        self.listeners: list[_Listener] = []
        self.conns: dict[socket.socket, _Conn] = {}
        self.done: queue.SimpleQueue[tuple[_Conn, bytes]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.quick = concurrent.futures.ThreadPoolExecutor(QUICK_WORKERS, "http-worker")
        self.slow = concurrent.futures.ThreadPoolExecutor(SLOW_WORKERS, "http-operation")
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.dropped = 0  # connections dropped at the cap or the deadline (for tests)
        self.turn = 0  # turns of the loop: one select and the events it returned

    # ------------------------------------------------------------ listeners

    def add(self, sock: socket.socket, face: str, max_connections: int, name: str) -> None:
        sock.setblocking(False)
        lst = _Listener(sock, face, max_connections, name)
        # The overflow holds a descriptor each: a listener never holds more than a quarter of
        # the process's soft limit with it, so a flood cannot starve the files, sockets and
        # databases sidecar itself must open (a cap set past that is the operator's choice).
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft != resource.RLIM_INFINITY:
            lst.overflow = max(0, min(OVERFLOW, soft // 4 - max_connections))
        self.listeners.append(lst)
        self.sel.register(sock, selectors.EVENT_READ, lst)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="http", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self.thread is not None:
            self.thread.join(5)
        for lst in self.listeners:
            with contextlib.suppress(OSError):
                lst.sock.close()
        self.quick.shutdown(wait=False, cancel_futures=True)
        self.slow.shutdown(wait=False, cancel_futures=True)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # ------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready = self.sel.select(timeout=self._resume())
            except OSError:  # a socket closed under us; the next round is clean
                continue
            self.turn += 1
            # Connections first, listeners last: a request already waiting is read before any
            # accept of this turn can decide to drop a connection to make room.
            ready.sort(key=lambda kv: isinstance(kv[0].data, _Listener))
            for key, events in ready:
                try:
                    self._event(key, events)
                except Exception as exc:  # a bug must not end the listener
                    self.log.error("listener error", error=str(exc), exc_info=True)
                    if isinstance(key.data, _Conn):
                        self._close(key.data)
            self._finished()
            self._expire()
            self._trim()
        for conn in list(self.conns.values()):
            self._close(conn)
        self.sel.close()

    def _event(self, key: selectors.SelectorKey, events: int) -> None:
        if key.data is None:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        elif isinstance(key.data, _Listener):
            self._accept(key.data)
        elif events & selectors.EVENT_READ:
            self._read(key.data)
        elif events & selectors.EVENT_WRITE:
            self._write(key.data)

    def _accept(self, lst: _Listener) -> None:
        for _ in range(ACCEPT_SLICE):  # a burst is taken in slices: the loop stays responsive
            try:
                sock, addr = lst.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in CLIENT_GONE:
                    continue  # that client gave up (or its network did) before the accept
                self._rest(lst, exc)  # EMFILE and friends: keep serving the others
                return
            lst.rest = 0.0
            sock.setblocking(False)
            if (lst.open >= lst.max_connections and not self._evict(lst)
                    and lst.open >= lst.max_connections + lst.overflow
                    and not self._evict(lst, young=True)):
                # Every slot and the overflow are taken, and nothing held can be dropped (each
                # is being answered, or arrived in this turn): say so at once, not queue.
                with contextlib.suppress(OSError):
                    sock.send(_render(_plain_error(503, "too many connections"), False))
                sock.close()
                self.dropped += 1
                continue
            now = time.monotonic()
            client = addr[0] if isinstance(addr, tuple) else "local"
            conn = _Conn(sock, lst, client, now + self.request_deadline, now, turn=self.turn)
            lst.open += 1
            self.conns[sock] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _rest(self, lst: _Listener, exc: Exception) -> None:
        """Accept failed: the listener is left out of the selector for a rest that doubles
        with each failure in a row; it is logged once per SAY_EVERY seconds."""
        now = time.monotonic()
        lst.rest = min(max(lst.rest * 2, ACCEPT_REST[0]), ACCEPT_REST[1])
        lst.resume_at = now + lst.rest
        if now - lst.failed_at >= SAY_EVERY:
            lst.failed = 0  # an earlier episode's, long over: not this one's
        lst.failed += 1
        lst.failed_at = now
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(lst.sock)
        if now - lst.said_at >= SAY_EVERY:
            self.log.warning("cannot accept", listener=lst.name, error=str(exc),
                             failures=lst.failed, retry_in_seconds=round(lst.rest, 3),
                             open_connections=len(self.conns))
            lst.said_at, lst.failed = now, 0

    def _resume(self) -> float:
        """Put back the listeners whose rest is over; the select's timeout: until the next
        one is, at most 0.25 s."""
        now, wait = time.monotonic(), 0.25
        for lst in self.listeners:
            if not lst.resume_at:
                continue
            if now >= lst.resume_at:
                try:
                    self.sel.register(lst.sock, selectors.EVENT_READ, lst)
                except KeyError:  # registered already
                    lst.resume_at = 0.0
                except (ValueError, OSError) as exc:
                    if self._stop.is_set():  # closed by stop(): nothing to put back
                        lst.resume_at = 0.0
                        continue
                    # (epoll out of memory, say): tried again after another rest, not dropped
                    self._rest(lst, exc)
                    wait = min(wait, lst.rest)
                else:
                    lst.resume_at = 0.0
            else:
                wait = min(wait, lst.resume_at - now)
        return wait

    def _trim(self) -> None:
        """Back under the cap after a turn, as far as connections past their GRACE allow:
        newcomers held over the cap while every connection was young are trimmed as they
        age, the oldest still sending their requests first."""
        for lst in self.listeners:
            while lst.open > lst.max_connections and self._evict(lst):
                pass

    def _evict(self, lst: _Listener, young: bool = False) -> bool:
        """Drop the oldest connection of `lst` still sending its request and held for GRACE
        seconds at least (`young`: accepted in an earlier turn, however recently); False if
        none. (This turn has already read what each of them sent.)"""
        aged = time.monotonic() - GRACE
        # `conns` is in the order of acceptance: the first that qualifies is the oldest (one
        # pass that stops there; a list and its min on every accept over the cap was
        # quadratic under a flood).
        victim = next((c for c in self.conns.values()
                       if c.listener is lst and c.state in ("head", "body")
                       and (c.turn < self.turn if young else c.opened <= aged)), None)
        if victim is None:
            return False
        self._close(victim)
        self.dropped += 1
        return True

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not chunk:  # the client hung up
            self._close(conn)
            return
        conn.buf += chunk
        try:
            if conn.state == "head":
                self._head(conn)
            elif conn.state == "body" and len(conn.buf) >= conn.need:
                self._dispatch(conn, bytes(conn.buf[:conn.need]))
        except _Reject as rej:
            self._answer(conn, _plain_error(rej.status, rej.message))
        except SidecarError as exc:
            self._answer(conn, error_response(exc))

    def _head(self, conn: _Conn) -> None:
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.buf) > MAX_HEAD:
                raise _Reject(431, "request headers too large")
            return
        if end > MAX_HEAD:
            raise _Reject(431, "request headers too large")
        method, target, headers = _parse_head(bytes(conn.buf[:end]))
        conn.head_only = method == "HEAD"
        rest = conn.buf[end + 4:]
        call = self.router.begin(conn.listener.face, method, target, headers, conn.client)
        length = _content_length(headers)
        if length > call.route.body_limit:
            raise api.TooLarge(f"request body too large: {call.route.method} {call.route.path} "
                               f"takes at most {call.route.body_limit} bytes")
        conn.call, conn.need, conn.buf = call, length, bytearray(rest)
        if len(conn.buf) >= length:
            self._dispatch(conn, bytes(conn.buf[:length]))
        else:
            conn.state = "body"

    def _dispatch(self, conn: _Conn, body: bytes) -> None:
        assert conn.call is not None
        conn.state = "work"
        conn.buf = bytearray()
        self.sel.unregister(conn.sock)
        call = conn.call
        pool = self.slow if call.route.slow else self.quick

        def work() -> None:
            try:
                resp = self.router.finish(call, body)
            except Exception as exc:  # finish() answers errors itself; this is a last guard
                self.log.error("request failed", path=call.route.path, error=str(exc),
                               exc_info=True)
                resp = _plain_error(500, "internal error; see the sidecar log")
            self.done.put((conn, _render(resp, conn.head_only)))
            self._wake()

        try:
            pool.submit(work)
        except RuntimeError:  # shutting down
            self._close(conn)

    def _answer(self, conn: _Conn, resp: Response) -> None:
        """Answer from the loop itself (refusals): no worker, no body read."""
        if conn.state == "work":
            return
        self.sel.unregister(conn.sock)
        conn.state = "work"
        self.done.put((conn, _render(resp, conn.head_only)))

    def _finished(self) -> None:
        while True:
            try:
                conn, out = self.done.get_nowait()
            except queue.Empty:
                return
            if conn.sock not in self.conns:
                continue
            conn.out, conn.state = out, "write"
            conn.deadline = time.monotonic() + WRITE_DEADLINE
            self.sel.register(conn.sock, selectors.EVENT_WRITE, conn)
            self._write(conn)

    def _write(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._close(conn)

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self.conns.values()
                     if c.state != "work" and now > c.deadline]:
            if conn.state in ("head", "body"):
                with contextlib.suppress(OSError):
                    conn.sock.send(_render(_plain_error(408, "request not received in time"),
                                           False))
            self.dropped += 1
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if self.conns.pop(conn.sock, None) is None:
            return
        conn.listener.open -= 1
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.sel.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()


# ------------------------------------------------------------------ sockets


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return int(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0])


_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def _tcp_socket(host: str, port: int, family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Dual stack for the any-address; an explicit IPv6 address stays IPv6 only.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
            sock.bind((host, port, 0, 0))
        else:
            sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_tcp(host: str, port: int) -> socket.socket:
    """Bind the HTTP listener; raise PreflightError naming SIDECAR_HTTP_ADDR when it cannot."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family = _family(host)
        try:
            return _tcp_socket(host, port, family)
        except OSError as exc:
            if host != "::" or exc.errno not in _NO_IPV6:
                raise
            log.get("http").warning("no IPv6 on this host: listening on IPv4 only",
                                    addr=f"0.0.0.0:{port}")
            return _tcp_socket("0.0.0.0", port, socket.AF_INET)
    except OSError as exc:
        raise PreflightError(
            f"cannot listen on SIDECAR_HTTP_ADDR {shown}: {exc.strerror or exc}",
            hint="choose a free port (SIDECAR_HTTP_ADDR=[::]:9091) or `off`") from None


def listen_unix(path: Path) -> socket.socket:
    """The control socket, mode 0600 from its creation (umask), in a 0700 directory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)  # a stale socket from a killed run; the volume lock is ours
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(16)
    return sock


def serve(router: Router, control_path: Path, http_addr: tuple[str, int] | None,
          max_connections: int = DEFAULT_MAX_CONNECTIONS) -> Callable[[], None]:
    """Start the control socket and (unless off) the HTTP listener on one server thread;
    return the callable that stops both."""
    server = Server(router)
    server.add(listen_unix(control_path), CONTROL, 16, "control")
    log.get("control").info("control socket listening", path=str(control_path))
    if http_addr is not None:
        try:
            sock = listen_tcp(*http_addr)
        except BaseException:
            server.stop()
            control_path.unlink(missing_ok=True)
            raise
        server.add(sock, HTTP, max_connections, "http")
        host, port = sock.getsockname()[:2]
        log.get("http").info("http listening",
                             addr=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                             max_connections=max_connections,
                             endpoints=sorted({r.path for r in router.table if r.public}
                                              | {"/admin" + r.path for r in router.table
                                                 if r.admin}))
    server.start()

    def stop() -> None:
        server.stop()
        control_path.unlink(missing_ok=True)

    return stop
