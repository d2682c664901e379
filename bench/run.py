"""Benchmarks: sidecar against the plain `run.sh` (`litestream restore -if-db-not-exists
-if-replica-exists`, then `exec litestream replicate -exec app`) and against raw
`litestream restore`, side by side in one run, on the same data, against a real S3 server
(rclone serve s3) on this machine.

    python bench/run.py                  # the full run (300 MB and 1 GB restores)
    python bench/run.py --quick          # a short run with small sizes, one run each
    python bench/run.py --sizes 100,300  # other restore sizes (MB)
    python bench/run.py --network-sizes 100  # the network table's sizes (MB; "" for none)

How it keeps the comparison fair: one clock (the bench's own time.monotonic, from launching a
command to its app's first line, or to its exit for raw `litestream restore`); the order of
the entrypoints rotates from one run to the next and is recorded; the S3 server is restarted
at the start of every section and warmed up with one untimed request of the same kind before
the timed runs; every restore is verified (row count and `PRAGMA quick_check`), and a failed
verification is a failed run, listed in the results.

Writes a markdown table (every run, medians, ratios, targets) to bench/results.md and prints it,
then runs bench/network.py (restore over a real bucket's network: loopback and the shaping
proxy, against the local-replica floor) and writes and prints its table too, one run of each.
Exits 1 when any run failed; a missed target is a result, not a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness as h

HERE = Path(__file__).resolve().parent
SYNC_INTERVAL = 1.0  # seconds, for both entrypoints
RAW = "raw litestream restore"


@dataclass
class Plan:
    sizes_mb: list[int]
    reps: int
    write_seconds: float
    resource_seconds: float
    quick: bool


@dataclass
class Row:
    """One measure: sidecar's runs against a baseline's runs, made in the same section."""

    section: str
    measure: str
    baseline: str  # what the second column is: plain run.sh, raw litestream restore, ...
    unit: str = "s"
    target: str = ""
    # (sidecar median, baseline median, row) -> met?; None: no target
    check: Callable[[float, float | None, Row], bool] | None = None
    # how the ratio column reads: "time" sidecar/baseline, "speed" baseline/sidecar, "" none
    ratio: str = "time"
    sidecar: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""
    failures: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def trial(rows: list[Row], who: str, fn: Callable[..., Any], *args: Any) -> Any:
    """One run. A failure (a crash, a timeout, a restore that does not verify) is recorded in
    every row the run feeds, and the bench goes on with the next run."""
    try:
        return fn(*args)
    except Exception as exc:
        msg = f"{who}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        for r in rows:
            r.failures.append(msg)
        log(f"FAILED {rows[0].measure}: {msg}")
        return None


def rotate(items: list[Any], i: int) -> list[Any]:
    """Run i's order: the list rotated by i, so each entrypoint takes each place in turn."""
    k = i % len(items)
    return items[k:] + items[:k]


# ------------------------------------------------------------------ start-up and restore


def launch_to_app(ep: h.Entrypoint, s3: h.S3, work: Path, seed_bucket: str | None,
                  expect_rows: int | None, paths: list[str] | None = None
                  ) -> tuple[float, float | None]:
    """Seconds from launching the entrypoint to its app's first line, on a fresh copy of the
    seed bucket; then the tree is killed and the database it restored is verified. Also
    returns the restore duration sidecar logged itself (its own clock; reported, not used).
    `paths`: where to add the way sidecar restored, from its log (see restore_path)."""
    d = work / "run"
    h.clean_dir(d)
    db = d / "app.db"
    bucket = s3.bucket(copy_of=seed_bucket)
    app_path = d / "first.py"
    app_path.write_text(h.FIRST_LINE)
    argv, env = ep.command(bucket, db, [sys.executable, str(app_path)])
    p = h.Proc(argv, env, d)
    try:
        took = p.wait_line("app up", timeout=1800)
    finally:
        p.kill_tree()
        s3.drop(bucket)
    if expect_rows is not None:
        h.verify(db, expect_rows)
    if paths is not None:
        paths.append(restore_path([line for _, line in p.err]))
    logged = None
    for _, line in p.err:
        if '"restore decided"' in line:
            try:
                rec = json.loads(line)
                if rec.get("outcome") == "restored":
                    logged = float(rec["duration_seconds"])
            except (ValueError, KeyError):
                pass
    return took, logged


def restore_path(lines: list[str]) -> str:
    """How sidecar's start restored, from its log lines: "direct" (Litestream from the
    bucket), "mirror" or "mirror, N streamed" (fetched in parallel first), "direct after
    <event>" (the mirror was given up), or "none"."""
    events = {}
    for line in lines:
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                events.setdefault(rec.get("message"), rec)
    for given_up in ("restore fetch failed", "restore from the mirror failed"):
        if given_up in events:
            return f"direct after {given_up}"
    if "restore fetched" in events:
        n = events["restore fetched"].get("streamed_files") or 0
        return f"mirror, {n} streamed" if n else "mirror"
    if "restore started" in events:
        return "direct"
    return "none"


def raw_restore(s3: h.S3, work: Path, seed_bucket: str, expect_rows: int) -> float:
    """Seconds from launching raw `litestream restore` to its exit (same clock, same kind of
    fresh bucket copy as the entrypoints get); the restored file is verified."""
    d = work / "run"
    h.clean_dir(d)
    out = d / "app.db"
    bucket = s3.bucket(copy_of=seed_bucket)
    argv = h.raw_restore_argv(s3, bucket, out)
    p = h.Proc(argv, h.base_env(), d)
    try:
        code = p.wait(1800)
        took = time.monotonic() - p.t0
    finally:
        if p.proc.poll() is None:
            p.kill_tree()
        s3.drop(bucket)
    if code != 0:
        raise RuntimeError(f"litestream restore exited {code}: "
                           + " ".join(line for _, line in p.err[-3:]))
    h.verify(out, expect_rows)
    return took


# ------------------------------------------------------------------ data loss

# Verification restores that the S3 server left hanging: `rclone serve s3` was seen spinning at
# 65-150 % CPU and never answering one request of a tiny restore (seconds of work), in about
# one bench run in three. That is the test server's fault, not the entrypoint's: the server is
# restarted and the verification repeated once, and each occurrence is listed in the results.
SERVER_HANGS: list[str] = []
VERIFY_TIMEOUT = 120.0


def restore_checking_server(s3: h.S3, bucket: str, out: Path) -> None:
    try:
        h.restore(s3, bucket, out, timeout=VERIFY_TIMEOUT)
    except subprocess.TimeoutExpired:
        cpu = h.cpu_percent(s3.proc.pid, 1.0) if s3.proc else None
        SERVER_HANGS.append(f"a verification restore of bucket {bucket} got no answer for "
                            f"{VERIFY_TIMEOUT:g} s (rclone serve s3 at "
                            f"{'?' if cpu is None else f'{cpu:.0f}'} % CPU); the server was "
                            "restarted and the verification repeated")
        log(f"S3 server hung: {SERVER_HANGS[-1]}")
        s3.restart()
        h.restore(s3, bucket, out, timeout=VERIFY_TIMEOUT)


def shutdown_loss(ep: h.Entrypoint, s3: h.S3, work: Path, seconds: float, exit_code: int,
                  crash: bool) -> dict[str, Any]:
    """Rows the app logged as committed versus rows in a (verified) restore of the bucket."""
    d = work / "run"
    h.clean_dir(d)
    db = d / "app.db"
    bucket = s3.bucket()
    app_path = d / "writer.py"
    app_path.write_text(h.WRITER)
    argv, env = ep.command(bucket, db, [sys.executable, str(app_path)],
                           EXIT_ON_TERM=str(exit_code), WRITE_INTERVAL="0.01")
    p = h.Proc(argv, env, d)
    code = None
    try:
        p.wait_line("wrote r0", timeout=120)
        time.sleep(seconds)
        if crash:
            p.kill_tree()
        else:
            os.kill(p.pid, signal.SIGTERM)
            code = p.wait(120)
    finally:
        if p.proc.poll() is None:
            p.kill_tree()
    logged: dict[str, float] = {}
    for _, line in p.out:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "wrote":
            logged[parts[1]] = float(parts[2])
    out = d / "restored.db"
    try:
        try:
            restore_checking_server(s3, bucket, out)  # raises when it fails quick_check
            restored = dict(h.table_rows(out))
        except RuntimeError as exc:
            # A bucket that holds nothing at all for the DB (the tree died before its first
            # upload) is a finding: every logged row is lost. Any other failure stays one.
            if "no matching backup files" not in str(exc):
                raise
            restored = {}
    finally:
        s3.drop(bucket)
    lost = [v for v in logged if v not in restored]
    window = 0.0
    if lost:
        window = max(logged.values()) - (max(restored.values()) if restored else
                                         min(logged.values()))
    return {"logged": len(logged), "restored": len(restored), "lost": len(lost),
            "window": round(window, 3), "code": code}


# ------------------------------------------------------------------ resources


def resources(ep: h.Entrypoint, s3: h.S3, work: Path, seconds: float, interval: str
              ) -> dict[str, float]:
    """CPU (% of one core) and RSS (MB, median and max over the window) of the entrypoint's
    own process and of its Litestream, and the app's commits per second. For the plain
    run.sh the two are the same process: run.sh execs `litestream replicate`."""
    d = work / "run"
    h.clean_dir(d)
    db = d / "app.db"
    bucket = s3.bucket()
    app_path = d / "writer.py"
    app_path.write_text(h.WRITER)
    argv, env = ep.command(bucket, db, [sys.executable, str(app_path)], WRITE_INTERVAL=interval)
    p = h.Proc(argv, env, d)
    try:
        p.wait_line("app up", timeout=120)
        time.sleep(3)  # past start-up
        own = p.pid
        if ep.name == "sidecar":
            ls = next(pid for pid in p.descendants() if h.comm(pid) == "litestream")
        else:
            if h.comm(own) != "litestream":
                raise RuntimeError(f"run.sh's process is {h.comm(own)!r}, not litestream")
            ls = own
        pids = {"own": own, "litestream": ls}
        hz = os.sysconf("SC_CLK_TCK")
        c0 = {k: h.cpu_ticks(pid) for k, pid in pids.items()}
        n0 = committed(db)
        rss: dict[str, list[float]] = {k: [] for k in pids}
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            for k, pid in pids.items():
                rss[k].append(h.rss_mb(pid))
            time.sleep(min(1.0, seconds / 5))
        took = time.monotonic() - t0
        c1 = {k: h.cpu_ticks(pid) for k, pid in pids.items()}
        n1 = committed(db)
    finally:
        p.kill_tree()
        s3.drop(bucket)
    out: dict[str, float] = {"commits_per_s": round((n1 - n0) / took, 1)}
    for k in pids:
        out[f"{k}_cpu"] = round(100.0 * (c1[k] - c0[k]) / hz / took, 3)
        out[f"{k}_rss"] = round(statistics.median(rss[k]), 1)
        out[f"{k}_rss_max"] = round(max(rss[k]), 1)
    return out


def committed(db: Path) -> int:
    """The rows the app has committed (its table's largest id; 0 before the first)."""
    import sqlite3

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute("SELECT coalesce(max(id), 0) FROM rows").fetchone()[0]
    except sqlite3.OperationalError:  # no table yet
        return 0
    finally:
        con.close()


# ------------------------------------------------------------------ sections


def section_start_empty(plan: Plan, s3: h.S3, work: Path, eps: list[h.Entrypoint]) -> list[Row]:
    # Reported, not a target since sidecar lists through boto3 alone (issue 22): its import
    # and a client are what an empty-bucket start pays beyond the plain run.sh.
    r = Row("start-up", "launch to the app's first line, empty bucket", "plain run.sh")
    for ep in eps:  # warm-up: page cache and bytecode for both, not counted
        res = trial([r], f"{ep.name} (warm-up)", launch_to_app, ep, s3, work, None, None)
        log(f"warm-up, empty bucket, {ep.name}: {res}")
    for i in range(plan.reps):
        order = rotate(eps, i)
        r.orders.append(", ".join(e.name for e in order))
        for ep in order:
            res = trial([r], ep.name, launch_to_app, ep, s3, work, None, None)
            if res:
                (r.sidecar if ep.name == "sidecar" else r.base).append(res[0])
                log(f"empty bucket, {ep.name}: {res[0]:.3f}s")
    return [r]


def section_restore(plan: Plan, s3: h.S3, work: Path, eps: list[h.Entrypoint], size: int
                    ) -> list[Row]:
    src = work / f"seed-{size}" / "app.db"
    src.parent.mkdir(parents=True)
    log(f"making a {size} MB database")
    h.make_db(src, size)
    real_mb = src.stat().st_size / 1e6
    expect = h.count_rows(src)
    seed_bucket = s3.bucket()
    log(f"replicating it into {seed_bucket}")
    h.seed(s3, src, seed_bucket)
    shutil.rmtree(src.parent)
    s3.restart()
    label = (f"{size} MB" if size < 1024 else f"{size / 1024:g} GB") + f" ({real_mb:.0f} MB file)"
    vs_raw = Row("restore", f"launch to the app's first line, restore of {label}; speed vs raw "
                 "(raw time / sidecar time)", RAW, ratio="speed", target=">= 0.95x raw",
                 check=lambda s, p, _r: p is not None and p / s >= 0.95)
    vs_plain = Row("restore", f"launch to the app's first line, restore of {label}",
                   "plain run.sh")
    thr = Row("restore", f"restore throughput, {label} (file size / launch-to-app time; raw: "
              "launch to exit)", RAW, unit="MB/s", ratio="")
    rows = [vs_raw, vs_plain, thr]
    # Warm-up: the first read of a large object after a server start was seen taking ~10x
    # longer than the next ones; one untimed raw restore takes that for nobody in particular.
    t = trial(rows, "raw (warm-up)", raw_restore, s3, work, seed_bucket, expect)
    log(f"{label} warm-up raw restore: {t}")
    vs_raw.note = f"warm-up raw restore (not counted): {t:.3f} s" if t else "warm-up failed"
    who = [*eps, RAW]
    logged: list[float] = []
    for i in range(plan.reps):
        order = rotate(who, i)
        names = ", ".join(e if isinstance(e, str) else e.name for e in order)
        for r in rows:
            r.orders.append(names)
        for ep in order:
            if isinstance(ep, str):
                took = trial(rows, RAW, raw_restore, s3, work, seed_bucket, expect)
                if took is None:
                    continue
                for r in (vs_raw, thr):
                    r.base.append(took if r is vs_raw else real_mb / took)
                log(f"{label}, {RAW}: {took:.3f}s ({real_mb / took:.1f} MB/s), verified")
                continue
            res = trial(rows, ep.name, launch_to_app, ep, s3, work, seed_bucket, expect)
            if not res:
                continue
            took, own = res
            if ep.name == "sidecar":
                vs_raw.sidecar.append(took)
                vs_plain.sidecar.append(took)
                thr.sidecar.append(real_mb / took)
                if own is not None:
                    logged.append(own)
            else:
                vs_plain.base.append(took)
            log(f"{label}, {ep.name}: first line at {took:.3f}s, verified"
                + (f" (sidecar's own log: restore step {own:.3f}s)" if own else ""))
    raw_med, plain_med = median(vs_raw.base), median(vs_plain.base)
    if raw_med and plain_med:
        # The same measure for the plain way: it too starts Litestream and the app after the
        # restore, which raw's launch-to-exit does not include.
        vs_raw.note += (f"; the plain run.sh in the same runs: {plain_med:.3f} s, "
                        f"{raw_med / plain_med:.2f}x raw")
    if logged:
        vs_plain.note = ("sidecar's own logged restore step (its clock, not used above): "
                         f"median {statistics.median(logged):.3f} s, runs "
                         f"{[round(x, 3) for x in logged]}")
    s3.drop(seed_bucket)
    return rows


def section_data_loss(plan: Plan, s3: h.S3, work: Path, eps: list[h.Entrypoint]) -> list[Row]:
    rows: list[Row] = []
    for code in (0, 3):
        r = Row("data loss", f"rows lost on SIGTERM, app exits {code} after a final write",
                "plain run.sh", unit="rows", ratio="", target="0 in every run",
                check=lambda _s, _p, row: max(row.sidecar) == 0)
        for i in range(plan.reps):
            order = rotate(eps, i)
            r.orders.append(", ".join(e.name for e in order))
            for ep in order:
                res = trial([r], ep.name, shutdown_loss, ep, s3, work, plan.write_seconds,
                            code, False)
                if res:
                    (r.sidecar if ep.name == "sidecar" else r.base).append(res["lost"])
                    log(f"SIGTERM exit {code}, {ep.name}: {res}")
        rows.append(r)
    limit = SYNC_INTERVAL + 0.5
    w = Row("data loss", "window lost on SIGKILL of the whole tree (seconds of writes; "
            "steady writes, 100 rows/s)", "plain run.sh", ratio="",
            target=f"<= sync interval + 0.5 s = {limit:g} s in every run",
            check=lambda _s, _p, row: max(row.sidecar) <= limit)
    n = Row("data loss", "rows lost on SIGKILL of the whole tree (100 rows/s)",
            "plain run.sh", unit="rows", ratio="")
    for i in range(plan.reps):
        order = rotate(eps, i)
        for r in (w, n):
            r.orders.append(", ".join(e.name for e in order))
        for ep in order:
            res = trial([w, n], ep.name, shutdown_loss, ep, s3, work, plan.write_seconds, 0,
                        True)
            if res:
                (w.sidecar if ep.name == "sidecar" else w.base).append(res["window"])
                (n.sidecar if ep.name == "sidecar" else n.base).append(res["lost"])
                log(f"SIGKILL, {ep.name}: {res}")
    return [*rows, w, n]


def section_resources(plan: Plan, s3: h.S3, work: Path, eps: list[h.Entrypoint]) -> list[Row]:
    rows: list[Row] = []
    for label, interval in (("idle", "0"), ("steady writes, 100 rows/s", "0.01")):
        idle = interval == "0"
        secs = f"{plan.resource_seconds:g} s"
        cpu = Row("resources", f"CPU, % of one core, {label} ({secs}): sidecar's own process",
                  "plain run.sh's Litestream", unit="%", ratio="",
                  target="< 1 %" if idle else "",
                  check=(lambda s, _p, _r: s < 1.0) if idle else None)
        # RSS is reported, not a target since the lag checks hold a boto3 client (issue 22).
        own = Row("resources", f"RSS, MB, {label}: sidecar's own process (max over {secs})",
                  "plain run.sh's Litestream", unit="MB")
        tree = Row("resources", f"RSS, MB, {label}: sidecar + its Litestream (max over {secs})",
                   "plain run.sh's Litestream", unit="MB")
        its = Row("resources", f"RSS, MB, {label}: the Litestream under sidecar "
                  f"(max over {secs})", "plain run.sh's Litestream", unit="MB")
        group = [cpu, own, tree, its]
        tree.extra["own"] = []
        cpu.extra["its"], cpu.extra["rate"] = [], []
        for i in range(plan.reps):
            order = rotate(eps, i)
            for r in group:
                r.orders.append(", ".join(e.name for e in order))
            for ep in order:
                res = trial(group, ep.name, resources, ep, s3, work, plan.resource_seconds,
                            interval)
                if not res:
                    continue
                log(f"resources {label}, {ep.name}: {res}")
                if ep.name == "sidecar":
                    cpu.sidecar.append(res["own_cpu"])
                    cpu.extra["its"].append(res["litestream_cpu"])
                    cpu.extra["rate"].append(res["commits_per_s"])
                    own.sidecar.append(res["own_rss_max"])
                    tree.sidecar.append(res["own_rss_max"] + res["litestream_rss_max"])
                    tree.extra["own"].append(res["own_rss_max"])
                    its.sidecar.append(res["litestream_rss_max"])
                else:
                    for r in group:
                        r.base.append(res["litestream_cpu"] if r is cpu
                                      else res["litestream_rss_max"])
        s, p = median(tree.extra["own"]), median(tree.base)
        if s is not None and p:
            tree.note = f"sidecar's share: its own RSS / plain's Litestream = {s / p:.2f}x"
        rows += group
        if not idle:
            rows.append(beside(cpu.extra["its"], cpu.sidecar, cpu.extra["rate"], label,
                               secs, cpu.orders))
    rows.append(section_top_rate(plan, s3, work, eps))
    return rows


def beside(its: list[float], own: list[float], rates: list[float], label: str, secs: str,
           orders: list[str]) -> Row:
    """sidecar's own CPU against the Litestream it runs, from the same runs."""
    r = Row("resources", f"CPU, % of one core, {label} ({secs}): sidecar's own process "
            "beside its Litestream", "the Litestream under sidecar (same run)", unit="%", ratio="time",
            target="<= its Litestream", check=lambda s, p, _r: p is not None and s <= p)
    r.sidecar, r.base = list(own), list(its)
    r.orders = list(orders) or ["sidecar alone"] * len(own)
    if rates:
        r.note = (f"the app committed {median(rates):.0f} rows/s (runs: "
                  f"{', '.join(f'{x:.0f}' for x in rates)})")
    return r


def section_top_rate(plan: Plan, s3: h.S3, work: Path, eps: list[h.Entrypoint]) -> Row:
    """The app committing as fast as it can (no sleep, no output): the watcher's cost must
    not grow with the write rate. sidecar only: the row compares it with its own Litestream."""
    ep = next(e for e in eps if e.name == "sidecar")
    secs = f"{plan.resource_seconds:g} s"
    own: list[float] = []
    its: list[float] = []
    rates: list[float] = []
    row = Row("resources", "", "the Litestream under sidecar (same run)")
    for _ in range(plan.reps):
        res = trial([row], ep.name, resources, ep, s3, work, plan.resource_seconds, "-1")
        if not res:
            continue
        log(f"resources, top rate, {ep.name}: {res}")
        own.append(res["own_cpu"])
        its.append(res["litestream_cpu"])
        rates.append(res["commits_per_s"])
    out = beside(its, own, rates, "steady writes, as fast as the app commits", secs, [])
    out.failures = row.failures
    return out


# ------------------------------------------------------------------ the run


def versions() -> dict[str, str]:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30
                                  ).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GB"
    except (OSError, ValueError, IndexError):
        pass
    root = HERE.parent
    return {
        "machine": f"{cpu}, {os.cpu_count()} cores, {mem} RAM, {platform.system()} "
                   f"{platform.release()}",
        "python": platform.python_version(),
        "litestream": out([h.tool("litestream"), "version"]),
        "rclone": out([h.tool("rclone"), "version"]),
        "sidecar": out([str(h.BIN / "sidecar"), "--version"]),
        "commit": out(["git", "-C", str(root), "rev-parse", "--short", "HEAD"]),
    }


def run(plan: Plan, out_path: Path, command: str) -> list[Row]:
    h.compile_sidecar()
    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    s3 = h.S3(work / "s3")
    s3.start()
    eps: list[h.Entrypoint] = [h.Sidecar(s3, work), h.Plain(s3, work)]
    rows: list[Row] = []
    started = time.monotonic()
    load0 = os.getloadavg()
    try:
        # Every section starts on a freshly started S3 server, the same for every entrypoint.
        s3.restart()
        rows += section_start_empty(plan, s3, work, eps)
        for size in plan.sizes_mb:
            rows += section_restore(plan, s3, work, eps, size)  # restarts after seeding
        s3.restart()
        rows += section_data_loss(plan, s3, work, eps)
        s3.restart()
        rows += section_resources(plan, s3, work, eps)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    text = render(rows, plan, command, elapsed, load0, os.getloadavg())
    out_path.write_text(text + kept_sections(out_path))
    print(text, flush=True)
    log(f"wrote {out_path}")
    return rows


def fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "rows":
        return f"{x:g}"
    if unit in ("MB/s", "MB"):
        return f"{x:.1f} {unit}"
    if unit == "%":
        return f"{x:.2f} %"
    return f"{x:.3f} s"


def ratio_cell(r: Row) -> str:
    s, p = median(r.sidecar), median(r.base)
    if s is None or not p or not r.ratio:
        return ""
    if r.ratio == "speed":
        return f"{p / s:.2f}x speed"
    return f"{s / p:.2f}x"


def verdict(r: Row) -> str:
    if r.check is None:
        return "FAILED runs" if r.failures else ""
    s, p = median(r.sidecar), median(r.base)
    if s is None:
        return "FAILED (no run)"
    met = "met" if r.check(s, p, r) else "**MISSED**"
    return met + (f", {len(r.failures)} run(s) FAILED" if r.failures else "")


def render(rows: list[Row], plan: Plan, command: str, elapsed: float,
           load0: tuple[float, float, float], load1: tuple[float, float, float]) -> str:
    v = versions()
    lines = [
        "# Benchmarks: sidecar against the plain `run.sh` and raw `litestream restore`",
        "",
        (f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
         f"in {elapsed / 60:.1f} minutes; {plan.reps} timed run(s) of each entrypoint per "
         "measure, in an order that rotates from run to run (recorded below), on the same data "
         "in the same run; the table shows medians, and the ratios are computed from them."),
        "",
        f"- machine: {v['machine']}; load average {load0[0]:.1f} at the start, "
        f"{load1[0]:.1f} at the end"
        + (" (**a loaded machine**: other work was running on it, single runs vary)"
           if max(load0[0], load1[0]) > 0.75 * (os.cpu_count() or 1) else ""),
        (f"- {v['sidecar']} (commit {v['commit']}), Python {v['python']}; its bytecode is "
         "compiled before the first run, as installing the wheel does"),
        (f"- Litestream {v['litestream']}; S3: {v['rclone']} (`rclone serve s3` on loopback), "
         "restarted at the start of every section, started with `--etag-hash ''`: it then "
         "lists without reading every listed object to compute an MD5 ETag, as S3 does (with "
         "the default, each listing of a backup read its largest files); the same server for "
         "every entrypoint"),
        ("- plain `run.sh`: `litestream restore -if-db-not-exists -if-replica-exists` then "
         "`exec litestream replicate -exec app`, sync interval 1 s (as sidecar's)"),
        ("- raw `litestream restore`: `litestream restore -config litestream.yml DB` with the "
         "same config as the plain run.sh, timed from launch to exit"),
        ("- one clock: the bench's `time.monotonic()`, from launching the command to the app's "
         "first line on stdout (raw restore: to its exit); sidecar's own logged restore "
         "duration is shown only in the notes"),
        ("- every restore is verified: the row count equals what was written and "
         "`PRAGMA quick_check` says ok; a run that fails verification is a failed run"),
        ("- apps: a Python script printing its first line at once (start-up, restore); a writer "
         "committing a row every 10 ms and logging it after the commit (data loss, resources)"),
        "",
        "| section | measure | sidecar | baseline | baseline is | ratio | target | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.section} | {r.measure} | {fmt(median(r.sidecar), r.unit)} | "
                     f"{fmt(median(r.base), r.unit)} | {r.baseline} | {ratio_cell(r)} | "
                     f"{r.target} | {verdict(r)} |")
    lines += [
        "",
        ("Ratio: sidecar / baseline, except `speed` = baseline time / sidecar time (above 1 "
         "sidecar is faster). Resource rows take the max over the sampling window of each run."),
        "",
    ]
    notes = [f"- {r.measure}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    if SERVER_HANGS:
        lines += ["## The S3 server hung (not a result of either entrypoint)", "",
                  *[f"- {x}" for x in SERVER_HANGS], ""]
    failed = [f"- {r.measure}: {f}" for r in rows for f in r.failures]
    if failed:
        lines += ["## Runs that failed (findings)", "", *failed, ""]
    lines += ["## Every run", ""]
    for r in rows:
        lines.append(f"- {r.measure}: sidecar {[round(x, 3) for x in r.sidecar]}, "
                     f"{r.baseline} {[round(x, 3) for x in r.base]}; order per run: "
                     + "; ".join(f"({o})" for o in r.orders))
    return "\n".join(lines) + "\n"


# The sections other benches write into results.md (tenants.py, network.py): a run of this
# one replaces its own part and keeps them as they are.
OTHER_SECTIONS = ("## Many databases in one directory", "## Restore over a real bucket's network")


def kept_sections(path: Path) -> str:
    old = path.read_text() if path.exists() else ""
    starts = [old.index(h) for h in OTHER_SECTIONS if h in old]
    return "\n" + old[min(starts):] if starts else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, one run each")
    ap.add_argument("--sizes", help="restore sizes in MB, comma-separated "
                    "(default 300,1024; --quick 2,8)")
    ap.add_argument("--reps", type=int, help="timed runs per entrypoint (default 3; --quick 1)")
    ap.add_argument("--resource-seconds", type=float,
                    help="how long CPU/RSS are sampled per run (default 30; --quick 3)")
    ap.add_argument("--network-sizes", help="the network table's restore sizes in MB "
                    "(default 100,1024; --quick 8; empty: no network table)")
    ap.add_argument("--out", type=Path, default=HERE / "results.md")
    args = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else (
            [2, 8] if args.quick else [300, 1024])
    except ValueError:
        ap.error(f"--sizes: expected MB as comma-separated whole numbers (got {args.sizes!r})")
    if any(s <= 0 for s in sizes):
        ap.error(f"--sizes: every size must be a positive number of MB (got {args.sizes!r})")
    plan = Plan(sizes_mb=sizes, reps=args.reps or (1 if args.quick else 3),
                write_seconds=2.0 if args.quick else 5.0,
                resource_seconds=args.resource_seconds or (3.0 if args.quick else 30.0),
                quick=args.quick)
    command = ("python bench/run.py " + " ".join(argv if argv is not None
                                                 else sys.argv[1:])).strip()
    rows = run(plan, args.out, command)
    failed = any(r.failures for r in rows)
    net = args.network_sizes if args.network_sizes is not None else (
        "8" if args.quick else "100,1024")
    if net:
        import network

        net_argv = ["--sizes", net] + (["--shapes", "snapshot"] if args.quick else [])
        failed |= network.main([*net_argv, "--out", str(args.out)],
                               command=f"{command} (its network part: python bench/network.py "
                                       f"{' '.join(net_argv)})") != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
