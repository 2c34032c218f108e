# make demo: a sample campaign end to end.  make test: the whole suite (ruff, mypy, pytest).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck unit wire e2e bench bench-full intents-corpus intents-model clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/campaign-worker demo

lint: $(STAMP)
	$(BIN)/ruff check campaign_worker tests bench tooling celeryconfig.py
	$(BIN)/ruff format --check campaign_worker tests bench tooling celeryconfig.py

typecheck: $(STAMP)
	$(BIN)/mypy

# Parallel (pytest-xdist): most e2e and fault time is spent waiting on worker processes, so
# more pytest processes than cores; one test at a time per process, slowest first.
JOBS ?= 4

test: lint typecheck
	$(BIN)/python -m pytest -q -ra -n $(JOBS) --maxschedchunk 1

# The edit loop: unit and contract tests without a server (fakes and mongomock-ng), in parallel.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not wire and not e2e" tests/unit tests/contract

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit -m "not wire"

wire: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

e2e: $(STAMP)
	$(BIN)/python -m pytest -q tests/e2e

# Every figure of docs/benchmarks.md beside its target and same-run baseline (a few minutes);
# bench-full adds peak RSS at 1,000,000 recipients. MONGODB_URI / BENCH_BROKER_URL honoured.
bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-full: $(STAMP)
	$(BIN)/python -m bench.run --full

# The reply intent model: the corpus from its seeds, the shipped model from the corpus
# (deterministic: tests/unit/test_intent_artifact.py retrains and compares).
intents-corpus: $(STAMP)
	$(BIN)/python -m tooling.build_intent_corpus

intents-model: $(STAMP)
	$(BIN)/campaign-worker intents train --out campaign_worker/data/intents

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
