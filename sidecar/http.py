"""The one HTTP listener (SIDECAR_HTTP_ADDR): /metrics, /healthz, /readyz, /status.

Routes live in one table. Another module adds its own with

    from sidecar import http
    http.add_route("POST", "/admin/verify", handler)   # handler(req, rt) -> http.Response

A handler runs in the listener's worker thread: it reads the Runtime and answers, and when
something must happen to a process it posts an event to the supervisor (`rt.supervisor.post`).

`[::]` (the default) is one dual-stack socket, so IPv4 clients (127.0.0.1) and IPv6 clients
(Railway's private network) reach the same port; where the host has no IPv6 it falls back to
0.0.0.0.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import log, metrics, status
from .errors import PreflightError

MAX_BODY = 1 << 20  # requests here carry small JSON at most
# /healthz fails once the supervisor loop's thread has shown no progress for this long. The
# loop beats on every turn and inside its long work (a live restore, a migration, stopping the
# app), so only a loop that is really stuck gets there, however long a restore takes.
LOOP_STALL_LIMIT = 60.0


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes = b""
    client: str = ""

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not)."""
        return json.loads(self.body.decode() or "null")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status_code: int, doc: Any, **headers: str) -> Response:
    body = (json.dumps(doc, indent=2, default=str) + "\n").encode()
    return Response(status_code, body, "application/json", {"Cache-Control": "no-store",
                                                            **headers})


Handler = Callable[[Request, Any], Response]
ROUTES: dict[tuple[str, str], Handler] = {}


def add_route(method: str, path: str, handler: Handler) -> None:
    """Register `handler(request, runtime) -> Response` for METHOD and an exact path."""
    ROUTES[(method.upper(), path)] = handler


# ------------------------------------------------------------------ the built-in routes


def metrics_page(_req: Request, rt: Any) -> Response:
    from .lag import refresh_sizes

    refresh_sizes(rt.cfg.databases)
    sup = rt.supervisor
    # Litestream's endpoint is only asked while it runs; a known-down Litestream is already
    # visible as sidecar_litestream_up 0 and would only add scrape errors.
    url = rt.metrics_url if sup is not None and sup.litestream_running() else None
    return Response(200, metrics.render(url), metrics.CONTENT_TYPE)


def healthz(_req: Request, rt: Any) -> Response:
    """200 while the supervisor loop is alive (the app's state does not matter here)."""
    sup = rt.supervisor
    if sup is None or not threading.main_thread().is_alive():
        return json_response(503, {"status": "down", "reason": "supervisor not running"})
    if sup.phase == "starting":
        # Start-up steps (restore, migrations) run on the main thread before the loop starts;
        # a long restore must not get the container killed by a liveness probe.
        return json_response(200, {"status": "ok", "phase": "starting"})
    silent = sup.silent_for()
    if silent < LOOP_STALL_LIMIT:
        return json_response(200, {"status": "ok", "phase": sup.phase,
                                   **({"busy": True} if silent > 1.0 else {})})
    return json_response(503, {"status": "down", "phase": sup.phase,
                               "reason": f"supervisor loop has not answered for {silent:.0f}s"})


def readiness(rt: Any) -> tuple[list[str], dict[str, Any]]:
    """Why the sidecar is not ready (empty when it is), and the per-database lag."""
    cfg, sup = rt.cfg, rt.supervisor
    reasons: list[str] = []
    ops = rt.extras.get("operations") if getattr(rt, "extras", None) is not None else None
    if rt.failure is not None:
        what = "start failed, " if sup is None or sup.phase == "starting" else ""
        reasons.append(f"{what}held for an operator: {rt.failure.message}")
    elif ops is not None and ops.busy():
        reasons.append("a live restore is running")
    elif sup is None or sup.phase == "starting":
        reasons.append("starting")
    elif sup.phase != "running":
        reasons.append(f"shutting down ({sup.phase})")
    if sup is not None and sup.phase != "starting":
        if cfg.app_command and not sup.app_running():
            reasons.append("app is not running")
        if not sup.litestream_running():
            reasons.append("litestream is not running")
    monitor = status.lag_monitor(rt)
    dbs: dict[str, Any] = {}
    for db in cfg.databases:
        res = monitor.results().get(str(db.path)) if monitor else None
        if res is None or not res.measured or res.lag_seconds is None:
            reasons.append(f"replication lag of {db.path} not measured yet")
            dbs[str(db.path)] = {"lag_seconds": None, "replica_reachable": None}
            continue
        dbs[str(db.path)] = {"lag_seconds": round(res.lag_seconds, 3),
                             "replica_reachable": res.reachable,
                             **({"last_check_error": res.error} if res.error else {})}
        if res.lag_seconds >= cfg.max_lag:
            why = f": {res.error}" if res.error else ""
            reasons.append(f"replication lag of {db.path} is {res.lag_seconds:.0f}s, over "
                           f"SIDECAR_MAX_LAG_SECONDS={cfg.max_lag:g}{why}")
    return reasons, dbs


def readyz(_req: Request, rt: Any) -> Response:
    """200 only when the app runs, Litestream runs and every lag is under the maximum."""
    reasons, dbs = readiness(rt)
    doc = {"ready": not reasons, "reasons": reasons, "databases": dbs}
    return json_response(503 if reasons else 200, doc)


def status_page(_req: Request, rt: Any) -> Response:
    return json_response(200, status.build(rt))


def default_routes() -> None:
    """Every built-in route, in one place."""
    add_route("GET", "/metrics", metrics_page)
    add_route("GET", "/healthz", healthz)
    add_route("GET", "/readyz", readyz)
    add_route("GET", "/status", status_page)


# ------------------------------------------------------------------ the server


class _RequestHandler(BaseHTTPRequestHandler):
    server_version = "sidecar"
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle or slow client cannot hold a worker thread forever

    def _dispatch(self) -> None:
        method = "GET" if self.command == "HEAD" else self.command
        parts = urlsplit(self.path)
        handler = ROUTES.get((method, parts.path))
        if handler is None:
            allowed = sorted(m for (m, p) in ROUTES if p == parts.path)
            if allowed:
                resp = json_response(405, {"error": f"method {self.command} not allowed"},
                                     Allow=", ".join(allowed))
            else:
                resp = json_response(404, {"error": f"no such endpoint: {parts.path}"})
            self._send(resp)
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(json_response(413, {"error": "request body too large"}))
            return
        body = self.rfile.read(length) if length > 0 else b""
        req = Request(method, parts.path, parse_qs(parts.query), self.headers, body,
                      self.client_address[0])
        try:
            resp = handler(req, self.server.runtime)  # type: ignore[attr-defined]
        # One failing handler answers 500 and is logged; the listener keeps serving.
        except Exception as exc:
            log.get("http").error("request failed", path=parts.path, error=str(exc),
                                  exc_info=True)
            resp = json_response(500, {"error": "internal error; see the sidecar log"})
        self._send(resp)

    def _send(self, resp: Response) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds would drown the log; errors are logged above


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, family: int, runtime: Any):
        self.address_family = family
        self.runtime = runtime
        addr: tuple[Any, ...] = (host, port, 0, 0) if family == socket.AF_INET6 else (host, port)
        super().__init__(addr, _RequestHandler, bind_and_activate=False)
        try:
            if family == socket.AF_INET6:
                # Dual stack for the any-address; an explicit IPv6 address stays IPv6 only.
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                       0 if host == "::" else 1)
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind would look the host name up (getfqdn): slow or hanging
        # where DNS is unreachable. The name is not needed.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = "sidecar", int(self.server_address[1])

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return int(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0])


_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def listen(host: str, port: int, runtime: Any) -> Server:
    """Bind the listener; raise PreflightError naming SIDECAR_HTTP_ADDR when it cannot."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family = _family(host)
        try:
            return Server(host, port, family, runtime)
        except OSError as exc:
            if host != "::" or exc.errno not in _NO_IPV6:
                raise
            log.get("http").warning("no IPv6 on this host: listening on IPv4 only",
                                    addr=f"0.0.0.0:{port}")
            return Server("0.0.0.0", port, socket.AF_INET, runtime)
    except OSError as exc:
        raise PreflightError(
            f"cannot listen on SIDECAR_HTTP_ADDR {shown}: {exc.strerror or exc}",
            hint="choose a free port (SIDECAR_HTTP_ADDR=[::]:9091) or `off`") from None


def serve(rt: Any) -> Callable[[], None]:
    """Start the listener in a daemon thread; return the callable that stops it."""
    cfg = rt.cfg
    if cfg.http_host is None:
        return lambda: None
    default_routes()
    server = listen(cfg.http_host, cfg.http_port, rt)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="http", daemon=True)
    thread.start()
    host = server.server_address[0]
    log.get("http").info("http listening", addr=f"[{host}]:{server.port}" if ":" in host
                         else f"{host}:{server.port}",
                         endpoints=sorted({p for (_m, p) in ROUTES}))

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
