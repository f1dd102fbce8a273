# Every target creates .venv with python3 -m venv and installs what it needs; all are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SANDBOX_DIR ?= .sandbox

.PHONY: sandbox test lint typecheck unit bench crds tools kube clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

tools: $(STAMP) kube
	$(BIN)/python tools/install_helm.py $(BIN)

# The real Kubernetes binaries (kube-apiserver, etcd, kwok, ...) built from Go modules into
# ~/.cache/choreo-dp/kube; a no-op once cached. See docs/testing.md.
kube:
	$(PYTHON) tools/kube/build.py

sandbox: $(STAMP)
	$(BIN)/choreo-dp sandbox --dir $(SANDBOX_DIR)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy src

unit: tools
	PATH="$(abspath $(BIN)):$$PATH" tools/run_tests.sh

test: lint typecheck unit

bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m bench

crds: $(STAMP)
	$(BIN)/choreo-dp crds --output-dir crds
	$(BIN)/python -m choreo_dp.api.docgen docs/crds.md
	cp crds/*.yaml deploy/helm/choreo-dp/crds-src/

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
