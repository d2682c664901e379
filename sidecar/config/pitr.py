"""The point-in-time window: how far back the backup can be restored, and what that costs.

Litestream restores any moment back to its oldest retained snapshot: it drops compacted files
(L1..Ln) below that snapshot (store.go, EnforceSnapshotRetention), and deletes snapshots
older than `snapshot.retention`, always keeping the newest. With snapshots every `interval`,
the oldest one kept is between `retention - interval` and `retention` old, so the window it
guarantees is `retention - interval`.

SIDECAR_PITR_WINDOW (W, default 24h) sets the generated config's snapshots to every W/2,
kept for 1.5 W: every moment of the last W stays restorable, at the finest compaction
level's granularity (30 s by default) and every sync for the last `l0-retention` (5 min).
With the project's own litestream.yml the window is read from its `snapshot:` section
(Litestream's defaults when it has none: every 24h, kept 24h).
"""

from __future__ import annotations

import re
from typing import Any

from sidecar.config import Config

DEFAULT_SNAPSHOT = 24 * 3600.0  # Litestream's default snapshot interval and retention
DEFAULT_L0_RETENTION = 300.0
DEFAULT_LEVELS = (30.0, 300.0, 3600.0)  # L1, L2, L3 compaction intervals
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def snapshot_section(window: float) -> dict[str, str]:
    """The generated config's `snapshot:` for a window of `window` seconds."""
    interval = window / 2
    return {"interval": _ms(interval), "retention": _ms(window + interval)}


def go_duration(value: Any) -> float | None:
    """A Go duration as Litestream reads it (`1h30m`, `90s`, `500ms`) in seconds; None when it
    is not one."""
    text = str(value).strip()
    if not text:
        return None
    pos, total = 0, 0.0
    for m in _GO_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else (0.0 if text == "0" else None)


def configured(cfg: Config) -> dict[str, Any]:
    """The window the config promises: `window_seconds` (retention - interval), where it comes
    from, the snapshot settings, and the level intervals and l0-retention that set the
    granularity."""
    doc = cfg.user_litestream_doc
    if doc is None:
        snap = snapshot_section(cfg.pitr_window)
        interval, retention = cfg.pitr_window / 2, cfg.pitr_window * 1.5
        source = "SIDECAR_PITR_WINDOW"
        levels, l0 = list(DEFAULT_LEVELS), DEFAULT_L0_RETENTION
    else:
        snap = doc.get("snapshot") if isinstance(doc.get("snapshot"), dict) else {}
        interval = go_duration(snap.get("interval")) or DEFAULT_SNAPSHOT
        retention = go_duration(snap.get("retention")) or DEFAULT_SNAPSHOT
        source = str(cfg.user_litestream_config)
        raw = doc.get("levels") if isinstance(doc.get("levels"), list) else None
        levels = [go_duration(lv.get("interval")) or 0.0 for lv in raw
                  if isinstance(lv, dict)] if raw else list(DEFAULT_LEVELS)
        l0 = go_duration(doc.get("l0-retention")) if "l0-retention" in doc else None
        l0 = DEFAULT_L0_RETENTION if l0 is None else l0
    return {"window_seconds": max(0.0, retention - interval), "source": source,
            "snapshot_interval_seconds": interval, "snapshot_retention_seconds": retention,
            "level_intervals_seconds": levels, "l0_retention_seconds": l0}


def seconds_text(s: float) -> str:
    """A duration as Go writes one, whole seconds: 36h, 1h30m, 59m57s, 3s."""
    s = round(s)
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    text = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{sec}s" if sec else "")
    return text or "0s"


def estimate(window: dict[str, Any], db_bytes: int, write_bytes_per_second: float,
             sync_interval: float) -> dict[str, Any]:
    """What keeping the window costs in the bucket, roughly: the objects and bytes held at
    any time for a database of `db_bytes` written at `write_bytes_per_second` (WAL bytes).

    Held: every snapshot kept (each a whole copy), each level's compactions over the time it
    keeps them (the retention), level 0 files for l0-retention (one per sync with changes).
    A compaction holds each page once, so a level's bytes are bounded by both the writes in
    its interval and the database size."""
    retention = window["snapshot_retention_seconds"]
    interval = max(window["snapshot_interval_seconds"], 1.0)
    snapshots = int(retention // interval) + 1
    objects = snapshots
    nbytes = snapshots * db_bytes
    writing = write_bytes_per_second > 0
    for level_interval in window["level_intervals_seconds"]:
        if level_interval <= 0:
            continue
        files = int(retention // level_interval) if writing else 0
        objects += files
        nbytes += files * min(write_bytes_per_second * level_interval, db_bytes)
    l0_files = int(window["l0_retention_seconds"] // max(sync_interval, 0.001)) if writing else 0
    objects += l0_files
    nbytes += l0_files * write_bytes_per_second * sync_interval
    return {"objects": objects, "bytes": int(nbytes), "snapshots": snapshots,
            "db_bytes": db_bytes, "write_bytes_per_second": round(write_bytes_per_second, 1)}


def write_rate(objs: list[Any]) -> float:
    """Bytes per second the bucket receives, from one level's files (LtxObject: size and
    last_modified): what they hold after the first, over the time they span. 0 when fewer
    than two files are there to measure."""
    if len(objs) < 2:
        return 0.0
    objs = sorted(objs, key=lambda o: o.last_modified)
    span = objs[-1].last_modified - objs[0].last_modified
    return sum(o.size for o in objs[1:]) / span if span > 0 else 0.0


def bytes_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.0f}"
