"""Frappe's ``Database`` internals the database pool relies on, in one place.

Verified against Frappe v15.44.2 and develop (16.0.0-dev of October 2024), whose
``frappe.database.database.Database`` (with ``MariaDBConnectionUtil``) both:

- get the connection in ``connect()`` from ``self.get_connection()`` (a PyMySQL
  ``Connection``; Frappe connects lazily, on the first query), keep it in ``self._conn`` and a
  cursor of it in ``self._cursor``, then set the session's ``max_statement_time`` themselves;
- close ``self._conn`` in ``close()`` (which ``frappe.destroy()`` calls) only when it is set;
- name their database with ``host``, ``port``, ``socket`` (develop only), ``user``,
  ``password`` and ``cur_db_name``;
- keep ``before_commit``, ``after_commit``, ``before_rollback`` and ``after_rollback`` as
  ``frappe.utils.CallbackManager`` objects whose pending functions are in ``_functions``;
- commit with ``before_rollback.reset()``, ``after_rollback.reset()``,
  ``before_commit.run()``, ``self.sql("commit")``, ``self.begin()`` (``START TRANSACTION``,
  ``READ ONLY`` with ``frappe.flags.read_only``), ``after_commit.run()``; develop's only
  warns instead while ``_disable_transaction_control`` is set;
- in ``sql("commit")``, besides sending it, only reset their count of writes and log the
  query (printed with ``allow_tests`` and the ``flag_print_sql`` cache key, or
  ``logging: 2``; never raised).

tests/realbench/test_frappe_ctx_real.py runs the pool on both versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

COMMIT_CALLBACKS = ("before_commit", "after_commit")
"""The ``CallbackManager`` attributes a commit runs."""
ROLLBACK_CALLBACKS = ("before_rollback", "after_rollback")
"""The ``CallbackManager`` attributes a rollback runs."""

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


def untouched(db: Any, callbacks: tuple[str, ...]) -> bool:
    """Whether ending ``db``'s transaction would only open a connection to end nothing.

    True when ``db`` never connected (Frappe connects on the first query, so no statement ran)
    and the ``CallbackManager`` attributes named in ``callbacks`` (``before_commit``,
    ``after_commit``, ...) hold no function: then Frappe's ``commit()``/``rollback()`` would
    connect, end an empty transaction and start another, which the next borrower never sees.
    develop's ``_disable_transaction_control`` makes both a warning only; then they run.
    """
    if getattr(db, "_conn", None) is not None or getattr(db, "_disable_transaction_control", 0):
        return False
    managers = _managers(db, callbacks)
    return managers is not None and not any(manager._functions for manager in managers)


def _managers(db: Any, names: tuple[str, ...]) -> list[Any] | None:
    """``db``'s ``CallbackManager`` objects of these names; None when one is missing (not the
    ``Database`` described above: let it end its own way)."""
    managers = [getattr(db, name, None) for name in names]
    return None if any(manager is None for manager in managers) else managers


def commit_last(db: Any, read_only: bool) -> None:
    """``db.commit()`` as the context's last word: without the ``START TRANSACTION`` Frappe
    sends right after ``COMMIT``, one round trip of the hub for a transaction that is never
    used (the connection is reset or closed next).

    Whatever the ``after_commit`` callbacks then run still runs in a transaction that is never
    committed: with autocommit off (as Frappe connects) MariaDB opens one implicitly.  Frappe's
    own ``begin()`` is kept where it makes a difference: ``frappe.flags.read_only`` (a
    ``READ ONLY`` transaction) or a handler that turned autocommit on.
    """
    begin = getattr(type(db), "begin", None)
    if read_only or begin is None:
        db.commit()
        return

    def begin_if_needed(*, read_only: bool = False) -> None:
        conn = db._conn
        if read_only or conn is None or conn.get_autocommit():
            begin(db, read_only=read_only)

    db.begin = begin_if_needed
    try:
        db.commit()
    finally:
        del db.begin


def only_commit_left(db: Any) -> bool:
    """Whether ending ``db``'s transaction is a bare ``COMMIT`` on the connection it holds, and
    if so, take Frappe's steps before it: the caller then sends that ``COMMIT`` itself, in the
    same write as the pool's reset (one round trip and one ``Database.sql`` call less).

    True when ``db`` holds a connection, transaction control is on and no ``before_commit``
    or ``after_commit`` function is pending: then Frappe's ``commit()`` would drop the
    rollback callbacks (done here), send ``COMMIT``, and begin a transaction the connection's
    reset ends unused.  What ``sql("commit")`` does besides (the module docstring) is left
    out: a count of writes on a ``Database`` that is destroyed next, and a debug print of
    the query.  A ``COMMIT`` refused there raises PyMySQL's error itself, where Frappe's
    ``sql()`` would have turned a deadlock, a time limit or read-only mode into its own
    exception classes: the event fails either way (no handler can catch its own last commit),
    only the error's name in the log differs.  False: nothing was done; end the transaction
    with :func:`commit_last`.
    """
    if getattr(db, "_conn", None) is None or getattr(db, "_disable_transaction_control", 0):
        return False
    managers = _managers(db, COMMIT_CALLBACKS + ROLLBACK_CALLBACKS)
    if managers is None:
        return False
    before_commit, after_commit, before_rollback, after_rollback = managers
    if before_commit._functions or after_commit._functions:
        return False
    before_rollback.reset()
    after_rollback.reset()
    return True
