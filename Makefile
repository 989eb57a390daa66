# The verbs people expect. Every target works from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help install player demo test test-unit test-integration lint fmt crds crds-check chart binaries images cluster-up cluster-down bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(PY)

install: $(PY) player  ## create .venv with kubecast and its dev tools, build the player assets

PLAYER_JS := workers/kubecast_worker/player/static/hls.min.js
$(PLAYER_JS): workers/kubecast_worker/player/package-lock.json
	workers/kubecast_worker/player/build_assets.sh

player: $(PLAYER_JS)  ## fetch hls.js from the npm registry into the worker's player page

demo: $(PY) $(PLAYER_JS)  ## the whole thing locally: a cluster with a real node, helm install, a live stream, a playable URL
	hack/demo.sh

test: $(PY) $(PLAYER_JS)  ## run every test: unit, integration (real kube-apiserver) and end-to-end media
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(PY)  ## only the fast unit tests
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: $(PY)  ## only the tests against the real control plane
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: $(PY)  ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

fmt: $(PY)  ## format the code
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format operator workers tests

crds: $(PY)  ## regenerate crds/ (and the chart's copy) from the API models
	$(PY) -m kubecast_api.crdgen --out crds --chart charts/kubecast

crds-check: $(PY)  ## fail when crds/ or the chart's copy differs from the models
	$(PY) -m kubecast_api.crdgen --out crds --chart charts/kubecast --check

chart: $(PY)  ## lint and render the Helm chart (offline: --kube-version)
	BIN=$$(hack/build-binaries.sh | tail -1) && \
	$$BIN/helm lint --strict charts/kubecast --kube-version 1.34.0 && \
	$$BIN/helm template kubecast charts/kubecast --include-crds --kube-version 1.34.0 >/dev/null

binaries:  ## build (or reuse) the control-plane binaries in ~/.cache/kubecast
	hack/build-binaries.sh

images:  ## build the operator and worker images with buildah (no Docker daemon, no registry); prints the archives
	hack/images.sh

cluster-up: $(PY)  ## a local cluster in its own network namespace: control plane, one real node, kwok nodes; kubeconfig in .cluster/
	hack/system-packages.sh
	hack/cluster-up.sh

cluster-down:  ## stop the local cluster and remove all it made (processes, mounts, cgroups, namespace, sysctls)
	hack/cluster-down.sh

bench: $(PY)  ## the worker's ladder against the ffmpeg CLI, TS against CMAF+DASH packaging, its HLS origin under 1,000 viewers against nginx, the operator with 1,000 streams, glass-to-glass latency per ingest and player (root: a network namespace) (docs/benchmarks.md)
	$(PY) bench/ladder.py --runs 3
	$(PY) bench/packaging.py --runs 3
	$(PY) bench/viewers.py --seconds 60 --rounds 2
	$(PY) bench/operator.py --streams 100,500,1000 --steady-streams 1000 --steady-seconds 300
	$(PY) bench/latency.py --seconds 45

clean:  ## remove build and test leftovers (not the binary cache)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info test-artifacts
