"""Benchmarks for cortexd (issue 7): see bench/README.md."""
