# `make run` and `make test` set everything up on a fresh machine (Python 3.11+ is all it needs).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint typecheck install clean stop-embedded bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,plot]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m engine run

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check engine worker tests
	$(VENV)/bin/ruff format --check engine worker tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy engine worker

# Flash and spread against the bare claim ceiling and our engine (data under .data-bench).
bench: $(STAMP)
	$(PY) -m engine bench

# Stops the servers of `make run` (.data) and of `make test` (.data-test).
stop-embedded: $(STAMP)
	$(PY) -m engine stop-embedded
	BOOKING_DATA_DIR=.data-test $(PY) -m engine stop-embedded

clean: stop-embedded
	rm -rf $(VENV) .data-test
