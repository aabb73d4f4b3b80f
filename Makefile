# runbook-operator — developer entry points. `make run` and `make test` are the two that matter.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CLUSTER_DIR := .cluster

.PHONY: system run demo test test-unit test-integration test-e2e test-node test-reliability lint fmt docs version cluster cluster-down env controlplane node helm clean bench bench-replay bench-smoke

$(BIN)/.installed: pyproject.toml lab/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./lab  # the lab (lab/) is a distribution of its own
	touch $@

## The system packages the lab and the tests need (PostgreSQL, Redis, Prometheus, Alertmanager,
## Docker, busybox, Go): installs what is missing with apt-get (as root or through sudo).
system:
	@tools/system-packages.sh

## Build the pinned control-plane binaries once (cached outside the checkout).
controlplane: system
	@tools/controlplane/build.sh >/dev/null

## Build the pinned real-node binaries once (kubelet, kube-proxy, CoreDNS, pause; cached outside the checkout).
node: system
	@tools/node/build.sh >/dev/null

## Build the pinned helm once (cached outside the checkout), for the chart's tests.
helm: system
	@tools/helm/build.sh >/dev/null

## The local ISH Chat lab (control plane and a real node, PostgreSQL, Redis, Prometheus, Alertmanager,
## ISH Chat, the runbook pack) with the operator installed in the cluster from its own image by the Helm
## chart; `make run OPERATOR=host` runs it as a host process instead (debugging). Ctrl-C stops the lab.
OPERATOR ?= cluster
run: system $(BIN)/.installed controlplane helm
	@OPERATOR=$(OPERATOR) tools/run-local.sh

## In a second shell while `make run` runs: inject the twelve faults, follow the incidents, print a summary.
demo: $(BIN)/.installed
	@$(BIN)/python -m runbook_lab demo --dir .lab

## Unit, integration (real PostgreSQL, Redis, Prometheus, Docker, control plane) and end-to-end tests.
test: $(BIN)/.installed controlplane node helm
	$(BIN)/pytest

test-unit: $(BIN)/.installed
	$(BIN)/pytest tests/unit

test-integration: $(BIN)/.installed controlplane
	$(BIN)/pytest tests/integration

test-e2e: $(BIN)/.installed controlplane node helm
	$(BIN)/pytest tests/e2e

## On a real node (as root, one per machine): the operator from its image, by its chart.
test-node: $(BIN)/.installed controlplane node helm
	$(BIN)/pytest tests/node

## Crashes, API server restarts, outages, bad input, churn, RBAC (also part of `make test`).
test-reliability: $(BIN)/.installed controlplane
	$(BIN)/pytest tests/reliability

lint: $(BIN)/.installed
	$(BIN)/ruff check operator lab tests
	$(BIN)/ruff format --check operator lab tests
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache  # the layers in .importlinter

## Benchmarks against a Go controller-runtime peer (bench/peer, built once into the cache) and a
## minimal Kopf operator on an own control plane; updates docs/benchmarks.md.
bench: $(BIN)/.installed controlplane
	@bench/peer/build.sh >/dev/null
	$(BIN)/python bench/run.py

## Only the replay's part of `make bench` (no cluster): 10,000 recorded incidents x 100 policies.
bench-replay: $(BIN)/.installed
	$(BIN)/python bench/replay.py

bench-smoke: $(BIN)/.installed controlplane
	@bench/peer/build.sh >/dev/null
	$(BIN)/python bench/run.py --sizes 20 --alerts 2 --burst 10 --out $${TMPDIR:-/tmp}/benchmarks-smoke.md

## Regenerate docs/actions.md from the action registry.
docs: $(BIN)/.installed
	$(BIN)/runbook-operator actions --markdown > docs/actions.md

## Set the version everywhere it is written: make version V=0.2.0 (then a CHANGELOG.md entry).
version:
	tools/version.sh $(V)

fmt: $(BIN)/.installed
	$(BIN)/ruff check --fix operator lab tests
	$(BIN)/ruff format operator lab tests

## Start (or reuse) the local control plane and, where the machine allows, a real node (RUNBOOK_LAB_NODE=kwok:
## kwok's fake node only); kubeconfig in .cluster/kubeconfig.
cluster: $(BIN)/.installed controlplane
	@tools/cluster.sh up $(CLUSTER_DIR)

## Stop the real node (undoing every host-wide change) and exactly the processes `make cluster` started.
cluster-down: $(BIN)/.installed
	@tools/cluster.sh down $(CLUSTER_DIR)

## Print the exports for a shell: eval "$$(make -s env)"
env: controlplane
	@echo "export KUBECONFIG=$(CURDIR)/$(CLUSTER_DIR)/kubeconfig PATH=$$(tools/controlplane/build.sh):$(CURDIR)/$(BIN):$$PATH"

clean: cluster-down
	rm -rf $(VENV) $(CLUSTER_DIR) .lab .pytest_cache .mypy_cache .ruff_cache
