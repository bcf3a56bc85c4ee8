#!/usr/bin/env bash
# `make deploy`: apply what git says. Everything a model's deployment is lives in the tracked
# k8s/models/<model>/<env>/ that `make push` wrote (scripts/release.sh); this only applies it:
#   1. kubectl apply -k k8s/overlays/<env>/namespace     (or .../monitoring with MONITORING=1)
#   2. kubectl apply -k k8s/models/<model>/<env> --prune -l app.kubernetes.io/instance=<name>
#      (--prune removes the model's objects the folder no longer has, and only that model's)
# It says so when the release is not the newest image of the model built or pushed from this
# machine (build/images, build/pushed): deploying it then means deploying something older.
# Nothing is read from build/ to decide what to apply; a rollback is `git revert` + this.
#
# Usage: scripts/deploy.sh [--dry-run] [--namespace-only]
# Env:   MODEL         the model (required unless --namespace-only)
#        OVERLAY       the environment: dev | prod (default prod)
#        MONITORING=1  the namespace with k8s/components/monitoring (Prometheus Operator)
#        RENDER_ONLY=1 same as --dry-run: print the rendered YAML, apply nothing
#        KUBECTL_ARGS  extra kubectl flags (e.g. --context NAME)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

render_only="${RENDER_ONLY:-0}"
namespace_only=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) render_only=1 ;;
    --namespace-only) namespace_only=1 ;;
    *) die_usage "unknown argument '$arg' (usage: scripts/deploy.sh [--dry-run] [--namespace-only])" ;;
  esac
done

OVERLAY="${OVERLAY:-prod}"
[[ "$OVERLAY" =~ ^[a-z0-9-]+$ && -d "$K8S_DIR/overlays/$OVERLAY/namespace" ]] \
  || die_usage "OVERLAY '$OVERLAY' is not an environment with a namespace folder in $K8S_DIR/overlays"
KUBECTL="$(tool kubectl)"
# shellcheck disable=SC2206 # KUBECTL_ARGS is a flag list, split on purpose
extra=(${KUBECTL_ARGS:-})

namespace_dir="$K8S_DIR/overlays/$OVERLAY/namespace"
[[ "${MONITORING:-0}" == 1 ]] && namespace_dir="$K8S_DIR/overlays/$OVERLAY/monitoring"

apply() { # DIR [kubectl apply flags...]
  local dir="$1"; shift
  if [[ "$render_only" == 1 ]]; then
    "$KUBECTL" kustomize "$dir"
  else
    echo "$SCRIPT: kubectl apply -k ${dir#"$REPO"/} $*" >&2
    "$KUBECTL" "${extra[@]}" apply -k "$dir" "$@"
  fi
}

if [[ "$namespace_only" == 1 ]]; then
  apply "$namespace_dir"
  exit 0
fi

[[ -n "${MODEL:-}" ]] || die_usage "MODEL is not set (make deploy MODEL=<model> OVERLAY=$OVERLAY)"
dir="$K8S_DIR/models/$MODEL/$OVERLAY"
[[ -f "$dir/kustomization.yaml" && -f "$dir/release.yaml" ]] \
  || die_usage "no release of $MODEL for $OVERLAY (${dir#"$REPO"/}): run \`make push MODEL=$MODEL OVERLAY=$OVERLAY\` (it writes it), commit it, then deploy"
name="$(k8s_name "$MODEL")"

# release_value KEY: a field of the release's data (release.yaml holds one "key": "value" per line).
release_value() { sed -n "s/^  $1: \"\\(.*\\)\"\$/\\1/p" "$dir/release.yaml"; }
content="$(release_value content-digest)"
version="$(release_value version)"
for record in "$BUILD_DIR/images/$MODEL.json" "$BUILD_DIR/pushed/$MODEL.json"; do
  [[ -s "$record" ]] || continue
  newest="$(record_field "$record" io.scann-serving.content.digest)"
  if [[ -n "$newest" && "$newest" != "$content" ]]; then
    kind="built"; [[ "$record" == */pushed/* ]] && kind="pushed"
    echo "$SCRIPT: note: deploying $MODEL v$version ($content), not the image last $kind here (v$(record_field "$record" io.scann-serving.model.version), $newest): to deploy that one, make push MODEL=$MODEL and commit k8s/models/$MODEL/" >&2
    break
  fi
done

apply "$namespace_dir"
[[ "$render_only" == 1 ]] && echo "---"
apply "$dir" --prune -l "app.kubernetes.io/instance=$name"
[[ "$render_only" == 1 ]] || echo "$SCRIPT: $MODEL v$version applied: kubectl -n $(sed -n 's/^namespace: //p' "$K8S_DIR/overlays/$OVERLAY/kustomization.yaml") rollout status deployment/$name-serving --timeout=30m" >&2
