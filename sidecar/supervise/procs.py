"""Child processes: spawning them in their own process group, signalling, reaping.

Only the supervisor loop reaps, with `waitpid(-1, WNOHANG)` in a loop as tini does: that takes
orphans re-parented to us (as PID 1 or a subreaper) and our own children alike, so the status
of a child someone owns (spawned here: the app, Litestream, a helper command) is kept for its
owner, who reads it with `wait_nohang()`. Helper commands (restore, migrations) run through
`run()` in whatever thread needs them.

No child outlives a sidecar that is killed alone (SIGKILL, an OOM kill, outside a PID
namespace where the kernel would do it for us): each one gets the death signal SIGKILL
(PR_SET_PDEATHSIG), so it dies with the thread that started it, and each one inherits the
database locks (`hold_in_children`), so a descendant that escapes (a grandchild of the app)
keeps a second sidecar from starting on the same database while it runs. The supervisor
starts the app and Litestream from its loop's thread (the main thread, which lives as long as
the process); helper commands are waited for by the thread that starts them.

The death signal is set without running Python between fork and exec (a `preexec_fn` in a
process that runs threads can deadlock in the child): the child is util-linux's
`setpriv --pdeathsig KILL -- /bin/sh -c PARENT_CHECK <our pid> argv...`: setpriv sets it, the
shell ends the child if its parent died before that (it was re-parented), else executes the
command in its place; two execs more, about a millisecond. (Debian's util-linux is essential,
so every Debian-based image has setpriv.) Whether it works is checked once, by `sidecar run`
before any other thread starts (else at the first spawn). Since setpriv's exec failures would
only show as an exit code, `spawn` first checks that the command can be executed as execve
would (found, executable, an ELF program of this machine whose loader exists, or a `#!` script
whose interpreter exists) and raises the OSError execve would. Where setpriv is
missing, the old way (prctl in a `preexec_fn`) is the fallback only while the process has a
single thread, where it is safe; a child started later has no death signal, and a warning
says so once. What the death signal does not cover, either way: a program that executes a
set-user-ID binary or changes its user (the kernel clears the signal); the inherited locks
still keep a second sidecar off the databases while such a process runs.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sidecar import log

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
    """The fallback: a `preexec_fn` arming the death signal. Safe only in a process with a
    single thread (see `_death_signal`)."""
    kill = int(signal.SIGKILL)

    def arm() -> None:  # runs in the child between fork and exec: nothing but syscalls
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


# Run by /bin/sh once setpriv has armed the death signal: a parent that died before that (the
# child was re-parented, so $PPID is another process) ends the child, as the prctl fallback
# does; otherwise the command replaces the shell ("$0" is the parent's pid).
PARENT_CHECK = '[ "$PPID" = "$0" ] || exit 1; exec "$@"'
SH = "/bin/sh"


def _works(argv: list[str]) -> bool:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _prefix(path: str, with_sh: bool) -> tuple[str, ...]:
    arm = (path, "--pdeathsig", "KILL", "--")
    return (*arm, SH, "-c", PARENT_CHECK, str(os.getpid())) if with_sh else arm


@functools.cache
def _setpriv() -> tuple[str, bool] | None:
    """(setpriv's path, whether /bin/sh can check the parent after it), or None without a
    setpriv that sets a death signal. Looked at once, by running it (as a child of this very
    process, so the parent check is tried with this pid)."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    for with_sh in (True, False):
        if _works([*_prefix(path, with_sh), path, "--version"]):
            return path, with_sh
    return None


def setpriv() -> tuple[str, ...] | None:
    """What goes before a child's argv so that it dies with the calling thread: util-linux's
    setpriv setting the death signal, then /bin/sh checking the parent is still the one that
    started it (setpriv alone where there is no /bin/sh); None without a setpriv that sets
    one. The pid is this process's at the call, not at the first look."""
    found = _setpriv()
    return None if found is None else _prefix(*found)


_warned = False


def _death_signal(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """The argv to execute and the preexec_fn (None but in the fallback), for a child that
    dies with the calling thread."""
    global _warned
    prefix = setpriv()
    if prefix is not None:
        return [*prefix, *argv], None
    if threading.active_count() == 1:  # no other thread can hold a lock across the fork
        return argv, _die_with_parent(os.getpid())
    if not _warned:
        _warned = True
        log.get("run").warning(
            "children started from now on do not die with sidecar",
            reason="no setpriv (util-linux) that sets a death signal was found, and a "
                   "preexec_fn is not safe in a process that runs threads",
            consequence="if sidecar is killed alone (SIGKILL outside a PID namespace), the "
                        "app and Litestream go on running (the database locks still keep a "
                        "second sidecar off the databases)",
            fix="install util-linux (setpriv) in the image")
    return argv, None


def _exec_error(path: str, depth: int = 0) -> OSError | None:
    """What execve(path) would fail with, as far as can be seen without executing it."""
    try:
        os.stat(path)
    except OSError as exc:
        return OSError(exc.errno, os.strerror(exc.errno or errno.ENOENT))
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES))
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None  # executable but not readable: execve may still run it
    if head.startswith(b"\x7fELF"):
        return _elf_error(path, head)
    if head.startswith(b"#!") and depth < 4:
        # The kernel splits the line on spaces and tabs only: a CR stays in the name.
        words = [w for w in re.split(b"[ \t]+", head[2:].split(b"\n", 1)[0]) if w]
        if not words:
            return OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC))
        inner = _exec_error(os.fsdecode(words[0]), depth + 1)
        return None if inner is None else OSError(inner.errno, inner.strerror)
    return OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC))


def _elf_header(head: bytes) -> tuple[str, int] | None:
    """(byte order, e_machine) of an ELF header, None when it is too short."""
    if len(head) < 20 or head[5] not in (1, 2):
        return None
    order = "little" if head[5] == 1 else "big"
    return order, int.from_bytes(head[18:20], order)


@functools.cache
def _own_machine() -> int | None:
    try:
        with open("/proc/self/exe", "rb") as f:
            own = _elf_header(f.read(64))
    except OSError:
        return None
    return None if own is None else own[1]


def _elf_error(path: str, head: bytes) -> OSError | None:
    """What execve would say of an ELF file: another machine's (ENOEXEC), or a program
    whose loader (PT_INTERP, e.g. musl's on a glibc image) is missing (ENOENT)."""
    info = _elf_header(head)
    if info is None:
        return OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC))
    order, machine = info
    own = _own_machine()
    if own is not None and machine != own:
        return OSError(errno.ENOEXEC, os.strerror(errno.ENOEXEC))
    wide = head[4] == 2  # ELFCLASS64
    try:
        with open(path, "rb") as f:
            f.seek(0x20 if wide else 0x1C)
            phoff = int.from_bytes(f.read(8 if wide else 4), order)
            f.seek(0x36 if wide else 0x2A)
            phentsize = int.from_bytes(f.read(2), order)
            phnum = int.from_bytes(f.read(2), order)
            for i in range(min(phnum, 64)):
                f.seek(phoff + i * phentsize)
                ph = f.read(phentsize)
                if len(ph) < (40 if wide else 24) or int.from_bytes(ph[0:4], order) != 3:
                    continue  # not PT_INTERP
                off = int.from_bytes(ph[8:16] if wide else ph[4:8], order)
                size = int.from_bytes(ph[32:40] if wide else ph[16:20], order)
                f.seek(off)
                interp = f.read(min(size, 4096)).split(b"\0", 1)[0]
                if interp and not os.path.exists(os.fsdecode(interp)):
                    return OSError(errno.ENOENT, os.strerror(errno.ENOENT))
    except (OSError, ValueError):
        return None  # unreadable here: execve decides
    return None


def check_exec(argv0: str, env: Mapping[str, str] | None,
               cwd: str | Path | None = None) -> None:
    """Raise the OSError execve (PATH searched as execvpe does) would raise for `argv0`:
    FileNotFoundError when it is not found or its #! interpreter is missing,
    PermissionError when it is not executable, OSError(ENOEXEC) when it is not a program."""
    if "/" in argv0:
        candidates = [argv0]
    else:
        candidates = [os.path.join(d, argv0) for d in os.get_exec_path(
            dict(env) if env is not None else None)]
    first: OSError | None = None
    for c in candidates:
        path = os.path.join(cwd, c) if cwd is not None and not os.path.isabs(c) else c
        err = _exec_error(path)
        if err is None:
            return
        if first is None or (first.errno in (errno.ENOENT, errno.ENOTDIR)
                             and err.errno not in (errno.ENOENT, errno.ENOTDIR)):
            first = err
    assert first is not None
    raise OSError(first.errno, first.strerror, argv0)


def spawn(argv: Sequence[str], env: Mapping[str, str] | None = None, *,
          new_session: bool = True, capture: bool = False,
          cwd: str | Path | None = None) -> subprocess.Popen[bytes]:
    """Start a child; with new_session it leads its own process group (signalled as a group).
    It dies with the calling thread (the death signal) and inherits the database locks.
    Raises OSError when it cannot be executed (missing, not executable, bad format)."""
    command, preexec = _death_signal(list(argv))
    if len(command) > len(argv):  # through setpriv, whose exec failure is only an exit code
        check_exec(argv[0], env, cwd)
    with _lock:
        proc = subprocess.Popen(
            command, env=dict(env) if env is not None else None, cwd=cwd,
            start_new_session=new_session, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.STDOUT if capture else None,
            pass_fds=_inherited, preexec_fn=preexec)
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
