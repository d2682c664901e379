"""The status document: what `GET /status` and `sidecar status` show.

Built from the running sidecar's Runtime only (no request to the bucket or to Litestream), so
it is cheap and answers even while the bucket is down. It never carries a secret: replica
URLs are the display form, the heartbeat URL is left out, and as a last line of defence
every secret the config holds is masked in the finished document.
"""

from __future__ import annotations

import json
import time
from typing import Any

from . import __version__
from .config import secrets_of
from .lag import LagMonitor, LagResult, file_sizes
from .replica import utc

MASK = "***"


def lag_monitor(rt: Any) -> LagMonitor | None:
    monitor = rt.extras.get("lag") if getattr(rt, "extras", None) is not None else None
    return monitor if isinstance(monitor, LagMonitor) else None


def databases(rt: Any) -> list[dict[str, Any]]:
    monitor = lag_monitor(rt)
    results = monitor.results() if monitor else {}
    out = []
    for db in rt.cfg.databases:
        size, wal = file_sizes(db)
        res = results.get(str(db.path)) or LagResult(db=str(db.path))
        out.append({
            "path": str(db.path),
            "replica": db.replica.url if db.replica else None,
            "size_bytes": size,
            "wal_size_bytes": wal,
            **res.as_dict(),
        })
    return out


def children(rt: Any) -> dict[str, Any]:
    sup = rt.supervisor
    if sup is None:
        return {}
    out: dict[str, Any] = sup.children_status()
    return out


def _as_dict(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value


def build(rt: Any) -> dict[str, Any]:
    """The whole document, JSON-ready."""
    sup = rt.supervisor
    failure = rt.failure
    doc = {
        "version": __version__,
        "litestream_version": rt.litestream_version,
        "state": "held" if failure is not None else (sup.phase if sup else "starting"),
        "failure": ({"error": failure.message, "exit_code": failure.exit_code,
                     "step": failure.step, "fix": failure.hint}
                    if failure is not None else None),
        "started_at": utc(rt.started_at),
        "uptime_seconds": round(time.time() - rt.started_at, 1),
        "databases": databases(rt),
        "children": children(rt),
        "last_restore": {name: _as_dict(r) for name, r in rt.restores.items()} or None,
        "last_migration": _as_dict(rt.migration),
        "last_verification": _as_dict(rt.verification),
    }
    return scrub(doc, secrets_of(rt.cfg))


def scrub(doc: Any, secrets: list[str]) -> Any:
    """`doc` with every occurrence of each secret masked (JSON round trip)."""
    text = json.dumps(doc, default=str)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(json.dumps(secret)[1:-1], MASK)
    return json.loads(text)
