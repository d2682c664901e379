"""The client side of the daemon's control socket (HTTP over a Unix socket in the state dir,
mode 0600). The server side is the one route table (router.py) served by http.py; the operator
commands (`sidecar status`, `restore`, `verify`, `resume`) are thin clients of it and send the
same request types (api.py) the server parses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar import api
from sidecar.config import Config
from sidecar.errors import NoDaemon
from sidecar.litestream.control import ControlError, short_socket_path, unix_request

__all__ = ["NoDaemon", "call"]  # NoDaemon lives with the other errors; callers import it here


def call(sock: Path, method: str, url: str, body: api.Request | None = None,
         timeout: float = 30.0) -> tuple[int, Any]:
    """One request to the daemon. Raises NoDaemon when nothing listens on the socket."""
    if not sock.exists():
        raise NoDaemon(f"no sidecar is running here (no control socket at {sock})")
    try:
        return unix_request(sock, method, url, body.as_json() if body is not None else None,
                            timeout=timeout)
    except ControlError as exc:
        raise NoDaemon(f"no sidecar answers on {sock} ({exc})") from None


SOCKET_NAME = "sidecar.sock"


def socket_path(cfg: Config) -> Path:
    """Where the daemon's control socket lives (in the state dir when the path fits)."""
    return short_socket_path(cfg.state_dir, SOCKET_NAME)
