# One-command entry points. `make run` and `make test` create the virtual environment on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Which torch to install before the project. The default is the CPU build that lies on this kind of
# machine's disk; elsewhere point TORCH_INDEX_URL at https://download.pytorch.org/whl/cpu (CPU) or
# .../whl/cu124 (CUDA), or set TORCH_SPEC=torch to let pip choose. Installing torch first keeps the
# project's `torch>=2.4` from pulling a multi-GB CUDA build onto a machine without a GPU.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PIP_TORCH_FLAGS := $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL) --extra-index-url https://pypi.org/simple,)
# Exact versions this project was tested with; `make lock` refreshes them.
CONSTRAINTS ?= constraints.txt
EXPERIMENT ?= quickstart
ARGS ?=
# Pytest workers of `make test` / `make test-fast` (pytest-xdist): tests that share a sweep, a module's
# fixtures or the SLURM cluster stay on one worker (tests/conftest.py); each worker computes on one thread.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup
STORE ?= outputs/mlflow.db
UI_PORT ?= 5000

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_TORCH_FLAGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	@touch $@

.PHONY: help install run test test-fast lint format bench ui lock clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: $(VENV)/.installed ## Create .venv and install the project with its dev tools

run: $(VENV)/.installed ## Run the quickstart sweep (world model, drawn kitten); EXPERIMENT=, ARGS= to change
	$(PY) -m sweeper -m experiment=$(EXPERIMENT) $(ARGS)

test: $(VENV)/.installed ## Run the whole test suite (CPU, shipped world model and tiny offline models)
	$(PYTEST) $(ARGS)

test-fast: $(VENV)/.installed ## Run the tests without the slow end-to-end sweeps
	$(PYTEST) -m "not slow" $(ARGS)

lint: $(VENV)/.installed ## Lint and check formatting with ruff
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(VENV)/.installed ## Format the code with ruff
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(VENV)/.installed ## Run the benchmarks (prints ratios against baselines measured in the same run)
	$(PY) -m bench $(ARGS)

ui: $(VENV)/.installed ## Print each sweep's MLflow link and open the UI on 127.0.0.1 (STORE=, UI_PORT=)
	$(PY) -m sweeper.tracking.ui --store $(STORE) --port $(UI_PORT)

lock: ## Refresh constraints.txt from the current .venv
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' > $(CONSTRAINTS)

clean: ## Remove the virtual environment and caches (not outputs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache
