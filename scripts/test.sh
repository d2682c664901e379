#!/usr/bin/env bash
# The test command: set up (idempotent), lint, then run the whole suite with the real
# Litestream binary, a real S3 server (rclone serve s3), real Prometheus and Prisma.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -p no:cacheprovider -q "$@"
