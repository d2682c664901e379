"""Idle RSS of sidecar (its lag checks on its one S3 client, boto3) beside the plain run.sh's
Litestream, in one run and in rotated order.

    python bench/rss_idle.py [--seconds 20] [--reps 3]

Sampling is bench/run.py's `resources`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness as h
import run as r


def label(ep: h.Entrypoint) -> str:
    return getattr(ep, "label", ep.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="sampling window per run")
    ap.add_argument("--reps", type=int, default=3, help="runs per entrypoint")
    args = ap.parse_args(argv)
    h.compile_sidecar()
    work = Path(tempfile.mkdtemp(prefix="sidecar-rss-"))
    s3 = h.S3(work / "s3")
    s3.start()
    eps: list[h.Entrypoint] = [h.Sidecar(s3, work), h.Plain(s3, work)]
    out: dict[str, list[dict[str, Any]]] = {label(e): [] for e in eps}
    try:
        s3.restart()
        for i in range(args.reps):
            for ep in r.rotate(eps, i):
                res = r.resources(ep, s3, work, args.seconds, "0")
                r.log(f"{label(ep)}: {res}")
                out[label(ep)].append(res)
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("| entrypoint | own RSS, MB, max over the window (runs) | median | its Litestream, MB |")
    print("|---|---|---|---|")
    for name, rs in out.items():
        own = [x["own_rss_max"] for x in rs]
        ls = [x["litestream_rss_max"] for x in rs]
        print(f"| {name} | {', '.join(map(str, own))} | {statistics.median(own)} | "
              f"{', '.join(map(str, ls))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
