"""Benchmarks of depot-api against a real server process; `make bench` runs them (README)."""
