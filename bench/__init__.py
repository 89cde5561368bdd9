"""Benchmarks (`python -m bench`, `make bench`): ingest rate of one bridge and birth-to-online latency."""
