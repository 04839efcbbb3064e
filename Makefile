# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/quickstart

.PHONY: setup run test lint clean-venv

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch 2.13.0 is installed first so the project's `torch>=2.2` is already met.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## Train the quickstart preset (MiniGrid multi-scene, Sparse DVE), evaluate it and write its report.
run: setup
	$(PY) -m multiscene train --preset quickstart --run-dir $(RUN_DIR) --overwrite
	$(PY) -m multiscene report $(RUN_DIR)

## Run the test suite.
test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(PY) -m ruff check multiscene tests benchmarks

clean-venv:
	rm -rf $(VENV)
