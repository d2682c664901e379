"""Litestream's control socket (HTTP over a Unix socket): list, txid, sync, start, stop."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def short_socket_path(state_dir: Path, name: str) -> Path:
    """A Unix socket path under the 108-byte limit: in the state dir when it fits, else /tmp."""
    p = state_dir / name
    if len(str(p).encode()) < 100:
        return p
    digest = hashlib.sha256(str(p).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"sidecar-{digest}-{name}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class ControlError(Exception):
    pass


def unix_request(path: Path, method: str, url: str, body: Any = None,
                 timeout: float = 5.0, headers: Mapping[str, str] | None = None
                 ) -> tuple[int, Any]:
    """One HTTP request over a Unix socket; returns (status, decoded JSON or text)."""
    conn = _UnixConnection(str(path), timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json"} if data else {}
        hdrs.update(headers or {})
        conn.request(method, url, body=data, headers=hdrs)
        resp = conn.getresponse()
        raw = resp.read().decode(errors="replace")
        try:
            return resp.status, json.loads(raw) if raw.strip() else None
        except ValueError:
            return resp.status, raw
    except (OSError, http.client.HTTPException) as exc:
        raise ControlError(f"cannot reach {path}: {exc}") from None
    finally:
        conn.close()


class Control:
    """Litestream's control socket: list, txid, sync, start, stop."""

    def __init__(self, path: Path):
        self.path = path

    def _ok(self, method: str, url: str, body: Any = None, timeout: float = 5.0) -> Any:
        status, data = unix_request(self.path, method, url, body, timeout)
        if status >= 300:
            detail = data.get("error") if isinstance(data, dict) else data
            raise ControlError(f"litestream {method} {url.split('?')[0]}: {status} {detail}")
        return data

    def list(self) -> list[dict[str, Any]]:
        return list((self._ok("GET", "/list") or {}).get("databases") or [])

    def txid(self, db: Path) -> int:
        from urllib.parse import quote

        return int((self._ok("GET", f"/txid?path={quote(str(db))}") or {}).get("txid", 0))

    def sync(self, db: Path, wait: bool = True, timeout: float = 10.0,
             slack: float = 5.0) -> dict[str, Any]:
        """Litestream waits up to `timeout` (whole seconds, at least 1) for the upload; the
        socket waits `slack` longer for its answer."""
        return dict(self._ok("POST", "/sync", {"path": str(db), "wait": wait,
                                                "timeout": max(1, int(timeout))},
                             timeout=max(1, int(timeout)) + slack) or {})

    def stop(self, db: Path, timeout: float = 30.0) -> dict[str, Any]:
        return dict(self._ok("POST", "/stop", {"path": str(db), "timeout": max(1, int(timeout))},
                             timeout=timeout + 5) or {})

    def start(self, db: Path, timeout: float = 30.0) -> dict[str, Any]:
        return dict(self._ok("POST", "/start", {"path": str(db), "timeout": max(1, int(timeout))},
                             timeout=timeout + 5) or {})
