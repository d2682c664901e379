#!/usr/bin/env bash
# The quick start: set up this machine, then show sidecar doing its job for real against a
# local S3 server (rclone serve s3 on 127.0.0.1): a fresh start, rows replicated, a clean
# shutdown, the database deleted, and the next start restoring every row.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python examples/demo/demo.py "$@"
