"""The benchmark command still runs end to end (tiny sizes), so bench/ cannot rot. It checks
that a table comes out, not what the timings are: performance is measured, not asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=280,
                              check=False)
    except subprocess.TimeoutExpired as exc:  # a hung run counts as a failed one
        return subprocess.CompletedProcess(argv, -1, str(exc.stdout or ""), "timed out")


@pytest.mark.timeout(620)
def test_bench_quick_writes_the_table(tmp_path: Path) -> None:
    """`python bench/run.py --quick` with a 1 MB restore exits 0 and writes a table with every
    measure for both entrypoints, the machine, the versions and the command."""
    out = tmp_path / "results.md"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--sizes", "1",
            "--resource-seconds", "1", "--out", str(out)]
    res = _run(argv)
    if res.returncode != 0:
        # The bench drives many real processes against a real S3 server; on a loaded CI
        # machine one run has been seen to fail in the plain run.sh's restore. One more try:
        # this smoke test checks that the bench runs and reports, not its timings.
        first = res.stdout[-1500:] + res.stderr[-1500:]
        res = _run(argv)
        assert res.returncode == 0, (first + "\n--- second try ---\n" +
                                     res.stdout[-3000:] + res.stderr[-3000:])
    text = out.read_text()
    assert "| section | measure | sidecar | plain run.sh |" in text
    for measure in ("empty bucket", "restore of 1 MB", "restore throughput",
                    "rows lost on SIGTERM, app exits 0", "rows lost on SIGTERM, app exits 3",
                    "window lost on SIGKILL", "CPU, % of one core, idle", "RSS, MB"):
        row = next((ln for ln in text.splitlines() if measure in ln and ln.startswith("|")), None)
        assert row is not None, f"no row for {measure!r}:\n{text}"
        assert "| - |" not in row.split(measure, 1)[1].split("|", 2)[1] + "|", row
    assert "machine:" in text and "Litestream" in text and "python bench/run.py --quick" in text
    assert "Runs that failed" not in text, text
