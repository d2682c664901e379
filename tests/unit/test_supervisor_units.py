"""Fast checks of the pieces behind crash safety and liveness: children really carry
PR_SET_PDEATHSIG (set by setpriv, no Python between fork and exec) and the inherited lock fds,
and die with a sidecar killed alone; exec failures map to their exit codes; /healthz follows
the loop's beat (a stuck loop fails it, a busy one does not)."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sidecar import api
from sidecar.daemon import health as health_mod
from sidecar.daemon.health import Probes
from sidecar.errors import ExecError, exec_code, exec_reason
from sidecar.supervise import procs
from testkit import wait_for

PDEATHSIG = ("import ctypes; c = ctypes.c_int(); "
             "ctypes.CDLL(None).prctl(2, ctypes.byref(c), 0, 0, 0); print(c.value)")


def test_children_die_with_their_parent_thread() -> None:
    """Every child is started with PR_SET_PDEATHSIG = SIGKILL (read back in the child)."""
    code, out = procs.run([sys.executable, "-c", PDEATHSIG], dict(os.environ), timeout=30)
    assert code == 0 and out.strip() == "9", out


# A process that runs threads, as sidecar does, spawns a child the way the supervisor does and
# reports how Popen was called; the test then SIGKILLs it alone.
SPAWNER = textwrap.dedent("""
    import os, subprocess, threading, time
    from sidecar.supervise import procs
    calls = []
    real = subprocess.Popen.__init__
    def spy(self, args, *a, **kw):
        calls.append((list(args), kw.get("preexec_fn")))
        real(self, args, *a, **kw)
    subprocess.Popen.__init__ = spy
    for _ in range(3):
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
    child = procs.spawn(["sleep", "60"], dict(os.environ))
    argv, preexec = calls[-1]
    print(child.pid, os.path.basename(argv[0]), preexec is None, flush=True)
    time.sleep(60)
""")


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for its new parent to reap it counts)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_child_dies_with_a_sidecar_killed_alone() -> None:
    """A child started from a process that runs threads goes through setpriv, without a
    preexec_fn; SIGKILL to its parent alone (not the group) takes it along."""
    spawner = subprocess.Popen([sys.executable, "-c", SPAWNER], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert spawner.stdout is not None
        pid, tool, no_preexec = spawner.stdout.readline().split()
        assert (tool, no_preexec) == ("setpriv", "True")
        assert not gone(int(pid))
        os.kill(spawner.pid, signal.SIGKILL)
        spawner.wait(10)
        wait_for(lambda: gone(int(pid)), 5, what="the child to die with its parent")
    finally:
        spawner.kill()
        spawner.wait(10)


def test_a_child_whose_parent_died_before_the_signal_was_armed_does_not_run() -> None:
    """SIGKILL between fork and setpriv's prctl re-parents the child before its death signal
    is armed: the shell after setpriv sees another parent and exits instead of running the
    command (here the parent's pid is given as 1, as if re-parented to init)."""
    prefix = procs.setpriv()
    assert prefix is not None and prefix[-4:-1] == (procs.SH, "-c", procs.PARENT_CHECK)
    res = subprocess.run([*prefix[:-1], "1", "sh", "-c", "echo ran"], capture_output=True,
                         text=True, timeout=30)
    assert (res.returncode, res.stdout) == (1, "")
    res = subprocess.run([*prefix, "sh", "-c", "echo ran"], capture_output=True, text=True,
                         timeout=30)
    assert (res.returncode, res.stdout) == (0, "ran\n")


def test_without_setpriv_the_prctl_way_only_while_single_threaded() -> None:
    """No setpriv: a process with one thread still arms the death signal (a preexec_fn is safe
    there); once it runs threads, children get none, and a warning says so once."""
    script = textwrap.dedent(f"""
        import os, threading, time
        from sidecar.supervise import procs
        procs.setpriv = lambda: None
        probe = ["{sys.executable}", "-c", {PDEATHSIG!r}]
        print(procs.run(probe, dict(os.environ))[1].strip(), flush=True)
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        print(procs.run(probe, dict(os.environ))[1].strip(), flush=True)
        print(procs.run(probe, dict(os.environ))[1].strip(), flush=True)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["9", "0", "0"], res.stdout
    assert res.stderr.count("children started from now on do not die with sidecar") == 1, \
        res.stderr


def test_a_child_that_cannot_be_executed_raises_what_execve_would(tmp_path: Path) -> None:
    """Through setpriv, exec failures would only be its exit code: spawn checks first and
    raises the OSError execve would (subprocess's own, without setpriv)."""
    garbage, script, plain = tmp_path / "garbage", tmp_path / "script", tmp_path / "plain"
    garbage.write_bytes(b"\x00\x01 not a program\n")
    script.write_text("#!/nonexistent/interpreter\n")
    plain.write_text("echo\n")
    garbage.chmod(0o755)
    script.chmod(0o755)
    cases = {str(garbage): errno.ENOEXEC, str(script): errno.ENOENT, str(plain): errno.EACCES,
             str(tmp_path): errno.EACCES, str(tmp_path / "nope"): errno.ENOENT,
             "no-such-command-here": errno.ENOENT}
    for argv0, want in cases.items():
        try:
            procs.spawn([argv0], dict(os.environ)).wait()
        except OSError as exc:
            assert (exc.errno, exc.filename) == (want, argv0), (argv0, exc)
        else:
            raise AssertionError(f"{argv0} was started")


def test_programs_execve_refuses_are_refused_before_the_spawn(tmp_path: Path) -> None:
    """What the kernel refuses beyond a missing file: a program whose loader (PT_INTERP) is
    missing, as a musl build on a glibc image; another machine's program; a #! line ending in
    a CR (the kernel keeps the CR in the name). A copy of a real program still runs."""
    real = Path(shutil.which("true") or "/bin/true").read_bytes()
    found = re.search(rb"/lib[^\0]*ld[^\0]*\.so[^\0]*\0", real)
    assert found is not None, "no loader path in the machine's `true`"
    copies = {"loaderless": real.replace(found.group(0), b"/nox" + found.group(0)[4:], 1),
              "foreign": real[:18] + (0xB7 if real[18:20] == b"\x3e\x00" else 0x3E
                                      ).to_bytes(2, "little") + real[20:],
              "crlf": b"#!/bin/sh\r\necho\n", "same": real}
    for name, data in copies.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / name).chmod(0o755)
    want = {"loaderless": errno.ENOENT, "foreign": errno.ENOEXEC, "crlf": errno.ENOENT}
    for name, code in want.items():
        with pytest.raises(OSError) as raised:
            procs.spawn([str(tmp_path / name)], dict(os.environ)).wait()
        assert raised.value.errno == code, (name, raised.value)
    assert procs.spawn([str(tmp_path / "same")], dict(os.environ)).wait() == 0


def test_children_inherit_the_database_locks(tmp_path: Path) -> None:
    """An fd given to hold_in_children is open in every child (the same open file, whose
    flock then stays held while the child lives)."""
    lock = open(tmp_path / ".app.db.sidecar.lock", "a+b")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    procs.hold_in_children([lock.fileno()])
    try:
        probe = f"import os; print(os.readlink('/proc/self/fd/{lock.fileno()}'))"
        code, out = procs.run([sys.executable, "-c", probe], dict(os.environ), timeout=30)
    finally:
        procs.hold_in_children([])
        lock.close()
    assert code == 0 and out.strip() == str(tmp_path / ".app.db.sidecar.lock"), out


def test_exec_failures_map_to_shell_codes(tmp_path: Path) -> None:
    """ENOENT is 127, anything else 126; ENOENT for an existing file names its #! line."""
    script = tmp_path / "s"
    script.write_text("#!/nonexistent\n")
    missing = FileNotFoundError(2, "No such file or directory", str(tmp_path / "nope"))
    assert exec_code(missing) == 127
    assert exec_code(PermissionError(13, "Permission denied")) == 126
    assert exec_code(OSError(8, "Exec format error")) == 126
    assert exec_reason(missing, str(tmp_path / "nope")) == "not found"
    assert "#! line" in exec_reason(FileNotFoundError(2, "x", str(script)), str(script))
    err = ExecError("the app", "/bin/x", PermissionError(13, "Permission denied"), 126)
    assert err.exit_code == 126 and err.message == "cannot start the app: /bin/x: Permission denied"


class FakeSupervisor:
    def __init__(self, phase: str, silent: float):
        self.phase = phase
        self.beat_at = time.monotonic() - silent

    def silent_for(self) -> float:
        return time.monotonic() - self.beat_at


def health(phase: str, silent: float) -> int:
    rt = SimpleNamespace(supervisor=FakeSupervisor(phase, silent))
    try:
        Probes(rt).healthz()  # type: ignore[arg-type]
    except api.Unavailable:
        return 503
    return 200


def test_healthz_follows_the_loop_beat() -> None:
    """Beating loop: 200 (also when busy for a while); no beat for the stall limit: 503;
    during start-up (restore, migrations before the loop): 200."""
    assert health("running", 0.1) == 200
    assert health("running", health_mod.LOOP_STALL_LIMIT - 5) == 200
    assert health("running", health_mod.LOOP_STALL_LIMIT + 1) == 503
    assert health("starting", 10_000) == 200
