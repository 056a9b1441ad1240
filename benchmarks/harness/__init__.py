"""Pieces of the gsocket benchmark harness driven by benchmarks/run.py."""
