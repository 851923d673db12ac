# ttsbench: `make install` then `make test`. Everything runs on CPU; a GPU is used when present.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUITE ?= suites/cpu.yaml

.PHONY: install test bench clean

install: $(BIN)/ttsbench

$(BIN)/ttsbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python -m pytest tests/benchmarks --benchmark-only --benchmark-json=reports/benchmarks.json -q

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
