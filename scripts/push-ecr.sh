#!/usr/bin/env bash
# `make push`: push a serving image built by docker/build-images.sh to ECR.
#   1. aws ecr describe-repositories || aws ecr create-repository
#      (created with immutable tags and scan-on-push: a tag names one model build; an existing
#      repository must have immutable tags), and the lifecycle policy when it has none
#   2. aws ecr get-login-password | docker login --password-stdin REGISTRY
#   3. ask the registry (Docker Registry HTTP API v2, which ECR speaks) whether the tag
#      exists and, if so, what it holds (label io.scann-serving.content.digest):
#        absent                      -> docker tag + docker push
#        same content digest         -> not pushed again, said so; its digest is recorded
#        another digest, or none     -> refused (exit 1): a tag never changes content
#      The tag itself carries the first 12 hex digits of the content digest, so a retrained
#      model gets a new tag even when version number and commit repeat.
#   4. record REGISTRY/REPOSITORY:TAG@DIGEST in $BUILD_DIR/last-pushed-image and, with the
#      image's labels, in $BUILD_DIR/pushed/<model>.json
#   5. scripts/release.sh: write the tracked k8s/models/<model>/<env>/ (ENVS, default prod)
#      pinning REGISTRY/REPOSITORY:TAG@DIGEST (RELEASE=0 skips it)
# Refused: images on the stand-in bases (label io.scann-serving.standin=true) unless
# ALLOW_STANDIN=1; an existing repository with mutable tags.
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
content_digest="$(record_field "$labels" io.scann-serving.content.digest)"
[[ "$content_digest" =~ ^sha256:[0-9a-f]{64}$ ]] \
  || die_usage "$IMAGE has no content digest label (io.scann-serving.content.digest): rebuild it with \`make image\`"
if [[ "$(record_field "$labels" io.scann-serving.standin)" == true && "${ALLOW_STANDIN:-0}" != 1 ]]; then
  die_usage "$IMAGE is built on a stand-in base image (USE_STANDINS=1), not the real TF Serving: rebuild without USE_STANDINS, or push it anyway with ALLOW_STANDIN=1 (its tag says -standin)"
fi

AWS="$(tool aws)"
export AWS_DEFAULT_REGION="$AWS_REGION"
registry_id_args=()
[[ -n "${AWS_ACCOUNT_ID:-}" ]] && registry_id_args=(--registry-id "$AWS_ACCOUNT_ID")

if mutability="$("$AWS" ecr describe-repositories "${registry_id_args[@]}" --repository-names "$ECR_REPOSITORY" \
  --query 'repositories[0].imageTagMutability' --output text 2>/dev/null)"; then
  echo "$SCRIPT: ECR repository $ECR_REPOSITORY exists" >&2
  # A tag names one build: a mutable repository would let a push replace what a deployed tag holds.
  [[ "$mutability" == IMMUTABLE ]] \
    || die_usage "ECR repository $ECR_REPOSITORY has mutable tags ($mutability): run \`aws ecr put-image-tag-mutability --repository-name $ECR_REPOSITORY --image-tag-mutability IMMUTABLE\` first"
else
  echo "$SCRIPT: creating ECR repository $ECR_REPOSITORY" >&2
  "$AWS" ecr create-repository "${registry_id_args[@]}" --repository-name "$ECR_REPOSITORY" \
    --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true >/dev/null \
    || die "aws ecr create-repository $ECR_REPOSITORY failed (credentials? region? permissions?)"
fi
# The lifecycle policy (scripts/ecr-lifecycle-policy.json) expires untagged images only: every
# image a kustomization under k8s/models references was pushed with a tag, which an IMMUTABLE
# repository never moves, so no referenced image can expire. Set when the repository has none.
if ! "$AWS" ecr get-lifecycle-policy "${registry_id_args[@]}" --repository-name "$ECR_REPOSITORY" >/dev/null 2>&1; then
  "$AWS" ecr put-lifecycle-policy "${registry_id_args[@]}" --repository-name "$ECR_REPOSITORY" \
    --lifecycle-policy-text "file://$REPO/scripts/ecr-lifecycle-policy.json" >/dev/null \
    || die "aws ecr put-lifecycle-policy $ECR_REPOSITORY failed (permissions?)"
  echo "$SCRIPT: set the lifecycle policy of $ECR_REPOSITORY (untagged images expire)" >&2
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
    remote_digest="$("$(any_python)" -c 'import json, sys; print(((json.load(open(sys.argv[1])).get("config") or {}).get("Labels") or {}).get("io.scann-serving.content.digest", "none"))' "$DOCKER_CONFIG/config.json")"
    if [[ "$remote_digest" != "$content_digest" ]]; then
      DIE_CODE=1 die "$remote already exists with other content (registry: $remote_digest, this image: $content_digest); tags are immutable and never reused: rebuild with \`make image\` (the tag carries the content digest) instead of re-tagging"
    fi
    digest="sha256:$(sha256sum < "$manifest" | cut -d' ' -f1)"
    echo "$SCRIPT: $remote already holds this content ($content_digest); not pushing again" >&2
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
# The deploy state: k8s/models/<model>/<env>/ pins this image by digest (review it in a PR).
if [[ "${RELEASE:-1}" == 1 ]]; then
  MODEL="$model" IMAGE="$remote@$digest" RECORD="$BUILD_DIR/pushed/$model.json" "$REPO/scripts/release.sh"
fi
echo "$remote@$digest"
