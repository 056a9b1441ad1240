"""Frappe's ``Database`` internals the database pool relies on, in one place.

Verified against Frappe v15.44.2 and develop (16.0.0-dev of October 2024), whose
``frappe.database.database.Database`` (with ``MariaDBConnectionUtil``) both:

- get the connection in ``connect()`` from ``self.get_connection()`` (a PyMySQL
  ``Connection``; Frappe connects lazily, on the first query), keep it in ``self._conn`` and a
  cursor of it in ``self._cursor``, then set the session's ``max_statement_time`` themselves;
- close ``self._conn`` in ``close()`` (which ``frappe.destroy()`` calls) only when it is set;
- name their database with ``host``, ``port``, ``socket`` (develop only), ``user``,
  ``password`` and ``cur_db_name``.

tests/realbench/test_frappe_ctx_real.py runs the pool on both versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DATABASE_NAMING = ("socket", "host", "port", "user", "password", "cur_db_name")
"""The ``Database`` attributes that say which database (and as whom) it connects to."""


def lend_connections(db: Any, get_connection: Callable[[Callable[[], Any]], Any]) -> None:
    """Make ``db.connect()`` take its connection from ``get_connection(open_new)``.

    Replaces ``get_connection`` on this one ``Database`` object, not its class, so Frappe's own
    ``connect()`` runs unchanged on a lent connection; ``open_new`` is Frappe's own method.
    """
    open_new = db.get_connection
    db.get_connection = lambda: get_connection(open_new)


def current_connection(db: Any) -> Any:
    """The connection ``db`` holds now (``Database._conn``), or None."""
    return getattr(db, "_conn", None)


def take_connection(db: Any) -> None:
    """Take the connection out of ``db`` so that ``close()`` (``frappe.destroy()``) leaves it
    open: ``_conn`` and ``_cursor`` become None, as ``close()`` itself leaves them."""
    db._conn = None
    db._cursor = None
