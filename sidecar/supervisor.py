"""The supervisor: the one loop that owns every child process.

Signal handlers, HTTP and control-socket handlers, scheduler jobs and watchers never touch a
process: they `post()` an event, and `loop()` decides. Shutdown is a small state machine the
loop steps through: stop the app (its process group; SIGKILL after the stop timeout), let
Litestream make its final sync, then exit with the app's code.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import log, metrics, procs
from .config import Config
from .errors import ExecError, InternalError, exec_code
from .litestream import Control, ControlError, child_env, replicate_argv

FORWARDED = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH)
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0  # a child up this long has its backoff reset


@dataclass
class Event:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    capture: bool = False
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    started_wall: float = 0.0
    restarts: int = 0
    backoff: float = 1.0
    restart_at: float | None = None
    last_exit: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.returncode is None else None

    def status(self, now: float) -> dict[str, Any]:
        return {"pid": self.pid, "running": self.pid is not None,
                "uptime_seconds": round(now - self.started_at, 1) if self.pid else 0,
                "restarts": self.restarts, "last_exit_code": self.last_exit}


class Supervisor:
    def __init__(self, cfg: Config, env: dict[str, str], litestream_bin: str,
                 litestream_config: Path, control: Control, metrics_url: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.env = env
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.clock = clock
        self.log = log.get("supervisor")
        self.control = control
        self.metrics_url = metrics_url
        self.litestream = Child("litestream", replicate_argv(litestream_bin, litestream_config),
                                child_env(env), capture=True)
        self.app: Child | None = None
        self.stop_signal: int | None = None
        self.phase = "starting"  # starting | running | stopping-app | final-sync | stopping-litestream | done
        self.exit_code: int | None = None
        self.deadline: float | None = None
        self.handlers: dict[str, Callable[[Event], None]] = {}
        self.last_litestream_error: str | None = None
        self.paused_app = False  # the app is stopped on purpose (e.g. a live restore)
        self.held_exit_code: int | None = None  # held after a failed migration: exit with it
        self.beat_at = time.monotonic()  # the loop thread's last sign of life (/healthz)

    # ------------------------------------------------------------ from any thread

    def post(self, kind: str, **data: Any) -> None:
        """Thread- and signal-safe: the loop picks it up."""
        self.events.put(Event(kind, data))

    def on(self, kind: str, handler: Callable[[Event], None]) -> None:
        """Register a handler run by the loop for events of `kind`."""
        self.handlers[kind] = handler

    def stop_requested(self) -> bool:
        return self.stop_signal is not None

    def beat(self) -> None:
        """The loop's thread is alive and making progress (called by it, never by others)."""
        self.beat_at = time.monotonic()

    def working(self) -> bool:
        """The `should_stop` of long work the loop runs itself (a live restore, a migration):
        it is polled while the work goes on, so each call is a beat; says whether to stop."""
        self.beat()
        return self.stop_requested()

    def silent_for(self) -> float:
        """Seconds since the loop's thread last showed progress."""
        return time.monotonic() - self.beat_at

    # ------------------------------------------------------------ signals

    def install_signals(self) -> None:
        def on_signal(signum: int, _frame: Any) -> None:
            if signum in STOPPING and self.stop_signal is None:
                self.stop_signal = signum  # seen by startup steps at once
            self.events.put(Event("signal", {"signum": signum}))

        for sig in STOPPING + FORWARDED + (signal.SIGCHLD,):
            signal.signal(sig, on_signal)

    # ------------------------------------------------------------ children

    def _spawn(self, child: Child) -> None:
        child.proc = procs.spawn(child.argv, child.env, capture=child.capture, cwd=self.cfg.cwd)
        child.started_at = self.clock()
        child.started_wall = time.time()
        child.restart_at = None
        if child.capture:
            threading.Thread(target=self._pump, args=(child, child.proc), daemon=True,
                             name=f"{child.name}-output").start()
        self.log.info(f"{child.name} started", pid=child.proc.pid,
                      command=child.argv[0] if child.name == "app" else "litestream replicate")
        gauge = metrics.APP_UP if child.name == "app" else metrics.LITESTREAM_UP
        gauge.set(1)

    def _pump(self, child: Child, proc: subprocess.Popen[bytes]) -> None:
        """Fold Litestream's JSON log lines into ours, tagged."""
        logger = log.get(child.name)
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                level = str(rec.pop("level", "INFO")).lower() or "info"
                msg = rec.pop("msg", "")
                rec.pop("time", None)
                fields = {k if k not in ("event", "level", "component") else f"ls_{k}": v
                          for k, v in rec.items()}
                if level == "error":
                    self.last_litestream_error = f"{msg}: {rec.get('error', '')}".strip(": ")
                getattr(logger, level if level in ("debug", "warning", "error") else "info")(
                    msg, **fields)
            except (ValueError, AttributeError):
                logger.info("output", line=line)

    def start_litestream(self) -> None:
        try:
            self._spawn(self.litestream)
        except OSError as exc:
            raise ExecError("litestream", self.litestream.argv[0], exc, 3,
                            hint="reinstall litestream-bin, or fix SIDECAR_LITESTREAM_BIN"
                            ) from None

    def wait_litestream_ready(self) -> None:
        """Until Litestream has opened every DB and answers on its control socket (bounded)."""
        want = {str(db.path) for db in self.cfg.databases}
        end = self.clock() + self.cfg.ready_timeout
        seen: set[str] = set()
        while self.clock() < end:
            if self.stop_requested():
                return
            status = procs.wait_nohang(self.litestream.proc.pid) if self.litestream.proc else -1
            if status is not None:
                self._mark_exit(self.litestream, status)
                raise InternalError(
                    f"cannot start: litestream exited with code {procs.exit_code(status)} during "
                    f"start-up ({self.last_litestream_error or 'see its log lines above'})")
            try:
                seen = {d.get("path", "") for d in self.control.list()}
                if want <= seen:
                    return
            except ControlError:
                pass
            time.sleep(0.02)  # start-up latency: Litestream opens its socket in ~20 ms
        raise InternalError(
            f"cannot start: litestream did not open every database within "
            f"{self.cfg.ready_timeout:g}s (open: {sorted(seen) or 'none'}; "
            f"wanted: {sorted(want)})", hint="raise SIDECAR_READY_TIMEOUT or check its log lines")

    def start_app(self) -> None:
        if not self.cfg.app_command:
            return
        if self.app is None:
            self.app = Child("app", list(self.cfg.app_command), dict(self.env))
        try:
            self._spawn(self.app)
        except OSError as exc:
            self.app.last_exit = exec_code(exc)
            raise ExecError("the app", self.cfg.app_command[0], exc, exec_code(exc),
                            hint="check the app command (after `--` or SIDECAR_APP_COMMAND): "
                                 "it must exist in the image and be executable") from None
        self.phase = "running"

    def pause_app(self, reason: str) -> None:
        """Stop the app on purpose (a live restore): SIGTERM its group, SIGKILL after the stop
        timeout. Blocks the loop (the caller is a loop handler); its exit does not end us."""
        self.paused_app = True
        if self.app is None:
            return
        self.app.restart_at = None
        pid = self.app.pid
        if not pid:
            return
        self.log.info("app stopping", reason=reason, timeout_seconds=self.cfg.app_stop_timeout)
        procs.signal_group(pid, signal.SIGTERM)
        end = time.monotonic() + self.cfg.app_stop_timeout
        killed = False
        while True:
            self.beat()
            status = procs.wait_nohang(pid)
            if status is not None:
                code = self._mark_exit(self.app, status)
                self.log.info("app exited", code=code, reason=reason)
                self.app.last_exit = None  # stopped on purpose: not the sidecar's exit code
                return
            if not killed and (time.monotonic() > end or self.stop_requested()):
                self.log.warning("app did not stop in time: SIGKILL", reason=reason)
                procs.signal_group(pid, signal.SIGKILL)
                killed = True
            time.sleep(0.02)

    def resume_app(self) -> None:
        """Start the app again after pause_app()."""
        self.paused_app = False
        if self.phase == "running" and not self.stop_requested():
            self.start_app()

    def _mark_exit(self, child: Child, status: int) -> int:
        code = procs.exit_code(status)
        if child.proc is not None:
            child.proc.returncode = code
            procs.release(child.proc.pid)
        child.last_exit = code
        gauge = metrics.APP_UP if child.name == "app" else metrics.LITESTREAM_UP
        gauge.set(0)
        return code

    def _schedule_restart(self, child: Child) -> None:
        now = self.clock()
        if now - child.started_at >= STABLE_AFTER:
            child.backoff = 1.0
        child.restart_at = now + child.backoff
        self.log.warning(f"{child.name} restart scheduled", in_seconds=child.backoff,
                         restarts=child.restarts)
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)

    # ------------------------------------------------------------ the loop

    def loop(self) -> int:
        """Run until the shutdown finishes; returns the exit code."""
        if self.phase == "starting":
            self.phase = "running"
        while self.phase != "done":
            self.beat()
            try:
                event = self.events.get(timeout=self._timeout())
            except queue.Empty:
                event = None
            if event is not None:
                self._handle(event)
            self._poll_children()
            self._timers()
        assert self.exit_code is not None
        return self.exit_code

    def _timeout(self) -> float:
        wake = [t for t in (self.deadline, self.litestream.restart_at,
                            self.app.restart_at if self.app else None) if t is not None]
        if not wake:
            return 0.5
        return max(0.0, min(0.5, min(wake) - self.clock()))

    def _handle(self, event: Event) -> None:
        if event.kind == "signal":
            self._on_signal(int(event.data["signum"]))
        elif event.kind == "final-sync-done":
            if self.phase == "final-sync":
                self._stop_litestream()
        elif event.kind in self.handlers:
            try:
                self.handlers[event.kind](event)
            except Exception as exc:  # a handler's bug must not kill the loop
                self.log.error("event handler failed", kind=event.kind, error=str(exc),
                               exc_info=True)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            for pid, status in procs.reap_orphans():
                self.log.debug("reaped orphan", pid=pid, code=procs.exit_code(status))
            return
        if signum in FORWARDED:
            if self.app and self.app.pid:
                procs.signal_group(self.app.pid, signum)
            return
        name = signal.Signals(signum).name
        if self.phase in ("starting", "running"):
            self.log.info("shutdown requested", signal=name)
            self.begin_shutdown(signum)
        else:
            self.log.warning("second signal: skipping the wait", signal=name, phase=self.phase)
            self._hurry()

    def begin_shutdown(self, signum: int | None) -> None:
        """Stop the app (if running), then Litestream; `signum` None means the app exited."""
        if self.app and self.app.pid:
            procs.signal_group(self.app.pid, signum or signal.SIGTERM)
            self.phase = "stopping-app"
            self.deadline = self.clock() + self.cfg.app_stop_timeout
            self.log.info("app stopping", signal=signal.Signals(signum or signal.SIGTERM).name,
                          timeout_seconds=self.cfg.app_stop_timeout)
        else:
            if self.exit_code is None and self.held_exit_code is not None:
                self.exit_code = self.held_exit_code
            if self.exit_code is None:
                self.exit_code = (self.app.last_exit if self.app and self.app.last_exit is not None
                                  else 128 + (signum or signal.SIGTERM))
            self._final_sync()

    def _hurry(self) -> None:
        if self.phase == "stopping-app" and self.app and self.app.pid:
            self.log.warning("app killed", reason="second signal")
            procs.signal_group(self.app.pid, signal.SIGKILL)
        elif self.phase == "final-sync":
            self._stop_litestream()
        elif self.phase == "stopping-litestream" and self.litestream.pid:
            # A second SIGTERM makes Litestream give up its shutdown-sync retries.
            procs.signal_group(self.litestream.pid, signal.SIGTERM)

    def _final_sync(self) -> None:
        """Ask Litestream to push everything, in a thread; the loop stays responsive."""
        if not self.litestream.pid:
            self.phase = "done"
            return
        self.phase = "final-sync"
        budget = max(1.0, min(self.cfg.litestream_stop_timeout, 15.0))
        self.deadline = self.clock() + budget + 2

        def work() -> None:
            t0 = time.monotonic()
            for db in self.cfg.databases:
                if not db.path.exists():
                    continue  # nothing was ever written: nothing to push
                try:
                    res = self.control.sync(db.path, wait=True, timeout=budget)
                    self.log.info("final sync", db=db.name, txid=res.get("txid"),
                                  replicated_txid=res.get("replicated_txid"),
                                  seconds=round(time.monotonic() - t0, 3))
                except ControlError as exc:
                    self.log.warning("final sync failed", db=db.name, error=str(exc))
            self.post("final-sync-done")

        threading.Thread(target=work, daemon=True, name="final-sync").start()

    def _stop_litestream(self) -> None:
        if not self.litestream.pid:
            self.phase = "done"
            return
        self.phase = "stopping-litestream"
        procs.signal_group(self.litestream.pid, signal.SIGTERM)
        self.deadline = self.clock() + self.cfg.litestream_stop_timeout + 5

    def _poll_children(self) -> None:
        for child in (self.app, self.litestream):
            if child is None or child.proc is None or child.proc.returncode is not None:
                continue
            status = procs.wait_nohang(child.proc.pid)
            if status is None:
                continue
            code = self._mark_exit(child, status)
            if child.name == "app":
                self._on_app_exit(code)
            else:
                self._on_litestream_exit(code)

    def _on_app_exit(self, code: int) -> None:
        assert self.app is not None
        self.log.info("app exited", code=code, phase=self.phase)
        if self.phase == "stopping-app":
            self.exit_code = code
            self._final_sync()
        elif self.phase == "running" and not self.paused_app:
            if self.cfg.app_restart == "on-failure" and code != 0:
                self._schedule_restart(self.app)
                return
            self.exit_code = code
            self.log.info("shutdown: the app exited", code=code)
            self._final_sync()

    def _on_litestream_exit(self, code: int) -> None:
        if self.phase in ("stopping-litestream", "final-sync"):
            self.log.info("litestream stopped", code=code)
            self.phase = "done"
            return
        self.log.error("litestream exited", code=code,
                       last_error=self.last_litestream_error)
        self._schedule_restart(self.litestream)

    def _timers(self) -> None:
        now = self.clock()
        for child in (self.litestream, self.app):
            if child and child.restart_at is not None and now >= child.restart_at:
                if self.phase != "running":
                    child.restart_at = None
                    continue
                child.restarts += 1
                metrics.CHILD_RESTARTS.labels(child=child.name).inc()
                try:
                    self._spawn(child)
                except OSError as exc:
                    self.log.error(f"{child.name} restart failed", error=str(exc))
                    self._schedule_restart(child)
                    continue
                self.post(f"{child.name}-restarted")
        if self.deadline is not None and now >= self.deadline:
            self.deadline = None
            if self.phase == "stopping-app" and self.app and self.app.pid:
                self.log.warning("app did not stop in time: SIGKILL",
                                 timeout_seconds=self.cfg.app_stop_timeout)
                procs.signal_group(self.app.pid, signal.SIGKILL)
                self.deadline = now + 5
            elif self.phase == "final-sync":
                self.log.warning("final sync did not finish in time")
                self._stop_litestream()
            elif self.phase == "stopping-litestream" and self.litestream.pid:
                self.log.error("litestream did not stop in time: SIGKILL")
                procs.signal_group(self.litestream.pid, signal.SIGKILL)
                self.deadline = now + 5
            elif self.phase == "stopping-litestream":
                self.phase = "done"

    # ------------------------------------------------------------ for status

    def children_status(self) -> dict[str, Any]:
        now = self.clock()
        out = {"litestream": self.litestream.status(now)}
        if self.app:
            out["app"] = self.app.status(now)
        return out

    def app_running(self) -> bool:
        return bool(self.app and self.app.pid)

    def litestream_running(self) -> bool:
        return bool(self.litestream.pid)

    def kill_all(self) -> None:
        """Last resort on an internal error: leave no child behind."""
        for child in (self.app, self.litestream):
            if child and child.pid:
                procs.signal_group(child.pid, signal.SIGTERM)
        end = time.monotonic() + 5
        for child in (self.app, self.litestream):
            while child and child.pid and time.monotonic() < end:
                status = procs.wait_nohang(child.pid)
                if status is not None:
                    self._mark_exit(child, status)
                    break
                time.sleep(0.05)
            if child and child.pid:
                procs.signal_group(child.pid, signal.SIGKILL)

