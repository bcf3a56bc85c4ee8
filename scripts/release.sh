#!/usr/bin/env bash
# `make release` (and the last step of `make push`): write the deploy state of one model in one
# environment into git-tracked files, from the labels of its pushed image:
#   $K8S_DIR/models/<model>/<env>/release.yaml        the image by digest and what the build
#                                                     measured (a local-config ConfigMap:
#                                                     read by kustomize, never applied)
#   $K8S_DIR/models/<model>/<env>/kustomization.yaml  overlay <env> + the model's names, labels,
#                                                     selectors, MODEL_NAME, memory, startup budget
# `kubectl apply -k k8s/models/<model>/<env>` (make deploy, Argo CD, Flux) applies exactly that;
# a rollback is `git revert` of the commit that changed the two files.
#
# Refused (exit 2, one line): a record without the build's labels; for every env but dev, an
# image built from a dirty work tree or on a stand-in base (ALLOW_STANDIN=1 overrides the
# latter); a model name whose Kubernetes name another model has; a memory limit below the
# measured peak RSS plus headroom (scripts/k8s_memory.py). Nothing is written then.
#
# Env: MODEL (read $BUILD_DIR/pushed/<model>.json), RECORD (an image record: {"image", "labels"}),
#      IMAGE (REGISTRY/REPO:TAG@sha256:DIGEST; labels from RECORD, else from the local engine),
#      OVERLAY (env: dev | prod, default prod), COMPONENTS (per-model components of
#      k8s/components, e.g. scale-on-load), MEMORY (measured | a quantity; default: the
#      overlay's, checked), K8S_DIR (default k8s/).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

OVERLAY="${OVERLAY:-prod}"
[[ "$OVERLAY" =~ ^[a-z0-9-]+$ && -f "$K8S_DIR/overlays/$OVERLAY/kustomization.yaml" ]] \
  || die_usage "OVERLAY '$OVERLAY' is not an environment in $K8S_DIR/overlays ($(find "$K8S_DIR/overlays" -mindepth 1 -maxdepth 1 -type d -printf '%f ' | sort))"
KUBECTL="$(tool kubectl)"
PY="$(tool python)"
"$PY" -c 'import yaml' 2>/dev/null || die "$PY cannot import yaml: run \`make tools-venv\`"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- the record: image reference + labels
if [[ -z "${RECORD:-}" && -n "${IMAGE:-}" ]]; then
  { command -v docker >/dev/null 2>&1 && docker image inspect "$IMAGE" >/dev/null 2>&1; } \
    || die_usage "no labels for $IMAGE: give RECORD=<file from build/pushed/> or pull the image first"
  RECORD="$work/record.json"
  docker image inspect --format '{{json .Config.Labels}}' "$IMAGE" | image_record "$IMAGE" > "$RECORD"
elif [[ -z "${RECORD:-}" ]]; then
  [[ -n "${MODEL:-}" ]] || die_usage "set MODEL (releases \$BUILD_DIR/pushed/<model>.json), RECORD or IMAGE"
  RECORD="$BUILD_DIR/pushed/$MODEL.json"
  [[ -s "$RECORD" ]] || die_usage "no pushed image for model $MODEL: run \`make push MODEL=$MODEL\` first"
fi
[[ -s "$RECORD" ]] || die_usage "RECORD '$RECORD' does not exist"
IMAGE="${IMAGE:-$(record_field "$RECORD" image)}"
label() {
  local value
  value="$(record_field "$RECORD" "io.scann-serving.$1")"
  [[ -n "$value" && "$value" != unknown ]] || die_usage "$IMAGE has no label io.scann-serving.$1: rebuild it with \`make image\` and push it"
  echo "$value"
}
model="$(label model.name)"
version="$(label model.version)"
content="$(label content.digest)"
peak="$(label memory.peak-rss-bytes)"
load="$(label startup.load-seconds)"
dirty="$(label git.dirty)"
standin="$(record_field "$RECORD" io.scann-serving.standin)"
# A shard's keep-versions image (docker/serving/Dockerfile): two versions, served from its baked
# ModelServerConfig; its memory label is already the sum of both versions' measured peaks.
config_file="$(record_field "$RECORD" io.scann-serving.model.config-file)"
versions="" peak_per_version=""
if [[ -n "$config_file" ]]; then
  versions="$(label model.versions)"
  peak_per_version="$(label memory.peak-rss-bytes-per-version)"
  [[ "$config_file" =~ ^/[A-Za-z0-9_./-]+$ ]] || die_usage "$IMAGE: label io.scann-serving.model.config-file='$config_file' is not an absolute path"
fi
[[ "$peak" =~ ^[0-9]+$ ]] || die_usage "$IMAGE: label io.scann-serving.memory.peak-rss-bytes='$peak' is not a byte count"
[[ "$load" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die_usage "$IMAGE: label io.scann-serving.startup.load-seconds='$load' is not a number"
[[ -z "${MODEL:-}" || "$MODEL" == "$model" ]] || die_usage "IMAGE $IMAGE serves model $model, not MODEL=$MODEL"
# A digest names the bytes for good; dev also takes a local tag (an image loaded into kind).
[[ "$OVERLAY" == dev || "$IMAGE" =~ @sha256:[0-9a-f]{64}$ ]] \
  || die_usage "IMAGE '$IMAGE' is not pinned by digest (REGISTRY/REPO:TAG@sha256:...): push it with \`make push\`"
name="$(k8s_name "$model")"
check_name_unique "$model"
if [[ "$OVERLAY" != dev && "$dirty" != false ]]; then
  die_usage "$IMAGE was built from a work tree with uncommitted changes (git.dirty=$dirty): only the dev overlay takes such images; commit, then make image && make push"
fi
if [[ "$OVERLAY" != dev && "$standin" == true && "${ALLOW_STANDIN:-0}" != 1 ]]; then
  die_usage "$IMAGE is built on a stand-in base image, not the real TF Serving: only the dev overlay takes it (ALLOW_STANDIN=1 overrides)"
fi
read -r _ need_quantity < <("$PY" "$REPO/scripts/k8s_memory.py" required "$peak")
case "${MEMORY:-}" in
  "") memory="" ;;
  measured) memory="$need_quantity" ;;
  *) memory="$MEMORY" ;;
esac
components=()
for c in ${COMPONENTS:-}; do
  [[ -f "$K8S_DIR/components/$c/kustomization.yaml" && "$c" != monitoring ]] \
    || die_usage "COMPONENTS: no per-model component '$c' in $K8S_DIR/components/ (monitoring is namespace-wide: make deploy-monitoring)"
  components+=("$c")
done
read -r startup_threshold progress_deadline < <("$PY" "$REPO/scripts/k8s_memory.py" startup "$load")

# --- write into a sibling folder (same relative paths), check it, then replace the old one
models="$K8S_DIR/models/$model"
dest="$models/$OVERLAY"
new="$models/.$OVERLAY.new"
rm -rf "$new" && mkdir -p "$new"
# On failure nothing is left behind, not even an empty k8s/models/<model>/ (it would count
# as a released model name).
trap 'rm -rf "$work" "$new"; rmdir "$models" 2>/dev/null || true' EXIT
previous_version=""
[[ -f "$dest/release.yaml" ]] && previous_version="$(sed -n 's/^  version: "\(.*\)"$/\1/p' "$dest/release.yaml")"
MODEL="$model" NAME="$name" VERSION="$version" IMAGE="$IMAGE" CONTENT="$content" PEAK="$peak" LOAD="$load" \
  DIRTY="$dirty" STANDIN="${standin:-false}" OVERLAY="$OVERLAY" MEMORY_QUANTITY="$memory" \
  STARTUP_THRESHOLD="$startup_threshold" PROGRESS_DEADLINE="$progress_deadline" \
  COMMIT="$(record_field "$RECORD" org.opencontainers.image.revision)" \
  COMPONENTS="${components[*]}" VERSIONS="$versions" PEAK_PER_VERSION="$peak_per_version" CONFIG_FILE="$config_file" \
  "$PY" "$REPO/scripts/release_files.py" "$new"

"$KUBECTL" kustomize "$new" > "$work/rendered.yaml" || die "kubectl kustomize $new failed"
"$PY" "$REPO/scripts/k8s_memory.py" check "$work/rendered.yaml" "$peak" 2> "$work/memory-check.txt" \
  || die_usage "$(cat "$work/memory-check.txt")"
rm -rf "$dest" && mv "$new" "$dest"
echo "$SCRIPT: wrote ${dest#"$REPO"/}/ ($model v$version, $IMAGE): review and commit it, then make deploy MODEL=$model OVERLAY=$OVERLAY" >&2
if [[ -n "$previous_version" && "$previous_version" =~ ^[0-9]+$ && "$version" =~ ^[0-9]+$ ]] && ((version < previous_version)); then
  echo "$SCRIPT: note: v$version is older than the v$previous_version it replaces (a rollback?)" >&2
fi
