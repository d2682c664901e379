"""Logging, configured once: events with key/values, JSON in containers, plain on a terminal.

Events are short lowercase phrases with key/values (`"restore completed", path=...`).
All sidecar logs go to stderr so the app's stdout stays the app's. The standard library's
loggers (apscheduler, botocore, watchdog, Python's warnings) are routed through the same
renderer, so in JSON mode every line sidecar writes to stderr is one JSON object.

A JSON line holds the bound `component`, the event's key/values, `event`, `level` and
`timestamp` (ISO 8601, UTC, `Z`), with `exception` (the traceback) when `exc_info` is given,
in that order: the fields structlog's JSON renderer wrote before this module replaced it.
Written with the standard library only: structlog and the asyncio it imports were a quarter
of the imports on the path from launch to the app's first line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, TextIO

from sidecar.errors import redact

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

_configured = False
_state: dict[str, Any] = {"fmt": "json", "min": 20}
_lock = threading.Lock()
_captured: list[list[dict[str, Any]]] = []  # capture(): events go to these lists instead


def _timestamp() -> str:
    """What `datetime.now(timezone.utc).isoformat()` gives, with `Z` (no datetime import)."""
    now = time.time()
    sec = int(now)
    us = int((now - sec) * 1_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{base}.{us:06d}Z" if us else f"{base}Z"


def _redact_urls(event: dict[str, Any]) -> dict[str, Any]:
    """Mask the userinfo of every URL in every string value (a last line of defence)."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value:
            event[key] = redact(value)
    return event


def _exc_info(event: dict[str, Any]) -> None:
    exc = event.pop("exc_info", None)
    if not exc:
        return
    if isinstance(exc, BaseException):
        exc = (type(exc), exc, exc.__traceback__)
    elif not isinstance(exc, tuple):
        exc = sys.exc_info()
    if exc[0] is not None:
        import traceback

        event["exception"] = "".join(traceback.format_exception(*exc)).rstrip("\n")


def _fallback(obj: Any) -> Any:
    return repr(obj)


def _console(event: dict[str, Any]) -> str:
    ev = dict(event)
    ts, level, msg = ev.pop("timestamp", ""), ev.pop("level", ""), ev.pop("event", "")
    exc = ev.pop("exception", None)
    line = f"{ts} [{level:<9}] {msg:<30} " + " ".join(
        f"{k}={v if isinstance(v, str) else json.dumps(v, default=_fallback)}"
        for k, v in sorted(ev.items()))
    return line.rstrip() + (f"\n{exc}" if exc else "")


def _render(event: dict[str, Any]) -> str:
    _exc_info(event)
    _redact_urls(event)
    if _state["fmt"] == "console":
        return _console(event)
    return json.dumps(event, default=_fallback)


def _emit(event: dict[str, Any]) -> None:
    if _captured:
        for sink in _captured:
            sink.append({**event, "log_level": event.get("level")})
        return
    line = _render(event)
    out: TextIO = sys.stderr  # looked up per line: whatever stderr is now (tests swap it)
    with _lock:
        out.write(line + "\n")
        out.flush()


class Logger:
    """A logger bound to key/values: `info(event, **kw)` and friends, `bind(**kw)`."""

    __slots__ = ("_context",)

    def __init__(self, context: dict[str, Any]):
        self._context = context

    def bind(self, **kw: Any) -> Logger:
        return Logger({**self._context, **kw})

    def _log(self, level: str, event: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        if LEVELS[level] < _state["min"]:
            return
        ev = {**self._context, **kw}
        ev["event"] = event % args if args else event
        ev["level"] = level
        ev["timestamp"] = _timestamp()
        _emit(ev)

    def debug(self, event: str, *args: Any, **kw: Any) -> None:
        self._log("debug", event, args, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> None:
        self._log("info", event, args, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> None:
        self._log("warning", event, args, kw)

    warn = warning

    def error(self, event: str, *args: Any, **kw: Any) -> None:
        self._log("error", event, args, kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> None:
        self._log("critical", event, args, kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self._log("error", event, args, kw)


def setup(fmt: str | None = None, level: str = "info") -> None:
    """Configure logging for the process; `fmt` is "json", "console" or None (auto)."""
    global _configured
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    _state.update(fmt=fmt, min=LEVELS.get(level.lower(), 20))
    _route_stdlib(level)
    _configured = True


# Third-party libraries talk a lot at INFO (apscheduler's "Added job", botocore's retries);
# their warnings and errors are what an operator needs.
STDLIB_LEVEL = logging.WARNING


class _Formatter(logging.Formatter):
    """A stdlib record rendered like sidecar's own events."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        event: dict[str, Any] = {"event": record.getMessage(),
                                 "level": "warning" if level == "warn" else level,
                                 "timestamp": _timestamp(),
                                 "component": record.name.split(".")[0], "logger": record.name}
        if record.exc_info:
            event["exc_info"] = record.exc_info
        return _render(event)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when the record comes."""

    _sidecar = True

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _route_stdlib(level: str) -> None:
    """One handler on the root logger that renders stdlib records like sidecar's own events."""
    handler = _Handler()
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_sidecar", False)]:
        root.removeHandler(old)  # setup() again (a test, a second format): one handler only
    root.addHandler(handler)
    wanted = LEVELS.get(level.lower(), logging.INFO)
    root.setLevel(max(STDLIB_LEVEL, wanted))
    logging.captureWarnings(True)  # `warnings.warn` from a library: one JSON line too


def get(name: str = "sidecar") -> Logger:
    """A logger bound to a component name."""
    if not _configured:
        setup()
    return Logger({"component": name})


@contextlib.contextmanager
def capture() -> Iterator[list[dict[str, Any]]]:
    """For tests: the events logged inside the block, as dicts (`event`, `log_level`, the
    key/values), instead of written out."""
    sink: list[dict[str, Any]] = []
    _captured.append(sink)
    try:
        yield sink
    finally:
        _captured.remove(sink)
