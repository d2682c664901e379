"""Shared fixtures: a real S3 server (rclone serve s3), the real Litestream binary, and a helper
that runs `sidecar run` as a real process with tiny app scripts written into a temp dir."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar import dbfile

BIN = Path(sys.executable).parent
S3_KEY = "sidecar-test-key"
S3_SECRET = "s3-secret-$ecret-Do-Not-Leak-42"  # a `$` on purpose: must survive Litestream


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def tool(name: str) -> str:
    path = shutil.which(name) or str(BIN / name)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{name} is not installed; run ./scripts/setup.sh")
    return path


class S3Server:
    """`rclone serve s3` on 127.0.0.1 over a directory; each subfolder is a bucket."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root.parent / f"rclone-{self.port}.log"
        root.mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # Extra `rclone serve s3` flags of a variant server (e.g. virtual-hosted only).
    extra_args: tuple[str, ...] = ()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            # --etag-hash '': list without reading every object for its MD5, as S3 does
            # (and as rclone otherwise does not: seconds per listing of a large backup).
            [tool("rclone"), "serve", "s3", *self.extra_args, "--etag-hash", "",
             "--auth-key", f"{S3_KEY},{S3_SECRET}",
             "--addr", f"127.0.0.1:{self.port}", "--dir-cache-time", "1s", str(self.root)],
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
            env={**os.environ, "RCLONE_CONFIG": "/dev/null"})

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_for(up, 15, what="rclone serve s3")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket through the S3 API (the server caches its directory listings)."""
        name = name or f"b-{uuid.uuid4().hex[:10]}"
        self.client().create_bucket(Bucket=name)
        return name

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=S3_SECRET, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"},
                                          retries={"max_attempts": 1}))


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One S3 server shared by the whole run (never stopped by a test)."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "root")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[S3Server]:
    """A private S3 server a test may stop and start (outages)."""
    server = S3Server(tmp_path / "s3root")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.make_bucket()


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
    env["AWS_CA_BUNDLE"] = "/nonexistent/ca.pem"  # Litestream must never see it
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


def descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Sidecar:
    """`sidecar run` as a real process; its JSON log lines are collected as dicts."""

    def __init__(self, env: dict[str, str], app: list[str], cwd: Path,
                 argv: list[str] | None = None):
        self.env, self.app, self.cwd = env, app, cwd
        self.argv = argv or [str(BIN / "sidecar"), "run", "--", *app]
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self.stdout: list[str] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> Sidecar:
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
            if rec.get("event") == name:
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


@pytest.fixture
def sidecars() -> Iterator[Callable[..., Sidecar]]:
    """Start sidecars; every one still running at the end of the test is killed."""
    started: list[Sidecar] = []

    def make(env: dict[str, str], app: list[str], cwd: Path, **kw: Any) -> Sidecar:
        sc = Sidecar(env, app, cwd, **kw).start()
        started.append(sc)
        return sc

    yield make
    for sc in started:
        sc.kill()


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


def rows(db: Path, where: str = "") -> list[str]:
    con = dbfile.connect_ro(Path(db))
    try:
        return [r[0] for r in con.execute(f"SELECT v FROM rows {where} ORDER BY id")]
    finally:
        con.close()


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
