"""The one route table, served by both listeners (http.py): the HTTP listener and the control
socket.

    route                 HTTP listener                 control socket (0600)
    GET  /metrics etc.    public                        -
    GET  /status          public, and /admin/status     /status
    POST /restore ...     /admin/restore, bearer token  /restore
    POST /undo            /admin/undo, bearer token     /undo

A request goes through two steps so the listener never reads a body it will refuse:
`begin()` looks at the request line and the headers only (the route, the token, the body limit)
and `finish()` parses the body into the route's request type (api.py), validated whole, then
calls the handler. `status_of()` is the one place where results and errors become HTTP codes.

No admin token configured: every /admin/ path answers 404, as if it did not exist. A missing or
wrong token: 401, decided from the headers; the comparison is constant-time.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from sidecar import api, log
from sidecar.errors import SidecarError

if TYPE_CHECKING:
    from sidecar.daemon.health import Probes
    from sidecar.daemon.operations import Operations

ADMIN = "/admin"
HTTP = "http"  # the TCP listener: public routes, and admin routes behind the token
CONTROL = "control"  # the Unix socket: admin routes at their own path, no token (0600 is the lock)

# Each handler takes its own route's request type (a subclass of api.Request); the table holds
# them side by side, so the argument is typed at the handler, not here.
Handler = Callable[[Any], api.Result]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    request: type[api.Request]
    handler: Handler
    admin: bool = True  # under /admin/ on HTTP (token) and on the control socket
    public: bool = False  # on HTTP at its own path, no token
    body_limit: int = 0  # bytes; 0: no body accepted
    slow: bool = False  # may run for minutes (restore, verify): its own worker threads


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """A request whose route and token were accepted from its headers; the body is next."""

    route: Route
    query: dict[str, str]
    client: str


def routes(ops: Operations, probes: Probes) -> list[Route]:
    """Every route the daemon serves, in one place."""
    return [
        Route("GET", "/metrics", api.StatusRequest, lambda r: probes.metrics(),
              admin=False, public=True),
        Route("GET", "/healthz", api.StatusRequest, lambda r: probes.healthz(),
              admin=False, public=True),
        Route("GET", "/readyz", api.StatusRequest, lambda r: probes.readyz(),
              admin=False, public=True),
        Route("GET", "/status", api.StatusRequest, lambda r: ops.status(), public=True),
        Route("POST", "/restore", api.RestoreRequest, ops.request_restore, body_limit=4096,
              slow=True),
        Route("GET", "/restore", api.RestoreStatusRequest, ops.restore_status),
        Route("POST", "/undo", api.UndoRequest, ops.request_undo, body_limit=4096, slow=True),
        Route("POST", "/verify", api.VerifyRequest, ops.verify_request, body_limit=1024,
              slow=True),
        Route("POST", "/snapshot", api.SnapshotRequest, lambda r: ops.snapshot(r.db),
              body_limit=1024,
              slow=True),
        Route("POST", "/resume", api.ResumeRequest, lambda r: ops.resume(), body_limit=1024),
    ]


def json_body(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, default=str) + "\n").encode()


def status_of(exc: SidecarError) -> int:
    """The HTTP code for each error a handler or the router raises."""
    for kind, code in ((api.BadRequest, 400), (api.Unauthorized, 401), (api.NotFound, 404),
                       (api.MethodNotAllowed, 405), (api.NotNow, 409), (api.TooLarge, 413),
                       (api.Failed, 500), (api.Unavailable, 503)):
        if isinstance(exc, kind):
            return code
    return 400  # any other operator error (a database name that does not exist, say)


def error_response(exc: SidecarError) -> Response:
    code = status_of(exc)
    if isinstance(exc, api.Failed | api.Unavailable):
        return Response(code, json_body(exc.doc), headers={"Cache-Control": "no-store"})
    doc: dict[str, Any] = {"error": exc.message}
    if exc.problems:
        doc["problems"] = exc.problems
    if exc.hint:
        doc["fix"] = exc.hint
    headers = {"Cache-Control": "no-store"}
    if isinstance(exc, api.Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="sidecar"'
    if isinstance(exc, api.MethodNotAllowed):
        headers["Allow"] = ", ".join(exc.allowed)
    return Response(code, json_body(doc), headers=headers)


def result_response(result: api.Result) -> Response:
    if isinstance(result, api.Text):
        return Response(200, result.body, result.content_type)
    if isinstance(result, api.Accepted):
        return Response(202, json_body(result.doc), headers={"Cache-Control": "no-store"})
    return Response(200, json_body(result), headers={"Cache-Control": "no-store"})


def authorized(authorization: str | None, token: str) -> bool:
    scheme, _, value = str(authorization or "").partition(" ")
    # Compare whole strings of bytes in constant time, whatever the caller sent.
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.encode())


class Router:
    REFUSAL_LOG_EVERY = 10.0  # seconds: a crowd of wrong tokens is one line, not thousands

    def __init__(self, table: list[Route], admin_token: str | None):
        self.table = table
        self.admin_token = admin_token
        self.log = log.get("router")
        self._refusals = 0
        self._refusal_logged = 0.0
        self._lock = threading.Lock()

    def _refused(self, path: str, client: str) -> None:
        """Log refused admin requests, at most one line per REFUSAL_LOG_EVERY seconds."""
        with self._lock:
            self._refusals += 1
            now = time.monotonic()
            if now - self._refusal_logged < self.REFUSAL_LOG_EVERY:
                return
            count, self._refusals, self._refusal_logged = self._refusals, 0, now
        self.log.warning("admin request refused", path=path, client=client,
                         refused_since_last_line=count)

    def _lookup(self, face: str, method: str, path: str) -> Route:
        if face == CONTROL:
            candidates = [r for r in self.table if r.admin and r.path == path]
        elif path.startswith(ADMIN + "/"):
            candidates = [r for r in self.table if r.admin and ADMIN + r.path == path]
        else:
            candidates = [r for r in self.table if r.public and r.path == path]
        for r in candidates:
            if r.method == method:
                return r
        if candidates:
            allowed = sorted({r.method for r in candidates})
            raise api.MethodNotAllowed(f"{method} not allowed on {path}; use "
                                       f"{', '.join(allowed)}", allowed)
        raise api.NotFound(f"no such endpoint: {path}")

    def begin(self, face: str, method: str, target: str, headers: Mapping[str, str],
              client: str = "") -> Call:
        """From the request line and headers only: the route, the token, the query."""
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        method = "GET" if method == "HEAD" else method
        if face == HTTP and (path == ADMIN or path.startswith(ADMIN + "/")):
            if not self.admin_token:
                raise api.NotFound(f"no such endpoint: {path}")
            if not authorized(headers.get("authorization"), self.admin_token):
                self._refused(path, client)
                raise api.Unauthorized("missing or wrong bearer token")
        route = self._lookup(face, method, path)
        query: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in query:
                raise api.BadRequest(f"query parameter {key!r} is given twice")
            query[key] = value
        return Call(route, query, client)

    def finish(self, call: Call, body: bytes) -> Response:
        """Parse the request (strictly, as a whole), run the handler, answer."""
        route = call.route
        try:
            if route.request.source == "query":
                if body.strip():
                    raise api.BadRequest(f"{route.method} {route.path} takes no body")
                req = route.request.parse(call.query)
            else:
                if call.query:
                    raise api.BadRequest(f"unknown query parameter {next(iter(call.query))!r}; "
                                         "this request takes a JSON body")
                req = route.request.parse(_json(body))
            if route.admin and route.method == "POST":
                self.log.info("admin request", path=route.path, client=call.client)
            return result_response(route.handler(req))
        except SidecarError as exc:
            return error_response(exc)
        # One failing handler answers 500 and is logged; the listener keeps serving.
        except Exception as exc:
            self.log.error("request failed", path=route.path, error=str(exc), exc_info=True)
            return Response(500, json_body({"error": "internal error; see the sidecar log"}))


# A request is a flat object of a few fields; nothing it takes nests deeper than this.
MAX_JSON_DEPTH = 32


class _Duplicate(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object with each key once: with the last of two taken, `{"dry_run": true,
    "dry_run": false}` would run what the first asked to only plan."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _depth(body: bytes) -> int:
    """How deep the body's arrays and objects nest (brackets inside strings not counted),
    measured before parsing: json's parser recurses once a level."""
    depth = deepest = 0
    in_string = escaped = False
    for b in body:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:  # quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _json(body: bytes) -> Any:
    if not body.strip():
        return {}
    if (deep := _depth(body)) > MAX_JSON_DEPTH:
        raise api.BadRequest(f"the request body nests {deep} levels deep; at most "
                             f"{MAX_JSON_DEPTH}")
    try:
        return json.loads(body, object_pairs_hook=_unique)
    except _Duplicate as exc:
        raise api.BadRequest(f"the request body gives the field {exc.args[0]!r} twice") \
            from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise api.BadRequest("the request body must be a JSON object") from None
