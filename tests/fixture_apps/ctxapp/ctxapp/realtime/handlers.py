"""Handlers of the test app ``ctxapp`` that use the Frappe ORM (``frappe_context=True``)."""

from __future__ import annotations

from typing import Any

import frappe
from frappe.realtime import Socket, realtime


@realtime.on("test_get_doc", frappe_context=True)
def test_get_doc(socket: Socket, doctype: str, docname: str) -> None:
    try:
        doc = frappe.get_doc(doctype, docname)
        socket.emit(
            "test_get_doc_result",
            {
                "ok": True,
                "site": frappe.local.site,
                "user": frappe.session.user,
                "doctype": doc.doctype,
                "name": doc.name,
                "title": doc.title,
            },
        )
    except Exception as e:
        socket.emit("test_get_doc_result", {"ok": False, "error": f"{type(e).__name__}: {e}"})


@realtime.on("note_add", frappe_context=True)
def note_add(socket: Socket, name: str, fail: bool) -> dict[str, Any]:
    frappe.db.sql(
        "INSERT INTO tabNote (name, title, owner) VALUES (%s, %s, %s)",
        (name, f"by {frappe.session.user}", frappe.session.user),
    )
    if fail:
        raise ValueError("note_add failed after writing, on purpose")
    return {"site": frappe.local.site, "user": frappe.session.user}


@realtime.on("note_subscribe", frappe_context=True)
def note_subscribe(socket: Socket, name: str) -> bool:
    allowed = frappe.has_permission("Note", doc=name, ptype="read")
    if allowed:
        socket.join(f"note:{name}")
    return allowed


@realtime.on("db_sleep", frappe_context=True)
def db_sleep(socket: Socket, seconds: float) -> dict[str, Any]:
    frappe.db.sql("SELECT SLEEP(%s)", (seconds,))
    return {"site": frappe.local.site, "user": frappe.session.user}
