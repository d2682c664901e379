"""Logging, configured once: structlog events, JSON in containers, pretty on a terminal.

Events are short lowercase phrases with key/values (`"restore completed", path=...`).
All sidecar logs go to stderr so the app's stdout stays the app's. The standard library's
loggers (apscheduler, botocore, watchdog, Python's warnings) are routed through the same
renderer, so in JSON mode every line sidecar writes to stderr is one JSON object.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from sidecar.errors import redact

_configured = False


def _redact_urls(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Mask the userinfo of every URL in every string value (a last line of defence)."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value:
            event[key] = redact(value)
    return event


def setup(fmt: str | None = None, level: str = "info") -> None:
    """Configure structlog for the process; `fmt` is "json", "console" or None (auto)."""
    global _configured
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    _route_stdlib(renderer, level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_urls,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


# Third-party libraries talk a lot at INFO (apscheduler's "Added job", botocore's retries);
# their warnings and errors are what an operator needs.
STDLIB_LEVEL = logging.WARNING


def _component(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    record = event.get("_record")
    if record is not None:
        event.setdefault("component", record.name.split(".")[0])
        event.setdefault("logger", record.name)
    return event


def _route_stdlib(renderer: Any, level: str) -> None:
    """One handler on the root logger that renders stdlib records like sidecar's own events."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _component,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_urls,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_sidecar", False)]:
        root.removeHandler(old)  # setup() again (a test, a second format): one handler only
    handler._sidecar = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    wanted = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    root.setLevel(max(STDLIB_LEVEL, wanted))
    logging.captureWarnings(True)  # `warnings.warn` from a library: one JSON line too


def get(name: str = "sidecar") -> Any:
    """A logger bound to a component name."""
    if not _configured:
        setup()
    return structlog.get_logger().bind(component=name)
