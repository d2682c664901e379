"""The benchmark command still runs end to end (tiny sizes), so bench/ cannot rot. It checks
that a complete table comes out, not what the timings are: performance is measured, not
asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Every measure the bench must report, each with a number for sidecar and for its baseline.
MEASURES = (
    "launch to the app's first line, empty bucket",
    "restore of 1 MB (1 MB file); speed vs raw",
    "launch to the app's first line, restore of 1 MB (1 MB file) |",
    "restore throughput, 1 MB",
    "rows lost on SIGTERM, app exits 0",
    "rows lost on SIGTERM, app exits 3",
    "window lost on SIGKILL",
    "rows lost on SIGKILL",
    "CPU, % of one core, idle",
    "RSS, MB, idle: sidecar's own process",
    "RSS, MB, idle: sidecar + its Litestream",
    "RSS, MB, idle: the Litestream under sidecar",
)
NUMBER = re.compile(r"^-?\d+(\.\d+)?( (s|MB|MB/s|%))?$")


def table_problems(text: str) -> list[str]:
    """What is wrong with a results table: a missing measure, a cell that is not a number,
    a row with a target but no met/MISSED verdict."""
    problems = []
    header = "| section | measure | sidecar | baseline | baseline is | ratio | target | result |"
    if header not in text:
        return [f"no table header {header!r}"]
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith(header)]
    for measure in MEASURES:
        row = next((ln for ln in rows if measure in ln), None)
        if row is None:
            problems.append(f"no row for {measure!r}")
            continue
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) != 8:
            problems.append(f"{len(cells)} cells, not 8: {row}")
            continue
        for name, cell in (("sidecar", cells[2]), ("baseline", cells[3])):
            if not NUMBER.match(cell):
                problems.append(f"{measure!r}: {name} is {cell!r}, not a number")
        target, result = cells[6], cells[7]
        if target and result not in ("met", "**MISSED**"):
            problems.append(f"{measure!r}: target {target!r} but result {result!r}")
    return problems


def test_table_check_catches_a_missing_number() -> None:
    """The table check fails on a dash where a number should be, on a missing row and on a
    target without a verdict (so the smoke test below can fail)."""
    head = "| section | measure | sidecar | baseline | baseline is | ratio | target | result |\n"
    good = "".join(f"| s | {m.removesuffix(' |')} | 1.0 s | 2.0 s | plain | 0.5x | | |\n" for m in MEASURES)
    assert table_problems(head + good) == []
    dash = good.replace("| 1.0 s | 2.0 s |", "| 1.0 s | - |", 1)
    assert any("baseline is '-'" in p for p in table_problems(head + dash))
    assert any("no row" in p for p in table_problems(head + good.split("\n", 1)[1]))
    verdictless = good.replace("| 0.5x | | |", "| 0.5x | <= 2x | FAILED (no run) |", 1)
    assert any("result" in p for p in table_problems(head + verdictless))


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_bench_quick_writes_the_table(tmp_path: Path) -> None:
    """`python bench/run.py --quick` with a 1 MB restore exits 0 (no run failed, every restore
    verified) and writes a table with a number for sidecar and its baseline in every measure,
    every run, the machine, the versions and the command. One run: its failure is the result."""
    out = tmp_path / "results.md"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--sizes", "1",
            "--resource-seconds", "1", "--out", str(out)]
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=400,
                         check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-3000:]
    text = out.read_text()
    assert "## Runs that failed" not in text, text  # the main tables': none listed
    assert "Runs that failed: none" in text, text  # the network table's (run.py runs it too)
    assert "## Restore over a real bucket's network" in text, text
    assert table_problems(text) == [], text
    assert "## Every run" in text and "order per run: (" in text, text
    assert "machine:" in text and "Litestream 0.5" in text, text
    assert "python bench/run.py --quick" in text, text
    # The network table says how sidecar restored each time: through the mirror at 30 ms.
    shaped = [ln for ln in text.splitlines() if ln.startswith("- ") and "30 ms / 50 MB/s:" in ln
              and "plain [" in ln]
    assert shaped and all(re.search(r"sidecar restored \['mirror[^']*'\]", ln) for ln in shaped
                          ), text
