# Quick start: `make demo` and `make test` on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/geopurify demo --out out/demo

# First the import contracts (pyproject.toml [tool.importlinter], docs/architecture.md), lint and the
# format check (ruff); then the suite on two pytest-xdist workers (whole test files per worker: a
# file's tests share fixtures and run in order; the slow tests first, the two recipes apart: see
# tests/conftest.py), each with 1 thread: 2-thread CPU reductions differ in the last bits, and
# tests compare exactly.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check geopurify tests bench
	$(BIN)/ruff format --check geopurify tests bench
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

clean:
	rm -rf $(VENV) out build *.egg-info
