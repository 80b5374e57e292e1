# The two commands a newcomer needs (see README):
#   make run   - set up a virtualenv and run the whole pipeline on the embedded default corpus
#   make test  - set up a virtualenv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: setup run test lint dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is installed first and pinned: an unpinned resolve pulls a multi-GB CUDA build.
setup: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[llm,dev]"

run: setup
	$(BIN)/embed-assets run

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check embed_assets embed_assets_tests benchmarks scripts
	$(BIN)/ruff format --check embed_assets embed_assets_tests benchmarks scripts

dev: setup
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/dagster dev -w workspace.yaml

bench: setup
	$(BIN)/python benchmarks/bench_nfcorpus.py

clean:
	rm -rf .embed_assets .dagster_home
