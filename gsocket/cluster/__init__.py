"""Several gsocket processes as one: shared presence, and connection state recovery."""
