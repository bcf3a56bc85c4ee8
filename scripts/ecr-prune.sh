#!/usr/bin/env bash
# `make ecr-prune`: delete the ECR images no release ever pinned, once they are old.
# An image is kept when
#   - any commit of any branch of this repository ever had its digest under k8s/models/
#     (`git log --all -p -- k8s/models`: a `git revert` can bring any of them back), or the
#     work tree has it there now (a release not committed yet), or
#   - it was pushed less than KEEP_DAYS days ago (a push whose release PR is still open).
# Everything else is listed (DRY_RUN=1, the default) or deleted (DRY_RUN=0) with
# `aws ecr batch-delete-image`. Run it from a clone that has fetched every branch.
# The repository's lifecycle policy (scripts/ecr-lifecycle-policy.json) only expires untagged
# images; this is the part a lifecycle rule cannot do, because it needs git.
#
# Env: AWS_REGION, ECR_REPOSITORY (required), AWS_ACCOUNT_ID (optional registry id),
#      KEEP_DAYS (default 30), DRY_RUN (default 1), K8S_DIR (default k8s/).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

[[ -n "${AWS_REGION:-}" ]] || die_usage "AWS_REGION is not set"
[[ -n "${ECR_REPOSITORY:-}" ]] || die_usage "ECR_REPOSITORY is not set"
KEEP_DAYS="${KEEP_DAYS:-30}"
[[ "$KEEP_DAYS" =~ ^[0-9]+$ ]] || die_usage "KEEP_DAYS must be a whole number of days, got '$KEEP_DAYS'"
git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 || die_usage "$REPO is not a git repository: the releases' history decides what is kept"
AWS="$(tool aws)"
export AWS_DEFAULT_REGION="$AWS_REGION"
registry_id_args=()
[[ -n "${AWS_ACCOUNT_ID:-}" ]] && registry_id_args=(--registry-id "$AWS_ACCOUNT_ID")

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
{
  git -C "$REPO" log --all -p --format= -- k8s/models
  find "$K8S_DIR/models" -name release.yaml -exec cat {} + 2>/dev/null
} | grep -oE '@sha256:[0-9a-f]{64}' | cut -c2- | sort -u > "$work/referenced" || true
"$AWS" ecr describe-images "${registry_id_args[@]}" --repository-name "$ECR_REPOSITORY" --output json > "$work/images.json" \
  || die "aws ecr describe-images $ECR_REPOSITORY failed (credentials? region? repository?)"
"$(any_python)" - "$work/images.json" "$work/referenced" "$KEEP_DAYS" > "$work/expired" <<'PY'
import datetime, json, sys
images = json.load(open(sys.argv[1]))["imageDetails"]
referenced = set(open(sys.argv[2]).read().split())
cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=int(sys.argv[3]))
for image in images:
    pushed = image["imagePushedAt"]
    pushed = (datetime.datetime.fromtimestamp(pushed, datetime.timezone.utc) if isinstance(pushed, (int, float))
              else datetime.datetime.fromisoformat(pushed))
    if image["imageDigest"] not in referenced and pushed <= cutoff:
        print(image["imageDigest"], ",".join(image.get("imageTags") or ["<untagged>"]))
PY
echo "$SCRIPT: $(wc -l < "$work/referenced") digest(s) referenced by k8s/models in git; $(wc -l < "$work/expired") image(s) unreferenced and older than $KEEP_DAYS days" >&2
while read -r digest tags; do
  if [[ "${DRY_RUN:-1}" == 0 ]]; then
    "$AWS" ecr batch-delete-image "${registry_id_args[@]}" --repository-name "$ECR_REPOSITORY" \
      --image-ids "imageDigest=$digest" >/dev/null || die "aws ecr batch-delete-image $digest failed"
    echo "deleted $digest ($tags)"
  else
    echo "would delete $digest ($tags)"
  fi
done < "$work/expired"
