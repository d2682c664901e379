"""The shutdown, as a pure state machine: no process, no clock, no I/O in here.

stopping-app    the app's group got the stop signal; SIGKILL once the stop timeout passes
final-sync      Litestream pushes everything to the replica (the loop runs it in a thread)
stopping-litestream  SIGTERM, Litestream's own shutdown sync; SIGKILL after its timeout
done            exit with the app's code

Each method takes what the loop observed (the time, which children are alive) and returns the
actions the loop performs, one small frozen dataclass each: `SignalApp`, `SignalLitestream`
(a signal to its process group), `FinalSync` (with its budget) and `Log` (an event).
A second stop signal skips the current wait. The unit tests drive it with scripted histories.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

STOPPING_APP, FINAL_SYNC, STOPPING_LITESTREAM, DONE = (
    "stopping-app", "final-sync", "stopping-litestream", "done")
KILL_GRACE = 5.0  # after a SIGKILL, how long before it is sent again (or given up on)
FINAL_SYNC_MAX = 15.0  # the final sync's budget is the Litestream stop timeout, at most this


@dataclass(frozen=True)
class SignalApp:
    sig: int


@dataclass(frozen=True)
class SignalLitestream:
    sig: int


@dataclass(frozen=True)
class FinalSync:
    """Ask Litestream to push everything, within `seconds`."""

    seconds: float


@dataclass(frozen=True)
class Log:
    level: str
    event: str
    fields: dict[str, Any] = field(default_factory=dict)


Action = SignalApp | SignalLitestream | FinalSync | Log


class Shutdown:
    def __init__(self, app_stop_timeout: float, litestream_stop_timeout: float):
        self.app_stop_timeout = app_stop_timeout
        self.litestream_stop_timeout = litestream_stop_timeout
        self.phase: str | None = None  # None: not begun
        self.deadline: float | None = None
        self.exit_code: int | None = None

    @property
    def begun(self) -> bool:
        return self.phase is not None

    def final_sync_budget(self) -> float:
        # At least one sync's shortest wait (final_sync.MIN_LEFT: Litestream's 1 s and its
        # answer), so a short stop timeout still pushes the first database.
        return max(1.5, min(self.litestream_stop_timeout, FINAL_SYNC_MAX))

    def begin(self, now: float, signum: int, *, app_alive: bool, litestream_alive: bool,
              exit_code: int | None = None) -> list[Action]:
        """Stop: signal the app's group with `signum` when it runs, else go on to the final
        sync and exit with `exit_code` (None: 128+signum, as a shell shows a signal)."""
        if app_alive:
            self.phase = STOPPING_APP
            self.deadline = now + self.app_stop_timeout
            return [Log("info", "app stopping", {"signal": signal.Signals(signum).name,
                                                 "timeout_seconds": self.app_stop_timeout}),
                    SignalApp(signum)]
        self.exit_code = exit_code if exit_code is not None else 128 + signum
        return self._final_sync(now, litestream_alive)

    def app_exited(self, now: float, code: int, *, litestream_alive: bool) -> list[Action]:
        if self.phase != STOPPING_APP:
            return []
        self.exit_code = code
        return self._final_sync(now, litestream_alive)

    def sync_done(self, now: float, *, litestream_alive: bool) -> list[Action]:
        if self.phase != FINAL_SYNC:
            return []
        return self._stop_litestream(now, litestream_alive)

    def litestream_exited(self, code: int) -> list[Action]:
        """Litestream exited: from the final sync on that is expected and ends the shutdown."""
        if self.phase not in (FINAL_SYNC, STOPPING_LITESTREAM):
            return []
        self.phase, self.deadline = DONE, None
        return [Log("info", "litestream stopped", {"code": code})]

    def expects_litestream_exit(self) -> bool:
        return self.phase in (FINAL_SYNC, STOPPING_LITESTREAM)

    def hurry(self, now: float, signum: int, *, app_alive: bool,
              litestream_alive: bool) -> list[Action]:
        """A second stop signal: skip the current wait."""
        out: list[Action] = [Log("warning", "second signal: skipping the wait",
                                 {"signal": signal.Signals(signum).name, "phase": self.phase})]
        if self.phase == STOPPING_APP and app_alive:
            out += [Log("warning", "app killed", {"reason": "second signal"}),
                    SignalApp(signal.SIGKILL)]
        elif self.phase == FINAL_SYNC:
            out += self._stop_litestream(now, litestream_alive)
        elif self.phase == STOPPING_LITESTREAM and litestream_alive:
            # A second SIGTERM makes Litestream give up its shutdown-sync retries.
            out.append(SignalLitestream(signal.SIGTERM))
        return out

    def tick(self, now: float, *, app_alive: bool, litestream_alive: bool) -> list[Action]:
        """The deadline of the current phase, when it has passed."""
        if self.deadline is None or now < self.deadline:
            return []
        self.deadline = None
        if self.phase == STOPPING_APP and app_alive:
            self.deadline = now + KILL_GRACE
            return [Log("warning", "app did not stop in time: SIGKILL",
                        {"timeout_seconds": self.app_stop_timeout}),
                    SignalApp(signal.SIGKILL)]
        if self.phase == FINAL_SYNC:
            return [Log("warning", "final sync did not finish in time"),
                    *self._stop_litestream(now, litestream_alive)]
        if self.phase == STOPPING_LITESTREAM and litestream_alive:
            self.deadline = now + KILL_GRACE
            return [Log("error", "litestream did not stop in time: SIGKILL"),
                    SignalLitestream(signal.SIGKILL)]
        if self.phase == STOPPING_LITESTREAM:
            self.phase = DONE
        return []

    def _final_sync(self, now: float, litestream_alive: bool) -> list[Action]:
        if not litestream_alive:
            self.phase = DONE
            return []
        self.phase = FINAL_SYNC
        budget = self.final_sync_budget()
        self.deadline = now + budget + 2
        return [FinalSync(budget)]

    def _stop_litestream(self, now: float, litestream_alive: bool) -> list[Action]:
        if not litestream_alive:
            self.phase = DONE
            return []
        self.phase = STOPPING_LITESTREAM
        self.deadline = now + self.litestream_stop_timeout + 5
        return [SignalLitestream(signal.SIGTERM)]
