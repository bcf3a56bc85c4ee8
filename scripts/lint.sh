#!/usr/bin/env bash
# `make lint`: every static check on the code, the container and the Kubernetes files,
# with the pinned tools from the tools venv (make tools-venv). Runs all checks,
# reports each, and exits 1 if any failed.
#   0. ruff check + ruff format --check on every Python file (ruff.toml), shellcheck on
#      every tracked shell script (.shellcheckrc)
#   1. hadolint on every Dockerfile under docker/
#   2. kubectl kustomize of every rendering deploy can apply: a model released to each
#      overlay by scripts/release.sh (in a scratch copy of k8s/), alone and with each optional
#      per-model component of k8s/components (all but monitoring), each overlay's namespace
#      with the namespace-wide monitoring component, and every tracked release
#      k8s/models/<model>/<env>, and a shard's two-version release (k8s/README.md "Sharding");
#      each overlay alone must fail (no release, no image); then
#      kubernetes-validate --strict of the rendered objects against each version in
#      KUBE_VERSIONS (custom resources -- PodMonitor, PrometheusRule -- have no schema there:
#      it reports them as unvalidated; their rules go through promtool, see 4)
#   3. checkov on the rendered objects (kubernetes) and on every Dockerfile
#   4. promtool check rules on the PrometheusRule's groups (Prometheus' own parser), when
#      scripts/promtool.sh can provide promtool
# Rendered objects are kept in $BUILD_DIR/lint/<name with / as _>.yaml for inspection.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO"

# Oldest Kubernetes minor we support (EKS standard support) and the newest
# schema kubernetes-validate bundles.
KUBE_VERSIONS="${KUBE_VERSIONS:-1.33.0 1.37.0}"

# checkov skips for the rendered Kubernetes objects, each with its reason.
# (Dockerfile skips are inline `# checkov:skip=` comments next to the FROM lines.)
K8S_SKIPS=(
  # "Image Pull Policy should be Always": tags are immutable (one per model
  # build, ECR repository created IMMUTABLE) and deploys pin the digest, so
  # IfNotPresent pulls the same bytes while sparing a multi-GB pull per pod start.
  CKV_K8S_15
)

RUFF="$(tool ruff)"
SHELLCHECK="$(tool shellcheck)"
HADOLINT="$(tool hadolint)"
KUBECTL="$(tool kubectl)"
KVALIDATE="$(tool kubernetes-validate)"
CHECKOV="$(tool checkov)"
export BC_SKIP_MAPPING=TRUE # checkov: no network lookups of check metadata

failed=()
step() {
  local name="$1"; shift
  if "$@"; then
    echo "lint: ok   $name"
  else
    echo "lint: FAIL $name" >&2
    failed+=("$name")
  fi
}

step "ruff check" "$RUFF" check --quiet .
step "ruff format --check" "$RUFF" format --check --quiet .
# Every tracked file with a sh/bash shebang, but the two verbatim copies of TF Serving's
# tools/docker/tf_serving_entrypoint.sh (the image's entrypoint, kept byte-identical to upstream).
shell_scripts=()
while IFS= read -r -d '' f; do
  [[ "$f" == */tf_serving_entrypoint.sh ]] && continue
  head -n 1 "$f" 2>/dev/null | grep -qE '^#!.*/(env )?(ba)?sh( |$)' && shell_scripts+=("$f")
done < <(git ls-files -z)
((${#shell_scripts[@]})) || die "no shell scripts found"
step "shellcheck (${#shell_scripts[@]} scripts)" "$SHELLCHECK" "${shell_scripts[@]}"

mapfile -t dockerfiles < <(find docker -name Dockerfile -type f | sort)
((${#dockerfiles[@]})) || die "no Dockerfiles found under docker/"
for f in "${dockerfiles[@]}"; do
  step "hadolint $f" "$HADOLINT" "$f"
  step "checkov $f" "$CHECKOV" --quiet --compact --skip-download --framework dockerfile -f "$f"
done

mkdir -p "$BUILD_DIR/lint"
mapfile -t overlays < <(find k8s/overlays -mindepth 1 -maxdepth 1 -type d | sort)
((${#overlays[@]})) || die "no overlays found under k8s/overlays/"
mapfile -t model_components < <(find k8s/components -mindepth 1 -maxdepth 1 -type d ! -name monitoring -printf '%f\n' | sort)
mapfile -t releases < <(find k8s/models -mindepth 2 -maxdepth 2 -type d ! -name '.*' 2>/dev/null | sort)
skip_csv="$(IFS=,; echo "${K8S_SKIPS[*]}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

declare -A rendered_name=() # rendered file -> display name, for the one checkov run below
check_rendering() { # NAME KUSTOMIZATION_DIR
  local name="$1" dir="$2" file="${1//\//_}" v rendered
  rendered="$BUILD_DIR/lint/${file// /-}.yaml"
  if ! "$KUBECTL" kustomize "$dir" > "$rendered"; then
    echo "lint: FAIL kubectl kustomize $name" >&2
    failed+=("kustomize $name")
    return
  fi
  echo "lint: ok   kubectl kustomize $name"
  for v in $KUBE_VERSIONS; do
    step "kubernetes-validate --strict -k $v $name" "$KVALIDATE" --strict --quiet -k "$v" "$rendered"
  done
  rendered_name["$rendered"]="$name"
}

# An overlay is a component that takes its image from a release: alone it must not render.
refuses_without_release() { # OVERLAY_DIR
  local err
  err="$("$KUBECTL" kustomize "$1" 2>&1 >/dev/null)" && return 1
  [[ "$err" == *release-from-make-push* ]]
}

# checkov starts slowly: one run over every rendering, reported per rendering.
checkov_renderings() {
  local args=() f report="$BUILD_DIR/lint/checkov-kubernetes.json"
  for f in "${!rendered_name[@]}"; do args+=(-f "$f"); done
  "$CHECKOV" --quiet --compact --skip-download --framework kubernetes --skip-check "$skip_csv" \
    -o json "${args[@]}" > "$report" 2>/dev/null || true
  for f in "${!rendered_name[@]}"; do
    if "$(tool python)" - "$report" "$f" <<'PY'
import json, os, sys
reports = json.load(open(sys.argv[1]))
reports = reports if isinstance(reports, list) else [reports]
failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])
          if os.path.basename(c.get("file_path", "")) == os.path.basename(sys.argv[2])]
for c in failed:
    print(f"  {c['check_id']} {c['check_name']}: {c.get('resource')}", file=sys.stderr)
sys.exit(1 if failed or not reports or "summary" not in reports[0] else 0)
PY
    then
      echo "lint: ok   checkov kubernetes ${rendered_name[$f]}"
    else
      echo "lint: FAIL checkov kubernetes ${rendered_name[$f]}" >&2
      failed+=("checkov ${rendered_name[$f]}")
    fi
  done
}

# Releases as `make push` writes them, from a push record (labels of a small model; the
# digests are placeholders), into a scratch copy of k8s/.
scratch="$work/scratch"
mkdir -p "$scratch/pushed"
cp -r k8s "$scratch/k8s" && rm -rf "$scratch/k8s/models"
zeros="0000000000000000000000000000000000000000000000000000000000000000"
cat > "$scratch/pushed/$MODEL_NAME.json" <<JSON
{"image": "registry.example/scann-serving:$MODEL_NAME-v1-000000000000-000000000000@sha256:$zeros",
 "labels": {"io.scann-serving.model.name": "$MODEL_NAME", "io.scann-serving.model.version": "1",
            "io.scann-serving.content.digest": "sha256:$zeros", "io.scann-serving.memory.peak-rss-bytes": "268435456",
            "io.scann-serving.startup.load-seconds": "2.5", "io.scann-serving.git.dirty": "false",
            "io.scann-serving.standin": "false"}}
JSON
# A shard's two-version image (docker/serving/Dockerfile, keep-versions): its release appends
# --model_config_file to the args and sizes memory from both versions' summed peaks.
cat > "$scratch/pushed/$MODEL_NAME-shard-0.json" <<JSON
{"image": "registry.example/scann-serving:$MODEL_NAME-shard-0-v2-000000000000-000000000000@sha256:$zeros",
 "labels": {"io.scann-serving.model.name": "$MODEL_NAME-shard-0", "io.scann-serving.model.version": "2",
            "io.scann-serving.content.digest": "sha256:$zeros", "io.scann-serving.memory.peak-rss-bytes": "536870912",
            "io.scann-serving.startup.load-seconds": "5.0", "io.scann-serving.git.dirty": "false",
            "io.scann-serving.standin": "false", "io.scann-serving.model.versions": "1,2",
            "io.scann-serving.memory.peak-rss-bytes-per-version": "1=268435456,2=268435456",
            "io.scann-serving.model.config-file": "/etc/tfserving-models/models.config"}}
JSON
release() { # NAME OVERLAY [COMPONENT [MODEL]]: release.sh into the scratch copy, then check the rendering
  local model="${4:-$MODEL_NAME}"
  if BUILD_DIR="$scratch" K8S_DIR="$scratch/k8s" OVERLAY="$2" MODEL="$model" COMPONENTS="${3:-}" \
    "$REPO/scripts/release.sh" 2>/dev/null; then
    check_rendering "$1" "$scratch/k8s/models/$model/$2"
  else
    echo "lint: FAIL scripts/release.sh OVERLAY=$2 MODEL=$model COMPONENTS=${3:-}" >&2
    failed+=("release $1")
  fi
}

for overlay in "${overlays[@]}"; do
  name="$(basename "$overlay")"
  step "kubectl kustomize $overlay alone fails (no release)" refuses_without_release "$overlay"
  for component in "${model_components[@]}"; do
    release "$overlay+model $MODEL_NAME+$component" "$name" "$component"
  done
  release "$overlay+model $MODEL_NAME" "$name"
  release "$overlay+shard $MODEL_NAME-shard-0 (two versions)" "$name" "" "$MODEL_NAME-shard-0"
  check_rendering "$overlay/monitoring" "$overlay/monitoring"
done
for dir in "${releases[@]}"; do
  check_rendering "$dir" "$dir"
done
# The sharded build's Indexed Job (k8s/README 'Sharding'), rendered on its own.
check_rendering "k8s/build-job" "k8s/build-job"

checkov_renderings

# Prometheus' own parser on the alert rules (PromQL, templates, durations).
rules="$BUILD_DIR/lint/prometheus-rules.yaml"
"$(tool python)" -c '
import sys, yaml
rules = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "PrometheusRule"]
yaml.safe_dump({"groups": [g for r in rules for g in r["spec"]["groups"]]}, open(sys.argv[2], "w"))
' "$BUILD_DIR/lint/${overlays[0]//\//_}_monitoring.yaml" "$rules"
if PROMTOOL="$("$REPO/scripts/promtool.sh")"; then
  step "promtool check rules k8s/components/monitoring" "$PROMTOOL" check rules "$rules"
else
  echo "lint: FAIL promtool unavailable (scripts/promtool.sh says why)" >&2
  failed+=("promtool")
fi

if ((${#failed[@]})); then
  echo "lint: ${#failed[@]} check(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed"
