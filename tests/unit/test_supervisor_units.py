"""Fast checks of the pieces behind crash safety and liveness: children really carry
PR_SET_PDEATHSIG and the inherited lock fds, exec failures map to their exit codes, and
/healthz follows the loop's beat (a stuck loop fails it, a busy one does not)."""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from sidecar import api
from sidecar.daemon import health as health_mod
from sidecar.daemon.health import Probes
from sidecar.errors import ExecError, exec_code, exec_reason
from sidecar.supervise import procs

PDEATHSIG = ("import ctypes; c = ctypes.c_int(); "
             "ctypes.CDLL(None).prctl(2, ctypes.byref(c), 0, 0, 0); print(c.value)")


def test_children_die_with_their_parent_thread() -> None:
    """Every child is started with PR_SET_PDEATHSIG = SIGKILL (read back in the child)."""
    code, out = procs.run([sys.executable, "-c", PDEATHSIG], dict(os.environ), timeout=30)
    assert code == 0 and out.strip() == "9", out


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
