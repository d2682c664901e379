"""Fast checks of the request types and the one route table: strict parsing, the HTTP codes
decided in one place, the token decided from the headers; and the bounded server in-process."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from sidecar import api
from sidecar.daemon import http, router
from sidecar.daemon.router import CONTROL, HTTP, Route, Router


@pytest.mark.parametrize("body,field", [
    ({"dry-run": True}, "dry-run"), ({"dryrun": True}, "dryrun"),
    ({"timeout": "abc", "wait": True}, "timeout"), ({"timestamp": "yesterday"}, "timestamp"),
    ({"txid": 12}, "txid"), ({"wait": 1}, "wait"), ({"timeout": float("inf"), "wait": True},
                                                     "timeout"),
    ({"timeout": 5}, "timeout"),  # without wait
    ({"txid": "zz"}, "txid"), ({"txid": "1", "timestamp": "2025-01-01T00:00:00Z"}, "txid"),
])
def test_restore_request_refuses_bad_fields_by_name(body: dict[str, Any], field: str) -> None:
    """Each bad field is a BadRequest whose message names it."""
    with pytest.raises(api.BadRequest) as exc:
        api.RestoreRequest.parse(body)
    assert field in exc.value.message


def test_requests_round_trip_from_client_to_server() -> None:
    """What a client sends (as_json) parses back into the same request."""
    req = api.RestoreRequest(txid="1a4", db="app.db", wait=True, timeout=30.0)
    assert api.RestoreRequest.parse(req.as_json()) == req
    assert api.RestoreRequest.parse({}) == api.RestoreRequest()
    assert api.VerifyRequest.parse(api.VerifyRequest(db="x").as_json()).db == "x"
    assert api.RestoreStatusRequest.parse({"id": "abc"}).id == "abc"
    with pytest.raises(api.BadRequest):
        api.ResumeRequest.parse({"force": True})
    with pytest.raises(api.BadRequest):
        api.VerifyRequest.parse([1])


def _table(calls: list[Any]) -> list[Route]:
    return [
        Route("GET", "/healthz", api.StatusRequest, lambda r: {"ok": True}, admin=False,
              public=True),
        Route("GET", "/status", api.StatusRequest, lambda r: {"state": "running"}, public=True),
        Route("POST", "/restore", api.RestoreRequest,
              lambda r: calls.append(r) or api.Accepted({"queued": True}), body_limit=64),
        Route("POST", "/verify", api.VerifyRequest,
              lambda r: (_ for _ in ()).throw(api.Failed("bad", {"ok": False})), body_limit=64),
    ]


def test_codes_and_the_token_are_decided_in_one_place() -> None:
    """404 without a token configured, 401 on a wrong one, 405, 400, 202, 500 with the doc."""
    calls: list[Any] = []
    hdr = {"authorization": "Bearer " + "k" * 20}
    assert isinstance(Router(_table(calls), None).begin(HTTP, "GET", "/status", {}), router.Call)
    with pytest.raises(api.NotFound):
        Router(_table(calls), None).begin(HTTP, "POST", "/admin/restore", hdr)
    r = Router(_table(calls), "k" * 20)
    with pytest.raises(api.Unauthorized):
        r.begin(HTTP, "POST", "/admin/restore", {"authorization": "Bearer nope"})
    with pytest.raises(api.MethodNotAllowed):
        r.begin(HTTP, "DELETE", "/admin/restore", hdr)
    with pytest.raises(api.NotFound):
        r.begin(HTTP, "GET", "/restore", {})  # admin routes are not public
    with pytest.raises(api.NotFound):
        r.begin(CONTROL, "GET", "/healthz", {})  # probes are not on the socket
    call = r.begin(HTTP, "POST", "/admin/restore", hdr)
    assert r.finish(call, b'{"dry-run": true}').status == 400 and not calls
    assert r.finish(call, b'{"dry_run": true}').status == 202 and len(calls) == 1
    resp = r.finish(r.begin(CONTROL, "POST", "/verify", {}), b"")
    assert resp.status == 500 and b'"ok": false' in resp.body


def _serve(table: list[Route], token: str | None, cap: int = 4, deadline: float = 10.0
           ) -> tuple[http.Server, int]:
    server = http.Server(Router(table, token), request_deadline=deadline)
    sock = http.listen_tcp("127.0.0.1", 0)
    server.add(sock, HTTP, cap, "test")
    server.start()
    return server, sock.getsockname()[1]


def _ask(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_server_answers_401_before_the_body_and_drops_the_oldest_slow_client() -> None:
    """A 1 MiB declared body without a token is answered 401 at once; past the cap the oldest
    half-sent request is dropped so a new /healthz still answers; a slow request gets 408."""
    server, port = _serve(_table([]), "k" * 20, cap=4, deadline=1.0)
    try:
        t0 = time.monotonic()
        out = _ask(port, b"POST /admin/restore HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 401") and time.monotonic() - t0 < 1.0
        idle = []
        for _ in range(10):  # one at a time: a connection accepted in the loop's current turn
            idle.append(socket.create_connection(("127.0.0.1", port)))  # is never dropped
            idle[-1].sendall(b"GET /healthz HTTP/1.1\r\n")
            time.sleep(0.05)
        assert _ask(port, b"GET /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
        time.sleep(1.5)
        assert b"408" in idle[-1].recv(1024)  # the newest survived eviction, then timed out
        for s in idle:
            s.close()
        assert _ask(port, b"POST /admin/verify HTTP/1.1\r\nAuthorization: Bearer " + b"k" * 20
                    + b"\r\nContent-Length: 9999\r\n\r\n").startswith(b"HTTP/1.1 413")
        assert _ask(port, b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                    ).startswith(b"HTTP/1.1 411")
        assert _ask(port, b"HEAD /healthz HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\n")
    finally:
        server.stop()


def test_a_client_slow_to_send_survives_a_flood_of_newer_connections(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that connects and takes 80 ms to send its /healthz, while 60 silent
    connections arrive at once (a cap of 4), is still answered 200: nothing is dropped for room
    before it has had GRACE to send its request. The newcomers are held over the cap meanwhile,
    trimmed back to it once they have aged; past the overflow the oldest is dropped however
    young, so a newcomer is still answered."""
    monkeypatch.setattr(http, "OVERFLOW", 100)
    server, port = _serve(_table([]), None, cap=4)
    crowd: list[socket.socket] = []
    try:
        probe = socket.create_connection(("127.0.0.1", port), timeout=5)
        time.sleep(0.03)  # accepted in a turn of its own, before the flood
        crowd += [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
        time.sleep(0.05)  # the flood is accepted meanwhile
        probe.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        out = b""
        while chunk := probe.recv(65536):
            out += chunk
        probe.close()
        assert out.startswith(b"HTTP/1.1 200"), out
        lst = server.listeners[0]
        deadline = time.monotonic() + 5
        while lst.open > 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lst.open == 4  # the oldest half-sent ones dropped once past their grace

        lst.overflow = 8
        young = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(12)]
        crowd += young
        time.sleep(0.05)  # accepted, in turns before the next one's: 4 + 8 over the cap
        assert _ask(port, b"GET /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
        assert young[0].recv(1024) == b""  # the oldest, dropped for it within its grace
        assert lst.open <= 4 + 8
    finally:
        for s in crowd:
            s.close()
        server.stop()


@pytest.mark.parametrize("raw,words", [
    (b'{"dry_run": true, "dry_run": false}', "'dry_run' twice"),
    (b'{"a": {"b": 1, "b": 2}}', "'b' twice"),
    (b"[" * 4000 + b"]" * 4000, "4000 levels deep"),
    (b"[" * 4000, "4000 levels deep"),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "41 levels deep"),
])
def test_duplicate_fields_and_deep_nesting_are_refused_by_name(raw: bytes, words: str) -> None:
    """A request body with a field twice or nested past 32 levels: BadRequest saying so."""
    with pytest.raises(api.BadRequest) as exc:
        router._json(raw)
    assert words in exc.value.message


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    """Depth is the JSON's, not the brackets a string holds."""
    assert router._json(b'{"timestamp": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"{{{{"}') == {
        "timestamp": '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["{{{{'}
