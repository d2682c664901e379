"""Waiting on a condition with a deadline, and failing with what was awaited and what was last
seen instead of a bare timeout."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1,
             what: str = "condition", ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """The first truthy value of `cond()`, polled every `interval` s.

    AssertionError naming `what` after `timeout` s, with the last value `cond()` returned.
    An exception of a type in `ignore` counts as "not yet" (a socket not up, a first sync
    refused while Litestream starts); the last one is named in the failure. Any other
    exception propagates at once."""
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = cond()
        except ignore as exc:
            value, last = None, exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} "
                                 f"(last: {last!r})"[:2000])
        time.sleep(interval)
