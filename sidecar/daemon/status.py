"""The status document: what `GET /status` and `sidecar status` show.

Built from the running sidecar's Runtime only (no request to the bucket or to Litestream), so
it is cheap and answers even while the bucket is down. `build()` is the one place it is
made: the control socket and the HTTP listener serve the same route, so `sidecar status` and
`GET /status` show the same document. It never carries a secret: replica
URLs are the display form, the heartbeat URL is left out, and as a last line of defence
every secret the config holds is masked in the finished document.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from typing import Any

from sidecar import __version__, cron
from sidecar.bucket.replica import utc
from sidecar.config import secrets_of
from sidecar.config.pitr import configured
from sidecar.daemon.runtime import Runtime
from sidecar.lag.db_lag import file_sizes
from sidecar.lag.model import LagResult

MASK = "***"


def databases(rt: Runtime) -> list[dict[str, Any]]:
    results = rt.lag.results() if rt.lag else {}
    promised = configured(rt.cfg)["window_seconds"]
    out = []
    for db in rt.cfg.databases:
        size, wal = file_sizes(db)
        res = results.get(str(db.path)) or LagResult(db=str(db.path))
        entry = {
            "path": str(db.path),
            "replica": db.replica.url if db.replica else None,
            "size_bytes": size,
            "wal_size_bytes": wal,
            **res.as_dict(),
        }
        entry["restorable"]["configured_window_seconds"] = promised
        out.append(entry)
    return out


def state(rt: Runtime, restoring: bool = False, resuming: bool = False) -> str:
    """held | resuming | starting | running | restoring | stopping-app | final-sync |
    stopping-litestream | done: the supervisor's phase, with the operator's view on top. A
    live restore whose migration failed holds a running sidecar too (the app stays stopped)."""
    sup = rt.supervisor
    if resuming:
        return "resuming"
    if sup is None or sup.phase == "starting":
        return "held" if rt.failure is not None else "starting"
    if sup.phase == "running":
        if rt.failure is not None:
            return "held"
        return "restoring" if restoring else "running"
    return sup.phase


def verification(rt: Runtime, now: datetime | None = None) -> dict[str, Any]:
    """The verification schedule and its next run (ISO 8601 UTC), the time the scheduler
    fires it (the same trigger); both None when disabled."""
    schedule = rt.cfg.verify_schedule or None
    return {"schedule": schedule, "next": cron.iso(cron.next_run(schedule, now))}


def _as_dict(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value


def build(rt: Runtime, state_now: str | None = None,
          manual_restore: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole document, JSON-ready."""
    sup = rt.supervisor
    failure = rt.failure
    doc = {
        "version": __version__,
        "litestream_version": rt.litestream_version,
        "pid": os.getpid(),
        "state": state_now or state(rt),
        "failure": ({"error": failure.message, "exit_code": failure.exit_code,
                     "step": failure.step, "fix": failure.hint, "problems": failure.problems}
                    if failure is not None else None),
        "started_at": utc(rt.started_at),
        "uptime_seconds": round(time.time() - rt.started_at, 1),
        "databases": databases(rt),
        **({"directories": [d.summary() for d in rt.lag.dirs]} if rt.lag and rt.lag.dirs
           else {}),
        "children": sup.children_status() if sup is not None else {},
        "last_restore": {name: _as_dict(r) for name, r in rt.restores.items()} or None,
        "manual_restore": manual_restore,
        "last_migration": _as_dict(rt.migration),
        "verification": verification(rt),
        "last_verification": _as_dict(rt.verification),
    }
    return scrub(doc, secrets_of(rt.cfg))


def scrub(doc: Any, secrets: list[str]) -> Any:
    """`doc` with every occurrence of each secret masked (JSON round trip)."""
    text = json.dumps(doc, default=str)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(json.dumps(secret)[1:-1], MASK)
    return json.loads(text)
