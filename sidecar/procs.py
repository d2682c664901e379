"""Child processes: spawning them in their own process group, and reaping.

Only the supervisor loop reaps. Helper commands (restore, migrations) run through `run()`,
which registers their pid so the orphan reaper never steals their exit status.

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
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_lock = threading.Lock()
_owned: set[int] = set()  # pids whose status someone else is waiting for
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


def wait_nohang(pid: int) -> int | None:
    """The raw wait status of `pid` if it has exited, else None. ECHILD counts as gone (-1)."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    return status if got == pid else None


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


def reap_orphans() -> list[tuple[int, int]]:
    """Reap exited children that nobody owns (orphans re-parented to us as PID 1 or
    subreaper). Returns (pid, status) pairs."""
    reaped = []
    me = os.getpid()
    with _lock:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid in _owned:
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
            except OSError:
                continue
            rest = stat.rsplit(")", 1)[-1].split()
            if len(rest) < 2 or rest[0] != "Z" or int(rest[1]) != me:
                continue
            try:
                got, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if got == pid:
                reaped.append((pid, status))
    return reaped


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, *,
        on_line: Callable[[str], None] | None = None, timeout: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        cwd: str | Path | None = None) -> tuple[int, str]:
    """Run a helper command to completion; its output goes line by line to `on_line` (and is
    returned). Killed (group) when `should_stop()` turns true or `timeout` passes."""
    proc = spawn(argv, env, capture=True, cwd=cwd)
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if on_line:
                on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    end = None if timeout is None else time.monotonic() + timeout
    status = None
    try:
        while status is None:
            status = wait_nohang(proc.pid)
            if status is not None:
                break
            if (should_stop and should_stop()) or (end is not None and time.monotonic() > end):
                signal_group(proc.pid, signal.SIGKILL)
                while status is None:
                    status = wait_nohang(proc.pid)
                    time.sleep(0.01)
                break
            time.sleep(0.02)
    finally:
        release(proc.pid)
        proc.returncode = exit_code(status) if status is not None else -1
    reader.join(timeout=5)
    return exit_code(status), "\n".join(lines)


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
