"""Helpers shared by the fault suite (tests/e2e/test_faults_*.py).

Every sidecar a fault test starts, every `sidecar` command it runs and every HTTP response it
reads is recorded here; the `no_secret_leaks` fixture (used by every fault test module) scans
what its test recorded, plus every file the test left under its tmp_path, for the S3 secret and
the admin token. So the whole fault suite is a secret scan, not one test.
"""

from __future__ import annotations

import http.client as httplib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit import BIN, S3_SECRET, Sidecar, base_env, free_port, metrics, rows, side_restore

ADMIN_TOKEN = "admin-Tok3n-$-never-in-logs-7a1c9e"
SECRETS = (S3_SECRET, ADMIN_TOKEN)

# (where, text) for everything the fault suite saw; scanned per test by no_secret_leaks.
RECORDED: list[tuple[str, str]] = []


def record(where: str, text: str) -> str:
    RECORDED.append((where, text))
    return text


def fault_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """base_env with the admin token set and the HTTP listener on a free loopback port."""
    env = base_env(tmp_path, SIDECAR_ADMIN_TOKEN=ADMIN_TOKEN,
                   SIDECAR_HTTP_ADDR=f"127.0.0.1:{free_port()}", SIDECAR_VERIFY_SCHEDULE="")
    env.update(extra)
    return env


def http_port(env: dict[str, str]) -> int:
    return int(env["SIDECAR_HTTP_ADDR"].rsplit(":", 1)[1])


def request(env: dict[str, str], method: str, path: str, token: str | None = None,
         timeout: float = 10) -> tuple[int, str]:
    """One request to the sidecar's listener; the body is recorded for the secret scan.
    A GET that times out on a loaded machine is sent once more: what these tests check is
    what the answers contain, not how fast they come (a POST is never repeated)."""
    try:
        return _request(env, method, path, token, timeout)
    except TimeoutError:
        if method != "GET":
            raise
        return _request(env, method, path, token, timeout)


def _request(env: dict[str, str], method: str, path: str, token: str | None,
             timeout: float) -> tuple[int, str]:
    conn = httplib.HTTPConnection("127.0.0.1", http_port(env), timeout=timeout)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
        record(f"HTTP {method} {path} -> {resp.status}",
               body + "\n" + "\n".join(f"{k}: {v}" for k, v in resp.getheaders()))
        return resp.status, body
    finally:
        conn.close()


def metric(env: dict[str, str], name: str, **labels: str) -> float | None:
    """The value of one series from GET /metrics, or None when it is absent."""
    status, body = request(env, "GET", "/metrics")
    assert status == 200, body[:500]
    return metrics.value(body, name, **labels)


def run_cmd(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
    """`sidecar ARGS` to completion; its output is recorded for the scan."""
    res = subprocess.run([str(BIN / "sidecar"), *args], env=env, cwd=cwd, capture_output=True,
                         text=True, timeout=timeout, check=False)
    record(f"sidecar {' '.join(args[:2])}", res.stdout + "\n" + res.stderr)
    return res


def bucket_rows(env: dict[str, str], out: Path) -> list[str]:
    """Rows in a plain `litestream restore` of the bucket; [] while it holds no backup yet."""
    for p in (out, out.with_name(out.name + "-wal"), out.with_name(out.name + "-shm")):
        p.unlink(missing_ok=True)  # litestream restore will not overwrite
    try:
        return rows(side_restore(env, out))
    except AssertionError:
        return []


def logged_rows(lines: list[str]) -> list[str]:
    """Rows the WRITER_APP says it committed ("wrote X" lines), plus its final row."""
    out = [ln.split(" ", 1)[1] for ln in lines if ln.startswith("wrote ")]
    return out


def events(sc: Any, name: str) -> list[dict[str, Any]]:
    return [e for e in sc.events if e.get("message") == name]


def _scan_files(root: Path) -> list[str]:
    hits = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                if not p.is_file() or p.stat().st_size > 8 * 1024 * 1024:
                    continue
                data = p.read_bytes()
            except OSError:
                continue
            hits += [f"{p} holds {'the S3 secret' if s == S3_SECRET else 'the admin token'}"
                     for s in SECRETS if s.encode() in data]
    return hits


class SecretScan:
    """Everything produced from its creation to stop(): the log lines and app output of each
    sidecar started meanwhile, what was recorded here (command output, HTTP answers), and the
    files under `root`. hits() names each place that holds the S3 secret or the admin token;
    `lines` and `records` say how much it read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Sidecar] = []
        self.first_record = len(RECORDED)
        self.lines = self.records = 0
        Sidecar.observers.append(self.started.append)

    def stop(self) -> None:
        Sidecar.observers.remove(self.started.append)

    def hits(self) -> list[str]:
        hits = []
        for sc in self.started:
            for where, lines in (("sidecar log", sc.lines), ("app output", sc.stdout)):
                for line in list(lines):
                    for s in SECRETS:
                        if s in line:
                            hits.append(f"{where}: {line[:200]}")
        recorded = RECORDED[self.first_record:]
        for where, text in recorded:
            for s in SECRETS:
                if s in text:
                    hits.append(f"{where}: ...{text[max(0, text.find(s) - 100):][:200]}")
        hits += _scan_files(self.root)
        self.lines = sum(len(sc.lines) + len(sc.stdout) for sc in self.started)
        self.records = len(recorded)
        return hits


@pytest.fixture
def no_secret_leaks(tmp_path: Path) -> Iterator[None]:
    """After the test: no log line, app output, command output, HTTP response or file the test
    produced holds the S3 secret or the admin token."""
    scan = SecretScan(tmp_path)
    try:
        yield
    finally:
        scan.stop()
    hits = scan.hits()
    assert not hits, "secret leaked:\n" + "\n".join(hits[:20])


def dump(sc: Any) -> str:
    return json.dumps([e.get("message") for e in sc.events])
