# Two commands set everything up on a machine with only python3, make and git:
#   make run    virtual environment + pinned dependencies, then the pipeline (dvc repro)
#   make test   the same set-up, then the whole test suite
# The environment is rebuilt only when requirements.lock or pyproject.toml change.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# GPU=1 adds the CUDA wheels (tensorflow[and-cuda]) for machines with an NVIDIA GPU.
GPU    ?=
# No network calls home from DVC; quiet TensorFlow start-up logs.
export DVC_NO_ANALYTICS := 1
# Stage commands in dvc.yaml call `python`: make it the environment's.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.DEFAULT_GOAL := help
.PHONY: help install system run chapter test test-fast lint screenshots faults mutants bench data report dag ui server lock clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version.split()[0]' \
		|| { echo "error: set PYTHON=/path/to/python3.11 (make run PYTHON=python3.11)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(if $(GPU),$(BIN)/python -m pip install --quiet "tensorflow[and-cuda]==$$(sed -n 's/^tensorflow==//p' requirements.lock)")
	@touch $@

install: $(STAMP) ## Create .venv and install the pinned dependencies (idempotent)

# Debian packages of the team-scale tests (tests/services.py, tests/test_ui.py, tests/slurm_cluster.py);
# without them those tests skip (and fail under CI). Installed only where missing.
SYSTEM_PACKAGES := postgresql chromium chromium-driver slurm-wlm munge
system: ## Install the Debian packages the server, browser and Slurm tests use (root; .ci/run does it)
	@missing="$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done | tr '\n' ' ')"; \
	if [ -z "$$missing" ]; then echo "system packages present: $(SYSTEM_PACKAGES)"; \
	elif [ "$$(id -u)" != 0 ]; then echo "error: run as root, or: sudo apt-get install $$missing" >&2; exit 1; \
	else echo "installing $$missing" && apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

# dvc repro, with the stale experiment stages' sweeps in one process on one set of workers
# (src/repro.py): each stage keeps its own staleness and dvc.lock entry; the numbers are dvc repro's.
run: $(STAMP) ## Run the pipeline: dvc repro, stale experiments in one process (set CH11_DATA_MIRROR when offline)
	$(BIN)/python -m src.repro

# The same experiments in one process, on one set of worker processes: the start-up that
# dvc repro pays per stage is paid once (reports/benchmarks.md measures it).
# The data must be prepared (make data); the summaries and report stay dvc repro's.
chapter: $(STAMP) ## Run every experiment's sweep in one process (python -m src.chapter; faster, no DVC)
	$(BIN)/python -m src.chapter

data: $(STAMP) ## Only the data stages (download, prepare)
	$(BIN)/dvc repro prepare

report: $(STAMP) ## Only what the report needs: the experiments that changed, then reports/results.md
	$(BIN)/python -m src.repro report

# Two workers: most tests wait on subprocesses, servers, DVC or the store, so two overlap
# on 2 cores. PYTEST_ARGS="-n 0" runs them one at a time.
test: $(STAMP) ## Run the whole test suite
	$(BIN)/python -m pytest -n 2 --dist worksteal $(PYTEST_ARGS)

# The quick lane while editing: everything but the tests marked slow (real data, DVC, servers,
# over ~10 s; pyproject.toml). Needs no data mirror. CI and `make test` run them all.
test-fast: $(STAMP) ## The suite without the slow tests (a few minutes; no data mirror needed)
	$(BIN)/python -m pytest -n 2 --dist worksteal -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## Check the code with ruff (rules in pyproject.toml)
	$(BIN)/ruff check .

screenshots: $(STAMP) ## Refresh the manual's MLflow UI screenshots (reports/mlflow_ui*.png) with the UI test
	CH11_SCREENSHOTS=reports $(BIN)/python -m pytest tests/test_ui.py $(PYTEST_ARGS)

faults: $(STAMP) ## The fault-injection suite alone, then reports/reliability.md (root: it mounts a small tmpfs)
	$(BIN)/python -m pytest tests/faults --reliability-report reports/reliability.md $(PYTEST_ARGS)

mutants: $(STAMP) ## Remove each protection the fault suite checks; its test must fail (reports/fault_mutations.json)
	$(BIN)/python tests/faults/mutate.py

bench: $(STAMP) ## Run the benchmarks (BENCH_ARGS=--all: the optional headline rows too): reports/benchmarks.md and .json
	$(BIN)/dvc repro prepare
	$(BIN)/python -m benchmarks.report $(BENCH_ARGS)

dag: $(STAMP) ## Show the pipeline graph
	$(BIN)/dvc dag

ui: $(STAMP) ## Browse the local MLflow store at http://127.0.0.1:5000
	@echo "MLflow UI on http://127.0.0.1:5000 (store: $(CURDIR)/mlflow.db); Ctrl-C stops it"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlartifacts \
		--host 127.0.0.1 --port 5000

# `make server`: a team's tracking server (docs/team.md). BACKEND is its database,
# ARTIFACTS where it keeps artifacts (a folder here; s3://, gs://... in production).
BACKEND   ?=
ARTIFACTS ?= $(CURDIR)/server-artifacts
HOST      ?= 127.0.0.1
PORT      ?= 5000
server: $(STAMP) ## Tracking server: make server BACKEND=postgresql://mlflow@127.0.0.1:5432/mlflow [ARTIFACTS=...]
	@test -n "$(BACKEND)" || { echo "error: set BACKEND, e.g. make server BACKEND=postgresql://mlflow@127.0.0.1:5432/mlflow (docs/team.md)" >&2; exit 2; }
	@echo "MLflow tracking server on http://$(HOST):$(PORT) (runs: python -m src.train tracking=server); Ctrl-C stops it"
	$(BIN)/mlflow server --backend-store-uri "$(BACKEND)" --artifacts-destination "$(ARTIFACTS)" --host $(HOST) --port $(PORT)

lock: ## Re-resolve pyproject.toml into requirements.lock (needs the package index)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade "pip>=24"
	.lock-venv/bin/python -m pip install --quiet -e ".[test]"
	{ sed -n '1,2p' requirements.lock; .lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^pip=='; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock && rm -rf .lock-venv

clean: ## Remove caches and test leftovers (keeps data, .venv and the MLflow store)
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
