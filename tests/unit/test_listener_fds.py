"""The listener against the process's file-descriptor limit: a listener whose accept fails
(EMFILE) rests instead of spinning on a socket that stays readable, says so once, and accepts
again when descriptors come back; the overflow held past the cap is bounded by the limit. The
real limit is set (RLIMIT_NOFILE) in a server process of its own, flooded over real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sidecar import api
from sidecar.daemon import http
from sidecar.daemon.router import HTTP, Route, Router

ROOT = Path(__file__).resolve().parents[2]

SERVER = textwrap.dedent("""
    import os, resource, sys, time
    from sidecar import api, log
    from sidecar.daemon import http
    from sidecar.daemon.router import HTTP, Route, Router
    log.setup("json")
    table = [Route("GET", "/healthz", api.StatusRequest, lambda r: {"ok": True},
                   admin=False, public=True)]
    server = http.Server(Router(table, None))
    sock = http.listen_tcp("127.0.0.1", 0)
    when, room = sys.argv[1], int(sys.argv[2])
    def limit():
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + room, hard))
    if when == "before":
        limit()
    server.add(sock, HTTP, 4, "test")
    if when == "after":
        limit()
    server.start()
    print(sock.getsockname()[1], getattr(server.listeners[0], "overflow", -1), flush=True)
    time.sleep(60)
""")


class _Server:
    """The server process; its stderr is read as it comes (a log it could not write would
    stop it, and hide a spin)."""

    def __init__(self, when: str, room: int):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, when, str(room)], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self.lines.extend, args=(self.proc.stderr,),
                                        daemon=True)
        self._reader.start()
        port, overflow = self.proc.stdout.readline().split()
        self.port, self.overflow = int(port), int(overflow)

    def stop(self) -> list[dict[str, object]]:
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        return [json.loads(line) for line in self.lines if line.startswith("{")]


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _healthz(port: int, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_out_of_descriptors_the_listener_rests_says_so_once_and_comes_back() -> None:
    """Out of descriptors with 30 connections waiting to be accepted: the server uses next to
    no CPU for a second (it spun at a full core before), logs one "cannot accept" with the
    error, and answers /healthz once the crowd hangs up."""
    server = _Server("after", 6)
    proc, port = server.proc, server.port
    crowd: list[socket.socket] = []
    try:
        crowd = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(30)]
        time.sleep(0.3)  # EMFILE reached
        before = _cpu(proc.pid)
        time.sleep(1.0)
        spent = _cpu(proc.pid) - before
        assert spent < 0.3, f"the listener used {spent:.2f} CPU-s in 1 s while out of descriptors"
        for s in crowd:
            s.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                out = _healthz(port, timeout=2)
            except OSError:
                out = b""
            if out.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert out.startswith(b"HTTP/1.1 200"), out
    finally:
        for s in crowd:
            s.close()
        events = server.stop()
    said = [e for e in events if e.get("message") == "cannot accept"]
    assert len(said) == 1, said
    assert "Too many open files" in str(said[0]["error"])
    assert said[0]["listener"] == "test" and said[0]["retry_in_seconds"] == 0.005


def test_the_overflow_is_bounded_by_the_descriptor_limit() -> None:
    """With a soft limit of (open + 60) descriptors and a cap of 4, a listener may hold at
    most a quarter of the limit: more silent connections than the limit itself leave it
    holding no more than the cap and that overflow, never out of descriptors, and /healthz
    is still answered. (Held to the full OVERFLOW instead, it ran out of descriptors.)"""
    server = _Server("before", 60)
    proc, port, overflow = server.proc, server.port, server.overflow
    crowd: list[socket.socket] = []
    try:
        limit = int(next(line for line in Path(f"/proc/{proc.pid}/limits").read_text()
                         .splitlines() if line.startswith("Max open files")).split()[3])
        assert overflow == limit // 4 - 4 < http.OVERFLOW
        idle = len(os.listdir(f"/proc/{proc.pid}/fd"))
        most = idle
        for _ in range(limit + 10):
            with contextlib.suppress(OSError):  # refused or reset past the overflow: fine
                crowd.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            most = max(most, len(os.listdir(f"/proc/{proc.pid}/fd")))
        time.sleep(0.1)
        most = max(most, len(os.listdir(f"/proc/{proc.pid}/fd")))
        assert most <= idle + 4 + overflow + 2, (most, idle, overflow)  # (+2: a reply's)
        assert _healthz(port).startswith(b"HTTP/1.1 200")
    finally:
        for s in crowd:
            s.close()
        events = server.stop()
    assert not [e for e in events if e.get("message") == "cannot accept"]


class _Failing:
    """A listening socket whose accept fails with EMFILE while `failing` is set."""

    def __init__(self, sock: socket.socket):
        self.sock, self.failing, self.calls = sock, True, 0

    def accept(self) -> tuple[socket.socket, object]:
        self.calls += 1
        if self.failing:
            raise OSError(24, "Too many open files")
        return self.sock.accept()

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def test_accept_failing_in_a_row_doubles_the_rest_up_to_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Failures in a row rest the listener 5, 10, 20... ms (at most 1 s): 0.7 s of them is a
    handful of accepts, not a spin; the first success ends the rest."""
    server = http.Server(Router([Route("GET", "/healthz", api.StatusRequest,
                                       lambda r: {"ok": True}, admin=False, public=True)], None))
    real = http.listen_tcp("127.0.0.1", 0)
    port = real.getsockname()[1]
    failing = _Failing(real)
    server.add(failing, HTTP, 4, "test")  # type: ignore[arg-type]
    server.start()
    waiting = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        time.sleep(0.7)
        lst = server.listeners[0]
        # 5+10+20+40+80+160+320 ms = 0.635 s: 8 accepts at most (fewer on a slow machine)
        assert 3 <= failing.calls <= 9, failing.calls
        assert lst.rest >= 0.02 and lst.resume_at
        failing.failing = False
        waiting.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        waiting.settimeout(5)
        assert waiting.recv(65536).startswith(b"HTTP/1.1 200")
        assert lst.rest == 0.0
    finally:
        waiting.close()
        server.stop()
