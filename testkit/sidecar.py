"""`sidecar` as a real process: a clean environment, tiny app scripts, the `Sidecar` runner
that collects its JSON log lines, one-shot commands, and reading a bucket back with plain
`litestream restore`."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from sidecar.bucket.trust import system_roots
from testkit.poll import wait_for
from testkit.procs import descendants
from testkit.s3 import S3_KEY, S3_SECRET, S3Server

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """The path of a command scripts/setup.sh installs; AssertionError when it is missing."""
    path = shutil.which(name) or str(BIN / name)
    if not os.access(path, os.X_OK):
        raise AssertionError(f"{name} is not installed; run ./scripts/setup.sh")
    return path


def s3_env(server: S3Server, bucket: str, prefix: str = "app.db") -> dict[str, str]:
    return {
        "SIDECAR_REPLICA_URL": f"s3://{bucket}/{prefix}",
        "SIDECAR_S3_ENDPOINT": server.endpoint,
        "SIDECAR_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
    }


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment for a sidecar under test: no inherited SIDECAR_/Railway settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIDECAR_", "RAILWAY_", "AWS_", "LITESTREAM_"))
           and k not in ("DATABASE_URL", "BUCKET", "ENDPOINT", "REGION", "ACCESS_KEY_ID",
                         "SECRET_ACCESS_KEY", "PYTEST_CURRENT_TEST")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["SIDECAR_DB_PATH"] = str(tmp_path / "data" / "app.db")
    env["SIDECAR_HTTP_ADDR"] = "off"
    env["SIDECAR_LOG_FORMAT"] = "json"
    env["SIDECAR_MIGRATE_COMMAND"] = ""
    env["SIDECAR_REPLICA_TIMEOUT"] = "5s"
    env["SIDECAR_APP_STOP_TIMEOUT"] = "5s"
    env["SIDECAR_LITESTREAM_STOP_TIMEOUT"] = "10s"
    # A real CA bundle (config refuses one it cannot read), which Litestream must never see:
    # it cannot start with AWS_CA_BUNDLE set (sidecar gives it SSL_CERT_FILE instead).
    env["AWS_CA_BUNDLE"] = system_roots() or ""
    env.update(extra)
    (tmp_path / "data").mkdir(exist_ok=True)
    return env


# An app that writes a row every `interval` seconds into table `rows`; on SIGTERM it writes a
# final row and exits with EXIT_ON_TERM (default 0). Rows it wrote are logged to its stdout.
WRITER_APP = textwrap.dedent("""
    import os, signal, sqlite3, sys, time
    db = sqlite3.connect(os.environ["SIDECAR_DB_PATH"], isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
    tag = os.environ.get("APP_TAG", "run")
    code = int(os.environ.get("EXIT_ON_TERM", "0"))
    def term(signum, frame):
        db.execute("INSERT INTO rows(v, at) VALUES (?, ?)", (tag + "-final", time.time()))
        print("final row written", flush=True)
        sys.exit(code)
    signal.signal(signal.SIGTERM, term)
    print("app up", flush=True)
    interval = float(os.environ.get("WRITE_INTERVAL", "0.1"))
    limit = int(os.environ.get("WRITE_LIMIT", "0"))
    n = 0
    while True:
        if not limit or n < limit:
            db.execute("INSERT INTO rows(v, at) VALUES (?, ?)", (f"{tag}-{n}", time.time()))
            print(f"wrote {tag}-{n}", flush=True)
            n += 1
        time.sleep(interval)
""")


def write_app(directory: Path, source: str = WRITER_APP, name: str = "app.py") -> list[str]:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return [sys.executable, str(path)]


class Sidecar:
    """`sidecar run` as a real process; its JSON log lines are collected as dicts.

    `observers` are called with each Sidecar as it starts: tests/e2e/faultkit.py's secret scan
    adds one for the length of a test (a fixture), instead of patching this class."""

    observers: ClassVar[list[Callable[[Sidecar], None]]] = []

    def __init__(self, env: dict[str, str], app: list[str], cwd: Path,
                 argv: list[str] | None = None):
        self.env, self.app, self.cwd = env, app, cwd
        self.argv = argv or [str(BIN / "sidecar"), "run", "--", *app]
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self.stdout: list[str] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> Sidecar:
        for observe in list(self.observers):
            observe(self)
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.lines)):
            t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        for raw in stream:
            sink.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    def event(self, name: str) -> dict[str, Any] | None:
        for rec in self.events:
            if rec.get("message") == name:
                return rec
        return None

    def wait_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if self.proc and self.proc.poll() is not None and not self.event(name):
                time.sleep(0.2)
                if not self.event(name):
                    raise AssertionError(f"sidecar exited {self.proc.returncode} before "
                                         f"{name!r}:\n" + self.output())
            return self.event(name)

        return wait_for(found, timeout, what=f"event {name!r}")

    def wait_stdout(self, text: str, timeout: float = 30.0) -> None:
        wait_for(lambda: any(text in line for line in self.stdout), timeout,
                 what=f"app output {text!r}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        if self._is_writer_app() and self.proc.poll() is None:
            # Signal only once the writer has installed its SIGTERM handler, or a fast test
            # races Python's start-up and sees 143 instead of the app's own exit code.
            with contextlib.suppress(AssertionError):
                self.wait_stdout("app up", timeout=30)
        os.kill(self.proc.pid, sig)

    def _is_writer_app(self) -> bool:
        script = Path(self.app[-1]) if self.app else None
        try:
            return bool(script and script.suffix == ".py" and
                        'print("app up"' in script.read_text())
        except OSError:
            return False

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"sidecar did not exit within {timeout}s:\n{self.output()}") from None
        for t in self._threads:
            t.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL the sidecar and everything under it: the app and Litestream run in process
        groups of their own, so killing the sidecar's group alone would orphan them."""
        if self.proc and self.proc.poll() is None:
            family = descendants(self.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            for pid in family:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait()

    def output(self) -> str:
        return "\n".join(self.lines[-60:]) + "\n--- app stdout ---\n" + "\n".join(self.stdout[-20:])


def run_sidecar(args: list[str], env: dict[str, str], cwd: Path,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "sidecar"), *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def side_restore(env: dict[str, str], out: Path, timestamp: str | None = None) -> Path:
    """Restore the bucket's latest state into `out` with plain `litestream restore`, the way an
    operator would check a backup without sidecar."""
    url = env["SIDECAR_REPLICA_URL"]
    argv = [tool("litestream"), "restore", "-o", str(out)]
    if timestamp:
        argv += ["-timestamp", timestamp]
    if url.startswith("s3://"):
        argv.append(f"{url}?endpoint={env['SIDECAR_S3_ENDPOINT']}&region=us-east-1"
                    "&forcePathStyle=true")
    else:
        argv.append(url)
    lenv = {k: v for k, v in env.items() if k != "AWS_CA_BUNDLE"}
    lenv["AWS_EC2_METADATA_DISABLED"] = "true"
    res = subprocess.run(argv, env=lenv, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def seed_bucket(env: dict[str, str], tmp_path: Path, values: list[str]) -> None:
    """Put a database holding `values` into the replica with a real sidecar run."""
    seed = tmp_path / "seed.py"
    seed.write_text(textwrap.dedent(f"""
        import os, sqlite3
        db = sqlite3.connect(os.environ["SIDECAR_DB_PATH"], isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
        for v in {values!r}:
            db.execute("INSERT INTO rows(v, at) VALUES (?, 0)", (v,))
    """))
    res = subprocess.run([str(BIN / "sidecar"), "run", "--", sys.executable, str(seed)],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
