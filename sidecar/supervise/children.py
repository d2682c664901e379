"""The supervisor's children, the app and Litestream, and what can be done with them: start
them, wait for Litestream to open every database, stop the app on purpose (a live restore),
kill everything as a last resort. The supervisor holds one `Children` and is the only caller;
it runs in the supervisor loop's thread, the thread the children's death signal is tied to.
Every wait sleeps on the children's pidfds and the loop's self-pipe, with the injected clock,
beating (`beat`) and asking `should_stop` as it goes; nothing here decides when (supervisor.py
does).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidecar import log
from sidecar.config import Config
from sidecar.errors import ExecError, StartError, exec_code
from sidecar.litestream.control import Control, ControlError
from sidecar.litestream.process import child_env, fold_output, replicate_argv
from sidecar.supervise import procs
from sidecar.supervise.child import Child, OsProcess, ProcessCtor, fds
from sidecar.supervise.wake import Waker

IDLE_WAKE = 0.5  # with nothing due, the loop still beats this often (/healthz reads the beat)
READY_POLL = 0.05  # start-up: between looks at Litestream's /list when no line woke us


def adopt_orphans() -> None:
    """Become the reaper of orphaned descendants; say loudly when we cannot (tini does)."""
    pid1 = procs.is_pid1()
    if pid1 or procs.become_subreaper():
        log.get("run").debug("reaper", pid1=pid1, subreaper=not pid1)
        return
    log.get("run").warning(
        "not a reaper: orphans of the app are not reaped here", pid1=False,
        subreaper=False, consequence="a process the app leaves behind stays a zombie "
        "under whatever PID 1 this container has",
        fix="run sidecar as the container's entrypoint (PID 1) on Linux")


class Children:
    """The app and Litestream as the supervisor holds them: each a `Child` (its command, its
    process, its restart bookkeeping), started, waited for and stopped from the loop's thread
    only (`owner`, set when the loop starts serving)."""

    def __init__(self, cfg: Config, env: dict[str, str], litestream_bin: str,
                 litestream_config: Path, control: Control, *,
                 should_stop: Callable[[], bool], beat: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic,
                 process_ctor: ProcessCtor = OsProcess, waker: Any = None):
        self.cfg, self.env, self.control = cfg, env, control
        self.should_stop, self.beat = should_stop, beat
        self.clock, self.process_ctor = clock, process_ctor
        self.waker = waker if waker is not None else Waker()
        self.log = log.get("supervisor")
        self.litestream = Child("litestream", replicate_argv(litestream_bin, litestream_config),
                                child_env(env), capture=True, cwd=cfg.cwd,
                                process_ctor=process_ctor, clock=clock,
                                on_output=self._fold_litestream_output)
        self.app: Child | None = None
        self.last_litestream_error: str | None = None
        self._waiting_ready = False  # Litestream's output lines wake the loop meanwhile
        self.owner: threading.Thread | None = None  # the loop's thread, once it serves

    def both(self) -> tuple[Child | None, Child]:
        return self.app, self.litestream

    def spawn(self, child: Child) -> None:
        """Start `child` (again). Raises OSError when it cannot be executed. Only from the
        loop's thread: a child's death signal fires when the thread that started it ends."""
        if self.owner is not None and threading.current_thread() is not self.owner:
            raise RuntimeError(f"{child.name} started outside the supervisor loop's thread")
        child.start()
        assert child.proc is not None
        self.log.info(f"{child.name} started", pid=child.proc.pid,
                      command=child.argv[0] if child.name == "app" else "litestream replicate")

    def _fold_litestream_output(self, lines: Any) -> None:
        def keep(error: str) -> None:
            self.last_litestream_error = error

        def waking() -> Any:
            # Litestream logs as it opens each database: while the loop waits for that,
            # each line (once logged) wakes it to look, instead of it polling blind.
            for line in lines:
                yield line
                if self._waiting_ready:
                    self.waker.wake()

        fold_output(waking(), log.get("litestream"), keep)

    def start_litestream(self) -> None:
        try:
            self.spawn(self.litestream)
        except OSError as exc:
            raise ExecError("litestream", self.litestream.argv[0], exc, 3,
                            hint="reinstall litestream-bin, or fix SIDECAR_LITESTREAM_BIN"
                            ) from None

    def wait_litestream_ready(self) -> None:
        """Until Litestream has opened every DB and answers on its control socket (bounded)."""
        self._waiting_ready = True
        try:
            self._wait_ready()
        finally:
            self._waiting_ready = False

    def _wait_ready(self) -> None:
        want = {str(db.path) for db in self.cfg.databases}
        end = self.clock() + self.cfg.ready_timeout
        seen: set[str] = set()
        while self.clock() < end:
            if self.should_stop():
                return
            code = self.litestream.poll()
            if code is not None:
                raise StartError(
                    f"cannot start: litestream exited with code {code} during start-up "
                    f"({self.last_litestream_error or 'see its log lines above'})")
            try:
                seen = {d.get("path", "") for d in self.control.list()}
                if want <= seen:
                    return
            except ControlError:
                pass
            # Its log lines, its exit or a signal wake us; the timeout is the fallback.
            self.waker.wait(fds([self.litestream]), READY_POLL)
        raise StartError(
            f"cannot start: litestream did not open every database within "
            f"{self.cfg.ready_timeout:g}s (open: {sorted(seen) or 'none'}; "
            f"wanted: {sorted(want)})", hint="raise SIDECAR_READY_TIMEOUT or check its log lines")

    def start_app(self) -> None:
        if not self.cfg.app_command:
            return
        if self.app is None:
            self.app = Child("app", list(self.cfg.app_command), dict(self.env), cwd=self.cfg.cwd,
                             process_ctor=self.process_ctor, clock=self.clock)
        try:
            self.spawn(self.app)
        except OSError as exc:
            self.app.last_exit = exec_code(exc)
            raise ExecError("the app", self.cfg.app_command[0], exc, exec_code(exc),
                            hint="check the app command (after `--` or SIDECAR_APP_COMMAND): "
                                 "it must exist in the image and be executable") from None

    def stop_app(self, reason: str) -> None:
        """Stop the app on purpose (a live restore): SIGTERM its group, SIGKILL after the stop
        timeout (at once on a stop request). Blocks the loop (the caller is a loop handler)."""
        app = self.app
        if app is None:
            return
        app.restart_at = None
        if not app.pid:
            return
        self.log.info("app stopping", reason=reason, timeout_seconds=self.cfg.app_stop_timeout)
        app.signal(signal.SIGTERM)
        end = self.clock() + self.cfg.app_stop_timeout
        killed = False
        while True:
            self.beat()
            code = app.poll()
            if code is not None:
                self.log.info("app exited", code=code, reason=reason)
                app.last_exit = None  # stopped on purpose: not the sidecar's exit code
                return
            if not killed and (self.clock() > end or self.should_stop()):
                self.log.warning("app did not stop in time: SIGKILL", reason=reason)
                app.signal(signal.SIGKILL)
                killed = True
            self.waker.wait(fds([app]), IDLE_WAKE if killed else min(IDLE_WAKE, max(
                0.0, end - self.clock())))

    def schedule_restart(self, child: Child) -> None:
        delay = child.schedule_restart(self.clock())
        self.log.warning(f"{child.name} restart scheduled", in_seconds=delay,
                         restarts=child.restarts)

    def kill_all(self) -> None:
        """Last resort (a failed start, an internal error): leave no child behind."""
        children = [c for c in (self.app, self.litestream) if c is not None and c.pid]
        for child in children:
            child.signal(signal.SIGTERM)
        for sig, seconds in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 1.0)):
            end = self.clock() + seconds
            for child in children:
                if sig == signal.SIGKILL:
                    child.signal(sig)
                while child.pid and self.clock() < end:
                    if child.poll() is not None:
                        break
                    self.waker.wait(fds([child]), min(IDLE_WAKE, end - self.clock()))

    # ------------------------------------------------------------ for status

    def status(self) -> dict[str, Any]:
        now = self.clock()
        out = {"litestream": self.litestream.status(now)}
        if self.app:
            out["app"] = self.app.status(now)
        return out

    def app_running(self) -> bool:
        return bool(self.app and self.app.pid)

    def litestream_running(self) -> bool:
        return bool(self.litestream.pid)
