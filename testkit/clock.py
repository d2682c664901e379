"""A clock a test moves by hand, for code that takes its time source as an argument."""

from __future__ import annotations


class Clock:
    """Called, it returns `now` (seconds); a test sets or advances `now` itself."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
