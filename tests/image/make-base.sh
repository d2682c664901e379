#!/usr/bin/env bash
# Makes a local stand-in for the Dockerfile's base image (node:20.x-bookworm-slim), which
# cannot be pulled here: Debian bookworm (minbase) plus this machine's Node 20 and npm, in the
# places the real image has them (/usr/local/bin, /usr/local/lib/node_modules), imported under
# the real image's name so `podman build` uses it instead of pulling.
#
# What only this machine needs stays here, never in the Dockerfile: its registries are reached
# through a proxy whose CA is in the host's bundle, so the bundle and its source certificates
# are copied in (an apt step that installs ca-certificates regenerates the bundle from
# /usr/local/share/ca-certificates), the CA variables point at it, and node-gyp gets the
# host's Node headers instead of downloading them.
#
# usage: tests/image/make-base.sh IMAGE_NAME   (skips the work when IMAGE_NAME is already
# this stand-in, made by this version of the script)
set -euo pipefail
name=$1
here=$(cd "$(dirname "$0")" && pwd)
stamp=$(cat "$0" "$here/containers.conf" | sha256sum | cut -c1-16)
podman_() { podman --runtime runc "$@"; }

if podman_ image exists "$name" && \
   [ "$(podman_ image inspect --format '{{index .Labels "sidecar.stand-in"}}' "$name")" = "$stamp" ]; then
  echo "make-base: $name is already the stand-in ($stamp)" >&2
  exit 0
fi

node_bin=$(command -v node)
npm_dir=$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")
case "$("$node_bin" --version)" in v20.*) ;; *) echo "make-base: need Node 20 on the host" >&2; exit 1;; esac
[ -d /usr/include/node ] || { echo "make-base: need the host's /usr/include/node" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "make-base: mmdebstrap bookworm (about 30 s)" >&2
mmdebstrap --quiet --variant=minbase --include=ca-certificates \
  --customize-hook='mkdir -p "$1/usr/local/bin" "$1/usr/local/lib/node_modules" "$1/usr/local/include"' \
  --customize-hook="cp '$node_bin' \"\$1/usr/local/bin/node\"" \
  --customize-hook="cp -a '$npm_dir' \"\$1/usr/local/lib/node_modules/npm\"" \
  --customize-hook='ln -s ../lib/node_modules/npm/bin/npm-cli.js "$1/usr/local/bin/npm"' \
  --customize-hook='ln -s ../lib/node_modules/npm/bin/npx-cli.js "$1/usr/local/bin/npx"' \
  --customize-hook='cp -a /usr/include/node "$1/usr/local/include/node"' \
  --customize-hook='cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true' \
  --customize-hook='cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"' \
  bookworm "$work/base.tar"

bundle=/etc/ssl/certs/ca-certificates.crt
podman_ import \
  --change "LABEL sidecar.stand-in=$stamp" \
  --change "ENV NODE_VERSION=$("$node_bin" --version | tr -d v)" \
  --change "ENV NODE_EXTRA_CA_CERTS=$bundle" --change "ENV PIP_CERT=$bundle" \
  --change "ENV REQUESTS_CA_BUNDLE=$bundle" --change "ENV SSL_CERT_FILE=$bundle" \
  --change "ENV npm_config_nodedir=/usr/local" \
  --change 'CMD ["node"]' \
  "$work/base.tar" "$name" >/dev/null
echo "make-base: imported $name" >&2
