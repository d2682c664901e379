"""Many databases in one directory: sidecar (the project's litestream.yml with a `dir:` entry)
against plain `litestream replicate` with the very same file, in the same run, against a real
`rclone serve s3` behind a request-counting proxy (testkit.s3proxy).

    python bench/tenants.py                                   # 10 and 100 databases
    python bench/tenants.py --sizes 10,100,1000 --idle 60 --writes 60

For each size N: N small databases (testkit.db.make_tenants: a table, three rows each). Each
entrypoint replicates them into a bucket of its own until every database is in the bucket;
then the bench samples CPU time and RSS from /proc and counts the S3 requests that cross the
proxy by method and path shape, for `--idle` seconds with nothing writing and for `--writes`
seconds while one row a second goes into each of 1% of the databases (at least one). The idle
window begins `--settle` seconds (80) after the entrypoint's launch: about a minute after it
opens a database, Litestream's first checkpoint gives every database a new TXID once, written
or not (one L0 upload each; a lone idle database replicated for 4 minutes got TXID 2 at 1:04
and no other), and an idle window over it counts that burst as idle.
sidecar's lag checks are told apart by shape (a page of the entry's prefix, `LIST tenants/`,
and a database's own prefix, `LIST tenants/tN.db/`) and cross-checked against its
`sidecar_replica_requests_total`. Then the
directory is wiped (a lost volume) and restored: sidecar's next start (launch to the app's
first line: every database restored before the app runs) against raw `litestream restore` of
each database at the same parallelism (`SIDECAR_RESTORE_PARALLELISM`, 8); every restored
database is then checked (its rows, `PRAGMA quick_check`), outside the timings.

The S3 server trusts its directory cache for a minute (`--dir-cache-time 1m`; buckets are
made through its API, so it sees every write): with the harness's 0 s it re-read the bucket's
directories on every request, and at 100 databases it spent 80-100% of a core on Litestream's
idle listings and took 445 s to take the first backups (3.7 s with the cache).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import BIN, S3, Proc, base_env, descendants, free_port, tool
from tenants_report import PARALLELISM, report, write_section

from testkit.db import make_tenants, write_tenant_config
from testkit.metrics import scrape, total
from testkit.s3proxy import RequestCounter, S3Proxy

APP = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n" \
      "print('app up', flush=True)\nwhile True:\n    time.sleep(1)\n"
# sidecar's lag checks: a page of the entry's prefix, and a database's own prefix (Litestream
# lists a level under it, `tenants/tN.db/0001/`, never the database's prefix itself)
LAG_SHAPES = ("LIST tenants/", "LIST tenants/tN.db/")


def cpu_rss(pid: int) -> tuple[float, int]:
    """(utime + stime in seconds, VmRSS in bytes) of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def backed_up(s3: S3, bucket: str) -> int:
    root = s3.root / bucket / "tenants"
    if not root.is_dir():
        return 0
    return sum(1 for d in root.iterdir() if any(d.glob("*/*.ltx")))


def wait_backed_up(s3: S3, bucket: str, n: int, proc: Proc, timeout: float) -> float:
    t0 = time.monotonic()
    while backed_up(s3, bucket) < n:
        if proc.proc.poll() is not None:
            raise RuntimeError("exited early:\n" + "\n".join(x for _, x in proc.err[-20:]))
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"only {backed_up(s3, bucket)} of {n} backed up")
        time.sleep(0.5)
    return time.monotonic() - t0


def litestream_env() -> dict[str, str]:
    return {k: v for k, v in base_env().items() if k != "AWS_CA_BUNDLE"}


def sidecar_env(directory: Path, config: Path, http_port: int) -> dict[str, str]:
    env = base_env()
    env.update({"LITESTREAM_CONFIG": str(config), "SIDECAR_HTTP_ADDR": f"127.0.0.1:{http_port}",
                "SIDECAR_MIGRATE_COMMAND": "", "SIDECAR_LOG_FORMAT": "json",
                "SIDECAR_VERIFY_SCHEDULE": "", "SIDECAR_RESTORE_PARALLELISM": str(PARALLELISM)})
    return env


def own_requests(port: int) -> float:
    return total(scrape(f"http://127.0.0.1:{port}", timeout=10), "sidecar_replica_requests_total")


class Writer:
    """One row a second into each of `names` (1% of the directory) while running."""

    def __init__(self, directory: Path, names: list[str]):
        self.directory, self.names = directory, names
        self.stop = threading.Event()
        self.rows = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        cons = [sqlite3.connect(self.directory / n, isolation_level=None, timeout=10)
                for n in self.names]
        while not self.stop.wait(1.0):
            for con in cons:
                con.execute("INSERT INTO rows(v, at) VALUES ('written', ?)", (time.time(),))
                self.rows += 1
        for con in cons:
            con.close()

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def window(counter: RequestCounter, pids: dict[str, int], seconds: float, rclone: int,
           own: callable | None = None) -> dict[str, object]:
    """CPU %, peak RSS, S3 requests/min (all, by shape, sidecar's lag listing) over a window."""
    before = {k: cpu_rss(p)[0] for k, p in pids.items()}
    rclone0, me0 = cpu_rss(rclone)[0], sum(os.times()[:2])
    shapes0 = counter.snapshot()
    own0 = own() if own else 0.0
    t0 = time.monotonic()
    peak = {k: 0 for k in pids}
    while time.monotonic() - t0 < seconds:
        for k, p in pids.items():
            peak[k] = max(peak[k], cpu_rss(p)[1])
        time.sleep(1)
    el = time.monotonic() - t0
    shapes = counter.snapshot() - shapes0
    total = sum(shapes.values())
    out: dict[str, object] = {
        "s3_per_min": total * 60 / el,
        "lag_per_min": sum(shapes[k] for k in LAG_SHAPES) * 60 / el,
        "shapes": {k: round(v * 60 / el, 1) for k, v in shapes.most_common()},
        "rclone_cpu_pct": (cpu_rss(rclone)[0] - rclone0) * 100 / el,
        "bench_cpu_pct": (sum(os.times()[:2]) - me0) * 100 / el}
    if own:
        out["metric_lag_per_min"] = (own() - own0) * 60 / el
    for k, p in pids.items():
        out[f"{k}_cpu_pct"] = (cpu_rss(p)[0] - before[k]) * 100 / el
        out[f"{k}_rss_mb"] = peak[k] / 1e6
    return out


def stop(proc: Proc) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill_tree()


def check_restored(directory: Path, want: dict[str, list[str]]) -> None:
    """Every database back with its rows (the seed's, then any the writer added) and a clean
    quick_check; nothing else in the directory."""
    got = sorted(p.name for p in directory.glob("*.db"))
    if got != sorted(want):
        raise RuntimeError(f"restored {len(got)} databases, want {len(want)}")
    for name, values in want.items():
        con = sqlite3.connect(f"file:{directory / name}?mode=ro", uri=True)
        try:
            if con.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise RuntimeError(f"{name}: quick_check failed")
            rows = [r[0] for r in con.execute("SELECT v FROM rows ORDER BY id")]
        finally:
            con.close()
        if rows[:len(values)] != values or any(v != "written" for v in rows[len(values):]):
            raise RuntimeError(f"{name}: rows differ from what was written")


def raw_restore(directory: Path, bucket: str, endpoint: str, names: list[str]) -> float:
    env = litestream_env()

    def one(name: str) -> None:
        url = (f"s3://{bucket}/tenants/{name}?endpoint={endpoint}&region=us-east-1"
               "&forcePathStyle=true")
        res = subprocess.run([tool("litestream"), "restore", "-o", str(directory / name), url],
                             env=env, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(res.stderr[-500:])

    directory.mkdir(parents=True)
    t0 = time.monotonic()
    with ThreadPoolExecutor(PARALLELISM) as pool:
        list(pool.map(one, names))
    return time.monotonic() - t0


def measure(prefix: str, row: dict[str, object], counter: RequestCounter, pids: dict[str, int],
            directory: Path, n: int, idle: float, writes: float, rclone: int,
            own: callable | None = None, started: float = 0.0, settle: float = 0.0) -> int:
    """The idle window, then the write window; returns the rows written. The idle window
    begins `settle` seconds after the entrypoint's launch (`started`, monotonic), at least 5 s
    from now: about a minute after it opens a database, Litestream's first checkpoint gives
    every database a new TXID once, written or not, and uploads it."""
    time.sleep(max(5.0, started + settle - time.monotonic()))
    row[f"{prefix}_idle_from_s"] = time.monotonic() - started
    w = window(counter, pids, idle, rclone, own)
    row.update({f"{prefix}_idle_{k}": v for k, v in w.items()})
    names = [f"t{i:04d}.db" for i in range(0, n, 100)]  # 1%, at least one
    with Writer(directory, names) as wr:
        w = window(counter, pids, writes, rclone, own)
    row.update({f"{prefix}_write_{k}": v for k, v in w.items()})
    row[f"{prefix}_written_dbs"] = len(names)
    return wr.rows


def run_size(n: int, s3: S3, counter: RequestCounter, proxy: S3Proxy, work: Path, idle: float,
             writes: float, settle: float) -> dict[str, object]:
    row: dict[str, object] = {"n": n}
    rclone = s3.proc.pid  # type: ignore[union-attr]
    # -- plain litestream replicate
    plain_dir = work / f"plain-{n}" / "tenants"
    make_tenants(plain_dir, n)
    b_plain = s3.make_bucket()
    cfg = work / f"plain-{n}.yml"
    write_tenant_config(cfg, plain_dir, b_plain, proxy.endpoint)
    t0 = time.monotonic()
    p = Proc([tool("litestream"), "replicate", "-config", str(cfg)], litestream_env(), work)
    row["plain_backup_s"] = wait_backed_up(s3, b_plain, n, p, 900)
    measure("plain", row, counter, {"litestream": p.pid}, plain_dir, n, idle, writes, rclone,
            started=t0, settle=settle)
    stop(p)
    shutil.rmtree(plain_dir.parent)
    # -- sidecar, the same litestream.yml
    sc_dir = work / f"sidecar-{n}" / "tenants"
    want = make_tenants(sc_dir, n)
    b_sc = s3.make_bucket()
    cfg = work / f"sidecar-{n}.yml"
    write_tenant_config(cfg, sc_dir, b_sc, proxy.endpoint)
    port = free_port()
    app = work / "app.py"
    app.write_text(APP)
    env = sidecar_env(sc_dir, cfg, port)
    t0 = time.monotonic()
    sc = Proc([str(BIN / "sidecar"), "run", "--", sys.executable, str(app)], env, work)
    sc.wait_line("app up", 600)
    row["sidecar_backup_s"] = wait_backed_up(s3, b_sc, n, sc, 900)
    ls_pid = next(p for p in descendants(sc.pid)
                  if "litestream" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace"))
    written = measure("sidecar", row, counter, {"sidecar": sc.pid, "litestream": ls_pid}, sc_dir,
                      n, idle, writes, rclone, own=lambda: own_requests(port), started=t0,
                      settle=settle)
    stop(sc)
    for name in [f"t{i:04d}.db" for i in range(0, n, 100)]:
        con = sqlite3.connect(sc_dir / name)  # what the writer added: a restore brings it back
        k = con.execute("SELECT count(*) FROM rows WHERE v = 'written'").fetchone()[0]
        con.close()
        want[name] = want[name] + ["written"] * k
    row["written_rows"] = written
    # -- restore the whole directory after a volume loss
    names = sorted(want)
    shutil.rmtree(sc_dir.parent)
    sc_dir.parent.mkdir()
    sc = Proc([str(BIN / "sidecar"), "run", "--", sys.executable, str(app)], env, work)
    row["sidecar_restore_s"] = sc.wait_line("app up", 1800)
    logged = [line for _, line in sc.err if "directory restore finished" in line]
    m = re.search(r'"duration_seconds": ([0-9.]+)', logged[0]) if logged else None
    row["sidecar_restore_step_s"] = float(m.group(1)) if m else float("nan")
    stop(sc)
    check_restored(sc_dir, want)
    raw_dir = work / f"raw-{n}" / "tenants"
    row["raw_restore_s"] = raw_restore(raw_dir, b_sc, proxy.endpoint, names)
    check_restored(raw_dir, want)
    shutil.rmtree(raw_dir.parent)
    shutil.rmtree(sc_dir.parent)
    for b in (b_plain, b_sc):
        s3.drop(b)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100")
    ap.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    ap.add_argument("--writes", type=float, default=60.0, help="write window, seconds")
    ap.add_argument("--settle", type=float, default=80.0,
                    help="the idle window begins this long after each entrypoint's launch "
                         "(past Litestream's first checkpoint), seconds")
    ap.add_argument("--results", type=Path,
                    default=Path(__file__).resolve().parent / "results.md")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    work = Path(f"/tmp/sidecar-bench-tenants-{os.getpid()}")
    work.mkdir()
    s3 = S3(work / "s3")
    s3.dir_cache = "1m"  # see the module's docstring; buckets are made through the API
    s3.start()
    counter = RequestCounter()
    proxy = S3Proxy(s3.port, counter)
    rows = []
    loads = []
    try:
        for n in sizes:
            row = run_size(n, s3, counter, proxy, work, args.idle, args.writes, args.settle)
            loads.append(os.getloadavg()[0])
            print(row, flush=True)
            rows.append(row)
            load = ", ".join(f"{x:.1f}" for x in loads)
            write_section(args.results, report(rows, args, f"{load} after each size"))
    finally:
        proxy.close()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(report(rows, args, ", ".join(f"{x:.1f}" for x in loads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
