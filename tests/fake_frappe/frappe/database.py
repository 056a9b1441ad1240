"""A small PyMySQL-backed ``frappe.db``, connected lazily as Frappe's ``Database`` is.

Frappe opens the connection on the first query (``commit`` included), not in ``connect()``;
the fake does the same so that the cost benchmark and the connection counts mean the same as
on a bench.  Driver choice follows the ``frappe.local`` shape: v15 (werkzeug) always uses
PyMySQL; newer Frappe (contextvar) uses mysqlclient unless ``use_mysqlclient`` is 0.
"""

from __future__ import annotations

from typing import Any

import pymysql
import pymysql.cursors

import frappe


class Database:
    """One site's connection: ``sql``, ``commit``, ``rollback``, ``close``, ``get_global``."""

    def __init__(self, host: str, port: int, user: str, password: str, cur_db_name: str) -> None:
        self.host, self.port = host, int(port)
        self.user, self.password, self.cur_db_name = user, password, cur_db_name
        self._conn: pymysql.Connection | None = None

    def connect(self) -> None:
        self._conn = self.get_connection()
        frappe.test_counters["db_open"] += 1

    def get_connection(self) -> pymysql.Connection:
        """A new connection, from the method Frappe's ``connect()`` gets it from."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.cur_db_name,
            autocommit=False,
            charset="utf8mb4",
        )

    def sql(self, query: str, values: Any = (), as_dict: bool = False) -> tuple[Any, ...]:
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        cursor_class = pymysql.cursors.DictCursor if as_dict else pymysql.cursors.Cursor
        with self._conn.cursor(cursor_class) as cur:
            cur.execute(query, values or None)
            rows = cur.fetchall()
        if as_dict:
            return tuple(frappe._dict(row) for row in rows)
        return tuple(rows)

    def commit(self) -> None:
        frappe.test_counters["commit"] += 1
        self.sql("commit")

    def rollback(self) -> None:
        frappe.test_counters["rollback"] += 1
        self.sql("rollback")

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
            frappe.test_counters["db_close"] += 1

    def get_global(self, key: str) -> Any:
        rows = self.sql(
            "SELECT defvalue FROM tabDefaultValue WHERE parent = '__global' AND defkey = %s",
            (key,),
        )
        return rows[0][0] if rows else None


def get_db(host: str, port: int, user: str, password: str, cur_db_name: str) -> Any:
    conf = frappe.local.conf
    if frappe.LOCAL_SHAPE == "contextvar" and conf.get("use_mysqlclient", 1):
        frappe.test_counters["driver_mysqlclient"] += 1
        import MySQLdb  # noqa: F401 - what newer Frappe's mysqlclient database module imports

        raise AssertionError("unreachable in tests: mysqlclient is not installed")
    frappe.test_counters["driver_pymysql"] += 1
    return Database(host, port, user, password, cur_db_name)
