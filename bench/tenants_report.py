"""The tenant section of bench/results.md from bench/tenants.py's rows (one dict a size)."""

from __future__ import annotations

import argparse
from pathlib import Path

PARALLELISM = 8  # bench/tenants.py's, and sidecar's SIDECAR_RESTORE_PARALLELISM there


def report(rows: list[dict[str, object]], args: argparse.Namespace, load: str) -> str:
    lines = [
        "## Many databases in one directory (`bench/tenants.py`)",
        "",
        f"`python bench/tenants.py --sizes {','.join(str(r['n']) for r in rows)} --idle "
        f"{args.idle:g} --writes {args.writes:g} --settle {args.settle:g}`, one run, 2-core "
        "shared machine (load "
        f"average {load}), Litestream 0.5.17 with its defaults, the same project "
        "litestream.yml (`dir:` entry) for plain Litestream and for sidecar, rclone serve s3 "
        "behind a request-counting proxy (both entrypoints and the raw restores go through "
        "it). Idle: every database backed up, nothing writing, from "
        f"{args.settle:g} s after the entrypoint's launch (past Litestream's first checkpoint, "
        "which gives every database one new TXID). Writes: one row a second into "
        "each of 1% of the databases (at least one). RSS is the peak of the window, CPU the "
        "share of one core over it. Restore: the directory wiped, then sidecar's start from "
        "launch to the app's first line (every database restored first) against raw "
        f"`litestream restore` of each database, {PARALLELISM} at a time, the same "
        "parallelism as sidecar's; every restored database checked afterwards (rows, "
        "quick_check).",
        "",
        "| DBs | plain litestream RSS / CPU (idle) | sidecar own RSS / CPU (idle) | sidecar's "
        "litestream RSS / CPU (idle) | sidecar own RSS / CPU (writes) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['plain_idle_litestream_rss_mb']:.0f} MB / "
            f"{r['plain_idle_litestream_cpu_pct']:.1f}% | {r['sidecar_idle_sidecar_rss_mb']:.1f} "
            f"MB / {r['sidecar_idle_sidecar_cpu_pct']:.1f}% | "
            f"{r['sidecar_idle_litestream_rss_mb']:.0f} MB / "
            f"{r['sidecar_idle_litestream_cpu_pct']:.1f}% | "
            f"{r['sidecar_write_sidecar_rss_mb']:.1f} MB / "
            f"{r['sidecar_write_sidecar_cpu_pct']:.1f}% |")
    lines += [
        "",
        "| DBs | S3 req/min idle: plain / sidecar's litestream / sidecar's lag checks (metric) "
        "| S3 req/min, writes to 1%: plain / sidecar's litestream / lag checks | restore: "
        "sidecar start / its restore step / raw litestream (ratio start / raw) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["sidecar_restore_s"] / r["raw_restore_s"]
        lines.append(
            f"| {r['n']} | {r['plain_idle_s3_per_min']:.0f} / "
            f"{r['sidecar_idle_s3_per_min'] - r['sidecar_idle_lag_per_min']:.0f} / "
            f"{r['sidecar_idle_lag_per_min']:.1f} ({r['sidecar_idle_metric_lag_per_min']:.1f}) | "
            f"{r['plain_write_s3_per_min']:.0f} / "
            f"{r['sidecar_write_s3_per_min'] - r['sidecar_write_lag_per_min']:.0f} / "
            f"{r['sidecar_write_lag_per_min']:.1f} | "
            f"{r['sidecar_restore_s']:.1f} s / {r['sidecar_restore_step_s']:.1f} s / "
            f"{r['raw_restore_s']:.1f} s ({ratio:.2f}x) |")
    lines += ["", "Plain Litestream's idle requests by shape (per minute; `N` a tenant's "
              "number, `X` a TXID):", ""]
    for r in rows:
        shapes = ", ".join(f"`{k}` {v:g}" for k, v in list(r["plain_idle_shapes"].items())[:6])
        lines.append(f"- {r['n']}: {shapes}")
    lines += ["", "The S3 server's and the bench's (proxy's) own CPU, idle / writes, plain "
              "then sidecar:", ""]
    for r in rows:
        lines.append(
            f"- {r['n']}: rclone {r['plain_idle_rclone_cpu_pct']:.0f}% / "
            f"{r['plain_write_rclone_cpu_pct']:.0f}%, {r['sidecar_idle_rclone_cpu_pct']:.0f}% / "
            f"{r['sidecar_write_rclone_cpu_pct']:.0f}%; proxy "
            f"{r['plain_idle_bench_cpu_pct']:.1f}% / {r['plain_write_bench_cpu_pct']:.1f}%, "
            f"{r['sidecar_idle_bench_cpu_pct']:.1f}% / {r['sidecar_write_bench_cpu_pct']:.1f}%; "
            f"first backup of every database: plain {r['plain_backup_s']:.1f} s, sidecar "
            f"{r['sidecar_backup_s']:.1f} s")
    lines.append("")
    return "\n".join(lines)


def write_section(results: Path, section: str,
                  head: str = "## Many databases in one directory") -> None:
    """Put `section` (starting with `head`) into results.md in place of the one there, or at
    the end; the other sections stay (bench/network.py writes its own the same way)."""
    text = results.read_text() if results.exists() else ""
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results.write_text(text)
