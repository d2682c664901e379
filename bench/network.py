"""Restore over a real bucket's network: raw `litestream restore`, the plain run.sh and
sidecar, on loopback (0 ms) and through testkit's shaping proxy (a round trip per request, a
bandwidth cap per connection), against the floor: the same restore from a local `file://`
replica (Litestream's decoding alone).

    python bench/network.py                       # 100 MB and 1 GB, one run each
    python bench/network.py --sizes 100 --reps 3  # other sizes (MB), more runs
    python bench/network.py --delay 0.03 --rate 50  # the shaped network (s, MB/s a connection)

Each size is seeded in two plan shapes: `snapshot` (a fresh snapshot alone) and `many` (the
snapshot, then 40 small transactions uploaded one sync at a time and compacted every 5 s, so
the plan holds the snapshot and a few dozen L1/L0 files). Within each network setting the
entrypoints run in an order that rotates from one run to the next (recorded); every restore
is verified (rows and quick_check), a failed verification is a failed run. The same clock as
bench/run.py: launch to the app's first line (sidecar, plain run.sh), launch to exit (raw,
floor). Writes the section "Restore over a real bucket's network" of bench/results.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness as h
from run import launch_to_app, log, raw_restore, rotate
from tenants_report import write_section

from testkit.backup import seed_shaped
from testkit.shaper import Shaper

HERE = Path(__file__).resolve().parent
HEAD = "## Restore over a real bucket's network"


class Via:
    """The bench's S3 server as seen through the shaper: its endpoint, its buckets."""

    def __init__(self, s3: h.S3, endpoint: str):
        self._s3, self.endpoint = s3, endpoint

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)


def seed(s3: h.S3, work: Path, size: int, shape: str) -> tuple[str, int]:
    """A bucket holding the backup: (its name, the rows of table blobs to expect)."""
    bucket = s3.bucket()
    if shape == "snapshot":
        src = work / "seed" / "app.db"
        src.parent.mkdir(parents=True, exist_ok=True)
        h.make_db(src, size)
        expect = h.count_rows(src)
        h.seed(s3, src, bucket)
        shutil.rmtree(src.parent)
    else:
        seed_shaped(s3, bucket, work / "seed", prefix=h.PREFIX, blob_mb=size, small=40,
                    gap=0.1, l1="5s")
        expect = size * 1024 * 1024 // 2048
    return bucket, expect


def file_replica(s3: h.S3, bucket: str, root: Path) -> int:
    """The bucket's backup copied into a `file://` replica at `root` (each file stamped with
    its LTX header's time, as Litestream's file replica does); its file count."""
    from sidecar.recovery.fetch import header_info

    n = 0
    for level_dir in sorted((s3.root / bucket / h.PREFIX).iterdir()):
        level = int(level_dir.name, 16)
        for f in sorted(level_dir.glob("*.ltx")):
            dst = root / "ltx" / str(level) / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
            info = header_info(dst.read_bytes()[:100])
            assert info is not None, f
            os.utime(dst, ns=(info[2] * 1_000_000,) * 2)
            n += 1
    return n


def _ticks(paths: dict[int, str] | None = None) -> dict[int, tuple[str, int]]:
    """(comm, utime + stime in clock ticks) of every process, or of `paths` (pid -> stat file)."""
    out = {}
    for pid, path in (paths or {int(p): f"/proc/{p}/stat" for p in os.listdir("/proc")
                                if p.isdigit()}).items():
        with contextlib.suppress(OSError):
            out[pid] = h.proc_stat(path)
    return out


KINDS = {"litestream": "Litestream", "sidecar": "sidecar", "rclone": "S3 server"}


class CpuMeter:
    """CPU seconds the processes of one timed run used, by kind: Litestream, sidecar, the S3
    server (rclone) and the shaper (a thread of this process), read from /proc every 0.1 s;
    a process that exits between two looks loses at most its last 0.1 s."""

    def __init__(self, shaper_tid: int | None):
        self.shaper = {-1: f"/proc/self/task/{shaper_tid}/stat"} if shaper_tid else {}
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> CpuMeter:
        self._base, self._seen = _ticks(), {}
        self._shaper0 = _ticks(self.shaper)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while True:
            self._seen.update(_ticks())
            if self._stop.wait(0.1):
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        hz = os.sysconf("SC_CLK_TCK")
        for pid, (comm, t) in self._seen.items():
            base = self._base.get(pid)
            used = t - base[1] if base is not None and base[0] == comm else t
            kind = KINDS.get(comm)
            if kind and used > 0:
                self.seconds[kind] = self.seconds.get(kind, 0.0) + used / hz
        end = _ticks(self.shaper)
        if -1 in end and -1 in self._shaper0:
            self.seconds["shaper"] = (end[-1][1] - self._shaper0[-1][1]) / hz


def floor_restore(root: Path, work: Path, expect: int) -> float:
    out = work / "floor" / "app.db"
    h.clean_dir(out.parent)
    t0 = time.monotonic()
    res = subprocess.run([h.tool("litestream"), "restore", "-o", str(out), f"file://{root}"],
                         env=h.base_env(), capture_output=True, text=True, timeout=1800)
    took = time.monotonic() - t0
    if res.returncode != 0:
        raise RuntimeError(f"floor restore exited {res.returncode}: {res.stderr[-300:]}")
    h.verify(out, expect)
    return took


def plan_files(s3: h.S3, bucket: str, work: Path) -> tuple[int, int]:
    """(files, bytes) of Litestream's own restore plan for the bucket; (-1, 0) when it gives
    none."""
    out = work / "plan" / "app.db"
    h.clean_dir(out.parent)
    argv = h.raw_restore_argv(s3, bucket, out)
    res = subprocess.run([*argv[:2], "-dry-run", "-json", *argv[2:]], env=h.base_env(),
                         capture_output=True, text=True, timeout=600)
    import json

    try:
        files = json.loads(res.stdout[res.stdout.find("{"):])["files"]
        return len(files), sum(int(f["size"]) for f in files)
    except (ValueError, KeyError, TypeError):
        return -1, 0


def one(fn: Any, *args: Any, failures: list[str], who: str) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        msg = f"{who}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        failures.append(msg)
        log(f"FAILED {msg}")
        return None


def measure(s3: h.S3, work: Path, size: int, shape: str, settings: list[tuple[str, float,
            float | None]], reps: int, failures: list[str]) -> list[dict[str, Any]]:
    log(f"seeding {size} MB, shape {shape}")
    # A fresh server for the seed too (rclone serve s3 was seen spinning at 100 % CPU and no
    # longer answering Litestream's uploads after a large round, with a directory cache of
    # 0s: harness.DIR_CACHE).
    s3.restart()
    bucket, expect = seed(s3, work, size, shape)
    s3.restart()
    files, planned = plan_files(s3, bucket, work)
    root = work / "replica"
    shutil.rmtree(root, ignore_errors=True)
    file_replica(s3, bucket, root)
    out: list[dict[str, Any]] = []
    floor: list[float] = []
    floor_cpu: list[dict[str, float]] = []
    for _ in range(reps):
        with CpuMeter(None) as meter:
            t = one(floor_restore, root, work, expect, failures=failures,
                    who=f"{size} MB {shape} floor")
        if t:
            floor.append(t)
            floor_cpu.append(meter.seconds)
    log(f"{size} MB {shape}: plan of {files} files, {planned} bytes; floor {floor}")
    for label, delay, rate in settings:
        shaper = Shaper(s3.port, delay=delay, rate=rate) if delay or rate else None
        via = Via(s3, shaper.endpoint) if shaper else s3
        eps: list[Any] = [h.Sidecar(via, work), h.Plain(via, work), "raw"]  # type: ignore
        times: dict[str, list[float]] = {"sidecar": [], "plain run.sh": [], "raw": []}
        paths: list[str] = []  # how each sidecar run restored (run.restore_path)
        cpus: dict[str, list[dict[str, float]]] = {"sidecar": [], "raw": [],
                                                   "floor": floor_cpu}
        tid = shaper._thread.native_id if shaper else None
        orders = []
        try:
            one(raw_restore, via, work, bucket, expect, failures=failures, who="warm-up")
            for i in range(reps):
                order = rotate(eps, i)
                orders.append(", ".join(e if isinstance(e, str) else e.name for e in order))
                for ep in order:
                    who = f"{size} MB {shape} {label} {ep if isinstance(ep, str) else ep.name}"
                    with CpuMeter(tid) as meter:
                        if isinstance(ep, str):
                            t = one(raw_restore, via, work, bucket, expect, failures=failures,
                                    who=who)
                        else:
                            res = one(launch_to_app, ep, via, work, bucket, expect,
                                      paths if ep.name == "sidecar" else None,
                                      failures=failures, who=who)
                            t = res[0] if res else None
                    if t is not None:
                        name = "raw" if isinstance(ep, str) else ep.name
                        times[name].append(t)
                        if name in cpus:
                            cpus[name].append(meter.seconds)
                        log(f"{who}: {t:.3f}s, verified")
        finally:
            if shaper is not None:
                shaper.close()
        out.append({"size": size, "shape": shape, "files": files, "planned": planned,
                    "network": label,
                    "times": times, "floor": floor, "orders": orders, "cpu": cpus,
                    "paths": paths})
    s3.drop(bucket)
    shutil.rmtree(root, ignore_errors=True)
    return out


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def render(results: list[dict[str, Any]], command: str, failures: list[str],
           elapsed: float, load: tuple[float, float] = (0.0, 0.0)) -> str:
    lines = [HEAD, "",
             f"`{command}` ({elapsed / 60:.1f} min; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
             f", {os.cpu_count()} cores, load average {load[0]:.1f} at the start and "
             f"{load[1]:.1f} at the end). Seconds, medians of the runs; sidecar and the plain "
             "run.sh from launch to the app's first line, raw `litestream restore` and the "
             "floor (raw restore from a local `file://` copy of the same backup) from launch "
             "to exit. Speed vs raw = raw time / sidecar time.", "",
             "| size | plan | network | raw | plain run.sh | sidecar | floor | sidecar speed "
             "vs raw | target | sidecar / floor | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        t = r["times"]
        raw, plain, side, floor = (med(t["raw"]), med(t["plain run.sh"]), med(t["sidecar"]),
                                   med(r["floor"]))
        shaped = r["network"] != "0 ms"
        speed = raw / side if raw and side else None
        target = ">= 2x" if shaped else ">= 0.95x"
        met = speed is not None and speed >= (2.0 if shaped else 0.95)
        vs_floor = side / floor if side and floor else None
        fcell = (f"{vs_floor:.2f}x" if vs_floor else "-")
        ftarget = ("<= 1.3x " + ("met" if vs_floor and vs_floor <= 1.3 else "**missed**")
                   if shaped else "")

        def f(x: float | None) -> str:
            return f"{x:.2f}" if x is not None else "failed"

        plan = f"{r['shape']} ({r['files']} files, {r.get('planned', 0) / 1e6:.0f} MB)"
        lines.append(f"| {r['size']} MB | {plan} | {r['network']} | "
                     f"{f(raw)} | {f(plain)} | {f(side)} | {f(floor)} | "
                     f"{f'{speed:.2f}x' if speed else '-'} | {target} "
                     f"{'met' if met else '**missed**'} | {fcell} | {ftarget} |")
    lines += ["", "Every run (seconds, in the order run):", ""]
    for r in results:
        t = r["times"]
        lines.append(f"- {r['size']} MB {r['shape']}, {r['network']}: sidecar "
                     f"{[round(x, 2) for x in t['sidecar']]}, plain "
                     f"{[round(x, 2) for x in t['plain run.sh']]}, raw "
                     f"{[round(x, 2) for x in t['raw']]}, floor "
                     f"{[round(x, 2) for x in r['floor']]}; sidecar restored "
                     f"{r.get('paths', [])}; orders {r['orders']}")
    lines += ["", f"CPU seconds by process (medians of the runs; the machine has {os.cpu_count()} "
              "cores, so a run cannot take less than its total CPU divided by them):", ""]
    for r in results:
        parts = []
        for name, label, wall in (("sidecar", "sidecar", r["times"]["sidecar"]),
                                  ("raw", "raw", r["times"]["raw"]),
                                  ("floor", "floor", r["floor"])):
            runs = r["cpu"][name]
            if not runs:
                continue
            kinds = [k for k in (*KINDS.values(), "shaper") if any(k in run for run in runs)]
            meds = {k: statistics.median(run.get(k, 0.0) for run in runs) for k in kinds}
            total = sum(meds.values())
            took = f"; took {w:.1f} s" if (w := med(wall)) else ""
            parts.append(f"{label}: " + ", ".join(f"{k} {v:.1f}" for k, v in meds.items())
                         + f" (total {total:.1f}, {total / (os.cpu_count() or 1):.1f} s of "
                         f"the machine{took})")
        lines.append(f"- {r['size']} MB {r['shape']}, {r['network']}: " + "; ".join(parts))
    lines += ["", "Runs that failed: " + ("none" if not failures else ""), ""]
    lines += [f"- {m}" for m in failures]
    if failures:
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None, command: str | None = None) -> int:
    """`command`: the command line the section names (bench/run.py passes its own)."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1024", help="database sizes in MB (100,1024)")
    ap.add_argument("--shapes", default="snapshot,many", help="plan shapes (snapshot,many)")
    ap.add_argument("--reps", type=int, default=1, help="timed runs per entrypoint (1)")
    ap.add_argument("--delay", type=float, default=0.03, help="round trip, s (0.03)")
    ap.add_argument("--rate", type=float, default=50, help="MB/s a connection (50)")
    ap.add_argument("--out", type=Path, default=HERE / "results.md")
    args = ap.parse_args(argv)
    command = command or ("python bench/network.py "
                          + " ".join(argv if argv is not None else sys.argv[1:]))
    settings = [("0 ms", 0.0, None),
                (f"{args.delay * 1000:g} ms / {args.rate:g} MB/s", args.delay, args.rate * 1e6)]
    h.compile_sidecar()
    t0, load0 = time.monotonic(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="sidecar-bench-net-"))
    s3 = h.S3(work / "s3")
    s3.start()
    failures: list[str] = []
    results: list[dict[str, Any]] = []
    try:
        for size in [int(x) for x in args.sizes.split(",")]:
            for shape in args.shapes.split(","):
                results += measure(s3, work, size, shape, settings, args.reps, failures)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    section = render(results, command.strip(), failures, time.monotonic() - t0,
                     (load0, os.getloadavg()[0]))
    print(section)
    write_section(args.out, section, HEAD)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
