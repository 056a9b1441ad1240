"""Reusable test fixtures' building blocks: a Frappe web stand-in, bench folders and gsocket
processes, MariaDB, nginx, Python and Node clients.

Every piece here starts a real process or server on loopback and cleans it up itself, so the
suite exercises gsocket against the same parts a bench runs, not against mocks.  Child
processes, ports, waiting and the real Redis come from :mod:`gsocket.demo` (``processes``,
``ports``, ``redis_server``), written once for the demo, the suite, the benchmarks and the
scripts.
"""
