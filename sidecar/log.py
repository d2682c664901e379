"""Logging, configured once: structlog events, JSON in containers, pretty on a terminal.

Events are short lowercase phrases with key/values (`"restore completed", path=...`).
All sidecar logs go to stderr so the app's stdout stays the app's.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from .errors import redact

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


def get(name: str = "sidecar") -> Any:
    """A logger bound to a component name."""
    if not _configured:
        setup()
    return structlog.get_logger().bind(component=name)
