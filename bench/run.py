"""Benchmarks: sidecar against the plain `run.sh` (`litestream restore -if-db-not-exists
-if-replica-exists`, then `exec litestream replicate -exec app`), side by side in one run, on the
same data, against a real S3 server (rclone serve s3) on this machine.

    python bench/run.py            # the full run (100 MB and 1 GB restores; ~15 minutes)
    python bench/run.py --quick    # a short smoke run with small sizes

Writes a markdown table of medians and ratios (with the machine, versions and the command) to
bench/results.md, which the README's performance section quotes.
"""

from __future__ import annotations

import argparse
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness as h

HERE = Path(__file__).resolve().parent


@dataclass
class Plan:
    sizes_mb: list[int]
    reps: int
    write_seconds: float
    resource_seconds: float
    quick: bool


@dataclass
class Row:
    section: str
    measure: str
    sidecar: list[float] = field(default_factory=list)
    plain: list[float] = field(default_factory=list)
    unit: str = "s"
    target: str = ""
    ratio_kind: str = "ratio"  # ratio (sidecar/plain) | diff (sidecar-plain) | none
    note: str = ""
    failures: list[str] = field(default_factory=list)

    def add(self, ep: h.Entrypoint, value: float) -> None:
        (self.sidecar if ep.name == "sidecar" else self.plain).append(value)


def trial(row: Row, ep_name: str, fn: Any, *args: Any) -> Any:
    """One run; a failure is recorded in the table (a finding), not hidden, and the run goes on."""
    try:
        return fn(*args)
    except Exception as exc:
        msg = f"{ep_name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        row.failures.append(msg)
        log(f"FAILED {row.measure}: {msg}")
        return None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# ------------------------------------------------------------------ start-up


def first_line(ep: h.Entrypoint, s3: h.S3, work: Path, seed_bucket: str | None
               ) -> tuple[float, float | None]:
    """Seconds from start to the app's first line; and sidecar's restore step when it ran."""
    d = work / "run"
    h.clean_dir(d)
    db = d / "app.db"
    bucket = s3.bucket(copy_of=seed_bucket)
    app_path = d / "first.py"
    app_path.write_text(h.FIRST_LINE)
    app = [sys.executable, str(app_path)]
    argv, env = ep.command(bucket, db, app)
    p = h.Proc(argv, env, d)
    try:
        took = p.wait_line("app up", timeout=1200)
    finally:
        p.kill_tree()
        s3.drop(bucket)
    restore_s = None
    for _, line in p.err:
        if '"restore decided"' in line:
            try:
                rec = json.loads(line)
                if rec.get("outcome") == "restored":
                    restore_s = float(rec["duration_seconds"])
            except (ValueError, KeyError):
                pass
    return took, restore_s


# ------------------------------------------------------------------ data loss


def shutdown_loss(ep: h.Entrypoint, s3: h.S3, work: Path, seconds: float, exit_code: int,
                  crash: bool) -> dict[str, Any]:
    """Rows the app logged as committed versus rows in a restore of the bucket."""
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
    h.restore(s3, bucket, out)
    restored = dict(h.table_rows(out))
    s3.drop(bucket)
    lost = [v for v in logged if v not in restored]
    window = 0.0
    if lost:
        window = max(logged.values()) - (max(restored.values()) if restored else
                                         min(logged.values()))
    return {"logged": len(logged), "restored": len(restored), "lost": len(lost),
            "window": window, "code": code, "final_logged": "final" in logged,
            "final_restored": "final" in restored}


# ------------------------------------------------------------------ resources


def resources(s3: h.S3, work: Path, seconds: float, interval: str) -> dict[str, float]:
    """CPU (% of one core) and RSS (median MB) of the sidecar process and its Litestream."""
    ep = h.Sidecar(s3, work)
    d = work / "run"
    h.clean_dir(d)
    db = d / "app.db"
    bucket = s3.bucket()
    app_path = d / "writer.py"
    app_path.write_text(h.WRITER)
    argv, env = ep.command(bucket, db, [sys.executable, str(app_path)],
                           WRITE_INTERVAL=interval)
    p = h.Proc(argv, env, d)
    try:
        p.wait_line("app up", timeout=120)
        time.sleep(3)  # past start-up
        ls = next(pid for pid in p.descendants() if h.comm(pid) == "litestream")
        hz = os.sysconf("SC_CLK_TCK")
        c0 = {"sidecar": h.cpu_ticks(p.pid), "litestream": h.cpu_ticks(ls)}
        rss: dict[str, list[float]] = {"sidecar": [], "litestream": []}
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            rss["sidecar"].append(h.rss_mb(p.pid))
            rss["litestream"].append(h.rss_mb(ls))
            time.sleep(min(1.0, seconds / 5))
        took = time.monotonic() - t0
        c1 = {"sidecar": h.cpu_ticks(p.pid), "litestream": h.cpu_ticks(ls)}
    finally:
        p.kill_tree()
        s3.drop(bucket)
    out = {}
    for k in ("sidecar", "litestream"):
        out[f"{k}_cpu"] = 100.0 * (c1[k] - c0[k]) / hz / took
        out[f"{k}_rss"] = statistics.median(rss[k])
        out[f"{k}_rss_max"] = max(rss[k])
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
    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-"))
    s3 = h.S3(work / "s3")
    s3.start()
    eps = [h.Sidecar(s3, work), h.Plain(s3, work)]
    rows: list[Row] = []
    started = time.monotonic()
    try:
        # --- start-up: empty bucket
        r = Row("start-up", "start to the app's first line, empty bucket",
                target="sidecar - plain < 0.5 s", ratio_kind="diff")
        for _i in range(plan.reps):
            for ep in eps:
                res = trial(r, ep.name, first_line, ep, s3, work, None)
                if res:
                    r.add(ep, res[0])
                    log(f"empty bucket, {ep.name}: {res[0]:.3f}s")
        rows.append(r)

        # --- start-up and restore throughput for each size
        for size in plan.sizes_mb:
            s3.restart()
            src = work / f"seed-{size}" / "app.db"
            src.parent.mkdir(parents=True)
            log(f"making a {size} MB database")
            h.make_db(src, size)
            real_mb = src.stat().st_size / 1e6
            seed_bucket = s3.bucket()
            log(f"replicating it into {seed_bucket}")
            h.seed(s3, src, seed_bucket)
            shutil.rmtree(src.parent)
            label = (f"{size} MB" if size < 1024 else f"{size / 1024:g} GB") + \
                f" ({real_mb:.0f} MB file)"
            r = Row("start-up", f"start to the app's first line, restore of {label}",
                    ratio_kind="ratio")
            thr = Row("restore", f"restore throughput, {label} (sidecar: its restore step, "
                      "incl. probe + quick_check + rename)", unit="MB/s",
                      target="sidecar >= 0.9 x raw")
            for _i in range(plan.reps):
                for ep in eps:
                    res = trial(r, ep.name, first_line, ep, s3, work, seed_bucket)
                    if not res:
                        continue
                    took, restore_s = res
                    r.add(ep, took)
                    if restore_s:
                        thr.sidecar.append(real_mb / restore_s)
                    log(f"{label} restore, {ep.name}: first line at {took:.3f}s"
                        + (f" (restore step {restore_s:.3f}s)" if restore_s else ""))
                out = work / "raw" / "app.db"
                out.parent.mkdir(exist_ok=True)
                raw_s = trial(thr, "raw litestream restore", h.restore, s3, seed_bucket, out)
                shutil.rmtree(out.parent)
                if not raw_s:
                    continue
                thr.plain.append(real_mb / raw_s)
                log(f"{label} raw litestream restore: {raw_s:.3f}s "
                    f"({real_mb / raw_s:.1f} MB/s)")
            rows += [r, thr]
            s3.drop(seed_bucket)

        s3.restart()
        # --- data lost on SIGTERM (exit 0 / exit 3 after a final write) and on SIGKILL
        for code in (0, 3):
            r = Row("data loss", f"rows lost on SIGTERM, app exits {code} after a final write",
                    unit="rows", target="0", ratio_kind="none")
            for _i in range(plan.reps):
                for ep in eps:
                    res = trial(r, ep.name, shutdown_loss, ep, s3, work, plan.write_seconds,
                                code, False)
                    if not res:
                        continue
                    r.add(ep, res["lost"])
                    log(f"SIGTERM exit {code}, {ep.name}: {res}")
            rows.append(r)
        r = Row("data loss", "window lost on SIGKILL of the whole tree (seconds of writes)",
                target="<= sync interval + 1 s = 2 s", ratio_kind="none")
        n = Row("data loss", "rows lost on SIGKILL of the whole tree (100 rows/s)",
                unit="rows", ratio_kind="none")
        for _i in range(plan.reps):
            for ep in eps:
                res = trial(r, ep.name, shutdown_loss, ep, s3, work, plan.write_seconds, 0, True)
                if not res:
                    continue
                r.add(ep, res["window"])
                n.add(ep, res["lost"])
                log(f"SIGKILL, {ep.name}: {res}")
        rows += [r, n]

        s3.restart()
        # --- resources
        for label, interval in (("idle", "0"), ("steady writes, 100 rows/s", "0.01")):
            cpu = Row("resources", f"CPU, % of one core, {label} "
                      f"({plan.resource_seconds:g} s)", unit="%", ratio_kind="none")
            res = trial(cpu, "sidecar", resources, s3, work, plan.resource_seconds, interval)
            if not res:
                rows.append(cpu)
                continue
            log(f"resources {label}: {res}")
            rows.append(Row("resources", f"CPU, % of one core, {label} "
                            f"({plan.resource_seconds:g} s)", [res["sidecar_cpu"]],
                            [res["litestream_cpu"]], unit="%",
                            target="sidecar < 1% idle" if interval == "0" else "",
                            ratio_kind="none"))
            rows.append(Row("resources", f"RSS, MB (median; max {res['sidecar_rss_max']:.1f}), "
                            f"{label}", [res["sidecar_rss"]], [res["litestream_rss"]],
                            unit="MB", target="sidecar < 60 MB", ratio_kind="none"))
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    write_results(rows, plan, out_path, command, elapsed)
    return rows


def fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "rows":
        return f"{x:g}"
    if unit == "MB/s" or unit == "MB":
        return f"{x:.1f}"
    if unit == "%":
        return f"{x:.2f}"
    return f"{x:.3f}"


def verdict(row: Row) -> str:
    s, p = median(row.sidecar), median(row.plain)
    if s is None:
        return ""
    t = row.target
    if t.startswith("sidecar - plain < 0.5") and p is not None:
        return "met" if s - p < 0.5 else "MISSED"
    if t.startswith("sidecar >= 0.9") and p:
        return "met" if s >= 0.9 * p else "MISSED"
    if t == "0":
        return "met" if max(row.sidecar) == 0 else "MISSED"
    if t.startswith("<= sync interval"):
        return "met" if max(row.sidecar) <= 2.0 else "MISSED"
    if t == "sidecar < 1% idle":
        return "met" if s < 1.0 else "MISSED"
    if t == "sidecar < 60 MB":
        return "met" if s < 60 else "MISSED"
    return ""


def write_results(rows: list[Row], plan: Plan, out_path: Path, command: str,
                  elapsed: float) -> None:
    v = versions()
    lines = [
        "# Benchmarks: sidecar against the plain `run.sh`",
        "",
        (f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"in {elapsed / 60:.1f} minutes; {plan.reps} run(s) of each entrypoint per measure, "
        "interleaved, on the same data in the same run; the figures are medians."),
        "",
        f"- machine: {v['machine']}",
        f"- {v['sidecar']} (commit {v['commit']}), Python {v['python']}",
        f"- Litestream {v['litestream']}; S3: {v['rclone']} (`rclone serve s3` on loopback)",
        ("- plain `run.sh`: `litestream restore -if-db-not-exists -if-replica-exists` then "
        "`exec litestream replicate -exec app`, sync interval 1 s (as sidecar's)"),
        ("- apps: a Python script printing its first line at once (start-up); a writer "
        "committing a row every 10 ms and logging it after the commit (data loss)"),
        "",
        "| section | measure | sidecar | plain run.sh | sidecar vs plain | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, p = median(r.sidecar), median(r.plain)
        if r.section == "resources":
            cmp_ = ""
        elif r.ratio_kind == "diff" and s is not None and p is not None:
            cmp_ = f"{s - p:+.3f} s"
        elif r.ratio_kind == "ratio" and s is not None and p:
            cmp_ = f"{s / p:.2f} x"
        elif r.unit == "rows" or r.ratio_kind == "none":
            cmp_ = ""
        else:
            cmp_ = ""
        if r.section == "restore" and s is not None and p:
            cmp_ = f"{s / p:.2f} x raw"
        unit = "" if r.unit in ("rows",) else f" {r.unit}"
        lines.append(f"| {r.section} | {r.measure} | {fmt(s, r.unit)}{unit} | "
                     f"{fmt(p, r.unit)}{unit} | {cmp_} | {r.target} | {verdict(r)} |")
    lines += [
        "",
        ("Columns: for the restore rows the plain column is raw `litestream restore -o` on the "
        "same bucket; for the resources rows the two columns are the sidecar process and the "
        "Litestream it supervises, in the same run."),
        "",
        "## Every run",
        "",
    ]
    failed = [f"- {r.measure}: {f}" for r in rows for f in r.failures]
    if failed:
        lines += ["## Runs that failed (findings)", "", *failed, ""]
    for r in rows:
        lines.append(f"- {r.measure}: sidecar {[round(x, 3) for x in r.sidecar]}, "
                     f"plain {[round(x, 3) for x in r.plain]}")
    out_path.write_text("\n".join(lines) + "\n")
    log(f"wrote {out_path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, one run each")
    ap.add_argument("--sizes", help="restore sizes in MB, comma-separated "
                    "(default 100,1024; --quick 2,8)")
    ap.add_argument("--reps", type=int, help="runs per entrypoint (default 3; --quick 1)")
    ap.add_argument("--resource-seconds", type=float,
                    help="how long CPU/RSS are sampled (default 60; --quick 3)")
    ap.add_argument("--out", type=Path, default=HERE / "results.md")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else (
        [2, 8] if args.quick else [100, 1024])
    plan = Plan(sizes_mb=sizes, reps=args.reps or (1 if args.quick else 3),
                write_seconds=2.0 if args.quick else 5.0,
                resource_seconds=args.resource_seconds or (3.0 if args.quick else 60.0),
                quick=args.quick)
    command = "python bench/run.py" + (" " + " ".join(argv if argv is not None
                                                      else sys.argv[1:])).rstrip()
    run(plan, args.out, command.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
