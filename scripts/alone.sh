#!/usr/bin/env bash
# Order independence: a random sample of test files (4 unit files and 2 e2e files without the
# slow mark), each run alone in its own pytest process with its tests in a shuffled order, so a
# test that passes only after another one ran fails here. Any failure fails the script.
# The seed is printed; ALONE_SEED=N ./scripts/alone.sh runs the same sample in the same order.
# Run after ./scripts/test.sh (it sets up the machine and the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${ALONE_SEED:-$(( (RANDOM << 15) | RANDOM ))}"
echo "test files alone: seed $seed (ALONE_SEED=$seed ./scripts/alone.sh repeats this sample)"
mapfile -t files < <(.venv/bin/python - "$seed" <<'PY'
import random
import sys
from pathlib import Path

rng = random.Random(int(sys.argv[1]))
unit = sorted(str(p) for p in Path("tests/unit").glob("test_*.py"))
fast = sorted(str(p) for p in Path("tests/e2e").glob("test_*.py")
              if "mark.slow" not in p.read_text())
for path in rng.sample(unit, min(4, len(unit))) + rng.sample(fast, min(2, len(fast))):
    print(path)
PY
)
if ((${#files[@]} != 6)); then
    echo "expected 4 unit and 2 e2e test files to sample, got: ${files[*]:-none}" >&2
    exit 1
fi
failed=()
for f in "${files[@]}"; do
    echo "--- $f alone (--shuffle=$seed)"
    if ! .venv/bin/python -m pytest -p no:cacheprovider -q -rs --shuffle="$seed" "$f"; then
        failed+=("$f")
    fi
done
if ((${#failed[@]})); then
    echo "failed when run alone (seed $seed): ${failed[*]}" >&2
    exit 1
fi
echo "all ${#files[@]} sampled test files pass alone (seed $seed)"
