PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint bench fixtures clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"

test:
	$(BIN)/python -m pytest tests

lint:
	$(BIN)/ruff check gemma_mtp_mlx convert tests bench

bench:
	$(BIN)/python bench/run_all.py

# Needs torch + transformers==5.17.0 (never in CI): see tests/fixtures/README.md
fixtures:
	$(FIXTURE_PY) tests/fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) build *.egg-info
