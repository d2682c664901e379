"""Child processes: spawning them in their own process group, signalling, reaping.

Only the supervisor loop reaps, with `waitpid(-1, WNOHANG)` in a loop as tini does: that takes
orphans re-parented to us (as PID 1 or a subreaper) and our own children alike, so the status
of a child someone owns (spawned here: the app, Litestream, a helper command) is kept for its
owner, who reads it with `wait_nohang()`. Helper commands (restore, migrations) run through
`run()` in whatever thread needs them.

No child outlives a sidecar that is killed alone (SIGKILL, an OOM kill, outside a PID
namespace where the kernel would do it for us): each one is started with PR_SET_PDEATHSIG
(SIGKILL), so it dies with the thread that started it, and each one inherits the database
locks (`hold_in_children`), so a descendant that escapes (a grandchild of the app) keeps a
second sidecar from starting on the same database while it runs. The supervisor starts the
app and Litestream from the main thread, which lives as long as the process; helper commands
are waited for by the thread that starts them.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_lock = threading.Lock()
_owned: set[int] = set()  # pids spawned here: their owner reads their status
_exited: dict[int, int] = {}  # owned pids the reaper took, with their raw wait status
_inherited: tuple[int, ...] = ()  # fds every child keeps open (the database locks)

PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    try:
        import ctypes

        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return fn
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()  # looked up once: the child between fork and exec only calls it


def hold_in_children(fds: Sequence[int]) -> None:
    """Every child started from now on inherits these fds (the locks beside the databases)."""
    global _inherited
    _inherited = tuple(fds)


def _die_with_parent(parent: int) -> Callable[[], None]:
    kill = int(signal.SIGKILL)

    def arm() -> None:  # runs in the child between fork and exec: nothing but syscalls
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def spawn(argv: Sequence[str], env: Mapping[str, str] | None = None, *,
          new_session: bool = True, capture: bool = False,
          cwd: str | Path | None = None) -> subprocess.Popen[bytes]:
    """Start a child; with new_session it leads its own process group (signalled as a group).
    It dies with the calling thread (PR_SET_PDEATHSIG) and inherits the database locks.
    Raises OSError when it cannot be executed (missing, not executable, bad format)."""
    with _lock:
        proc = subprocess.Popen(
            list(argv), env=dict(env) if env is not None else None, cwd=cwd,
            start_new_session=new_session, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            pass_fds=_inherited, preexec_fn=_die_with_parent(os.getpid()))
        _owned.add(proc.pid)
    return proc


def release(pid: int) -> None:
    with _lock:
        _owned.discard(pid)
        _exited.pop(pid, None)


def wait_nohang(pid: int) -> int | None:
    """The raw wait status of `pid` if it has exited (reaped here or by `reap()`), else None.
    ECHILD for a pid nobody recorded counts as gone (-1)."""
    with _lock:  # reap() cannot take it between our waitpid and our look at _exited
        if pid in _exited:
            return _exited.pop(pid)
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return _exited.pop(pid, -1)
    return status if got == pid else None


def pidfd(pid: int) -> int | None:
    """A file descriptor that turns readable when `pid` exits (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def exit_code(status: int) -> int:
    """A wait status as a shell would show it: the code, or 128+N for signal N."""
    if status < 0:
        return 70
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def signal_group(pid: int, sig: int) -> bool:
    """Signal a child's whole process group; False when it is already gone."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        try:
            os.kill(pid, sig)
            return True
        except ProcessLookupError:
            return False


def reap() -> list[tuple[int, int]]:
    """Reap every exited child, as tini does (`waitpid(-1, WNOHANG)` until none is left). The
    status of an owned child is kept for its owner (wait_nohang); returns the orphans' (pid,
    status) pairs, the descendants re-parented to us that nobody else waits for."""
    orphans = []
    with _lock:
        while True:
            try:
                got, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break  # no child at all
            if got == 0:
                break  # children left, none exited
            if got in _owned:
                _exited[got] = status
            else:
                orphans.append((got, status))
    return orphans


def _wait_exit(proc: subprocess.Popen[bytes], fd: int | None, seconds: float) -> int | None:
    """Up to `seconds` for `proc` to exit, woken by its pidfd (or every 20 ms without one)."""
    status = wait_nohang(proc.pid)
    if status is None:
        if fd is not None:
            select.select([fd], [], [], seconds)
        else:
            time.sleep(min(seconds, 0.02))
        status = wait_nohang(proc.pid)
    return status


class Helper:
    """A helper command started now and waited for later (`wait`), or killed unwaited-for
    (`kill`); its output goes line by line to `on_line` as it comes. It dies with the thread
    that started it, so that thread must be the one that waits for it or outlives it."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, *,
                 on_line: Callable[[str], None] | None = None,
                 cwd: str | Path | None = None):
        self.proc = spawn(argv, env, capture=True, cwd=cwd)
        self.lines: list[str] = []
        self._on_line = on_line
        self._fd = pidfd(self.proc.pid)
        self._status: int | None = None
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if self._on_line:
                self._on_line(line)

    def wait(self, should_stop: Callable[[], bool] | None = None,
             timeout: float | None = None) -> tuple[int, str]:
        """Its exit code and output; killed (group) when `should_stop()` turns true or
        `timeout` passes."""
        end = None if timeout is None else time.monotonic() + timeout
        try:
            while self._status is None:
                # should_stop is a question, not an event: ask it every 0.1 s; the exit itself
                # wakes us at once through the pidfd.
                self._status = _wait_exit(self.proc, self._fd, 0.1)
                if self._status is not None:
                    break
                if (should_stop and should_stop()) or (end is not None
                                                       and time.monotonic() > end):
                    self._killed()
        finally:
            self._release()
        self._reader.join(timeout=5)
        return exit_code(self._status if self._status is not None else -1), \
            "\n".join(self.lines)

    def kill(self) -> None:
        """SIGKILL its group and wait for it to be gone."""
        try:
            if self._status is None:
                self._killed()
        finally:
            self._release()
        self._reader.join(timeout=5)

    def _killed(self) -> None:
        signal_group(self.proc.pid, signal.SIGKILL)
        while self._status is None:
            self._status = _wait_exit(self.proc, self._fd, 1.0)

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        release(self.proc.pid)
        self.proc.returncode = exit_code(self._status) if self._status is not None else -1


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, *,
        on_line: Callable[[str], None] | None = None, timeout: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        cwd: str | Path | None = None) -> tuple[int, str]:
    """Run a helper command to completion; its output goes line by line to `on_line` (and is
    returned). Killed (group) when `should_stop()` turns true or `timeout` passes."""
    return Helper(argv, env, on_line=on_line, cwd=cwd).wait(should_stop, timeout)


def is_pid1() -> bool:
    return os.getpid() == 1


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to us (Linux PR_SET_CHILD_SUBREAPER)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False
