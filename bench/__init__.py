"""Benchmarks, each reproducible by one command (``python -m bench.<name>``); results in docs/benchmarks.md."""
