PY ?= python3
# A Python with torch==2.13.0 and transformers==5.17.0 (fixtures only; never CI)
FIXTURE_PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test test-all lint bench fixtures clean

install:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	@# tmux drives the real-terminal chat test; best effort (the test says why it skips).
	@command -v tmux >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -qq tmux >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq tmux >/dev/null 2>&1))) || \
		echo "note: tmux not installed; the real-terminal chat test will be skipped"

test:
	$(BIN)/python -m pytest tests -m "not slow"

test-all:
	$(BIN)/python -m pytest tests

lint:
	$(BIN)/ruff check gemma_mtp_mlx tests bench

bench:
	$(BIN)/python bench/run_all.py

# Needs torch + transformers==5.17.0 (never in CI): see tests/fixtures/README.md
fixtures:
	$(FIXTURE_PY) tests/fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) build *.egg-info
