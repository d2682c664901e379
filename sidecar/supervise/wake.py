"""How the supervisor loop sleeps: in `select()` on its children's pidfds and a self-pipe.

A child's exit makes its pidfd readable; `post()` (from any thread) and the signal handlers
(in the main thread, which the loop runs in) write a byte to the pipe. So the loop wakes at
once for whatever it has to decide, and otherwise only for its next timer.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Iterable


class Waker:
    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        """Safe from any thread and from a signal handler."""
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes the loop
            os.write(self._write, b"\0")

    def wait(self, fds: Iterable[int], timeout: float) -> None:
        """Until a child in `fds` exits, wake() is called, or `timeout` seconds pass."""
        with contextlib.suppress(InterruptedError):
            select.select([self._read, *fds], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 512):
                pass
