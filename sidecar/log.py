"""Logging, configured once through structlog: events with key/values, JSON in containers,
plain on a terminal.

Events are short lowercase phrases with key/values (`"restore completed", path=...`).
All sidecar logs go to stderr so the app's stdout stays the app's. sidecar's own loggers and
the standard library's (apscheduler, botocore, watchdog, Python's warnings) go through one
handler and one structlog `ProcessorFormatter`, so in JSON mode every line sidecar writes to
stderr is one JSON object.

A JSON line is what Railway's log explorer reads as a structured log: `message` (the event,
never empty), `level` in Railway's words (`debug`, `info`, `warn`, `error`), `timestamp`
(ISO 8601, UTC, `Z`), `component`, then the event's key/values, then `exception` (the
traceback) when there is one. The README's "Log lines" section documents the same.
Tests assert on events with `structlog.testing.capture_logs()` (the keys there are
structlog's own: `event`, `log_level`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any, TextIO

import structlog

from sidecar.errors import redact

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

# Railway shows a JSON line as a structured log only when `level` is one of its four words;
# anything else (Python's `warning`, `critical`) is shown as an error.
RAILWAY_LEVEL = {"debug": "debug", "info": "info", "warning": "warn", "warn": "warn",
                 "error": "error", "exception": "error", "critical": "error", "fatal": "error"}

# A JSON line's first keys, in this order; the event's own key/values follow.
HEAD = ("message", "level", "timestamp", "component")

# Third-party libraries talk a lot at INFO (apscheduler's "Added job", botocore's retries);
# their warnings and errors are what an operator needs.
STDLIB_LEVEL = logging.WARNING

_configured = False


def _redact_urls(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Mask the userinfo of every URL in every string value (a last line of defence)."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value:
            event[key] = redact(value)
    return event


def _component(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """A standard-library record's component is its top logger (`botocore`), and its logger."""
    record = event.get("_record")
    if record is not None:
        event.setdefault("component", record.name.split(".")[0])
        event.setdefault("logger", record.name)
    return event


def _railway_shape(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """`message` never empty, `level` in Railway's words, the head keys first, the traceback
    last."""
    message = event.pop("message", None)
    text = message if isinstance(message, str) else ("" if message is None else str(message))
    out: dict[str, Any] = {
        "message": text or "(no message)",
        "level": RAILWAY_LEVEL.get(str(event.pop("level", "info")).lower(), "info"),
    }
    for key in HEAD[2:]:
        if key in event:
            out[key] = event.pop(key)
    exception = event.pop("exception", None)
    out.update(event)
    if exception:
        out["exception"] = exception
    return out


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _escape(text: str, keep_newlines: bool = False) -> str:
    """Control characters as escapes (`\\x1b`, `\\n`): a request path or a file name cannot
    move a terminal's cursor or forge a second line."""
    def one(m: re.Match[str]) -> str:
        ch = m.group()
        return ch if keep_newlines and ch == "\n" else repr(ch)[1:-1]

    return _CONTROL.sub(one, text)


def _console(_logger: Any, _name: str, event: dict[str, Any]) -> str:
    """`time [level] event key=value ...`: keys sorted, non-text values as JSON, no colours."""
    ev = dict(event)
    ts, level, msg = ev.pop("timestamp", ""), ev.pop("level", ""), ev.pop("event", "")
    exc = ev.pop("exception", None)
    line = f"{ts} [{level:<9}] {_escape(str(msg)):<30} " + " ".join(
        f"{_escape(str(k))}="
        f"{_escape(v) if isinstance(v, str) else json.dumps(v, default=repr)}"
        for k, v in sorted(ev.items()))
    return line.rstrip() + (f"\n{_escape(exc, keep_newlines=True)}" if exc else "")


def _final_processors(fmt: str) -> list[Any]:
    tail: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                       structlog.processors.format_exc_info, _redact_urls]
    if fmt == "console":
        return [*tail, _console]
    return [*tail, structlog.processors.EventRenamer("message"), _railway_shape,
            structlog.processors.JSONRenderer()]


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is when the record comes (tests swap it)."""

    _sidecar = True

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup(fmt: str | None = None, level: str = "info") -> None:
    """Configure logging for the process; `fmt` is "json", "console" or None (auto).

    Called again (a test, a second format), it swaps the renderer and the level and keeps
    structlog's processor list itself, so a `capture_logs()` around it stays in force."""
    global _configured
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    wanted = LEVELS.get(level.lower(), logging.INFO)
    if not _configured:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            cache_logger_on_first_use=False,
        )
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(wanted))
    _route_stdlib(fmt, wanted)
    _configured = True


def _route_stdlib(fmt: str, wanted: int) -> None:
    """One handler on the root logger; sidecar's events and the libraries' records both reach
    it and are rendered by the same processors."""
    handler = _Handler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True),
                           _component],
        processors=_final_processors(fmt),
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_sidecar", False)]:
        root.removeHandler(old)  # one handler only, whatever the number of setup() calls
    root.addHandler(handler)
    root.setLevel(max(STDLIB_LEVEL, wanted))
    # sidecar's own events are filtered by structlog's bound logger; its stdlib logger passes
    # them all on.
    logging.getLogger("sidecar").setLevel(logging.DEBUG)
    logging.captureWarnings(True)  # `warnings.warn` from a library: one JSON line too


def get(name: str = "sidecar") -> Any:
    """A logger bound to a component name. Lazy: each call uses the configuration in force
    then, so a logger kept in an attribute follows `setup()` and `capture_logs()`."""
    if not _configured:
        setup()
    return structlog.get_logger("sidecar", component=name)
