"""The HTTP listener under hostile load, against the real daemon: a few hundred slow
unauthenticated clients (large declared bodies trickled a byte at a time, headers trickled a line
at a time, sockets that send nothing) cannot grow its memory or threads, /healthz keeps answering
within a second, and the log holds no traceback; malformed requests get one clear answer."""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from testkit import base_env, free_port, wait_for, write_app
from testkit.live import IDLE_APP

pytestmark = pytest.mark.slow
TOKEN = "t0ken-for-the-admin-endpoints"
CLIENTS = 300


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    return out


def healthz(port: int) -> tuple[int | str, float]:
    """(status, seconds) of one GET /healthz; the error's name instead of a status when the
    connection failed."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    status: int | str
    try:
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
    except OSError as exc:
        status = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return status, time.monotonic() - t0


class Crowd:
    """CLIENTS slow clients in one thread; each reconnects shortly after it is dropped."""

    KINDS = ("body", "head", "silent")

    def __init__(self, port: int):
        self.port = port
        self.sel = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.connects = 0
        self.answers: dict[str, int] = {}
        self.thread = threading.Thread(target=self.run, daemon=True)

    def _open(self, kind: str) -> None:
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", self.port))
        self.connects += 1
        if kind == "body":
            todo = [b"POST /admin/restore HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"]
        elif kind == "head":
            todo = [b"POST /admin/verify HTTP/1.1\r\n"] + [
                f"X-Slow-{i}: {'v' * 50}\r\n".encode() for i in range(10_000)]
        else:
            todo = []
        self.sel.register(s, selectors.EVENT_READ, {"kind": kind, "todo": todo, "next": 0.0})

    def _drop(self, s: socket.socket, kind: str) -> None:
        self.sel.unregister(s)
        s.close()
        self.reopen.append((time.monotonic() + 0.2, kind))

    def run(self) -> None:
        self.reopen: list[tuple[float, str]] = []
        for i in range(CLIENTS):
            self._open(self.KINDS[i % 3])
        while not self.stop.is_set():
            now = time.monotonic()
            for key, _ev in self.sel.select(timeout=0.05):
                try:
                    data = key.fileobj.recv(4096)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 "):
                    code = data.split()[1].decode()
                    self.answers[code] = self.answers.get(code, 0) + 1
                self._drop(key.fileobj, key.data["kind"])  # type: ignore[arg-type]
            for key in list(self.sel.get_map().values()):
                d = key.data
                if now < d["next"]:
                    continue
                d["next"] = now + 0.25
                chunk = d["todo"].pop(0) if d["kind"] == "head" and d["todo"] else (
                    d["todo"].pop(0) if d["todo"] else (b"{" if d["kind"] == "body" else b""))
                if not chunk:
                    continue
                try:
                    key.fileobj.send(chunk)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.ENOTCONN,):
                        self._drop(key.fileobj, d["kind"])  # type: ignore[arg-type]
            due = [r for r in self.reopen if r[0] <= now]
            self.reopen = [r for r in self.reopen if r[0] > now]
            for _t, kind in due:
                self._open(kind)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]


def raw(port: int, data: bytes, hang_up: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if hang_up:
            return b""
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def test_hundreds_of_slow_clients_leave_memory_threads_and_healthz_alone(
        tmp_path: Path, sidecars: Any) -> None:
    """300 slow unauthenticated clients for 10 s: RSS grows < 60 MB, the thread count stays
    bounded, every /healthz answers 200 within a second, no traceback is logged."""
    port = free_port()
    env = base_env(tmp_path, SIDECAR_HTTP_ADDR=f"127.0.0.1:{port}", SIDECAR_ADMIN_TOKEN=TOKEN)
    sc = sidecars(env, write_app(tmp_path, IDLE_APP, "idle.py"), tmp_path)
    sc.wait_event("app started")
    wait_for(lambda: healthz(port)[0] == 200, 10, what="http listener")
    for _ in range(20):  # warm up: every code path the crowd will take, once
        healthz(port)
        raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sc.proc is not None
    base = proc_status(sc.proc.pid)

    crowd = Crowd(port)
    crowd.thread.start()
    samples, probes = [], []
    end = time.monotonic() + 10
    while time.monotonic() < end:
        probes.append(healthz(port))
        samples.append(proc_status(sc.proc.pid))
        time.sleep(0.3)
    crowd.stop.set()
    crowd.thread.join(10)

    peak_rss = max(s["VmRSS"] for s in samples)
    peak_threads = max(s["Threads"] for s in samples)
    print(f"connects {crowd.connects}, answers {crowd.answers}; RSS {base['VmRSS']} -> "
          f"{peak_rss} kB; threads {base['Threads']} -> {peak_threads}; /healthz slowest "
          f"{max(p[1] for p in probes):.3f}s of {len(probes)}")
    assert crowd.connects >= CLIENTS
    assert crowd.answers.get("401", 0) >= 50, crowd.answers  # token refused from the headers
    assert peak_rss - base["VmRSS"] < 60 * 1024, (base, peak_rss)
    assert peak_threads <= base["Threads"] + 8, (base, peak_threads)
    failing = [p for p in probes if p[0] != 200 or p[1] >= 1.0]
    assert not failing, failing
    assert sc.proc.poll() is None

    # Malformed requests: one clear answer each, no traceback; a hang-up is nothing.
    bad_length = raw(port, b"POST /admin/restore HTTP/1.1\r\nAuthorization: Bearer " +
                     TOKEN.encode() + b"\r\nContent-Length: 12abc\r\n\r\n{}")
    assert bad_length.startswith(b"HTTP/1.1 400") and b"Content-Length" in bad_length
    negative = raw(port, b"POST /admin/verify HTTP/1.1\r\nAuthorization: Bearer " +
                   TOKEN.encode() + b"\r\nContent-Length: -1\r\n\r\n")
    assert negative.startswith(b"HTTP/1.1 400")
    assert raw(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert raw(port, b"POST /admin/restore HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"tx",
               hang_up=True) == b""
    assert raw(port, b"GET /healthz HTTP/1.1\r\n", hang_up=True) == b""
    assert healthz(port)[0] == 200
    time.sleep(0.5)
    log = "\n".join(sc.lines)
    assert "Traceback" not in log and '"exception"' not in log, log[-3000:]
    for line in sc.lines:  # every line sidecar wrote to stderr is one JSON object
        assert isinstance(json.loads(line), dict), line
