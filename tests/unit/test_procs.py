"""The process primitives under the supervisor, with real (tiny) processes: reaping with
waitpid(-1) keeps an owned child's status for its owner, and the waker's select() returns
when a child exits (its pidfd) or when post() writes to the self-pipe, not after a poll."""

from __future__ import annotations

import os
import sys
import threading
import time

from sidecar.supervise import procs
from sidecar.supervise.child import OsProcess
from sidecar.supervise.wake import Waker


def test_reap_keeps_an_owned_childs_status_for_its_owner() -> None:
    """reap() takes every exited child; the status of one spawned here is handed to its owner
    (wait_nohang) instead of being reported as an orphan."""
    proc = procs.spawn([sys.executable, "-c", "raise SystemExit(7)"], dict(os.environ))
    deadline = time.monotonic() + 10
    orphans: list[tuple[int, int]] = []
    while time.monotonic() < deadline:
        orphans += procs.reap()
        if proc.pid in procs._exited:
            break
        time.sleep(0.01)
    assert proc.pid not in [pid for pid, _ in orphans]
    status = procs.wait_nohang(proc.pid)
    assert status is not None and procs.exit_code(status) == 7
    procs.release(proc.pid)
    proc.returncode = 7


def test_the_waker_returns_on_a_child_exit_and_on_wake() -> None:
    """select() on a child's pidfd returns as soon as it exits; wake() from another thread
    returns it too; with neither it sleeps its whole timeout."""
    waker = Waker()
    child = OsProcess([sys.executable, "-c", "import time; time.sleep(0.3)"], dict(os.environ))
    fd = child.fileno()
    assert fd is not None, "os.pidfd_open is needed (Linux 5.3+)"
    t0 = time.monotonic()
    waker.wait([fd], 30.0)
    took = time.monotonic() - t0
    assert child.poll() == 0 and took < 10, took

    threading.Timer(0.2, waker.wake).start()
    t0 = time.monotonic()
    waker.wait([], 30.0)
    assert time.monotonic() - t0 < 10

    t0 = time.monotonic()
    waker.wait([], 0.2)
    assert time.monotonic() - t0 >= 0.19
