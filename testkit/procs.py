"""Process trees, read from /proc."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

from testkit.http import get


def parents() -> dict[int, int]:
    """pid -> parent pid for every process visible in /proc."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                out[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(root: int) -> list[int]:
    """Every process below `root`."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def wait_serving(proc: subprocess.Popen[bytes], url: str, ok: Callable[[int, bytes], bool],
                 timeout: float, what: str) -> None:
    """Poll `url` until `ok(status, body)`; fail naming `what` (with the end of its stderr,
    when piped) if `proc` exits first or `timeout` s pass. The process is killed on failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = get(url, timeout=1)
            if resp.status < 400 and ok(resp.status, resp.body):
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise AssertionError(f"{what} did not start: {err}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# Python source: leaves one orphaned grandchild that exits, waits, then prints
# `zombies: N pid1: NAME` (zombies among every process it can see, and the name of PID 1) and
# exits with its first argument (default 0). Run as a PID namespace's app: N is 0 when PID 1
# reaps orphans, 1 when it does not.
ORPHAN_SCRIPT = """\
import os, subprocess, sys, time
subprocess.run(["sh", "-c", "sleep 0.5 & exit 0"])
time.sleep(2.0)
zombies = 0
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{pid}/stat") as f:
                zombies += f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            pass
print("zombies:", zombies, "pid1:", open("/proc/1/comm").read().strip(), flush=True)
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""
