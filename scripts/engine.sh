#!/usr/bin/env bash
# Make sure a Docker engine answers, or fail loudly. Never skips: the docker
# tests and `make image` are worthless without one.
#
# Usage: scripts/engine.sh ensure | test-tools
#   ensure (make image, make docker-engine):
#   - `docker info` works already (Docker Desktop, a CI runner's engine, a
#     remote DOCKER_HOST)                    -> nothing installed, nothing started
#   - no daemon answering, docker.io missing
#     and we are root                        -> apt-get install docker.io
#   - no daemon answering and we are root    -> start dockerd in the background
#     (log: $DOCKERD_LOG, extra flags: $DOCKERD_ARGS) and wait up to
#     $DOCKERD_WAIT_S seconds
#   - otherwise                              -> one-line error, exit 1
#   test-tools (make test): also debootstrap (builds the stand-in base image,
#   USE_STANDINS=1) and docker-registry (the push target of the ECR tests),
#   installed as root when missing.
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/scann-serving-dockerd.log}"
DOCKERD_WAIT_S="${DOCKERD_WAIT_S:-60}"
# Extra dockerd flags, e.g. --data-root on a bigger disk (split on spaces).
DOCKERD_ARGS="${DOCKERD_ARGS:-}"

die() { echo "engine.sh: $*" >&2; exit 1; }

engine_up() { docker info >/dev/null 2>&1; }

# apt_install PACKAGE...: install Debian packages as root, or fail naming the command.
apt_install() {
  [[ "$(id -u)" == 0 ]] || die "missing $*; install them as root: apt-get install -y $*"
  command -v apt-get >/dev/null 2>&1 || die "missing $* and no apt-get to install them"
  echo "engine.sh: installing $*" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

install_test_tools() {
  local missing=()
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
}

start_daemon() {
  [[ "$(id -u)" == 0 ]] || die "no Docker engine answers and only root can start dockerd (start it, or add yourself to the docker group)"
  command -v dockerd >/dev/null 2>&1 || die "dockerd not found after install"
  if pgrep -x dockerd >/dev/null 2>&1; then
    echo "engine.sh: dockerd is running but not answering yet; waiting" >&2
  else
    echo "engine.sh: starting dockerd (log: $DOCKERD_LOG)" >&2
    # setsid + nohup: the daemon must outlive this script and the make recipe.
    # shellcheck disable=SC2086 # DOCKERD_ARGS is a flag list, split on purpose
    setsid nohup dockerd $DOCKERD_ARGS >>"$DOCKERD_LOG" 2>&1 < /dev/null &
  fi
  local waited=0
  until engine_up; do
    ((waited >= DOCKERD_WAIT_S)) && die "dockerd did not answer within ${DOCKERD_WAIT_S}s; last log lines: $(tail -n 3 "$DOCKERD_LOG" 2>/dev/null | tr '\n' ' ')"
    sleep 1
    waited=$((waited + 1))
  done
}

ensure() {
  if ! engine_up; then
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
      apt_install docker.io
    fi
    start_daemon
  fi
  echo "engine.sh: Docker engine $(docker version --format '{{.Server.Version}}' 2>/dev/null) ready" >&2
}

case "${1:-}" in
  ensure) ensure ;;
  test-tools) ensure; install_test_tools ;;
  *) echo "usage: scripts/engine.sh ensure | test-tools" >&2; exit 2 ;;
esac
