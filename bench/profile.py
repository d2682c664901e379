"""Where sidecar's time goes: the start path and each phase of a restore, measured from outside
against a real S3 server (rclone serve s3 on loopback), without changing sidecar.

    python bench/profile.py start              # imports and the start timeline, empty bucket
    python bench/profile.py restore --size 300 # each restore phase on a ~300 MB database
    python bench/profile.py phases --size 300 --reps 6 [--baseline /tmp/old ...]

`start` runs `python -X importtime -m sidecar run -- app` and prints the slowest imports and
the time each JSON log event arrived, plus the same start without -X importtime.
`restore` seeds a bucket, then in rotated order times sidecar's own `litestream restore`
command line, raw `litestream restore` (config and URL forms, and with
`-integrity-check quick`), and the steps sidecar adds: the bucket probe (boto3 import, client,
listing), quick_check, the checkpoint, the fsync, the rename.
`phases` runs raw `litestream restore`, `sidecar run` of this checkout and (with `--baseline`,
each a `git archive` of another commit) the other sidecars, interleaved in rotated order, and prints
when each step of the restoring start arrived. bench/PROFILE.md holds findings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness as h

ROOT = Path(__file__).resolve().parents[1]

def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ start path


def importtime(lines: list[str]) -> list[tuple[int, int, int, str]]:
    out = []
    for line in lines:
        if not line.startswith("import time:") or "[us]" in line:
            continue
        body = line[len("import time:"):]
        self_us, cum_us, name = body.split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        out.append((int(self_us), int(cum_us), depth, name.strip()))
    return out


def start_profile(reps: int, size: int | None) -> None:
    """With `size`, every run restores a fresh copy of a bucket seeded with `size` MB."""
    work = Path(tempfile.mkdtemp(prefix="sidecar-profile-"))
    s3 = h.S3(work / "s3")
    s3.start()
    ep = h.Sidecar(s3, work)
    seed = None
    try:
        py = sys.executable
        if size:
            seed, _, _ = seeded_bucket(s3, work, size)
            h.restore(s3, seed, work / "warm.db")  # warm-up, not counted
        for label, argv in (("python -c pass", [py, "-c", "pass"]),
                            ("python -c 'import sidecar.cli'", [py, "-c", "import sidecar.cli"]),
                            ("sidecar --version", [str(h.BIN / "sidecar"), "--version"]),
                            ("litestream version", [h.tool("litestream"), "version"])):
            times = []
            for _ in range(reps):
                t0 = time.monotonic()
                subprocess.run(argv, check=True, capture_output=True)
                times.append(time.monotonic() - t0)
            log(f"{label}: median {statistics.median(times):.3f} s {[round(t, 3) for t in times]}")

        for with_importtime in (False,) if size else (False, True):
            firsts, timelines, imports = [], [], []
            for _ in range(reps):
                d = work / "run"
                h.clean_dir(d)
                app = d / "first.py"
                app.write_text(h.FIRST_LINE)
                bucket = s3.bucket(copy_of=seed)
                argv, env = ep.command(bucket, d / "app.db", [py, str(app)])
                argv = [py, *(["-X", "importtime"] if with_importtime else []), "-m", "sidecar",
                        *argv[1:]]
                p = h.Proc(argv, env, d)
                try:
                    firsts.append(p.wait_line("app up", timeout=120))
                    time.sleep(0.5)
                finally:
                    p.kill_tree()
                    s3.drop(bucket)
                events = []
                for t, line in p.err:
                    if line.startswith("{"):
                        try:
                            rec = json.loads(line)
                        except ValueError:
                            continue
                        events.append((t - p.t0, rec.get("message") or rec.get("msg"),
                                       rec.get("duration_seconds")))
                timelines.append(events)
                imports.append(importtime([line for _, line in p.err]))
            tag = "with -X importtime" if with_importtime else "plain"
            what = f"restore of {size} MB" if size else "empty bucket"
            log(f"\nsidecar run, {what}, launch to the app's first line ({tag}): "
                f"median {statistics.median(firsts):.3f} s {[round(t, 3) for t in firsts]}")
            log("timeline of the last run (arrival of each JSON log line, s from launch; "
                "duration_seconds as logged):")
            for t, ev, dur in timelines[-1]:
                log(f"  {t:7.3f}  {ev}" + (f"  (took {dur})" if dur is not None else ""))
            if with_importtime:
                report_imports(imports)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


def report_imports(runs: list[list[tuple[int, int, int, str]]]) -> None:
    """Cumulative import time of top-level packages (median over runs) and the import-time
    total, so it is plain which ones could load lazily."""
    per_pkg: dict[str, list[float]] = defaultdict(list)
    totals = []
    for rows in runs:
        pkg: dict[str, int] = defaultdict(int)
        for self_us, _cum, _depth, name in rows:
            pkg[name.split(".")[0]] += self_us
        for k, v in pkg.items():
            per_pkg[k].append(v / 1e6)
        totals.append(sum(r[0] for r in rows) / 1e6)
    log(f"\nimports: total self time median {statistics.median(totals):.3f} s "
        "(every module, all threads, as -X importtime counts it)")
    log("by top-level package (sum of self times, median over runs):")
    ranked = sorted(per_pkg.items(), key=lambda kv: -statistics.median(kv[1]))
    for name, vals in ranked[:25]:
        log(f"  {statistics.median(vals):7.3f} s  {name}")
    log("top-level imports of sidecar modules (cumulative, last run):")
    for _self, cum, _depth, name in sorted(runs[-1], key=lambda r: -r[1]):
        if name.startswith("sidecar"):
            log(f"  {cum / 1e6:7.3f} s  {name}")


# ------------------------------------------------------------------ restore phases

PROBE = textwrap.dedent("""\
    import json, os, sys, time
    t0 = time.monotonic()
    from sidecar import config
    from sidecar.bucket import replica
    t1 = time.monotonic()
    cfg = config.load(os.environ, ["true"], need_app=False)
    rep = cfg.databases[0].replica
    import boto3, botocore  # noqa: F401  (what probe() imports on its first call)
    t2 = time.monotonic()
    store = replica.open_store(rep, timeout=30)
    t3 = time.monotonic()
    ok = store.has_backups()
    t4 = time.monotonic()
    ok2 = store.has_backups()
    t5 = time.monotonic()
    print(json.dumps({"import sidecar.config+replica": t1 - t0, "import boto3": t2 - t1,
                      "client": t3 - t2, "listing (has_backups)": t4 - t3,
                      "second listing": t5 - t4, "has_backups": ok and ok2}))
""")


def seeded_bucket(s3: h.S3, work: Path, size: int) -> tuple[str, float, int]:
    """A bucket holding Litestream's backup of a fresh `size` MB database (the source file
    removed, the S3 server restarted so nothing of it is cached): (bucket, MB, rows)."""
    src = work / "seed" / "app.db"
    src.parent.mkdir()
    h.make_db(src, size)
    mb, rows = src.stat().st_size / 1e6, h.count_rows(src)
    bucket = s3.bucket()
    h.seed(s3, src, bucket)
    shutil.rmtree(src.parent)
    s3.restart()
    return bucket, mb, rows


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    res = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    took = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited {res.returncode}: {res.stderr[-300:]}")
    return took


def restore_profile(size: int, reps: int) -> None:
    from sidecar import config, dbfile
    from sidecar.litestream.process import restore_argv
    from sidecar.litestream.yaml_file import write_config

    work = Path(tempfile.mkdtemp(prefix="sidecar-profile-"))
    s3 = h.S3(work / "s3")
    s3.start()
    try:
        bucket, mb, expect = seeded_bucket(s3, work, size)
        d = work / "out"
        d.mkdir()
        db = d / "app.db"
        state = d / "state"
        state.mkdir()
        env_s = h.Sidecar(s3, work).command(bucket, db, ["true"])[1]
        env_s["SIDECAR_STATE_DIR"] = str(state)
        cfg = config.load(env_s, ["true"], cwd=d)
        cfg_path = write_config(cfg, h.free_port())
        tmp = d / ".app.db.sidecar-restore-profile"
        ls = h.tool("litestream")
        raw_cfg = d / "raw.yml"
        raw_cfg.write_text(h.PLAIN_CONFIG.format(db=db, bucket=bucket, prefix=h.PREFIX,
                                                 endpoint=s3.endpoint))
        variants = {
            "sidecar's argv": restore_argv(ls, cfg_path, cfg.databases[0], tmp),
            "raw, config form": [ls, "restore", "-config", str(raw_cfg), "-o", str(tmp), str(db)],
            "raw, URL form": [ls, "restore", "-o", str(tmp), s3.url(bucket)],
            "raw, -integrity-check quick": [ls, "restore", "-config", str(raw_cfg),
                                            "-integrity-check", "quick", "-o", str(tmp), str(db)],
        }
        log(f"database: {mb:.0f} MB, {expect} rows; bucket {bucket}")
        for k, v in variants.items():
            log(f"  {k}: {' '.join(Path(a).name if a.startswith('/') else a for a in v)}")
        env = h.base_env()
        results: dict[str, list[float]] = defaultdict(list)
        penv = {**env_s, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        for _ in range(reps):
            res = subprocess.run([sys.executable, "-c", PROBE], env=penv, cwd=d,
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                log(f"probe failed: {res.stderr[-800:]}")
                break
            for k, v in json.loads(res.stdout).items():
                if k != "has_backups":
                    results[f"probe: {k}"].append(v)
        log(f"warm-up restore (not counted): {timed(variants['raw, config form'], env):.3f} s")
        tmp.unlink()
        names = list(variants)
        for i in range(reps):
            order = names[i % len(names):] + names[:i % len(names)]
            for name in order:
                for p in (tmp, dbfile.wal_path(tmp), dbfile.shm_path(tmp)):
                    p.unlink(missing_ok=True)
                results[name].append(timed(variants[name], env))
                if name != "sidecar's argv":
                    continue
                # The steps sidecar adds after Litestream's restore, one at a time.
                t0 = time.monotonic()
                ok = dbfile.quick_check(tmp)
                results["quick_check"].append(time.monotonic() - t0)
                assert ok == "ok", ok
                t0 = time.monotonic()
                con = sqlite3.connect(tmp, timeout=10)
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                con.close()
                dbfile.wal_path(tmp).unlink(missing_ok=True)
                dbfile.shm_path(tmp).unlink(missing_ok=True)
                results["checkpoint (open, wal_checkpoint, close)"].append(time.monotonic() - t0)
                t0 = time.monotonic()
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                results["fsync of the restored file"].append(time.monotonic() - t0)
                t0 = time.monotonic()
                os.replace(tmp, db)
                dbfile.fsync_dir(d)
                results["rename + directory fsync"].append(time.monotonic() - t0)
                h.verify(db, expect)
                db.unlink()
            log(f"run {i + 1} ({', '.join(order)}): "
                + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items()))
        log(f"\nmedians over {reps} runs (s; MB/s for the restores), {mb:.0f} MB file:")
        for name, vals in results.items():
            med = statistics.median(vals)
            rate = f"  {mb / med:6.1f} MB/s" if name in variants else ""
            log(f"  {med:8.3f}{rate}  {name}  {[round(x, 3) for x in vals]}")
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------ phases, old against new

# The events of a restoring start, in order; "litestream restore exited" is derived for code
# that does not log it (the check's arrival minus its logged duration).
PHASES = ["config loaded", "preflight passed", "http listening", "restore started",
          "litestream restore exited", "restored file checked", "restore decided",
          "litestream started", "replication started", "app first line"]


def _timeline(p: h.Proc, first: float) -> dict[str, float]:
    """Arrival of each phase's event, seconds from launch (first arrival of each name)."""
    at: dict[str, float] = {}
    for t, line in p.err:
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        ev = rec.get("message")
        if ev in PHASES and ev not in at:
            at[ev] = t - p.t0
            for k in ("duration_seconds", "running_seconds", "waited_seconds"):
                if isinstance(rec.get(k), (int, float)):
                    at[f"{ev}: {k}"] = float(rec[k])
            if ev == "restored file checked" and "litestream restore exited" not in at:
                at["litestream restore exited"] = at[ev] - float(rec.get("duration_seconds", 0))
    at["app first line"] = first
    return at


def phases_profile(size: int, reps: int, baselines: list[Path]) -> None:
    """Rotated runs of raw `litestream restore`, `sidecar run` of this checkout and, with
    each of `baselines`, `sidecar run` of that tree (a `git archive` of another commit, put first on
    PYTHONPATH); every run restores a fresh copy of one seeded bucket and is verified."""
    work = Path(tempfile.mkdtemp(prefix="sidecar-phases-"))
    s3 = h.S3(work / "s3")
    s3.start()
    ep = h.Sidecar(s3, work)
    py = sys.executable
    try:
        seed, mb, expect = seeded_bucket(s3, work, size)
        h.restore(s3, seed, work / "warm.db")  # warm-up, not counted
        (work / "warm.db").unlink()
        trees = {"new": ROOT} | {("old" if i == 0 else f"old{i + 1}"): b
                                 for i, b in enumerate(baselines)}
        variants = ["raw", *trees]
        for name, tree in trees.items():
            log(f"{name}: sidecar from {tree}")
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        d = work / "run"
        for i in range(reps):
            order = variants[i % len(variants):] + variants[:i % len(variants)]
            for v in order:
                h.clean_dir(d)
                bucket = s3.bucket(copy_of=seed)
                db = d / "app.db"
                try:
                    if v == "raw":
                        t0 = time.monotonic()
                        subprocess.run(h.raw_restore_argv(s3, bucket, db), env=h.base_env(),
                                       cwd=d, check=True, capture_output=True)
                        runs[v].append({"app first line": time.monotonic() - t0})
                    else:
                        app = d / "first.py"
                        app.write_text(h.FIRST_LINE)
                        argv, env = ep.command(bucket, db, [py, str(app)])
                        # This checkout's sidecar is the one beside this script (whatever
                        # is installed), so a copy of the tree can be measured while the
                        # checkout changes.
                        env["PYTHONPATH"] = str(trees[v])
                        p = h.Proc([py, "-m", "sidecar", *argv[1:]], env, d)
                        try:
                            first = p.wait_line("app up", timeout=1800)
                        finally:
                            p.kill_tree()
                        runs[v].append(_timeline(p, first))
                finally:
                    s3.drop(bucket)
                h.verify(db, expect)
            log(f"run {i + 1} ({', '.join(order)}, load {os.getloadavg()[0]:.1f}): "
                + ", ".join(f"{v} {runs[v][-1]['app first line']:.3f}" for v in variants))
        log(f"\n{mb:.0f} MB, {reps} runs each; launch to the app's first line (raw: to exit)")
        for v in variants:
            xs = [r["app first line"] for r in runs[v]]
            raw = statistics.median(r["app first line"] for r in runs["raw"])
            log(f"  {v}: median {statistics.median(xs):.3f} s ({raw / statistics.median(xs):.2f}x"
                f" raw) {[round(x, 3) for x in xs]}")
        cols = [v for v in variants if v != "raw"]
        log("\n| event (median arrival, s from launch) | " + " | ".join(cols) + " |")
        log("|---|" + "---|" * len(cols))
        for ev in PHASES:
            cells = []
            for v in cols:
                xs = [r[ev] for r in runs[v] if ev in r]
                cells.append(f"{statistics.median(xs):.3f}" if xs else "-")
            log(f"| {ev} | " + " | ".join(cells) + " |")
        logged = sorted({k for v in cols for r in runs[v] for k in r if ": " in k})
        if logged:
            log("\n| as logged (median, s) | " + " | ".join(cols) + " |")
            log("|---|" + "---|" * len(cols))
            for k in logged:
                cells = []
                for v in cols:
                    xs = [r[k] for r in runs[v] if k in r]
                    cells.append(f"{statistics.median(xs):.3f} ({len(xs)})" if xs else "-")
                log(f"| {k} | " + " | ".join(cells) + " |")
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["start", "restore", "phases"])
    ap.add_argument("--size", type=int, help="restore: database size in MB (default 300); "
                    "start: restore a bucket of this size on every start (default: empty)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--baseline", type=Path, action="append", default=[],
                    help="phases, repeatable: a tree of another sidecar commit "
                    "(git archive) to run beside this checkout, interleaved")
    args = ap.parse_args()
    args.size_given = args.size is not None
    args.size = args.size or 300
    h.compile_sidecar()
    for tree in args.baseline:
        subprocess.run([sys.executable, "-m", "compileall", "-q",
                        str(tree / "sidecar")], check=True, stdout=subprocess.DEVNULL)
    if args.what == "phases":
        phases_profile(args.size, args.reps, args.baseline)
    elif args.what == "start":
        start_profile(args.reps, args.size if args.size_given else None)
    else:
        restore_profile(args.size, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
