#!/usr/bin/env bash
# `make deploy`: render k8s/overlays/$OVERLAY with the pushed image and apply it.
# Tracked files are never edited: a temporary kustomization references the
# overlay and adds kustomize's `images:` (and the version label), then
# `kubectl apply -k` applies that.
#
# Usage: docker/deploy.sh [--dry-run]
# Env:   OVERLAY      dev | prod | a path to a kustomization (default prod)
#        IMAGE        REGISTRY/REPO:TAG[@sha256:DIGEST]; default: $BUILD_DIR/last-pushed-image
#        RENDER_ONLY=1  same as --dry-run: print the rendered YAML, apply nothing
#        KUBECTL_ARGS extra kubectl flags (e.g. --context NAME)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

render_only="${RENDER_ONLY:-0}"
case "${1:-}" in
  --dry-run) render_only=1 ;;
  "") ;;
  *) die_usage "unknown argument '$1' (usage: docker/deploy.sh [--dry-run])" ;;
esac

OVERLAY="${OVERLAY:-prod}"
if [[ -d "$REPO/k8s/overlays/$OVERLAY" ]]; then
  overlay_dir="$REPO/k8s/overlays/$OVERLAY"
elif [[ -f "$OVERLAY/kustomization.yaml" ]]; then
  overlay_dir="$(cd "$OVERLAY" && pwd)"
else
  die_usage "OVERLAY '$OVERLAY' is neither k8s/overlays/<name> nor a kustomization folder"
fi

if [[ -z "${IMAGE:-}" ]]; then
  [[ -s "$BUILD_DIR/last-pushed-image" ]] || die_usage "no pushed image: run \`make push\` first (or set IMAGE)"
  IMAGE="$(< "$BUILD_DIR/last-pushed-image")"
fi
# Split REGISTRY/REPO:TAG@DIGEST; a ':' after the last '/' starts the tag
# (a registry port like host:5000/ is not a tag).
ref="$IMAGE" digest="" tag=""
if [[ "$ref" == *@* ]]; then digest="${ref#*@}"; ref="${ref%%@*}"; fi
if [[ "${ref##*/}" == *:* ]]; then tag="${ref##*:}"; ref="${ref%:*}"; fi
[[ -n "$tag" || -n "$digest" ]] || die_usage "IMAGE '$IMAGE' has neither tag nor digest"
[[ -z "$digest" || "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || die_usage "IMAGE '$IMAGE' has a malformed digest"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The base names its image `scann-serving`; the overlay may already rename it
# (prod points at ECR), so both names are mapped to the pushed reference.
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  # kustomize accepts only relative paths to other kustomizations.
  echo "  - $(realpath --relative-to="$work" "$overlay_dir")"
  echo "images:"
  for name in scann-serving $(sed -n 's/^ *newName: *\(.*\)$/\1/p' "$overlay_dir/kustomization.yaml" | sort -u); do
    echo "  - name: $name"
    echo "    newName: $ref"
    [[ -n "$tag" ]] && echo "    newTag: \"$tag\""
    [[ -n "$digest" ]] && echo "    digest: $digest"
  done
  if [[ -n "$tag" ]]; then
    version="${tag:0:63}"
    while [[ "$version" =~ [^A-Za-z0-9]$ ]]; do version="${version%?}"; done
    # The pod template's version label follows the image (a label value is at
    # most 63 characters); selectors keep only the name, so this is safe to change.
    echo "labels:"
    echo "  - pairs:"
    echo "      app.kubernetes.io/version: \"$version\""
    echo "    includeTemplates: true"
  fi
} > "$work/kustomization.yaml"

KUBECTL="$(tool kubectl)"
# shellcheck disable=SC2206 # KUBECTL_ARGS is a flag list, split on purpose
extra=(${KUBECTL_ARGS:-})
if [[ "$render_only" == 1 ]]; then
  "$KUBECTL" kustomize "$work"
else
  echo "$SCRIPT: applying $overlay_dir with $IMAGE" >&2
  "$KUBECTL" "${extra[@]}" apply -k "$work"
fi
