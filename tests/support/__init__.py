"""Reusable test fixtures' building blocks: real Redis, a Frappe web stand-in, a real Node client.

Every piece here starts a real process or server on loopback and cleans it up itself, so the
suite exercises gsocket against the same parts a bench runs, not against mocks.
"""
