# One entry point per task; every target installs what it needs first (quickly when it is there).
PYTHON := .venv/bin/python
SOURCES := core broker bridge api client_sim stack bench scheduler aggregator feed tests

.PHONY: install run test test-churn lint bench

install:
	bash scripts/install.sh

# `make run ARGS="--broker amqtt"` passes options to `python -m stack run`.
run: install
	$(PYTHON) -m stack run $(ARGS)

lint: install
	$(PYTHON) -m ruff check $(SOURCES)
	$(PYTHON) -m mypy

# Two pytest-xdist workers, file by file (the tests mostly wait on servers: one process kept the two
# cores 37% busy), then the churn runs alone, as they keep both cores busy themselves.
test: lint
	$(PYTHON) -m pytest -n 2 --dist loadfile -m "not churn"
	$(PYTHON) -m pytest -m churn tests/test_churn_runs.py

# Only the churn runs of `make test`: the platform against the ground truth, alone and with one fault
# each (kill -9 of the bridge, Redis emptied, RabbitMQ, FerretDB, broker restarted): ~3.5 min.
test-churn: lint
	$(PYTHON) -m pytest -m churn tests/test_churn_runs.py

bench: install
	$(PYTHON) -m bench
