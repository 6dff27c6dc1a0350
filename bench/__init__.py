"""Benchmarks: `make bench` runs them all and prints one table (never part of `make test`)."""
