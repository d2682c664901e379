"""The parts the benchmarks share: a real S3 server, the two entrypoints under test (sidecar and
the plain `run.sh`), processes with time-stamped output, and reading the bucket back."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

# The helpers the tests use too (testkit/ at the repository root): one S3 server, one free_port.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from testkit import S3Server, descendants, free_port, wait_for
from testkit import tool as _tool
from testkit.backup import REPLICA_CONFIG, replicated

BIN = Path(sys.executable).parent
KEY = "bench-key"
# No `$` here: the plain run.sh lets Litestream expand its config, which would mangle it.
SECRET = "bench-secret-0123456789abcdef"
PREFIX = "app.db"



def compile_sidecar() -> None:
    """Write sidecar's bytecode before anything is timed, as installing the wheel does: the
    checkout is an editable install, and with PYTHONDONTWRITEBYTECODE set (as in CI) every
    launch would otherwise compile sidecar's modules from source (~0.07 s here) where an
    installed sidecar loads them from .pyc."""
    pkg = Path(__file__).resolve().parents[1] / "sidecar"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pkg)], check=True,
                   stdout=subprocess.DEVNULL)


# The plain entrypoint users already have; the thing sidecar replaces.
RUN_SH = textwrap.dedent("""\
    #!/bin/sh
    set -e
    litestream restore -config "$LS_CONFIG" -if-db-not-exists -if-replica-exists "$DB"
    exec litestream replicate -config "$LS_CONFIG" -exec "$APP"
""")

# The config users already have for it, replicas syncing every second.
PLAIN_CONFIG = REPLICA_CONFIG.replace("{sync}", "1s")

# Writes a row every WRITE_INTERVAL s and prints it after the commit; on SIGTERM writes a
# final row and exits EXIT_ON_TERM. WRITE_INTERVAL=0 means it never writes (idle).
WRITER = textwrap.dedent("""\
    import os, signal, sqlite3, sys, time
    print("app up", flush=True)
    db = sqlite3.connect(os.environ["DB"], isolation_level=None, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("CREATE TABLE IF NOT EXISTS rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
    code = int(os.environ.get("EXIT_ON_TERM", "0"))
    def term(signum, frame):
        t = time.time()
        db.execute("INSERT INTO rows(v, at) VALUES (?, ?)", ("final", t))
        print(f"wrote final {t}", flush=True)
        sys.exit(code)
    signal.signal(signal.SIGTERM, term)
    # 0: idle; below 0: as fast as it commits, printing nothing
    interval = float(os.environ.get("WRITE_INTERVAL", "0.01"))
    n = 0
    due = time.monotonic()
    while True:
        if interval > 0:
            t = time.time()
            db.execute("INSERT INTO rows(v, at) VALUES (?, ?)", (f"r{n}", t))
            print(f"wrote r{n} {t}", flush=True)
            n += 1
            # On a schedule, not a sleep after each commit: 0.01 s is 100 rows/s even when
            # a commit takes a few ms (a sleep after each made ~70 on a loaded machine).
            due = max(due + interval, time.monotonic() - 1.0)
            time.sleep(max(0.0, due - time.monotonic()))
        elif interval < 0:
            db.execute("INSERT INTO rows(v, at) VALUES (?, ?)", (f"r{n}", time.time()))
            n += 1
        else:
            time.sleep(1)
""")

# Prints its first line and waits: the app for start-up timings.
FIRST_LINE = 'import time\nprint("app up", flush=True)\ntime.sleep(600)\n'


def tool(name: str) -> str:
    try:
        return _tool(name)
    except AssertionError as exc:
        raise SystemExit(str(exc)) from None


# How long the bench's S3 server trusts a directory listing: next to nothing, since buckets
# are copied in behind its back. Not 0: with `--dir-cache-time 0s`, a directory that holds a
# file written through the server (an upload) makes rclone's VFS re-arm its cache-cleanup
# timer at 0 forever (vfs/dir.go ForgetAll: Reset(DirCacheTime * 2)), and the server spins at
# up to 200 % CPU from the first upload on, with no client (scratch check: 198 % after five
# PUTs with 0s, 0 % with 1ms). That spin ran beside the bench's timed runs, and was the "hang"
# that slowed seeds to a crawl.
DIR_CACHE = "1ms"


class S3(S3Server):
    """The tests' rclone S3 server with the bench's credentials; it trusts a directory
    listing for DIR_CACHE only and its output is discarded. Its restart() is used between
    rounds (it was seen spinning at 150% CPU and answering nothing after the 1 GB rounds,
    with a directory cache of 0s: see DIR_CACHE)."""

    def __init__(self, root: Path):
        super().__init__(root, key=KEY, secret=SECRET, dir_cache=DIR_CACHE, log=None)

    def stop(self, timeout: float = 30) -> None:
        super().stop(timeout)

    def bucket(self, copy_of: str | None = None) -> str:
        name = f"b-{uuid.uuid4().hex[:10]}"
        if copy_of:
            shutil.copytree(self.root / copy_of, self.root / name)
        else:
            (self.root / name).mkdir()
        return name

    def drop(self, bucket: str) -> None:
        shutil.rmtree(self.root / bucket, ignore_errors=True)

    def url(self, bucket: str) -> str:
        return (f"s3://{bucket}/{PREFIX}?endpoint={self.endpoint}&region=us-east-1"
                "&forcePathStyle=true")


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SIDECAR_", "RAILWAY_", "AWS_", "LITESTREAM_"))
           and k != "DATABASE_URL"}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["AWS_ACCESS_KEY_ID"] = KEY
    env["AWS_SECRET_ACCESS_KEY"] = SECRET
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


class Entrypoint:
    """One way to start the app: `sidecar run` or the plain run.sh."""

    name = ""

    def __init__(self, s3: S3, work: Path):
        self.s3, self.work = s3, work

    def command(self, bucket: str, db: Path, app: list[str], **env: str
                ) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError


class Sidecar(Entrypoint):
    name = "sidecar"

    def command(self, bucket: str, db: Path, app: list[str], **extra: str
                ) -> tuple[list[str], dict[str, str]]:
        env = base_env()
        env.update({
            "SIDECAR_DB_PATH": str(db), "DB": str(db),
            "SIDECAR_REPLICA_URL": f"s3://{bucket}/{PREFIX}",
            "SIDECAR_S3_ENDPOINT": self.s3.endpoint, "SIDECAR_S3_REGION": "us-east-1",
            "SIDECAR_HTTP_ADDR": f"127.0.0.1:{free_port()}",  # on, as it is by default
            "SIDECAR_MIGRATE_COMMAND": "", "SIDECAR_LOG_FORMAT": "json",
            "SIDECAR_SYNC_INTERVAL": "1s",
        })
        env.update(extra)
        return [str(BIN / "sidecar"), "run", "--", *app], env


class Plain(Entrypoint):
    name = "plain run.sh"

    def command(self, bucket: str, db: Path, app: list[str], **extra: str
                ) -> tuple[list[str], dict[str, str]]:
        script = self.work / "run.sh"
        if not script.exists():
            script.write_text(RUN_SH)
            script.chmod(0o755)
        cfg = db.parent / "litestream.yml"
        cfg.write_text(PLAIN_CONFIG.format(db=db, bucket=bucket, prefix=PREFIX,
                                           endpoint=self.s3.endpoint))
        env = base_env()
        env.update({"LS_CONFIG": str(cfg), "DB": str(db),
                    "APP": " ".join(app)})
        env.update(extra)
        return ["/bin/sh", str(script)], env


class Proc:
    """A process tree under test; its output lines are kept with the time they arrived."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        self.threads = [threading.Thread(target=self._pump, args=(s, sink), daemon=True)
                        for s, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _pump(stream: object, sink: list[tuple[float, str]]) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            sink.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_line(self, text: str, timeout: float = 600, stream: str = "out") -> float:
        """Seconds from start until a line containing `text` appeared."""
        sink = self.out if stream == "out" else self.err
        end = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < end:
            for t, line in sink[seen:]:
                if text in line:
                    return t - self.t0
            seen = len(sink)
            if self.proc.poll() is not None:
                time.sleep(0.2)
                if not any(text in line for _, line in sink):
                    raise RuntimeError(f"exited {self.proc.returncode} before {text!r}:\n"
                                       + "\n".join(line for _, line in self.err[-20:]))
            time.sleep(0.005)
        raise RuntimeError(f"no {text!r} within {timeout}s")

    def wait(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout)
        for t in self.threads:
            t.join(5)
        return code

    def descendants(self) -> list[int]:
        return descendants(self.pid)

    def kill_tree(self) -> None:
        """SIGKILL the whole tree at once, as a container runtime does (stop, then kill)."""
        pids = [self.pid, *self.descendants()]
        for pid in pids:
            _kill(pid, signal.SIGSTOP)
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        for t in self.threads:
            t.join(5)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def proc_stat(path: str) -> tuple[str, int]:
    """(comm, utime + stime in clock ticks) from a /proc `stat` file (a process's or a
    thread's)."""
    stat = Path(path).read_text()
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], int(fields[11]) + int(fields[12])


def cpu_ticks(pid: int) -> int:
    return proc_stat(f"/proc/{pid}/stat")[1]


def cpu_percent(pid: int, seconds: float) -> float | None:
    """CPU use of `pid` over the next `seconds`, % of one core; None when it is gone."""
    try:
        c0 = cpu_ticks(pid)
        time.sleep(seconds)
        return 100.0 * (cpu_ticks(pid) - c0) / os.sysconf("SC_CLK_TCK") / seconds
    except (OSError, IndexError, ValueError):
        return None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def make_db(path: Path, size_mb: int) -> None:
    """A WAL-mode database of about `size_mb` MB of incompressible rows."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        p.unlink(missing_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB)")
    con.execute("CREATE TABLE rows(id INTEGER PRIMARY KEY, v TEXT, at REAL)")
    per = 1900  # two rows to a 4 KiB page, so the file is about `size_mb`
    n = size_mb * 1024 * 1024 // 2048
    batch = 20000
    done = 0
    while done < n:
        k = min(batch, n - done)
        con.execute("BEGIN")
        con.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < ?) "
                    "INSERT INTO blobs(b) SELECT randomblob(?) FROM c", (k, per))
        con.execute("COMMIT")
        done += k
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


class VerifyError(RuntimeError):
    """A restore that came back wrong: a failure of the run, recorded as such."""


def verify(db: Path, expect_rows: int | None = None, table: str = "blobs") -> int:
    """The database at `db` passes `PRAGMA quick_check` and, when `expect_rows` is given,
    `table` holds exactly that many rows. Returns the row count; raises VerifyError."""
    if not db.exists():
        raise VerifyError(f"no database at {db}")
    try:
        con = sqlite3.connect(db, timeout=30)
        try:
            check = "; ".join(str(r[0]) for r in con.execute("PRAGMA quick_check").fetchall()[:3])
            rows = int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]) \
                if expect_rows is not None else -1
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise VerifyError(f"{db.name}: {exc}") from None
    if check != "ok":
        raise VerifyError(f"{db.name}: quick_check says {check}")
    if expect_rows is not None and rows != expect_rows:
        raise VerifyError(f"{db.name}: {rows} rows in {table}, {expect_rows} were written")
    return rows


def count_rows(db: Path, table: str = "blobs") -> int:
    con = sqlite3.connect(db)
    try:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        con.close()


def raw_restore_argv(s3: S3, bucket: str, out: Path) -> list[str]:
    """Raw `litestream restore` as a user types it: the same config file as the plain run.sh
    (and as sidecar, which also restores through a config), into `out`."""
    cfg = out.parent / "restore.yml"
    cfg.write_text(PLAIN_CONFIG.format(db=out, bucket=bucket, prefix=PREFIX,
                                       endpoint=s3.endpoint))
    return [tool("litestream"), "restore", "-config", str(cfg), str(out)]


def restore(s3: S3, bucket: str, out: Path, timeout: float = 1200) -> float:
    """Raw `litestream restore` of the bucket's latest state into `out`, timed from launch to
    exit with the bench's one clock (time.monotonic); the result passes quick_check."""
    for p in (out, out.with_name(out.name + "-wal"), out.with_name(out.name + "-shm")):
        p.unlink(missing_ok=True)
    argv = raw_restore_argv(s3, bucket, out)
    t0 = time.monotonic()
    res = subprocess.run(argv, check=False, env=base_env(), capture_output=True, text=True,
                         timeout=timeout)
    took = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(f"litestream restore exited {res.returncode}: "
                           f"{(res.stdout + res.stderr).strip()[-300:]}")
    verify(out)
    return took


def table_rows(db: Path) -> list[tuple[str, float]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [(str(v), float(at)) for v, at in con.execute("SELECT v, at FROM rows ORDER BY id")]
    except sqlite3.OperationalError:  # no table: nothing reached the bucket
        return []
    finally:
        con.close()


def seed(s3: S3, db: Path, bucket: str, timeout: float = 1200) -> None:
    """Replicate `db` into `bucket` with plain `litestream replicate` until it is all there."""

    sock = db.parent / "seed.sock"
    cfg = db.parent / "seed.yml"
    cfg.write_text(PLAIN_CONFIG.format(db=db, bucket=bucket, prefix=PREFIX,
                                       endpoint=s3.endpoint)
                   + f"socket:\n  enabled: true\n  path: {sock}\n")
    proc = subprocess.Popen([tool("litestream"), "replicate", "-config", str(cfg)],
                            env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(sock.exists, 30, interval=0.05, what=f"{sock}")
        replicated(sock, db, timeout, call_timeout=min(300.0, timeout), interval=0.5)
    finally:
        proc.terminate()
        proc.wait(120)
    for p in (sock, cfg):
        p.unlink(missing_ok=True)


def clean_dir(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
