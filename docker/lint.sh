#!/usr/bin/env bash
# `make lint`: every static check on the container and Kubernetes files, with
# the pinned tools from the tools venv (make tools-venv). Runs all checks,
# reports each, and exits 1 if any failed.
#   1. hadolint on every Dockerfile under docker/
#   2. kubectl kustomize on every k8s overlay, then kubernetes-validate --strict
#      of the rendered objects against each version in KUBE_VERSIONS
#   3. checkov on the rendered objects (kubernetes) and on every Dockerfile
# Rendered overlays are kept in $BUILD_DIR/lint/<overlay>.yaml for inspection.
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
  # "Image should use digest": the tracked overlays cannot know a digest before
  # the push; docker/deploy.sh renders the pushed tag@digest at deploy time.
  CKV_K8S_43
  # "Image Pull Policy should be Always": tags are immutable (one per model
  # build, ECR repository created IMMUTABLE) and deploys pin the digest, so
  # IfNotPresent pulls the same bytes while sparing a multi-GB pull per pod start.
  CKV_K8S_15
)

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

mapfile -t dockerfiles < <(find docker -name Dockerfile -type f | sort)
((${#dockerfiles[@]})) || die "no Dockerfiles found under docker/"
for f in "${dockerfiles[@]}"; do
  step "hadolint $f" "$HADOLINT" "$f"
  step "checkov $f" "$CHECKOV" --quiet --compact --skip-download --framework dockerfile -f "$f"
done

mkdir -p "$BUILD_DIR/lint"
mapfile -t overlays < <(find k8s/overlays -mindepth 1 -maxdepth 1 -type d | sort)
((${#overlays[@]})) || die "no overlays found under k8s/overlays/"
skip_csv="$(IFS=,; echo "${K8S_SKIPS[*]}")"
for overlay in "${overlays[@]}"; do
  name="$(basename "$overlay")"
  rendered="$BUILD_DIR/lint/$name.yaml"
  if ! "$KUBECTL" kustomize "$overlay" > "$rendered"; then
    echo "lint: FAIL kubectl kustomize $overlay" >&2
    failed+=("kustomize $overlay")
    continue
  fi
  echo "lint: ok   kubectl kustomize $overlay"
  for v in $KUBE_VERSIONS; do
    step "kubernetes-validate --strict -k $v $overlay" "$KVALIDATE" --strict --quiet -k "$v" "$rendered"
  done
  step "checkov kubernetes $overlay" "$CHECKOV" --quiet --compact --skip-download \
    --framework kubernetes --skip-check "$skip_csv" -f "$rendered"
done

if ((${#failed[@]})); then
  echo "lint: ${#failed[@]} check(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed"
