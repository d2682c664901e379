"""The daemon's control socket: HTTP over a Unix socket in the state dir, mode 0600.

Every operator route is registered in `routes()`, the one table; the HTTP admin endpoints
(admin.py) serve the same table under /admin/ behind the bearer token. Handlers only read state
or ask the supervisor loop to act (operations.py); none touches a process.
"""

from __future__ import annotations

import json
import os
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import log
from .errors import SidecarError
from .litestream import ControlError, unix_request
from .operations import NotNow, Operations, attach, socket_path

MAX_BODY = 64 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)


Response = tuple[int, Any]
Handler = Callable[[Request], Response]


def routes(ops: Operations) -> dict[tuple[str, str], Handler]:
    """(method, path) -> handler: every operation the daemon serves."""
    return {
        ("GET", "/status"): lambda r: (200, ops.status()),
        ("POST", "/restore"): lambda r: ops.request_restore(r.body),
        ("GET", "/restore"): lambda r: ops.restore_status(r.query.get("id")),
        ("POST", "/verify"): lambda r: ops.verify(r.body),
        ("POST", "/snapshot"): lambda r: ops.snapshot(r.body),
        ("POST", "/resume"): lambda r: ops.resume(),
    }


def dispatch(table: dict[tuple[str, str], Handler], req: Request) -> Response:
    """Run the route for `req`; operator errors become a 4xx JSON body, never a traceback."""
    handler = table.get((req.method, req.path))
    if handler is None:
        allowed = sorted(m for (m, p) in table if p == req.path)
        if allowed:
            return 405, {"error": f"{req.method} not allowed on {req.path}; use "
                                  f"{', '.join(allowed)}"}
        return 404, {"error": f"no route {req.path}"}
    try:
        return handler(req)
    except SidecarError as exc:
        return (409 if isinstance(exc, NotNow) else 400), {
            "error": exc.message, "problems": exc.problems, "fix": exc.hint}
    except Exception as exc:
        log.get("control").error("control request failed", path=req.path, error=str(exc),
                                 exc_info=True)
        return 500, {"error": f"internal error: {exc}"}


def parse_request(method: str, raw_path: str, raw_body: bytes) -> Request | Response:
    parts = urlsplit(raw_path)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    body: Any = {}
    if raw_body.strip():
        try:
            body = json.loads(raw_body)
        except ValueError:
            return 400, {"error": "the request body must be a JSON object"}
        if not isinstance(body, dict):
            return 400, {"error": "the request body must be a JSON object"}
    return Request(method, parts.path.rstrip("/") or "/", query, body)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    table: dict[tuple[str, str], Handler]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(413, {"error": "request body too large"})
            return
        raw = self.rfile.read(length) if length else b""
        req = parse_request(self.command, self.path, raw)
        status, data = req if isinstance(req, tuple) else dispatch(self.server.table, req)
        self._reply(status, data)

    do_GET = do_POST = _serve

    def _reply(self, status: int, data: Any) -> None:
        payload = json.dumps(data, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def address_string(self) -> str:  # a Unix socket has no client address
        return "local"

    def log_message(self, format: str, *args: Any) -> None:
        log.get("control").debug("control request", line=format % args)


def serve(rt: Any) -> Callable[[], None]:
    """Listen on the control socket (0600) in a thread; returns the function that stops it."""
    ops = attach(rt)
    path = socket_path(rt.cfg)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.unlink(missing_ok=True)  # a stale socket from a killed run; the volume lock is ours
    old = os.umask(0o177)
    try:
        server = _Server(str(path), _Handler)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    server.table = routes(ops)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True, name="control-socket")
    thread.start()
    log.get("control").info("control socket listening", path=str(path))

    def stop() -> None:
        server.shutdown()
        server.server_close()
        Path(path).unlink(missing_ok=True)

    return stop


# ------------------------------------------------------------------ the client side


class NoDaemon(Exception):
    pass


def call(sock: Path, method: str, url: str, body: Any = None, timeout: float = 30.0
         ) -> tuple[int, Any]:
    """One request to the daemon. Raises NoDaemon when nothing listens on the socket."""
    if not sock.exists():
        raise NoDaemon(f"no sidecar is running here (no control socket at {sock})")
    try:
        return unix_request(sock, method, url, body, timeout=timeout)
    except ControlError as exc:
        raise NoDaemon(f"no sidecar answers on {sock} ({exc})") from None
