# Two commands do everything on a fresh machine:  make run  and  make test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch first and pinned: 2.13.0 is the local CPU build; unpinned, pip pulls a multi-GB CUDA one.
TORCH   := torch==2.13.0

# Offline, quiet, and every tool's state inside the project (tasks/environment.py sets the
# same for processes started without make).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export HF_HOME := $(CURDIR)/.state/hf
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.state/dvc-site-cache
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_HOME := $(CURDIR)/.state/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PIP_CACHE_DIR := $(CURDIR)/.state/pip-cache
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TMPDIR := $(CURDIR)/.state/tmp
$(shell mkdir -p .state/tmp)

.PHONY: help setup run test lint format clean prefect-server serve-flows worker ui serve-model

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-15s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q $(TORCH)
	$(PYTHON) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)  ## Create .venv and install the project (idempotent)

run: setup  ## Run the whole pipeline (dvc repro); PRESET=conll2003|sst2 writes that preset first
ifdef PRESET
	python -m tasks.presets $(PRESET)
endif
	dvc repro

test: setup  ## Run the test suite
	pytest

lint: setup  ## ruff lint and format check
	ruff check .
	ruff format --check .

format: setup  ## Apply ruff fixes and formatting
	ruff check --fix .
	ruff format .

MLFLOW_DB    := sqlite:///$(CURDIR)/.state/mlflow/mlflow.db
MLFLOW_PORT  ?= 5000
MODEL_PORT   ?= 5001
MODEL_NAME    = $(shell $(PYTHON) -c "from tasks.config import load_params; print(load_params().register_.model_name)")

ui: setup  ## MLflow UI on http://127.0.0.1:5000 (experiments, nested trials, registry)
	@mkdir -p .state/mlflow
	mlflow server --backend-store-uri $(MLFLOW_DB) --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1

serve-model: setup  ## Serve models:/<register.model_name>@champion on http://127.0.0.1:5001/invocations
	MLFLOW_TRACKING_URI=$(MLFLOW_DB) mlflow models serve -m "models:/$(MODEL_NAME)@champion" \
	  --env-manager local --host 127.0.0.1 --port $(MODEL_PORT)

PREFECT_PORT ?= 4200
PREFECT_LOCAL_API := http://127.0.0.1:$(PREFECT_PORT)/api

prefect-server: setup  ## Start a local Prefect server + UI on 127.0.0.1:4200 (state in .state/prefect)
	prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

serve-flows: setup  ## Register the nightly deployment and execute its runs here (needs prefect-server)
	PREFECT_API_URL=$(PREFECT_LOCAL_API) python -m flows.deploy serve

POOL ?= training
worker: setup  ## Past one machine: deploy to work pool $(POOL) and start a process worker for it
	PREFECT_API_URL=$(PREFECT_LOCAL_API) prefect work-pool inspect $(POOL) >/dev/null 2>&1 || \
	  PREFECT_API_URL=$(PREFECT_LOCAL_API) prefect work-pool create $(POOL) --type process
	PREFECT_API_URL=$(PREFECT_LOCAL_API) python -m flows.deploy pool --pool $(POOL)
	PREFECT_API_URL=$(PREFECT_LOCAL_API) prefect worker start --pool $(POOL)

clean:  ## Remove tool state (.state) but keep data, models and the environment
	rm -rf .state
