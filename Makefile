# One entry point per task; every target installs what it needs first (quickly when it is there).
PYTHON := .venv/bin/python
SOURCES := core broker bridge api client_sim stack bench scheduler aggregator feed tests

.PHONY: install run test test-faults lint bench

install:
	bash scripts/install.sh

# `make run ARGS="--broker amqtt"` passes options to `python -m stack run`.
run: install
	$(PYTHON) -m stack run $(ARGS)

lint: install
	$(PYTHON) -m ruff check $(SOURCES)
	$(PYTHON) -m mypy

test: lint
	$(PYTHON) -m pytest

# Churn runs with one fault each (kill -9 of the bridge, Redis emptied, RabbitMQ, FerretDB, broker): ~6 min.
test-faults: lint
	$(PYTHON) -m pytest -m faults tests/test_faults.py

bench: install
	$(PYTHON) -m bench
