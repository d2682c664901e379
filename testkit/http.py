"""One HTTP request to a server under test: the status, body and headers of any answer (a 4xx
or 5xx is an answer, not an exception); no answer at all (refused, reset, timed out) raises
OSError. And a loopback server with answers a test chooses, for a client under test."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from typing import Any, NamedTuple


class Response(NamedTuple):
    status: int
    body: bytes
    headers: Message

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def request(url: str, method: str = "GET", body: bytes | None = None, token: str | None = None,
            timeout: float = 5, headers: dict[str, str] | None = None) -> Response:
    """`method` `url` with an optional body and bearer `token`, waiting at most `timeout` s."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.read(), resp.headers)
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read(), exc.headers)


def get(url: str, timeout: float = 5, token: str | None = None) -> Response:
    return request(url, "GET", token=token, timeout=timeout)


def post_json(url: str, doc: Any, token: str | None = None, timeout: float = 10) -> Response:
    return request(url, "POST", json.dumps(doc).encode(), token=token, timeout=timeout,
                   headers={"Content-Type": "application/json"})


@contextlib.contextmanager
def serving(answer: Callable[[str], tuple[int, bytes]],
            content_type: str = "text/plain; version=0.0.4") -> Iterator[str]:
    """A loopback HTTP server on a free port for the block, answering each GET of a path with
    answer(path) (status, body); yields its base URL, http://127.0.0.1:PORT."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answer(self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
