#!/usr/bin/env bash
# Build scann-serving/python-standin:bookworm, a stand-in for python:3.11-slim
# where no image registry is reachable: Debian bookworm (Python 3.11, like
# python:3.11-slim) bootstrapped from Debian's package archive and imported.
# Used as BUILDER_BASE_IMAGE in CI. Skips when the image already exists
# (FORCE=1 rebuilds). Needs root (debootstrap) and a Docker engine.
#
# Env: STANDIN_PYTHON_IMAGE (tag), DEBIAN_MIRROR, DEBIAN_SUITE.
set -euo pipefail
# shellcheck source=../../scripts/lib.sh
source "$(dirname "$0")/../../scripts/lib.sh"

IMAGE="${STANDIN_PYTHON_IMAGE:-scann-serving/python-standin:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${DEBIAN_SUITE:-bookworm}"

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$SCRIPT: $IMAGE exists; skipping (FORCE=1 rebuilds)" >&2
  exit 0
fi
[[ "$(id -u)" == 0 ]] || die "debootstrap needs root to build $IMAGE"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found (scripts/engine.sh test-tools installs it)"

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/python-standin.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT

echo "$SCRIPT: debootstrap $SUITE from $MIRROR (about a minute)" >&2
# minbase + python3/python3-venv/ca-certificates: what python:3.11-slim offers
# the builder (a python3 with venv); bash, useradd and coreutils come with minbase.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$rootfs" "$MIRROR" > "$rootfs.log" 2>&1 \
  || { tail -n 5 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap $SUITE failed"; }
rm -f "$rootfs.log"
# Package lists and caches are dead weight in an image.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb

# `docker import` gives an image without config: set what python:3.11-slim sets.
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --change 'LABEL io.scann-serving.standin=true' \
  --message "debootstrap --variant=minbase $SUITE (scann-serving stand-in for $BUILDER_BASE_IMAGE)" \
  - "$IMAGE" >/dev/null
echo "$SCRIPT: built $IMAGE" >&2
