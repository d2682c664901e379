"""Logging, configured once: structlog events, JSON in containers, pretty on a terminal.

Events are short lowercase phrases with key/values (`"restore completed", path=...`).
All sidecar logs go to stderr so the app's stdout stays the app's.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_configured = False


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
