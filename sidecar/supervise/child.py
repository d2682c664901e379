"""A child process the supervisor owns (the app, Litestream): start, signal, poll, restart.

`Process` is what the supervisor needs of a running program; `OsProcess` is the real one
(procs.spawn: its own process group, the death signal, the database locks). Unit tests hand the
supervisor a `process_ctor` that builds fake ones, and a fake clock, and replay scripted
histories in milliseconds.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, Protocol

from sidecar.supervise import procs

BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0  # a child up this long has its backoff reset


class Process(Protocol):
    pid: int
    stdout: IO[bytes] | None

    def signal(self, sig: int) -> bool:
        """Signal the whole process group; False when it is already gone."""

    def poll(self) -> int | None:
        """The exit code once it has exited (128+N for signal N), else None."""

    def fileno(self) -> int | None:
        """A descriptor that turns readable when it exits (a pidfd), or None."""


ProcessCtor = Callable[..., Process]


class OsProcess:
    """A real child, started by procs.spawn."""

    def __init__(self, argv: list[str], env: dict[str, str], *, capture: bool = False,
                 cwd: str | Path | None = None):
        self._popen = procs.spawn(argv, env, capture=capture, cwd=cwd)  # OSError: cannot exec
        self.pid = self._popen.pid
        self.stdout = self._popen.stdout
        self._fd = procs.pidfd(self.pid)
        self._code: int | None = None

    def signal(self, sig: int) -> bool:
        return self._code is None and procs.signal_group(self.pid, sig)

    def poll(self) -> int | None:
        if self._code is None:
            status = procs.wait_nohang(self.pid)
            if status is not None:
                self._code = procs.exit_code(status)
                self._popen.returncode = self._code  # subprocess must not wait for it again
                procs.release(self.pid)
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
        return self._code

    def fileno(self) -> int | None:
        return self._fd


class Child:
    """One supervised program: its command, its current process, its restart bookkeeping."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], *,
                 capture: bool = False, cwd: str | Path | None = None,
                 process_ctor: ProcessCtor = OsProcess,
                 clock: Callable[[], float] = time.monotonic,
                 on_output: Callable[[Iterable[bytes]], None] | None = None):
        self.name, self.argv, self.env = name, argv, env
        self.capture, self.cwd = capture, cwd
        self._ctor, self._clock, self._on_output = process_ctor, clock, on_output
        self.proc: Process | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.backoff = 1.0
        self.restart_at: float | None = None
        self.last_exit: int | None = None
        self._running = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self._running else None

    def start(self) -> None:
        """Start (again). Raises OSError when the program cannot be executed."""
        self.proc = self._ctor(self.argv, self.env, capture=self.capture, cwd=self.cwd)
        self._running = True
        self.started_at = self._clock()
        self.restart_at = None
        stream = self.proc.stdout
        if self._on_output is not None and stream is not None:
            threading.Thread(target=self._on_output, args=(stream,), daemon=True,
                             name=f"{self.name}-output").start()

    def signal(self, sig: int) -> bool:
        """Signal its process group; False when it is not running."""
        return self.pid is not None and self.proc is not None and self.proc.signal(sig)

    def poll(self) -> int | None:
        """Its exit code, once, when it has just exited; None while it runs (or not started)."""
        if self.proc is None or not self._running:
            return None
        code = self.proc.poll()
        if code is not None:
            self._running = False
            self.last_exit = code
        return code

    def fileno(self) -> int | None:
        return self.proc.fileno() if self.proc is not None and self._running else None

    def schedule_restart(self, now: float) -> float:
        """Plan the next start after an exit: 1 s, doubling up to 60 s, back to 1 s once it
        had stayed up 60 s. Returns the delay."""
        if now - self.started_at >= STABLE_AFTER:
            self.backoff = 1.0
        delay = self.backoff
        self.restart_at = now + delay
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        return delay

    def status(self, now: float) -> dict[str, Any]:
        return {"pid": self.pid, "running": self.pid is not None,
                "uptime_seconds": round(now - self.started_at, 1) if self.pid else 0,
                "restarts": self.restarts, "last_exit_code": self.last_exit}


def fds(children: Iterable[Child | None]) -> list[int]:
    """The exit descriptors of the running ones, for the loop's select()."""
    return [fd for c in children if c is not None and (fd := c.fileno()) is not None]
