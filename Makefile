# memwatch: `make help` lists the targets. The two set-up commands are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
IMG ?= memwatch:dev
KEEP ?= 0
# Never in the tests' environment under this generic name: recipes pass it on as MEMWATCH_TEST_KEEP.
unexport KEEP
CLUSTER := hack/local-cluster.sh
# The local cluster's run dir: hack/local-cluster.sh's MEMWATCH_CLUSTER_ROOT, or CLUSTER_ROOT=... here.
# Exported under that name, so the script, the suites and the kubeconfig below all use the same one.
CLUSTER_ROOT ?= $(or $(MEMWATCH_CLUSTER_ROOT),/var/lib/memwatch-cluster)
export MEMWATCH_CLUSTER_ROOT := $(CLUSTER_ROOT)
LOCAL_KUBECONFIG := $(CLUSTER_ROOT)/kubeconfig
PYTEST_ARGS ?=

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n\n"} /^[a-zA-Z0-9_.-]+:.*##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# Runtime dependencies at the versions pinned in constraints.txt, as in the image.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install memwatch (runtime dependencies pinned by constraints.txt) with its test tools and matplotlib (bench pictures).

.PHONY: constraints
constraints: ## Re-pin constraints.txt to the runtime dependencies pip resolves now (after changing them in pyproject.toml).
	$(PYTHON) hack/pin-constraints.py

.PHONY: lint
lint: install ## ruff and mypy.
	$(VENV)/bin/ruff check controller tests bench
	$(VENV)/bin/mypy

.PHONY: unit
unit: install ## Fast tests: policy, sources (HTTP fakes), enforcer, chart rendering, agent cgroups.
	$(VENV)/bin/pytest tests -m "not cluster and not e2e" $(PYTEST_ARGS)

.PHONY: test
test: install lint ## Everything CI runs: unit tests, then the real-cluster suites when this machine can run them.
	$(VENV)/bin/pytest tests -m "not cluster and not e2e" $(PYTEST_ARGS)
	@if bash $(CLUSTER) check; then \
		$(MAKE) --no-print-directory e2e-local; \
	else \
		echo "############################################################################"; \
		echo "## SKIPPED: real-cluster integration and e2e suites (see the line above)  ##"; \
		echo "############################################################################"; \
	fi

.PHONY: cluster-up
cluster-up: ## Bring up the Docker-less local cluster (builds Kubernetes 1.20.2 once, cached) and its images.
	bash $(CLUSTER) up
	bash $(CLUSTER) images

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove what it created.
	bash $(CLUSTER) down

.PHONY: e2e-local
e2e-local: install cluster-up ## Local cluster, install memwatch, integration + e2e suites, then down (KEEP=1 keeps it and the suites' releases).
	set -o pipefail; rc=0; \
	KUBECONFIG=$(LOCAL_KUBECONFIG) MEMWATCH_E2E_INSTALL=1 MEMWATCH_TEST_KEEP=$(KEEP) $(VENV)/bin/pytest tests -m "cluster or e2e" $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -ne 0 ] && [ "$(KEEP)" != "1" ] && [ -d $(CLUSTER_ROOT)/logs ]; then \
		logs=$$(mktemp -d "$${TMPDIR:-/tmp}/memwatch-cluster-logs.XXXXXX") && cp -a $(CLUSTER_ROOT)/logs/. "$$logs"/ && \
		echo "e2e-local: the suites failed (exit $$rc); the cluster's logs (audit log, kubelet, apiserver, containerd) are kept in $$logs" >&2; \
	fi; \
	if [ "$(KEEP)" != "1" ]; then bash $(CLUSTER) down; fi; \
	exit $$rc

.PHONY: e2e
e2e: install ## kind: create cluster, build + load image, metrics-server, install chart, run e2e, tear down (KEEP=1 keeps it).
	KEEP=$(KEEP) IMG=$(IMG) PYTEST_ARGS="$(PYTEST_ARGS)" bash tests/e2e/kind/run.sh

comma := ,
CONTAINER_TOOL ?= $(shell command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker || echo podman)
BASE_IMAGE ?=

.PHONY: docker-build
docker-build: ## Build the image: make docker-build IMG=memwatch:dev [BASE_IMAGE=...] (docker, else podman).
	$(CONTAINER_TOOL) build --network host -t $(IMG) \
		$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
		$(foreach v,PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST,$(if $($(v)),--build-arg $(v)=$($(v)))) \
		$(if $(PIP_CERT),--secret id=pip_cert$(comma)src=$(PIP_CERT)) \
		.

.PHONY: manifests
manifests: install ## Regenerate manifests/memwatch.yaml and the chart README's values table from the chart.
	$(PY) charts/memwatch/hack/render-manifests.py
	$(PY) charts/memwatch/hack/gen-readme.py

.PHONY: helm-lint
helm-lint: install ## helm lint --strict (the real Helm engine) with the defaults and every ci/*-values.yaml.
	$(PY) charts/memwatch/hack/lint.py

.PHONY: demo
demo: install ## Bring up a cluster (kind if Docker runs, else local), install memwatch, watch it evict a memory hog.
	bash hack/demo.sh

.PHONY: bench
bench: install ## Benchmarks: print the figures table, write bench/results/<date>.md and its pictures in bench/results/<date>/.
	$(PY) bench/run.py

.PHONY: bench-node-guard
bench-node-guard: install ## The node guard against the kubelet's own eviction: a local cluster with a 1 GiB kubepods, 120 races (~40 min measured on 2026-12-02, plus the cluster), then down.
	@if bash $(CLUSTER) status >/dev/null 2>&1; then \
		echo "bench-node-guard: a local cluster is up; it needs its own (node allocatable enforced on pods): make cluster-down first" >&2; exit 1; fi
	MEMWATCH_CLUSTER_PODS_MEMORY=1024 bash $(CLUSTER) up
	bash $(CLUSTER) images
	set -o pipefail; rc=0; $(PY) bench/run.py --only node-guard || rc=$$?; bash $(CLUSTER) down; exit $$rc

.PHONY: clean
clean: ## Remove the virtualenv and caches in the repo (not the Kubernetes build cache).
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist controller/*.egg-info
