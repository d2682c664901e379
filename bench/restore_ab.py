"""Raw `litestream restore` against sidecar's own restore invocation of the same bucket, with
and without the lag monitor's file watcher on the directory, in rotated order.

    python bench/restore_ab.py [--size 300] [--reps 6]

Each run restores a fresh copy of one seeded bucket and is timed from launch to exit in this
process; every restored file passes quick_check. See PROFILE.md ("the lag monitor's file
watcher") for what it showed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import harness as h

from sidecar import config, litestream
from sidecar.lag import monitor as lag
from sidecar.supervise import procs


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=300, help="database size in MB")
    ap.add_argument("--reps", type=int, default=6, help="runs per variant")
    args = ap.parse_args(argv)
    h.compile_sidecar()
    work = Path(tempfile.mkdtemp(prefix="sidecar-restore-ab-"))
    s3 = h.S3(work / "s3")
    s3.start()
    d = work / "run"
    binary = h.tool("litestream")

    def sidecar_env(bucket: str, out: Path) -> dict[str, str]:
        env = h.base_env()
        env.update({"SIDECAR_DB_PATH": str(out),
                    "SIDECAR_REPLICA_URL": f"s3://{bucket}/{h.PREFIX}",
                    "SIDECAR_S3_ENDPOINT": s3.endpoint, "SIDECAR_S3_REGION": "us-east-1",
                    "SIDECAR_SYNC_INTERVAL": "1s", "SIDECAR_MIGRATE_COMMAND": ""})
        return env

    def raw(bucket: str, out: Path) -> tuple[float, Path]:
        t0 = time.monotonic()
        res = subprocess.run(h.raw_restore_argv(s3, bucket, out), env=h.base_env(), cwd=d,
                             capture_output=True, check=False)
        took = time.monotonic() - t0
        if res.returncode != 0:
            raise RuntimeError(res.stderr.decode()[-500:])
        return took, out

    def sidecars(watched: bool) -> Callable[[str, Path], tuple[float, Path]]:
        def restore(bucket: str, out: Path) -> tuple[float, Path]:
            env = sidecar_env(bucket, out)
            cfg = config.load(env, app_command=["true"], cwd=d)
            path = litestream.write_config(cfg, litestream.free_loopback_port(), d / "sc.yml")
            tmp = out.with_name(f".{out.name}.sidecar-restore-1")
            argv = litestream.restore_argv(binary, path, cfg.databases[0], Path(tmp.name))
            monitor = lag.LagMonitor(cfg, None)
            if watched:
                monitor.watch()
            c0 = os.times()
            t0 = time.monotonic()
            try:
                code, out_text = procs.run(argv, litestream.child_env(env), cwd=d)
            finally:
                took = time.monotonic() - t0
                c1 = os.times()
                monitor.stop()
            if code != 0:
                raise RuntimeError(out_text[-500:])
            cpu = (c1.user - c0.user) + (c1.system - c0.system)
            log(f"  this process's own CPU meanwhile: {cpu:.2f} s")
            return took, tmp
        return restore

    variants: list[tuple[str, Callable[[str, Path], tuple[float, Path]]]] = [
        ("raw litestream restore", raw), ("sidecar's invocation", sidecars(False)),
        ("sidecar's invocation, directory watched", sidecars(True))]
    times: dict[str, list[float]] = {name: [] for name, _ in variants}
    try:
        src = work / "src"
        src.mkdir()
        h.make_db(src / "app.db", args.size)
        seed = s3.bucket()
        h.seed(s3, src / "app.db", seed)
        rows = h.count_rows(src / "app.db")
        s3.restart()
        for i in range(args.reps):
            k = i % len(variants)
            for name, fn in variants[k:] + variants[:k]:
                h.clean_dir(d)
                bucket = s3.bucket(copy_of=seed)
                try:
                    took, restored = fn(bucket, d / "app.db")
                finally:
                    s3.drop(bucket)
                h.verify(restored, rows)
                times[name].append(round(took, 2))
                log(f"{name}: {took:.2f} s (load {os.getloadavg()[0]:.1f})")
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("| variant | seconds (runs) | median |")
    print("|---|---|---|")
    for name, xs in times.items():
        print(f"| {name} | {', '.join(map(str, xs))} | {statistics.median(xs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
