#!/usr/bin/env bash
# Print the path of a promtool (Prometheus' rule checker and rule unit-test runner), fetching
# it when needed: from PATH, else $BUILD_DIR/tools/promtool, else extracted from Debian's
# `prometheus` package with `apt-get download` + `dpkg-deb -x` (no install, so no server is
# set up or started; Debian bookworm ships 2.42). Used by scripts/lint.sh and tests/deploy.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
target="$BUILD_DIR/tools/promtool"
if [[ -x "$target" ]]; then
  echo "$target"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  die "promtool not found and no apt-get/dpkg-deb to fetch it: install Prometheus' promtool"
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "$SCRIPT: fetching promtool from Debian's prometheus package" >&2
if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
  [[ "$(id -u)" == 0 ]] || die "apt-get download prometheus failed (run apt-get update as root, or install promtool)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1) || die "apt-get download prometheus failed"
fi
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
mkdir -p "$(dirname "$target")"
install -m 0755 "$tmp/root/usr/bin/promtool" "$target"
echo "$target"
