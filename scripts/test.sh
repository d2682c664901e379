#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then run the whole suite with the real
# Litestream binary, a real S3 server (rclone serve s3), real Prometheus and Prisma.
# `-rs` lists every skipped test with its reason in the summary (with CI=true there are none:
# a missing real part fails). `--durations=20` ends every run with its 20 slowest tests (where
# the suite's time goes). Arguments pick a tier or file: ./scripts/test.sh tests/unit
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -p no:cacheprovider -q -rs --durations=20 "$@"
