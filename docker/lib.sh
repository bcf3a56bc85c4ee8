# Shared by the docker/*.sh scripts (sourced, not run).
# Gives: REPO, BUILD_DIR, VENV, TOOLS_VENV, die(), tool(), and every versions.env key
# as a shell variable unless the caller's environment already set it, so
# `BUILDER_BASE_IMAGE=... docker/build-images.sh` overrides the default.
# shellcheck shell=bash

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT="$(basename "$0")"

die() { echo "$SCRIPT: $*" >&2; exit "${DIE_CODE:-1}"; }
# Missing configuration is a usage error (exit 2), distinct from a failed step.
die_usage() { DIE_CODE=2 die "$@"; }

load_versions() {
  local line key value
  while IFS= read -r line || [[ -n "$line" ]]; do
    [[ "$line" =~ ^([A-Z_][A-Z0-9_]*)=(.*)$ ]] || continue
    key="${BASH_REMATCH[1]}"
    value="${BASH_REMATCH[2]}"
    # Environment wins; an empty value counts as unset (make passes `VAR=`).
    [[ -n "${!key:-}" ]] || printf -v "$key" '%s' "$value"
    export "${key?}"
  done < "$REPO/versions.env"
}
load_versions

BUILD_DIR="${BUILD_DIR:-$REPO/build}"
# Venv locations: the Makefile's VENV / TOOLS_VENV (exported), repo-relative by default.
VENV="${VENV:-.venv}"
[[ "$VENV" = /* ]] || VENV="$REPO/$VENV"
TOOLS_VENV="${TOOLS_VENV:-.venv-tools}"
[[ "$TOOLS_VENV" = /* ]] || TOOLS_VENV="$REPO/$TOOLS_VENV"

# The legacy builder works with every engine and client found here (the
# preinstalled 28.x client has no buildx, so BuildKit fails); the Dockerfiles
# use nothing BuildKit-only, so DOCKER_BUILDKIT=1 works where buildx exists.
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"

# tool NAME: the pinned copy from the tools venv when present, else PATH.
tool() {
  if [[ -x "$TOOLS_VENV/bin/$1" ]]; then
    echo "$TOOLS_VENV/bin/$1"
  elif command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  else
    die "$1 not found (run \`make tools-venv\` or put $1 on PATH)"
  fi
}

# Short commit of the working tree, "-dirty" when it has uncommitted changes,
# "nogit" outside a repository or before the first commit.
git_sha() {
  local sha
  sha="$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null)" || { echo nogit; return; }
  if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    sha="$sha-dirty"
  fi
  echo "$sha"
}
