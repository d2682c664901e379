"""What can happen to the supervisor loop, one small frozen dataclass each.

Signal handlers, request threads, the final sync's thread and the loop itself `post()` these;
the loop takes them one at a time and dispatches them with `match` (supervisor.py). The loop
handles the first three itself; the others go to the handlers the composition of a run
subscribed with `on()` (the operations: a live restore and its resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Signal:
    """A signal reached sidecar: a stop (TERM, INT, QUIT), one to forward to the app (HUP,
    USR1, USR2, WINCH), or SIGCHLD (an orphan to reap)."""

    signum: int


@dataclass(frozen=True)
class FinalSyncDone:
    """The final sync's thread has finished: the shutdown goes on to stop Litestream."""


@dataclass(frozen=True)
class Resume:
    """`sidecar resume` of a start held for an operator: run the start steps again."""


@dataclass(frozen=True)
class ChildRestarted:
    """The loop started a child again after its exit (`name`: app or litestream)."""

    name: str


@dataclass(frozen=True)
class RestoreRequested:
    """An operator's live restore, validated by its request thread; its handler runs the whole
    fenced sequence in the loop. `job` is the operations' record of it, opaque here."""

    job: Any


@dataclass(frozen=True)
class RestoreResume:
    """`sidecar resume` after a live restore whose migration failed: migrate again, then
    resume replication and the app."""


Event = Signal | FinalSyncDone | Resume | ChildRestarted | RestoreRequested | RestoreResume
