# Two entry points: `make repro` (set up + run the pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# dvc.yaml runs `python -m stages.<name>`: the venv's python must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install repro test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

repro: install
	dvc repro

lint: install
	ruff check .
	ruff format --check .
	mypy

test: lint
	pytest
