#!/usr/bin/env bash
# `make image`: builder image -> verified model -> measured -> serving image.
#   1. download the pinned wheels on the host into a cached wheelhouse
#      (containers may not reach the package index, and the image build stays offline)
#   2. build BUILDER_IMAGE from a minimal temporary context
#   3. run it (non-root, read-only root FS, no network) to build MODEL into MODELS
#   4. measure the version's peak RSS in the serving-runtime stand-in on the host
#      (model_builder/compat/memory.py; stored in build_info.json) unless the build did
#   5. build SERVING_IMAGE:<model>-v<version>-<gitsha>[-dirty][-standin]-<digest12> with the
#      version baked in; <digest12> starts the content digest (scripts/lib.sh content_digest:
#      every model file, the baked configs, the Dockerfile with its CMD, the base image's id),
#      so an image that serves anything else never gets the tag of another one; images on the
#      stand-in bases say so in the tag and the label io.scann-serving.standin=true
#   6. record the reference in $BUILD_DIR/last-image and, with the image's labels, in
#      $BUILD_DIR/images/<model>.json for scripts/push-ecr.sh
#
# Env (defaults from versions.env / the Makefile):
#   MODEL, DATASET, BUILD_ARGS, BUILDER_IMAGE, SERVING_IMAGE, PY (python for pip download)
#   MODELS             model base path on the host (default $BUILD_DIR/models)
#   KEEP_VERSIONS      1: bake the new version only (target `single`); 2: also the newest older
#                      version folder next to it, served from a ModelServerConfig with
#                      latest { num_versions: 2 } (target `keep-versions`, a shard's rolling
#                      update). Default: 2 for a model named <name>-shard-<i>, else 1
#   MODEL_DIR          bake this existing version folder (BASE/NAME/VERSION, e.g. from
#                      `make build`) instead of steps 1-3; MODEL is taken from its path
#   BUILDER_BASE_IMAGE, SERVING_BASE_IMAGE   base images (build args)
#   USE_STANDINS=1     build and use the local stand-ins for both base images
#                      (no registry needed; see docker/README.md)
#   BUILD_DIR          outputs and caches (default build/)
#   WHEELHOUSE_DIR     wheel cache, one folder per lock hash (default $BUILD_DIR/wheelhouse)
#   VENV, COMPAT_VENV  the build venv and the serving-runtime stand-in env (step 4)
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO"

if [[ -n "${MODEL_DIR:-}" ]]; then
  [[ -f "$MODEL_DIR/saved_model.pb" ]] || die_usage "MODEL_DIR '$MODEL_DIR' is not a model version folder (no saved_model.pb)"
  MODEL_DIR="$(cd "$MODEL_DIR" && pwd)"
  [[ "$(basename "$MODEL_DIR")" =~ ^[0-9]+$ ]] || die_usage "MODEL_DIR '$MODEL_DIR' must end in a numeric version folder"
  MODEL="$(basename "$(dirname "$MODEL_DIR")")"
fi
MODEL="${MODEL:-$MODEL_NAME}"
DATASET="${DATASET:-movielens-100k}"
BUILD_ARGS="${BUILD_ARGS:-}"
BUILDER_IMAGE="${BUILDER_IMAGE:-scann-serving-builder:$TF_VERSION}"
SERVING_IMAGE="${SERVING_IMAGE:-scann-serving}"
MODELS="${MODELS:-$BUILD_DIR/models}"
[[ "$MODELS" = /* ]] || MODELS="$REPO/$MODELS"
STANDIN_PYTHON_IMAGE="${STANDIN_PYTHON_IMAGE:-scann-serving/python-standin:bookworm}"
STANDIN_SERVING_IMAGE="${STANDIN_SERVING_IMAGE:-scann-serving/tf-serving-standin:$TF_VERSION}"
# The uid/gid the images run as (docker/builder/Dockerfile).
IMAGE_UID=10001

if [[ -z "${KEEP_VERSIONS:-}" ]]; then
  KEEP_VERSIONS=1
  [[ "$MODEL" =~ -shard-[0-9]+$ ]] && KEEP_VERSIONS=2
fi
[[ "$KEEP_VERSIONS" == 1 || "$KEEP_VERSIONS" == 2 ]] || die_usage "KEEP_VERSIONS '$KEEP_VERSIONS' must be 1 or 2"
[[ "$MODEL" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || die_usage "MODEL '$MODEL' is not usable in an image tag (letters, digits, _ . -)"
# Fail now, not at deploy time, on a name Kubernetes cannot take or another model already has.
check_name_unique "$MODEL"
docker info >/dev/null 2>&1 || die "no Docker engine answers (run scripts/engine.sh ensure)"

if [[ "${USE_STANDINS:-0}" == 1 ]]; then
  BUILDER_BASE_IMAGE="$STANDIN_PYTHON_IMAGE"
  SERVING_BASE_IMAGE="$STANDIN_SERVING_IMAGE"
  STANDIN_PYTHON_IMAGE="$STANDIN_PYTHON_IMAGE" "$REPO/docker/standin/python-standin.sh"
fi

python_for_pip() {
  local py
  for py in "${PY:-}" "$VENV/bin/python" "python$PYTHON_VERSION" python3; do
    [[ -n "$py" ]] && "$py" -m pip --version >/dev/null 2>&1 && { echo "$py"; return; }
  done
  die "no python with pip found for downloading wheels (set PY)"
}

# Wheels for CPython 3.11 on x86-64 glibc. pip only expands manylinux2014/2010
# platforms to older tags, so every manylinux_2_N up to the oldest base's glibc
# (bookworm: 2.36) is listed; python:3.11-slim's glibc is at least that new.
wheelhouse() {
  local key dir py platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  local n
  for n in $(seq 5 36); do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  key="$( { cat requirements/build.txt; echo "recbole==$RECBOLE_VERSION"; echo "${platforms[*]}"; } | sha256sum | cut -c1-16)"
  dir="${WHEELHOUSE_DIR:-$BUILD_DIR/wheelhouse}/$key"
  if [[ ! -f "$dir/.complete" ]]; then
    py="$(python_for_pip)"
    echo "$SCRIPT: downloading wheels into $dir" >&2
    rm -rf "$dir" && mkdir -p "$dir"
    # --no-deps: build.txt is a complete lock; the image build runs `pip check`.
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --dest "$dir" \
      --python-version "$PYTHON_VERSION" --implementation cp --abi "cp${PYTHON_VERSION/./}" --abi abi3 --abi none \
      "${platforms[@]}" -r requirements/build.txt "recbole==$RECBOLE_VERSION" \
      2> >(grep -v 'is ignored: it is neither' >&2) \
      || die "pip download of requirements/build.txt failed"
    touch "$dir/.complete"
  fi
  echo "$dir"
}

# Fresh context folders under BUILD_DIR (same filesystem as the wheelhouse,
# so large files are hard-linked, not copied), all removed on exit.
mkdir -p "$BUILD_DIR/contexts"
CONTEXTS="$(mktemp -d "$BUILD_DIR/contexts/run.XXXXXX")"
trap 'rm -rf "$CONTEXTS"' EXIT
new_context() { mktemp -d "$CONTEXTS/$1.XXXXXX"; }

# docker_build LOG_NAME ARGS...: the build log goes to a file and its tail is
# shown on failure, so stdout carries only the final image reference.
docker_build() {
  local log="$BUILD_DIR/logs/$1.log"; shift
  mkdir -p "$BUILD_DIR/logs"
  docker build "$@" > "$log" 2>&1 || { tail -n 40 "$log" >&2; die "docker build failed (full log: $log)"; }
}

build_builder() {
  local wheels ctx
  wheels="$(wheelhouse)"
  ctx="$(new_context builder)"
  cp -al "$wheels" "$ctx/wheelhouse" 2>/dev/null || cp -a "$wheels" "$ctx/wheelhouse"
  rm -f "$ctx/wheelhouse/.complete"
  mkdir -p "$ctx/requirements"
  cp requirements/build.txt "$ctx/requirements/"
  cp versions.env docker/builder/Dockerfile "$ctx/"
  # The serving image's batching file: the build checks the version against it (serving rules)
  # and times --optimize throughput at its execution batch, as a build from a checkout does.
  mkdir -p "$ctx/config"
  cp k8s/base/config/batching_parameters.txt "$ctx/config/"
  [[ -f model_builder/__main__.py ]] || die "model_builder/__main__.py missing: the builder image runs python -m model_builder"
  # The package only: no caches, tests or data.
  tar -C "$REPO" --exclude='__pycache__' --exclude='*.pyc' -cf - model_builder | tar -C "$ctx" -xf -
  echo "$SCRIPT: building $BUILDER_IMAGE from $BUILDER_BASE_IMAGE" >&2
  docker_build builder \
    --build-arg "BUILDER_BASE_IMAGE=$BUILDER_BASE_IMAGE" \
    --build-arg "RECBOLE_VERSION=$RECBOLE_VERSION" \
    --build-arg "TF_VERSION=$TF_VERSION" \
    --build-arg "SCANN_VERSION=$SCANN_VERSION" \
    --build-arg "GIT_COMMIT=$(git_sha)" \
    -t "$BUILDER_IMAGE" "$ctx"
}

build_model() {
  local user_args=() build_args=()
  mkdir -p "$MODELS/$MODEL"
  if [[ "$(id -u)" == 0 ]]; then
    # Root on the host: keep the image's non-root user and let it write here.
    chown "$IMAGE_UID:$IMAGE_UID" "$MODELS" "$MODELS/$MODEL"
  else
    # A non-root caller: run as the caller so the files belong to them.
    user_args=(--user "$(id -u):$(id -g)")
  fi
  # shellcheck disable=SC2206 # BUILD_ARGS is a flag list, split on purpose
  build_args=($BUILD_ARGS)
  echo "$SCRIPT: building model $MODEL ($DATASET) into $MODELS" >&2
  docker run --rm "${user_args[@]}" \
    --read-only --tmpfs /tmp --network none \
    --cap-drop ALL --security-opt no-new-privileges \
    -v "$MODELS:/models" \
    "$BUILDER_IMAGE" build --dataset "$DATASET" --out /models --model-name "$MODEL" "${build_args[@]}" >&2 \
    || die "model build failed (the builder exits non-zero when verification fails)"
}

newest_version() {
  local v
  v="$(find "$MODELS/$MODEL" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' | sort -n | tail -n 1)"
  [[ -n "$v" ]] || die "no numeric version folder in $MODELS/$MODEL"
  echo "$v"
}

check_layout() {
  local dir="$1" f
  for f in saved_model.pb variables assets.extra/tf_serving_warmup_requests assets.extra/build_info.json; do
    [[ -e "$dir/$f" ]] || die "$dir lacks $f: not a complete TF Serving version folder"
  done
}

build_serving_standin() {
  echo "$SCRIPT: building stand-in $STANDIN_SERVING_IMAGE from $BUILDER_IMAGE" >&2
  docker_build serving-standin --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" \
    --label io.scann-serving.standin=true -t "$STANDIN_SERVING_IMAGE" "$REPO/docker/standin/serving"
}

# measure_memory DIR: peak RSS of loading + warming DIR in the serving-runtime stand-in, unless
# the build measured it already (a host build with the compat env does; the builder image cannot).
measure_memory() {
  local dir="$1" py
  py="$(build_python)"
  if ! "$py" - "$dir/assets.extra/build_info.json" <<'PY'
import json, sys
sys.exit(0 if (json.load(open(sys.argv[1])).get("memory") or {}).get("peak_rss_bytes") else 1)
PY
  then
    echo "$SCRIPT: measuring peak RSS of $dir in the serving-runtime stand-in (TF $COMPAT_TF_VERSION C API)" >&2
    PYTHONPATH="$REPO" "$py" -m model_builder.compat.memory "$dir" --write >/dev/null \
      || die "memory measurement of $dir failed (make compat-venv; the message above says why)"
  fi
  "$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["memory"]["peak_rss_bytes"])' \
    "$dir/assets.extra/build_info.json"
}

# load_seconds DIR: load + warmup seconds measured with the memory (build_info.json), which
# release.sh turns into the startupProbe budget.
load_seconds() {
  "$(build_python)" -c 'import json, sys; m = json.load(open(sys.argv[1]))["memory"]; print(round(m.get("load_seconds", 0) + m.get("warmup_seconds", 0), 3))' \
    "$1/assets.extra/build_info.json"
}

# is_standin IMAGE: true for the local stand-ins of the base images (by name, or by the
# io.scann-serving.standin label they carry), which must never reach production.
is_standin() {
  [[ "${USE_STANDINS:-0}" == 1 || "$1" == "$STANDIN_SERVING_IMAGE" || "$1" == "$STANDIN_PYTHON_IMAGE" ]] && return 0
  [[ "$(docker image inspect --format '{{index .Config.Labels "io.scann-serving.standin"}}' "$1" 2>/dev/null)" == true ]]
}

# previous_version DIR: the newest numeric version folder older than DIR next to it (empty if none).
previous_version() {
  local dir="$1" v
  v="$(find "$(dirname "$dir")" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' \
    | awk -v new="$(basename "$dir")" '$1 + 0 < new + 0' | sort -n | tail -n 1)"
  [[ -z "$v" ]] || echo "$(dirname "$dir")/$v"
}

# model_config NAME: the ModelServerConfig (text proto) of the keep-versions target.
model_config() {
  cat <<EOF
# Baked by docker/build-images.sh (KEEP_VERSIONS=2): the previous version stays loaded next to the
# new one, so a sharded rollout serves the previous version until every shard has the new one.
model_config_list {
  config {
    name: "$1"
    base_path: "/models/$1"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
  }
}
EOF
}

build_serving() {
  local dir="$1" version sha digest content peak tag ctx base_id standin=false marker="" dirty=false
  local prev="" prev_version prev_peak load versions per_version target=single keep_args=()
  version="$(basename "$dir")"
  sha="$(git_sha)"
  [[ "$sha" == *-dirty ]] && dirty=true
  # Measured first: the measurement is written into build_info.json, which the digests cover.
  peak="$(measure_memory "$dir")"
  load="$(load_seconds "$dir")"
  digest="$(model_digest "$dir")"
  ctx="$(new_context serving)"
  mkdir -p "$ctx/models/$MODEL" "$ctx/config"
  cp -a "$dir" "$ctx/models/$MODEL/$version"
  if [[ "$KEEP_VERSIONS" == 2 ]]; then
    target=keep-versions
    versions="$version"
    per_version="$version=$peak"
    prev="$(previous_version "$dir")"
    if [[ -n "$prev" ]]; then
      check_layout "$prev"
      # A pod holds both versions: memory is the sum of their measured peaks, and the startup
      # budget the sum of their load + warmup times (k8s/README.md "Sharding").
      prev_version="$(basename "$prev")"
      prev_peak="$(measure_memory "$prev")"
      peak=$((peak + prev_peak))
      load="$(awk -v a="$load" -v b="$(load_seconds "$prev")" 'BEGIN { printf "%.3f", a + b }')"
      versions="$prev_version,$version"
      per_version="$prev_version=$prev_peak,$per_version"
      cp -a "$prev" "$ctx/models/$MODEL/$prev_version"
    else
      echo "$SCRIPT: no version of $MODEL older than $version in $(dirname "$dir"): baking $version alone" >&2
    fi
    mkdir -p "$ctx/model-config"
    model_config "$MODEL" > "$ctx/model-config/models.config"
    keep_args=(--build-arg "MODEL_VERSIONS=$versions" --build-arg "PEAK_RSS_BYTES_PER_VERSION=$per_version")
  fi
  # One source for the server configs: the files the k8s ConfigMap mounts.
  cp k8s/base/config/batching_parameters.txt k8s/base/config/monitoring_config.txt "$ctx/config/"
  install -m 0755 docker/serving/model-ready "$ctx/model-ready"
  cp docker/serving/Dockerfile "$ctx/"
  docker image inspect "$SERVING_BASE_IMAGE" >/dev/null 2>&1 || docker pull --quiet "$SERVING_BASE_IMAGE" >/dev/null \
    || die "base image $SERVING_BASE_IMAGE is not in the engine and \`docker pull\` failed"
  base_id="$(docker image inspect --format '{{.Id}}' "$SERVING_BASE_IMAGE")"
  content="$(content_digest "$ctx" "$base_id" "MODEL=$MODEL" "MODEL_VERSION=$version" "TARGET=$target")"
  if is_standin "$SERVING_BASE_IMAGE"; then standin=true; marker="-standin"; fi
  tag="$SERVING_IMAGE:$MODEL-v$version-$sha$marker-${content:7:12}"
  echo "$SCRIPT: building $tag ($target${prev:+, with v${prev##*/}}) from $SERVING_BASE_IMAGE" >&2
  docker_build serving --target "$target" "${keep_args[@]}" \
    --build-arg "SERVING_BASE_IMAGE=$SERVING_BASE_IMAGE" \
    --build-arg "MODEL=$MODEL" \
    --build-arg "MODEL_VERSION=$version" \
    --build-arg "MODEL_DIGEST=$digest" \
    --build-arg "PEAK_RSS_BYTES=$peak" \
    --build-arg "GIT_COMMIT=$sha" \
    --build-arg "GIT_DIRTY=$dirty" \
    --build-arg "TF_VERSION=$TF_VERSION" \
    --build-arg "SCANN_VERSION=$SCANN_VERSION" \
    --build-arg "COMPAT_TF_VERSION=$COMPAT_TF_VERSION" \
    --label "io.scann-serving.content.digest=$content" \
    --label "io.scann-serving.base.id=$base_id" \
    --label "io.scann-serving.standin=$standin" \
    --label "io.scann-serving.startup.load-seconds=$load" \
    -t "$tag" "$ctx"
  mkdir -p "$BUILD_DIR/images"
  echo "$tag" > "$BUILD_DIR/last-image"
  # The labels as the engine reports them: what push and deploy read.
  docker image inspect --format '{{json .Config.Labels}}' "$tag" | image_record "$tag" > "$BUILD_DIR/images/$MODEL.json"
  echo "$tag"
}

if [[ -n "${MODEL_DIR:-}" ]]; then
  check_layout "$MODEL_DIR"
  # The stand-in serves with this checkout's server: rebuilt every time (layer cache keeps it
  # cheap), or an older stand-in left on the engine would test older server code.
  if [[ "${USE_STANDINS:-0}" == 1 ]]; then
    build_builder
    build_serving_standin
  fi
  build_serving "$MODEL_DIR"
else
  build_builder
  build_model
  version="$(newest_version)"
  check_layout "$MODELS/$MODEL/$version"
  [[ "${USE_STANDINS:-0}" == 1 ]] && build_serving_standin
  build_serving "$MODELS/$MODEL/$version"
fi
