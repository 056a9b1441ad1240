"""PyMySQL's internals that gsocket relies on, in one place.

- :func:`share_pymysql_default_tls_context`: PyMySQL builds its TLS context in the private
  ``Connection._create_ssl_ctx``; the one for connections without TLS settings is built once.

Verified against PyMySQL 1.1.1 (the version Frappe v15 and develop pin) and 1.2.x; the hook
is only put in place for PyMySQL from 1.2 below 2.0, where that method exists.
"""

from __future__ import annotations

from typing import Any


def share_pymysql_default_tls_context() -> bool:
    """Make PyMySQL build its default TLS context once per process instead of per connection.

    PyMySQL 1.2 tries TLS on every connection that has no TLS settings ("preferred" mode) and
    builds a fresh ``ssl`` default context for it, loading the system CA bundle each time:
    tens of milliseconds of CPU per ``frappe.connect``, all of it blocking the gevent hub
    (measured in benchmarks/FRAPPE_CTX.md).  That context is the same every time (no CA, no
    certificate, no host check), and an ``SSLContext`` is made to be shared, so the first
    one is kept and reused.  Connections with TLS settings (``db_ssl_ca`` and friends in the
    site config) still get a context of their own.  Returns whether the sharing is in place.
    """
    try:
        import pymysql
        from pymysql import connections
    except ImportError:
        return False
    original = getattr(connections.Connection, "_create_ssl_ctx", None)
    if original is None or not (1, 2) <= tuple(pymysql.VERSION[:2]) < (2, 0):
        return False
    if getattr(original, "__gsocket_shared__", False):
        return True
    shared: list[Any] = []

    def create_ssl_ctx(self: Any, sslp: Any) -> Any:
        if isinstance(sslp, dict) and not sslp:
            if not shared:
                shared.append(original(self, sslp))
            return shared[0]
        return original(self, sslp)

    create_ssl_ctx.__gsocket_shared__ = True  # type: ignore[attr-defined]
    connections.Connection._create_ssl_ctx = create_ssl_ctx  # type: ignore[method-assign]
    return True
