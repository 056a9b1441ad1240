"""Realtime handlers of opsapp."""
