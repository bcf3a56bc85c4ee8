#!/usr/bin/env bash
# `make push`: push the last serving image built by build-images.sh to ECR.
#   1. aws ecr describe-repositories || aws ecr create-repository
#      (created with immutable tags and scan-on-push: a tag names one model build)
#   2. aws ecr get-login-password | docker login --password-stdin REGISTRY
#   3. docker tag + docker push REGISTRY/REPOSITORY:<model>-v<version>-<gitsha>
#      (skipped when ECR already holds that tag: tags are immutable)
#   4. record REGISTRY/REPOSITORY:TAG@DIGEST in $BUILD_DIR/last-pushed-image for deploy.sh
#
# Env: AWS_REGION (required), AWS_ACCOUNT_ID (required unless ECR_REGISTRY is set),
#      ECR_REPOSITORY (required), ECR_REGISTRY (default <account>.dkr.ecr.<region>.amazonaws.com),
#      IMAGE (local image; default: the one in $BUILD_DIR/last-image).
# AWS credentials come only from the standard AWS environment/profile chain;
# AWS_ENDPOINT_URL (standard too) points the CLI at another ECR API, e.g. moto.
# The registry login lives in a throwaway DOCKER_CONFIG, removed on exit, so
# the ECR token is never left on disk.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

[[ -n "${AWS_REGION:-}" ]] || die_usage "AWS_REGION is not set (e.g. make push AWS_REGION=eu-west-1 AWS_ACCOUNT_ID=123456789012)"
[[ -n "${ECR_REPOSITORY:-}" ]] || die_usage "ECR_REPOSITORY is not set"
if [[ -z "${ECR_REGISTRY:-}" ]]; then
  [[ -n "${AWS_ACCOUNT_ID:-}" ]] || die_usage "AWS_ACCOUNT_ID is not set (or set ECR_REGISTRY)"
  [[ "$AWS_ACCOUNT_ID" =~ ^[0-9]{12}$ ]] || die_usage "AWS_ACCOUNT_ID must be 12 digits, got '$AWS_ACCOUNT_ID'"
  ECR_REGISTRY="$AWS_ACCOUNT_ID.dkr.ecr.$AWS_REGION.amazonaws.com"
fi
if [[ -z "${IMAGE:-}" ]]; then
  [[ -s "$BUILD_DIR/last-image" ]] || die_usage "no image to push: run \`make image\` first (or set IMAGE)"
  IMAGE="$(< "$BUILD_DIR/last-image")"
fi
[[ "$IMAGE" == *:* ]] || die_usage "IMAGE '$IMAGE' has no tag"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE is not in the local engine (run \`make image\`)"

AWS="$(tool aws)"
export AWS_DEFAULT_REGION="$AWS_REGION"
registry_id_args=()
[[ -n "${AWS_ACCOUNT_ID:-}" ]] && registry_id_args=(--registry-id "$AWS_ACCOUNT_ID")

if "$AWS" ecr describe-repositories "${registry_id_args[@]}" --repository-names "$ECR_REPOSITORY" >/dev/null 2>&1; then
  echo "$SCRIPT: ECR repository $ECR_REPOSITORY exists" >&2
else
  echo "$SCRIPT: creating ECR repository $ECR_REPOSITORY" >&2
  "$AWS" ecr create-repository "${registry_id_args[@]}" --repository-name "$ECR_REPOSITORY" \
    --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true >/dev/null \
    || die "aws ecr create-repository $ECR_REPOSITORY failed (credentials? region? permissions?)"
fi

DOCKER_CONFIG="$(mktemp -d)"
export DOCKER_CONFIG
trap 'rm -rf "$DOCKER_CONFIG"' EXIT
"$AWS" ecr get-login-password | docker login --username AWS --password-stdin "$ECR_REGISTRY" >/dev/null 2>&1 \
  || die "docker login to $ECR_REGISTRY failed"

tag="${IMAGE##*:}"
remote="$ECR_REGISTRY/$ECR_REPOSITORY:$tag"
# The repository's tags are immutable: a tag already there is this same build
# (the tag holds the model version and the commit), so re-running is a no-op.
digest="$("$AWS" ecr describe-images "${registry_id_args[@]}" --repository-name "$ECR_REPOSITORY" \
  --image-ids "imageTag=$tag" --query 'imageDetails[0].imageDigest' --output text 2>/dev/null || true)"
if [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]]; then
  echo "$SCRIPT: $remote is already in ECR; not pushing again" >&2
else
  docker tag "$IMAGE" "$remote"
  echo "$SCRIPT: pushing $remote" >&2
  push_log="$(mktemp)"
  docker push "$remote" > "$push_log" 2>&1 || { tail -n 5 "$push_log" >&2; rm -f "$push_log"; die "docker push $remote failed"; }
  digest="$(sed -n 's/.*digest: \(sha256:[0-9a-f]\{64\}\).*/\1/p' "$push_log" | tail -n 1)"
  rm -f "$push_log"
  [[ -n "$digest" ]] || die "docker push $remote reported no digest"
fi

mkdir -p "$BUILD_DIR"
echo "$remote@$digest" > "$BUILD_DIR/last-pushed-image"
echo "$remote@$digest"
