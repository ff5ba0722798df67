# Two entry points: `make repro` (set up, fetch the dataset, run the pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
# dvc.yaml runs `python -m stages.<name>`: the venv's python must come first on PATH.
export PATH := $(BIN):$(PATH)

.PHONY: install data repro test test-fast lint mutation

# .wheelhouse: the Lambda image's pinned wheels, fetched once here so that the tests build
# the image's environment offline (tests/integration/test_lambda_image.py).
# .wheelhouse-lambda/{x86_64,aarch64}: the same pins resolved for the image's Python 3.12 on
# each Lambda architecture (tests/unit/test_architectures.py reads them offline).
$(VENV)/.installed: pyproject.toml lambda/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip download --quiet --only-binary=:all: -r lambda/requirements.txt -d .wheelhouse
	for arch in x86_64 aarch64; do \
	  $(BIN)/pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
	    --abi cp312 --abi abi3 --abi none --platform manylinux_2_28_$$arch \
	    --platform manylinux_2_17_$$arch --platform manylinux2014_$$arch \
	    -r lambda/requirements.txt -d .wheelhouse-lambda/$$arch || exit 1; \
	done
	touch $@

install: $(VENV)/.installed

# The dataset as data/source/chest-xray-pneumonia.dvc names it: from the DVC cache, the
# remote, or FALLBACK (verified against the committed hash).
FALLBACK ?= ../shared/data/chest-xray-pneumonia
data: install
	python -m pneumonia.dataset --fallback $(FALLBACK)

repro: data
	dvc repro

# Code, then what deploys it: the SAM template, the image, the workflows (offline).
lint: install
	ruff check .
	ruff format --check .
	mypy
	cfn-lint lambda/template.yaml
	hadolint lambda/Dockerfile
	check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	zizmor --offline --no-progress .github/workflows/

# On two processes (pytest-xdist), a test file at a time (--dist loadfile: a module's fixtures,
# such as the arm64 root file system, are built once), in collection order (the integration
# files, the longest, first; the unit files fill in after). Each process builds the reproduced
# slice (the `repo` fixture) once for the files it runs. -n 0 runs it in one process.
# (Not --dist loadgroup: pytest-xdist 3.8 marks groups in node ids, which pytest 9.2 ignores.)
test: lint
	pytest -n 2 --dist loadfile --no-loadscope-reorder

# The unit tier alone (no dvc repro, no TensorFlow, no servers), on every core (pytest-xdist):
# collecting tests/unit only skips the integration modules' imports; tests/conftest.py holds
# the folders and the `integration` mark equal; the unit tests use no schemathesis (its plugin
# costs each worker a second to import).
test-fast: install
	pytest tests/unit -n auto -p no:schemathesis

# Mutation testing of the decision, its contract, request parsing, the screening, the
# image sanitiser and batch rows against their unit tests ([tool.mutmut] in pyproject.toml);
# not part of `make test`. Prints a score per module and fails when one is under
# MUTATION_MIN percent (docs/mutation.md); CI runs it when those modules change.
MUTATION_MIN ?= 85
mutation: install
	rm -rf mutants
	mutmut run
	python tests/mutation_score.py --min $(MUTATION_MIN)
