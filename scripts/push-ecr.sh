#!/usr/bin/env bash
# `make push`: push a serving image built by docker/build-images.sh to ECR.
#   1. aws ecr describe-repositories || aws ecr create-repository
#      (created with immutable tags and scan-on-push: a tag names one model build)
#   2. aws ecr get-login-password | docker login --password-stdin REGISTRY
#   3. ask the registry (Docker Registry HTTP API v2, which ECR speaks) whether the tag
#      exists and, if so, which model files it holds (label io.scann-serving.model.digest):
#        absent                      -> docker tag + docker push
#        same model digest           -> not pushed again, said so; its digest is recorded
#        another digest, or none     -> refused (exit 1): a tag never changes content
#      The tag itself carries the first 12 hex digits of the model digest, so a retrained
#      model gets a new tag even when version number and commit repeat.
#   4. record REGISTRY/REPOSITORY:TAG@DIGEST in $BUILD_DIR/last-pushed-image and, with the
#      image's labels, in $BUILD_DIR/pushed/<model>.json for scripts/deploy.sh
#
# Env: AWS_REGION (required), AWS_ACCOUNT_ID (required unless ECR_REGISTRY is set),
#      ECR_REPOSITORY (required), ECR_REGISTRY (default <account>.dkr.ecr.<region>.amazonaws.com),
#      MODEL (push the image `make image MODEL=...` built: $BUILD_DIR/images/<model>.json),
#      IMAGE (a local image; default: MODEL's, else the one in $BUILD_DIR/last-image).
# AWS credentials come only from the standard AWS environment/profile chain;
# AWS_ENDPOINT_URL (standard too) points the CLI at another ECR API, e.g. moto.
# The registry login lives in a throwaway DOCKER_CONFIG, removed on exit, so
# the ECR token is never left on disk. The registry is reached over https, or http for a
# loopback registry (127.0.0.1, localhost), which Docker also treats as insecure.
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
if [[ -z "${IMAGE:-}" && -n "${MODEL:-}" ]]; then
  [[ -s "$BUILD_DIR/images/$MODEL.json" ]] || die_usage "no image built for model $MODEL: run \`make image MODEL=$MODEL\` first (or set IMAGE)"
  IMAGE="$(record_field "$BUILD_DIR/images/$MODEL.json" image)"
elif [[ -z "${IMAGE:-}" ]]; then
  [[ -s "$BUILD_DIR/last-image" ]] || die_usage "no image to push: run \`make image\` first (or set IMAGE)"
  IMAGE="$(< "$BUILD_DIR/last-image")"
fi
[[ "$IMAGE" == *:* ]] || die_usage "IMAGE '$IMAGE' has no tag"
docker image inspect "$IMAGE" >/dev/null 2>&1 || die "image $IMAGE is not in the local engine (run \`make image\`)"
labels="$(mktemp)"
docker image inspect --format '{{json .Config.Labels}}' "$IMAGE" | image_record "$IMAGE" > "$labels"
model="$(record_field "$labels" io.scann-serving.model.name)"
model_digest="$(record_field "$labels" io.scann-serving.model.digest)"
[[ "$model_digest" =~ ^sha256:[0-9a-f]{64}$ ]] \
  || die_usage "$IMAGE has no model digest label (io.scann-serving.model.digest): rebuild it with \`make image\`"

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
trap 'rm -rf "$DOCKER_CONFIG" "$labels"' EXIT
password="$("$AWS" ecr get-login-password)" || die "aws ecr get-login-password failed (credentials? region?)"
docker login --username AWS --password-stdin "$ECR_REGISTRY" <<< "$password" >/dev/null 2>&1 \
  || die "docker login to $ECR_REGISTRY failed"

tag="${IMAGE##*:}"
remote="$ECR_REGISTRY/$ECR_REPOSITORY:$tag"
case "$ECR_REGISTRY" in
  127.*|localhost|localhost:*) scheme=http ;;
  *) scheme=https ;;
esac
api="$scheme://$ECR_REGISTRY/v2/$ECR_REPOSITORY"
# registry GET PATH OUT: the response body into OUT, the HTTP status on stdout. The netrc
# file keeps the token off the command line (and so out of `ps`).
netrc="$DOCKER_CONFIG/netrc"
printf 'machine %s login AWS password %s\n' "${ECR_REGISTRY%%:*}" "$password" > "$netrc"
registry() {
  curl -sS -L --netrc-file "$netrc" -o "$2" -w '%{http_code}' \
    -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$api/$1"
}
manifest="$DOCKER_CONFIG/manifest.json"
status="$(registry "manifests/$tag" "$manifest")" || die "cannot reach the registry at $api"
case "$status" in
  200)
    config_digest="$("$(any_python)" -c 'import json, sys; print(json.load(open(sys.argv[1]))["config"]["digest"])' "$manifest")" \
      || die "$remote: the registry's manifest has no image config"
    [[ "$(registry "blobs/$config_digest" "$DOCKER_CONFIG/config.json")" == 200 ]] || die "$remote: cannot read its image config"
    remote_digest="$("$(any_python)" -c 'import json, sys; print(((json.load(open(sys.argv[1])).get("config") or {}).get("Labels") or {}).get("io.scann-serving.model.digest", "none"))' "$DOCKER_CONFIG/config.json")"
    if [[ "$remote_digest" != "$model_digest" ]]; then
      DIE_CODE=1 die "$remote already exists with other model files (registry: $remote_digest, this image: $model_digest); tags are immutable and never reused: rebuild with \`make image\` (the tag carries the model digest) instead of re-tagging"
    fi
    digest="sha256:$(sha256sum < "$manifest" | cut -d' ' -f1)"
    echo "$SCRIPT: $remote already holds these model files ($model_digest); not pushing again" >&2
    ;;
  404)
    docker tag "$IMAGE" "$remote"
    echo "$SCRIPT: pushing $remote" >&2
    push_log="$(mktemp)"
    docker push "$remote" > "$push_log" 2>&1 || { tail -n 5 "$push_log" >&2; rm -f "$push_log"; die "docker push $remote failed"; }
    digest="$(sed -n 's/.*digest: \(sha256:[0-9a-f]\{64\}\).*/\1/p' "$push_log" | tail -n 1)"
    rm -f "$push_log"
    [[ -n "$digest" ]] || die "docker push $remote reported no digest"
    ;;
  *) die "the registry answered HTTP $status for $api/manifests/$tag (permissions?)" ;;
esac

mkdir -p "$BUILD_DIR/pushed"
echo "$remote@$digest" > "$BUILD_DIR/last-pushed-image"
"$(any_python)" -c 'import json, sys; r = json.load(open(sys.argv[1])); r["image"] = sys.argv[2]; print(json.dumps(r, indent=1, sort_keys=True))' \
  "$labels" "$remote@$digest" > "$BUILD_DIR/pushed/$model.json"
echo "$remote@$digest"
