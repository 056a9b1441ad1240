"""Realtime handlers of the demo app (``handlers.py`` is what gsocket imports)."""
