"""Handlers of the test app ``rtscope``, run by gsocket against the real Frappe ORM.

Each answers through its acknowledgement, so a test can tell "ran" from "did not run on this
site" (gsocket acknowledges an event no handler of the site's apps takes with nothing).
"""

from __future__ import annotations

from typing import Any

import frappe
from frappe.realtime import Socket, realtime


def _where() -> dict[str, Any]:
    return {"site": frappe.local.site, "user": frappe.session.user}


@realtime.on("rtscope_whoami")
def whoami(socket: Socket) -> dict[str, Any]:
    """Plain handler (no Frappe context): who and where, as gsocket knows them."""
    return {"app": "rtscope", "site": socket.site, "user": socket.user}


@realtime.on("rtscope_context", frappe_context=True)
def context(socket: Socket) -> dict[str, Any]:
    """The Frappe context gsocket opened: site, user, the site's database, installed apps."""
    database = frappe.db.sql("SELECT DATABASE()")[0][0]
    return {
        **_where(),
        "database": database,
        "db_name": frappe.conf.db_name,
        "installed_apps": frappe.get_installed_apps(),
    }


@realtime.on("rtscope_todo_add", frappe_context=True)
def todo_add(socket: Socket, description: str, fail: bool) -> dict[str, Any]:
    """Insert a ToDo through the ORM; raise afterwards when asked, which must roll it back."""
    todo = frappe.get_doc({"doctype": "ToDo", "description": description})
    todo.insert(ignore_permissions=True)  # a Website User writes it too
    if fail:
        raise ValueError("rtscope_todo_add failed after inserting, on purpose")
    return {**_where(), "name": todo.name, "owner": todo.owner}


@realtime.on("rtscope_get_doc", frappe_context=True)
def get_doc(socket: Socket, doctype: str, name: str) -> dict[str, Any]:
    """Read a document as the socket's user, with Frappe's own permission check."""
    try:
        doc = frappe.get_doc(doctype, name)
        doc.check_permission("read")
    except Exception as exc:
        return {**_where(), "error": type(exc).__name__}
    return {**_where(), "name": doc.name, "owner": doc.owner}


@realtime.on("rtscope_sleep", frappe_context=True)
def sleep(socket: Socket, seconds: float) -> dict[str, Any]:
    """Hold a database connection in a query for ``seconds``: the concurrency probe."""
    conn_id = frappe.db.sql("SELECT CONNECTION_ID()")[0][0]
    frappe.db.sql("SELECT SLEEP(%s)", (seconds,))
    same = frappe.db.sql("SELECT CONNECTION_ID()")[0][0] == conn_id
    return {**_where(), "conn": int(conn_id), "same_conn": same}
