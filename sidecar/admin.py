"""The operator routes over HTTP: the control socket's table (control.routes) under /admin/,
behind `Authorization: Bearer $SIDECAR_ADMIN_TOKEN`.

No token configured: every /admin/ path answers 404, as if it did not exist. A missing or wrong
token: 401, and nothing runs. The comparison is constant-time (hmac.compare_digest).
"""

from __future__ import annotations

import hmac
from typing import Any

from . import control, http, log
from .operations import attach

PREFIX = "/admin"


def authorized(headers: Any, token: str) -> bool:
    given = str(headers.get("Authorization") or "")
    scheme, _, value = given.partition(" ")
    # Compare whole strings of bytes in constant time, whatever the caller sent.
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                              token.encode())


def _handler(table: dict[tuple[str, str], control.Handler], method: str, path: str
             ) -> http.Handler:
    def handle(req: http.Request, rt: Any) -> http.Response:
        token = rt.cfg.admin_token
        if not token:
            return http.json_response(404, {"error": f"no such endpoint: {req.path}"})
        if not authorized(req.headers, token):
            log.get("admin").warning("admin request refused", path=req.path, client=req.client)
            return http.json_response(401, {"error": "missing or wrong bearer token"},
                                      **{"WWW-Authenticate": 'Bearer realm="sidecar"'})
        parsed = control.parse_request(method, path + (f"?{_query(req)}" if req.query else ""),
                                       req.body)
        if isinstance(parsed, tuple):
            code, doc = parsed
        else:
            log.get("admin").info("admin request", path=req.path, client=req.client)
            code, doc = control.dispatch(table, parsed)
        return http.json_response(code, doc)

    return handle


def _query(req: http.Request) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v[-1] for k, v in req.query.items()})


def register(rt: Any) -> None:
    """Add every control-socket route to the HTTP listener under /admin/."""
    table = control.routes(attach(rt))
    for (method, path) in table:
        http.add_route(method, PREFIX + path, _handler(table, method, path))

