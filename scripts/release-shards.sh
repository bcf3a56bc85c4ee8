#!/usr/bin/env bash
# `make release-shards MODEL=<name> SHARDS=K` (and the end of `make push-shards`): release every
# shard <name>-shard-<i> (i = 0..K-1) of one sharded build to OVERLAY through scripts/release.sh,
# one k8s/models/<name>-shard-<i>/<env>/ each (its own Deployment, HPA, PDB and Services).
#
# Checked before anything is written (exit 2, one line): every shard has a pushed record
# ($BUILD_DIR/pushed/<name>-shard-<i>.json, from `make push MODEL=<name>-shard-<i>`), all carry one
# version number (build --shards K gives every shard the same one), and that number matches
# VERSION when set. A shard whose release.sh fails stops the loop; shards released before it
# keep their new folders (review the diff: the sharded client stays on the previous version until
# every shard serves the new one, k8s/README.md "Sharding").
#
# Also refused: a shard whose new image does not carry the version its current release serves
# (ALLOW_VERSION_GAP=1 overrides).
#
# Memory: MEMORY defaults to `measured` here: each shard's image label is the sum of the measured
# peaks of the two versions it holds (docker/build-images.sh, KEEP_VERSIONS=2), plus headroom.
#
# Env: MODEL (the unsharded name), SHARDS (K), VERSION (optional), and what release.sh reads
#      (OVERLAY, COMPONENTS, MEMORY, ALLOW_STANDIN, BUILD_DIR, K8S_DIR).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

[[ -n "${MODEL:-}" ]] || die_usage "set MODEL to the sharded model's name (its shards are <MODEL>-shard-<i>)"
[[ "${SHARDS:-}" =~ ^[1-9][0-9]*$ ]] || die_usage "SHARDS '${SHARDS:-}' must be the shard count K (a positive integer)"
[[ "$MODEL" != *-shard-[0-9]* ]] || die_usage "MODEL '$MODEL' names a shard: give the sharded model's name (without -shard-<i>)"

export MEMORY="${MEMORY:-measured}"
version="${VERSION:-}"
for ((i = 0; i < SHARDS; i++)); do
  record="$BUILD_DIR/pushed/$MODEL-shard-$i.json"
  [[ -s "$record" ]] || die_usage "no pushed image for shard $MODEL-shard-$i: run \`make push MODEL=$MODEL-shard-$i\` (or make push-shards) first"
  v="$(record_field "$record" io.scann-serving.model.version)"
  if [[ -z "$version" ]]; then
    version="$v"
  elif [[ "$v" != "$version" ]]; then
    die_usage "shard $MODEL-shard-$i's pushed image is v$v, not v$version like the others: push every shard of one build"
  fi
done
# The rollout keeps clients on the released version only if every new image still carries it
# (docker/build-images.sh bakes the newest older version folder it finds locally): refuse a shard
# whose image lacks the version its current release serves, unless ALLOW_VERSION_GAP=1 (clients
# then find no version common to all shards until the rollout ends: ModelNotReadyError).
for ((i = 0; i < SHARDS; i++)); do
  released="$K8S_DIR/models/$MODEL-shard-$i/${OVERLAY:-prod}/release.yaml"
  [[ -f "$released" && "${ALLOW_VERSION_GAP:-0}" != 1 ]] || continue
  current="$(sed -n 's/^  version: "\(.*\)"$/\1/p' "$released")"
  carried="$(record_field "$BUILD_DIR/pushed/$MODEL-shard-$i.json" io.scann-serving.model.versions)"
  carried="${carried:-$version}"
  [[ ",$carried," == *",$current,"* ]] \
    || die_usage "shard $MODEL-shard-$i's image carries v${carried//,/+v}, not the released v$current: rebuild it with models/$MODEL-shard-$i/$current next to v$version (make image-shards), or ALLOW_VERSION_GAP=1"
done
# A stray higher shard would keep serving after a re-shard to fewer shards: say so.
if [[ -d "$K8S_DIR/models/$MODEL-shard-$SHARDS" ]]; then
  echo "$SCRIPT: note: $K8S_DIR/models/$MODEL-shard-$SHARDS exists: SHARDS=$SHARDS leaves it as it is" >&2
fi
for ((i = 0; i < SHARDS; i++)); do
  MODEL="$MODEL-shard-$i" RECORD="" IMAGE="" "$REPO/scripts/release.sh"
done
echo "$SCRIPT: released $SHARDS shards of $MODEL v$version to ${OVERLAY:-prod}: commit k8s/models/$MODEL-shard-*/, then make deploy-shards MODEL=$MODEL SHARDS=$SHARDS OVERLAY=${OVERLAY:-prod}" >&2
