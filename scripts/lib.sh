# Shared by the scripts/*.sh and docker/*.sh scripts (sourced, not run).
# Gives: REPO, BUILD_DIR, K8S_DIR, VENV, TOOLS_VENV, die(), die_usage(), tool(), git_sha(),
# model_digest(), content_digest(), k8s_name(), check_name_unique(), build_python(), any_python(), image_record(),
# record_field(), and every versions.env key
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
# The Kubernetes files; release.sh writes k8s/models/<model>/<env>/ here (tests point it at a copy).
K8S_DIR="${K8S_DIR:-$REPO/k8s}"
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

# model_digest DIR: "sha256:<hex>" over every file of a model version folder (relative path
# and content of each; hidden temp files left out). build_info.json counts too: it is served
# with the model (assets.extra), so two builds are the same model only when every byte is.
# Recompute by hand: cd DIR && find . -type f ! -name '.*' -print0 \
#   | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum
model_digest() {
  local dir="$1" sum
  [[ -f "$dir/saved_model.pb" ]] || die "$dir is not a model version folder (no saved_model.pb)"
  sum="$(cd "$dir" && find . -type f ! -name '.*' -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
  echo "sha256:$sum"
}

# content_digest CONTEXT BASE_ID ARGS...: "sha256:<hex>" over what decides what an image serves:
# every file of its build context (the model version, the baked configs, the readiness helper,
# the Dockerfile with its CMD, ENV and USER), the base image's content-addressed id, and the
# build arguments that change files or ENV (ARGS, e.g. MODEL=scann_model). Labels that only
# describe the build (commit, timestamps) are not in it.
content_digest() {
  local ctx="$1" base_id="$2"; shift 2
  [[ "$base_id" =~ ^sha256:[0-9a-f]{64}$ ]] || die "content_digest: base image id '$base_id' is not a sha256 digest"
  {
    echo "base $base_id"
    printf 'arg %s\n' "$@"
    (cd "$ctx" && find . -type f ! -name '.*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1 | sed 's/^/sha256:/'
}

# k8s_name MODEL: the model name as a DNS-1123 label for Kubernetes object names
# (scann_model_items -> scann-model-items); at most 40 characters so that
# "<name>-serving-headless" stays a valid Service name (63).
k8s_name() {
  local name
  name="$(tr 'A-Z_.' 'a-z--' <<< "$1")"
  [[ "$name" =~ ^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$ ]] \
    || die_usage "model name '$1' gives '$name', not a Kubernetes name (letters, digits, - _ ., at most 40, alphanumeric at both ends)"
  echo "$name"
}

# check_name_unique MODEL: refuse (exit 2, one line) a model whose Kubernetes name is already
# taken by another model name (scann_model, scann-model and Scann.Model all give scann-model,
# so their Deployments would overwrite each other): the names are the folders of released
# models ($K8S_DIR/models/*) and of built images ($BUILD_DIR/images/*.json).
check_name_unique() {
  local model="$1" name other path
  name="$(k8s_name "$model")"
  for path in "$K8S_DIR"/models/*/ "$BUILD_DIR"/images/*.json; do
    [[ -e "$path" ]] || continue
    other="$(basename "${path%/}" .json)"
    [[ "$other" != "$model" && "$other" != README.md ]] || continue
    [[ "$(tr 'A-Z_.' 'a-z--' <<< "$other")" == "$name" ]] \
      && die_usage "model name '$model' and the existing model '$other' both give the Kubernetes name '$name': rename one of them"
  done
  return 0
}

# build_python: the build venv's python (TensorFlow, tensorflow-serving-api, the package).
build_python() {
  [[ -x "$VENV/bin/python" ]] || die "$VENV/bin/python missing: run \`make venv\`"
  echo "$VENV/bin/python"
}

# any_python: a Python 3 for the small JSON/YAML helpers here (standard library only).
any_python() {
  local py
  for py in "$VENV/bin/python" "$TOOLS_VENV/bin/python" python3; do
    command -v "$py" >/dev/null 2>&1 && { command -v "$py"; return; }
  done
  die "no python3 found (run \`make venv\`)"
}

# image_record REF < labels.json: the record push and deploy read ({"image": REF, "labels": {...}}).
image_record() {
  "$(any_python)" -c 'import json, sys; print(json.dumps({"image": sys.argv[1], "labels": json.load(sys.stdin)}, indent=1, sort_keys=True))' "$1"
}

# record_field FILE KEY: a field of an image record: "image" or a label name.
record_field() {
  "$(any_python)" -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["image"] if sys.argv[2] == "image" else (r["labels"] or {}).get(sys.argv[2], ""))' "$1" "$2"
}
