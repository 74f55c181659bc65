# kzoo: `make demo` then `make test` on a fresh machine (Python 3.11 + make).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `import kzoo` quiets TensorFlow's C++ start-up lines itself (KZOO_DEBUG=1 shows them).
export KERAS_BACKEND := tensorflow

.PHONY: install demo test test-full test-docs lint format bench bench-peers clean

install: $(STAMP)

# Re-installs only when pyproject.toml changed (the stamp is newer otherwise).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/python -m kzoo demo

lint: install
	$(BIN)/ruff check kzoo recipes tests benchmarks
	$(BIN)/ruff format --check kzoo recipes tests benchmarks

format: install
	$(BIN)/ruff format kzoo recipes tests benchmarks
	$(BIN)/ruff check --fix kzoo recipes tests benchmarks

# Two processes (one per core): tracing is single-threaded Python, so two units
# trace at once. A unit is a test file (its module fixtures stay in one worker) or
# one document of test_docs.py; tests/conftest.py groups them and orders them
# longest first, which --no-loadscope-reorder keeps.
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=15

# CI's suite (`.ci/run`): ruff, then every test not marked slow (README's commands
# included), within CI's 30 minutes on 2 cores. The whole suite no longer fits there
# (43 min on 2 idle cores, 2026-12-07): `make test-full` runs it, slow tests (fits,
# exports with parity, multi-process runs) and the recipe pages' commands included.
test: lint
	$(PYTEST) -m "not slow"

test-full: lint
	$(PYTEST)

# Every code block of README.md and docs/*.md, run as tests/test_docs.py describes.
test-docs: install
	$(PYTEST) tests/test_docs.py

bench: install
	$(BIN)/python -m benchmarks.run --workload all

# One sitting, kzoo and its PyTorch peers (benchmarks/peers/) alternating:
# make bench-peers PEER_PYTHON=~/kzoo-torch/bin/python [OUT=...] [WORKLOADS="unet_train ..."]
# PEER_PYTHON is a venv outside the repo with torch, diffusers and vector-quantize-pytorch
# (README.md, "Benchmarks"); PRECISION=mixed_bfloat16 times both sides in bfloat16.
OUT ?= benchmarks/results/$(shell date +%Y-%m-%d-%H%M)-sitting.jsonl
bench-peers:
	@test -n "$(PEER_PYTHON)" || { echo "make: bench-peers needs PEER_PYTHON=/path/to/torch-venv/bin/python, a Python with torch, diffusers and vector-quantize-pytorch (README.md, Benchmarks)" >&2; exit 2; }
	@$(MAKE) --no-print-directory install
	benchmarks/sitting.sh "$(OUT)" "$(PEER_PYTHON)" $(WORKLOADS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache runs
	find exported -mindepth 1 ! -name README.md -exec rm -rf {} +
