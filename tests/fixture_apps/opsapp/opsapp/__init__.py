"""Test app of the operations tests (drain, metrics, logging, scale-out)."""
