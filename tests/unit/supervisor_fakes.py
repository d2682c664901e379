"""A fake world for the supervisor's unit tests: a clock, processes and Litestream's control
socket that replay scripted histories in milliseconds.

The world is also the supervisor's waker: when the loop sleeps, the clock jumps to the next
scripted happening (a process exiting, a signal arriving, the final sync finishing) or to the
end of the loop's timeout, whichever is first. Nothing sleeps for real.
"""

from __future__ import annotations

import heapq
import itertools
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sidecar import log
from sidecar.litestream.control import ControlError
from sidecar.supervise.events import Signal
from sidecar.supervise.supervisor import Supervisor

log.get()  # configured once, before any test's capture_logs()
HORIZON = 3600.0  # a history that has not ended by then is a hang


@dataclass
class Script:
    """How one fake process behaves: it exits by itself at `exit_at` (seconds after its start)
    with `exit_code`; on SIGTERM it exits `term_after` seconds later (None: it ignores it) with
    `term_code` (None: 128+SIGTERM); SIGKILL ends it at once (137); it cannot be executed when
    `exec_error` is set."""

    exit_at: float | None = None
    exit_code: int = 0
    term_after: float | None = 0.1
    term_code: int | None = None
    exec_error: OSError | None = None


class FakeProcess:
    def __init__(self, world: FakeWorld, name: str, pid: int, script: Script):
        self.world, self.name, self.pid, self.script = world, name, pid, script
        self.stdout = None
        self.code: int | None = None
        self.signals: list[int] = []
        self.started = world.now
        if script.exit_at is not None:
            world.at(world.now + script.exit_at, lambda: self.exit(script.exit_code))

    def exit(self, code: int) -> None:
        if self.code is None:
            self.code = code
            self.world.record("exit", self.name, code)

    def signal(self, sig: int) -> bool:
        if self.code is not None:
            return False
        self.signals.append(sig)
        self.world.record("signal", self.name, signal.Signals(sig).name)
        if sig == signal.SIGKILL:
            self.exit(128 + signal.SIGKILL)
        elif sig == signal.SIGTERM and self.script.term_after is not None:
            code = self.script.term_code if self.script.term_code is not None else 128 + sig
            self.world.at(self.world.now + self.script.term_after, lambda: self.exit(code))
        return True

    def poll(self) -> int | None:
        return self.code

    def fileno(self) -> int | None:
        return None


@dataclass
class FakeWorld:
    now: float = 0.0
    scripts: dict[str, list[Script]] = field(default_factory=lambda: {"app": [], "litestream": []})
    sync_takes: float | None = 0.2  # the final sync's duration; None: it never answers
    ready_after: float = 0.0  # how long Litestream takes to open every database
    history: list[tuple[float, str, str, Any]] = field(default_factory=list)
    processes: list[FakeProcess] = field(default_factory=list)
    sup: Supervisor | None = None

    def __post_init__(self) -> None:
        self._timeline: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._pids = itertools.count(100)
        self._woken = False

    # the clock and the timeline
    def clock(self) -> float:
        return self.now

    def at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timeline, (when, next(self._seq), fn))

    def record(self, what: str, who: str, detail: Any = None) -> None:
        self.history.append((round(self.now, 3), what, who, detail))

    def kill(self, when: float, sig: int) -> None:
        """The platform sends `sig` to sidecar at `when` (as its signal handler would post)."""
        def deliver() -> None:
            assert self.sup is not None
            if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT) and \
                    self.sup.stop_signal is None:
                self.sup.stop_signal = sig
            self.record("sidecar got", signal.Signals(sig).name)
            self.sup.post(Signal(sig))
        self.at(when, deliver)

    # the waker
    def wake(self) -> None:
        self._woken = True

    def wait(self, _fds: Iterable[int], timeout: float) -> None:
        if self._woken:
            self._woken = False
            return
        limit = self.now + max(0.0, timeout)
        if self._timeline and self._timeline[0][0] <= limit:
            self.now = max(self.now, self._timeline[0][0])
            while self._timeline and self._timeline[0][0] <= self.now:
                heapq.heappop(self._timeline)[2]()
        else:
            self.now = limit
        self._woken = False
        assert self.now < HORIZON, f"the history did not end: {self.history[-10:]}"

    # processes
    def spawn(self, argv: list[str], _env: dict[str, str], **_kw: Any) -> FakeProcess:
        name = "litestream" if argv[1:2] == ["replicate"] else "app"
        queue = self.scripts[name]
        script = queue.pop(0) if queue else Script()
        if script.exec_error is not None:
            raise script.exec_error
        proc = FakeProcess(self, name, next(self._pids), script)
        self.processes.append(proc)
        self.record("start", name, proc.pid)
        return proc

    def background(self, work: Callable[[], None]) -> None:
        """The final sync runs `sync_takes` seconds after it is asked for (or never)."""
        self.record("final sync", "litestream")
        if self.sync_takes is not None:
            self.at(self.now + self.sync_takes, work)

    def of(self, what: str, who: str | None = None) -> list[tuple[float, str, str, Any]]:
        return [h for h in self.history if h[1] == what and (who is None or h[2] == who)]


class FakeControl:
    """Litestream's control socket: answers while the newest Litestream process runs."""

    def __init__(self, world: FakeWorld):
        self.world = world
        self.syncs: list[Path] = []

    def _litestream_up(self, after: float = 0.0) -> bool:
        ls = [p for p in self.world.processes if p.name == "litestream"]
        return bool(ls) and ls[-1].code is None and self.world.now >= ls[-1].started + after

    def list(self) -> list[dict[str, Any]]:
        if not self._litestream_up(self.world.ready_after):
            raise ControlError("cannot reach the socket")
        assert self.world.sup is not None
        return [{"path": str(db.path)} for db in self.world.sup.cfg.databases]

    def sync(self, path: Path, wait: bool = True, timeout: float = 10.0,
             slack: float = 5.0) -> dict[str, Any]:
        if not self._litestream_up():
            raise ControlError("cannot reach the socket")
        self.syncs.append(path)
        return {"txid": 7, "replicated_txid": 7}


def make(tmp_path: Path, world: FakeWorld, **cfg: Any) -> Supervisor:
    """A supervisor over the fake world; `cfg` overrides the few settings it reads."""
    db = tmp_path / "app.db"
    db.write_bytes(b"")
    settings = {"databases": [SimpleNamespace(path=db, name="app")], "ready_timeout": 5.0,
                "app_command": ["app"], "cwd": None, "app_stop_timeout": 10.0,
                "litestream_stop_timeout": 10.0, "app_restart": "no", "directories": (),
                "restore_parallelism": 8}
    settings.update(cfg)
    sup = Supervisor(SimpleNamespace(**settings), {}, "litestream", tmp_path / "ls.yml",  # type: ignore[arg-type]
                     FakeControl(world), members=lambda _entry: [], clock=world.clock,
                     process_ctor=world.spawn,
                     waker=world, background=world.background)
    world.sup = sup
    return sup


def start_steps(sup: Supervisor) -> Callable[[], None]:
    """What run.start does once restore and migrations are done: Litestream, then the app."""
    def start() -> None:
        sup.start_litestream()
        sup.wait_litestream_ready()
        if not sup.stop_requested():
            sup.start_app()
    return start
