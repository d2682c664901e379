"""The supervisor: the one loop that owns every child process, and decides.

Signal handlers, HTTP and control-socket handlers, scheduler jobs and watchers never touch a
process: they `post()` an event (events.py), and the loop decides, dispatching each with
`match`. Its life is one sequence of phases: starting (the start steps; held for an operator
when they fail and SIDECAR_ON_START_FAILURE is hold, until `sidecar resume` retries them),
running, then the shutdown (shutdown.py, a pure state machine whose actions the loop
performs), done. The children themselves, the app and Litestream, are a `Children` it holds
(children.py): what can be done with them; here is when.

The loop sleeps in select() on its children's pidfds and a self-pipe (wake.py): no polling.
Collaborators are injected (`clock`, `process_ctor`, `waker`, `background`, and `members`, a
directory entry's databases on the volume for the final sync) so the unit tests replay scripted
histories with a fake clock and fake processes, and nothing here imports the daemon or the
start steps: the composition of a run (run.py) hands them in and subscribes its handlers.
"""

from __future__ import annotations

import functools
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar import log, metrics
from sidecar.config import Config
from sidecar.errors import SidecarError
from sidecar.litestream.control import Control
from sidecar.supervise import final_sync, procs
from sidecar.supervise.child import Child, OsProcess, ProcessCtor, fds
from sidecar.supervise.children import IDLE_WAKE, Children, adopt_orphans
from sidecar.supervise.events import (
    ChildRestarted,
    Event,
    FinalSyncDone,
    RestoreRequested,
    RestoreResume,
    Resume,
    Signal,
)
from sidecar.supervise.final_sync import Members
from sidecar.supervise.shutdown import (
    DONE,
    Action,
    FinalSync,
    Log,
    Shutdown,
    SignalApp,
    SignalLitestream,
)
from sidecar.supervise.wake import Waker

FORWARDED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

Handler = Callable[[Any], None]


def _in_thread(work: Callable[[], None]) -> None:
    threading.Thread(target=work, daemon=True, name="final-sync").start()


class Supervisor:
    def __init__(self, cfg: Config, env: dict[str, str], litestream_bin: str,
                 litestream_config: Path, control: Control, *,
                 members: Members,
                 clock: Callable[[], float] = time.monotonic,
                 process_ctor: ProcessCtor = OsProcess, waker: Any = None,
                 background: Callable[[Callable[[], None]], None] = _in_thread):
        self.cfg, self.control, self.clock = cfg, control, clock
        self.waker = waker if waker is not None else Waker()
        self.children = Children(cfg, env, litestream_bin, litestream_config, control,
                                 should_stop=self.stop_requested, beat=self.beat, clock=clock,
                                 process_ctor=process_ctor, waker=self.waker)
        self.members, self.background = members, background
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.log, self.run_log = log.get("supervisor"), log.get("run")
        self.shutdown = Shutdown(cfg.app_stop_timeout, cfg.litestream_stop_timeout)
        self._phase = "starting"  # starting | running; then the shutdown's phases
        self.handlers: dict[type, list[Handler]] = {}
        self.stop_signal: int | None = None
        self.paused_app = False  # the app is stopped on purpose (e.g. a live restore)
        self.beat_at = clock()  # the loop thread's last sign of life (/healthz)
        self.held_exit_code: int | None = None  # held after a failed migration: exit with it
        self.held: SidecarError | None = None  # a failed start held for an operator
        self._start: Callable[[], None] = lambda: None
        self._hold_on_failure = False
        self.started_at = time.time()  # tenants written from now on get the final sync

    @property
    def phase(self) -> str:
        """starting | running | stopping-app | final-sync | stopping-litestream | done"""
        return self.shutdown.phase or self._phase

    @property
    def exit_code(self) -> int | None:
        return self.shutdown.exit_code

    # ------------------------------------------------------------ from any thread

    def post(self, event: Event) -> None:
        """Thread- and signal-safe: the loop picks it up."""
        self.events.put(event)
        self.waker.wake()

    def on(self, kind: type[ChildRestarted | RestoreRequested | RestoreResume],
           handler: Handler) -> None:
        """Subscribe `handler`, run by the loop with each event of the type `kind` (those the
        loop does not handle itself), after the ones subscribed before it."""
        self.handlers.setdefault(kind, []).append(handler)

    def stop_requested(self) -> bool:
        return self.stop_signal is not None

    def beat(self) -> None:
        """The loop's thread is alive and making progress (called by it, never by others)."""
        self.beat_at = self.clock()

    def working(self) -> bool:
        """The `should_stop` of long work the loop runs itself (a live restore, a migration):
        it is polled while the work goes on, so each call is a beat; says whether to stop."""
        self.beat()
        return self.stop_requested()

    def silent_for(self) -> float:
        """Seconds since the loop's thread last showed progress."""
        return self.clock() - self.beat_at

    # ------------------------------------------------------------ set-up

    def install_signals(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            if signum in STOPPING and self.stop_signal is None:
                self.stop_signal = signum  # seen by start-up steps at once
            self.post(Signal(signum))

        for sig in STOPPING + FORWARDED + (signal.SIGCHLD,):
            signal.signal(sig, on_signal)

    # ------------------------------------------------------------ the loop

    def serve(self, start: Callable[[], None], *, hold: bool = False) -> int:
        """The whole life: run `start` (the start steps), then supervise until the shutdown
        is done; returns the exit code. A failed start raises its error, or with `hold` is
        held for an operator (the loop keeps serving events) until a `resume` event retries
        it; a stop while held raises the failure."""
        self._start, self._hold_on_failure = start, hold
        self.children.owner = threading.current_thread()
        code = self._attempt_start(first=True)
        if code is not None:
            return code
        while self.phase != DONE:
            self.beat()
            event = self._next_event()
            if event is not None:
                self._dispatch(event)
            self._poll_children()
            self._timers()
        assert self.exit_code is not None
        return self.exit_code

    def _attempt_start(self, first: bool) -> int | None:
        """One run of the start steps; returns an exit code when they were stopped."""
        try:
            self._start()
        except SidecarError as exc:
            if not (first and self.stop_requested()):  # a stop is reported below instead
                if first and not self._hold_on_failure:
                    raise
                self._hold(exc, again=not first)
                return None
        if self.stop_requested() and self._phase == "starting":
            signum = self.stop_signal or signal.SIGTERM
            self.run_log.info("stopped during start-up", signal=signal.Signals(signum).name)
            self.children.kill_all()
            self.shutdown.phase, self.shutdown.exit_code = DONE, 128 + signum
            return 128 + signum
        self.held = None
        self._phase = "running"
        return None

    def _hold(self, exc: SidecarError, again: bool) -> None:
        """SIDECAR_ON_START_FAILURE=hold: instead of exiting (and crash-looping on the
        platform), stay up with the failure in /status, so an operator can get a shell, fix
        the cause (`sidecar check`, `sidecar restore`) and `sidecar resume`."""
        self.children.kill_all()
        self._phase, self.held = "starting", exc
        if again:
            self.run_log.error("start failed again: holding", error=exc.message,
                               exit_code=exc.exit_code, step=exc.step)
        else:
            self.run_log.error("start failed: holding for an operator", error=exc.message,
                               exit_code=exc.exit_code, step=exc.step,
                               fix="fix the cause, then run `sidecar resume` (or restart the "
                                   "service)")

    def _next_event(self) -> Event | None:
        try:
            return self.events.get_nowait()
        except queue.Empty:
            pass
        self.waker.wait(fds(self.children.both()), self._timeout())
        try:
            return self.events.get_nowait()
        except queue.Empty:
            return None

    def _timeout(self) -> float:
        wake = [t for t in (self.shutdown.deadline, self.litestream.restart_at,
                            self.app.restart_at if self.app else None) if t is not None]
        if not wake:
            return IDLE_WAKE
        return max(0.0, min(IDLE_WAKE, min(wake) - self.clock()))

    def _dispatch(self, event: Event) -> None:
        match event:
            case Signal(signum) if signum in STOPPING:
                self.handle_stop(signum)
            case Signal(signum) if signum in FORWARDED:
                if self.app is not None:
                    self.app.signal(signum)
            case Signal(signal.SIGCHLD):
                for pid, status in procs.reap():
                    self.log.debug("reaped orphan", pid=pid, code=procs.exit_code(status))
            case FinalSyncDone():
                self._perform(self.shutdown.sync_done(
                    self.clock(), litestream_alive=self.litestream_running()))
            case Resume():
                self.handle_resume()
            case ChildRestarted() | RestoreRequested() | RestoreResume():
                for handler in self.handlers.get(type(event), []):
                    try:
                        handler(event)
                    except Exception as exc:  # a handler's bug must not kill the loop
                        self.log.error("event handler failed", kind=type(event).__name__,
                                       error=str(exc), exc_info=True)
            case _:
                self.log.error("unknown event", kind=type(event).__name__)

    # ------------------------------------------------------------ events

    def handle_stop(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.held is not None:
            self.run_log.info("stopped while holding", signal=name)
            raise self.held
        if not self.shutdown.begun:
            self.log.info("shutdown requested", signal=name)
            self._begin_shutdown(signum)
        else:
            self._perform(self.shutdown.hurry(self.clock(), signum, **self._alive()))

    def handle_resume(self) -> None:
        """`sidecar resume` of a held start: the start steps again."""
        if self.held is None:
            return
        self.run_log.info("resuming start", after=self.held.message)
        if self._attempt_start(first=False) is None and self.held is None:
            self.run_log.info("resumed", phase=self.phase)

    # ------------------------------------------------------------ the children, for the
    # start steps (run.py) and the operations' handlers, all in the loop's thread

    @property
    def app(self) -> Child | None:
        return self.children.app

    @property
    def litestream(self) -> Child:
        return self.children.litestream

    def app_running(self) -> bool:
        return self.children.app_running()

    def litestream_running(self) -> bool:
        return self.children.litestream_running()

    def children_status(self) -> dict[str, Any]:
        return self.children.status()

    adopt_orphans = staticmethod(adopt_orphans)

    def start_litestream(self) -> None:
        self.children.start_litestream()

    def wait_litestream_ready(self) -> None:
        self.children.wait_litestream_ready()

    def start_app(self) -> None:
        self.children.start_app()
        if self.cfg.app_command:
            self._phase = "running"

    def pause_app(self, reason: str) -> None:
        """Stop the app on purpose (a live restore); its exit does not end the run."""
        self.paused_app = True
        self.children.stop_app(reason)

    def resume_app(self) -> None:
        """Start the app again after pause_app()."""
        self.paused_app = False
        if self.phase == "running" and not self.stop_requested():
            self.start_app()

    def kill_all(self) -> None:
        """Last resort (a failed start, an internal error): leave no child behind."""
        self.children.kill_all()

    # ------------------------------------------------------------ decisions

    def _alive(self) -> dict[str, bool]:
        return {"app_alive": self.app_running(), "litestream_alive": self.litestream_running()}

    def _begin_shutdown(self, signum: int, exit_code: int | None = None) -> None:
        if exit_code is None and not self.app_running():
            exit_code = (self.held_exit_code if self.held_exit_code is not None
                         else self.app.last_exit if self.app is not None else None)
        self._perform(self.shutdown.begin(self.clock(), signum, exit_code=exit_code,
                                          **self._alive()))

    def _poll_children(self) -> None:
        for child in (self.app, self.litestream):
            code = child.poll() if child is not None else None
            if child is None or code is None:
                continue
            if child is self.app:
                self._on_app_exit(code)
            else:
                self._on_litestream_exit(code)

    def _on_app_exit(self, code: int) -> None:
        assert self.app is not None
        self.log.info("app exited", code=code, phase=self.phase)
        if self.shutdown.begun:
            self._perform(self.shutdown.app_exited(
                self.clock(), code, litestream_alive=self.litestream_running()))
        elif self.phase == "running" and not self.paused_app:
            if self.cfg.app_restart == "on-failure" and code != 0:
                self.children.schedule_restart(self.app)
                return
            self.log.info("shutdown: the app exited", code=code)
            self._begin_shutdown(signal.SIGTERM, exit_code=code)

    def _on_litestream_exit(self, code: int) -> None:
        if self.shutdown.expects_litestream_exit():
            self._perform(self.shutdown.litestream_exited(code))
            return
        self.log.error("litestream exited", code=code,
                       last_error=self.children.last_litestream_error)
        self.children.schedule_restart(self.litestream)

    def _timers(self) -> None:
        now = self.clock()
        for child in (self.litestream, self.app):
            if child is None or child.restart_at is None or now < child.restart_at:
                continue
            if self.phase != "running":
                child.restart_at = None
                continue
            child.restarts += 1  # an attempt, as /status and the metric count it
            metrics.CHILD_RESTARTS.labels(child=child.name).inc()
            try:
                self.children.spawn(child)
            except OSError as exc:
                self.log.error(f"{child.name} restart failed", error=str(exc))
                self.children.schedule_restart(child)
                continue
            self.post(ChildRestarted(child.name))
        self._perform(self.shutdown.tick(now, **self._alive()))

    # ------------------------------------------------------------ actions

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Log(level, event, fields):
                    getattr(self.log, level)(event, **fields)
                case SignalApp(sig):
                    if self.app is not None:
                        self.app.signal(sig)
                case SignalLitestream(sig):
                    self.litestream.signal(sig)
                case FinalSync(seconds):
                    self.background(functools.partial(self._final_sync, seconds))

    def _final_sync(self, budget: float) -> None:
        """In the background (the loop stays responsive): ask Litestream to push everything."""
        try:
            final_sync.run(self.cfg, self.control, budget, self.started_at, self.log,
                           self.clock, self.members, self.cfg.restore_parallelism)
        finally:
            self.post(FinalSyncDone())
