#!/usr/bin/env bash
# Builds the repository's Dockerfile, unchanged, with podman, the way CI proves the image
# (tests/e2e/test_image.py runs it, then runs the container). The base image cannot be pulled on
# these machines, so tests/image/make-base.sh first makes a local stand-in under the real
# name; everything that only this machine needs (its proxy CA) stays in that stand-in.
# Layers are cached in podman's store, so a rebuild after a change to sidecar/ only redoes
# the steps from there on.
#
# usage: scripts/image-build.sh [TAG]      (default sidecar-example:test)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-sidecar-example:test}
export CONTAINERS_CONF=$PWD/tests/image/containers.conf

for tool in podman runc mmdebstrap newuidmap node; do
  command -v "$tool" >/dev/null || {
    echo "image-build: $tool is missing; run ./scripts/setup.sh as root" >&2; exit 1; }
done

bases=$(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' Dockerfile | grep -v '^[a-z]*$' | sort -u)
[ "$(printf '%s\n' "$bases" | wc -l)" = 1 ] || {
  echo "image-build: expected one base image in the Dockerfile, found: $bases" >&2; exit 1; }
case "$bases" in
  node:20*-bookworm-slim) ;;
  *) echo "image-build: no stand-in recipe for base $bases" >&2; exit 1;;
esac
tests/image/make-base.sh "docker.io/library/$bases"

echo "image-build: podman build -t $tag ." >&2
podman --runtime runc build --network host --layers -t "$tag" . >&2
echo "$tag"
