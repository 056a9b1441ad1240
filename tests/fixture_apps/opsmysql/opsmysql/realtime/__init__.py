"""Realtime handlers of opsmysql."""
