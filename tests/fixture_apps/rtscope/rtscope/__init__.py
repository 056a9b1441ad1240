"""A real Frappe app for gsocket's real-bench lane, installed on ``test.localhost`` only."""

__version__ = "0.0.1"
