"""``frappe.realtime`` as in Frappe v15: publishing helpers, no ``Socket`` or ``realtime``.

gsocket adds ``Socket`` and ``realtime`` to this module on benches whose Frappe predates the
Python realtime server; the fake leaves them out so that tests see the same starting point.
Published events are recorded in ``published`` instead of being sent to Redis.
"""

from __future__ import annotations

from typing import Any

import frappe

published: list[dict[str, Any]] = []


def publish_realtime(
    event: str | None = None,
    message: Any = None,
    room: str | None = None,
    user: str | None = None,
    doctype: str | None = None,
    docname: str | None = None,
    task_id: str | None = None,
    after_commit: bool = False,
) -> None:
    if not room:
        if user:
            room = f"user:{user}"
        elif doctype and docname:
            room = f"doc:{doctype}/{docname}"
        elif doctype:
            room = f"doctype:{doctype}"
        elif task_id:
            room = f"task_progress:{task_id}"
    published.append(
        {
            "event": event,
            "message": message,
            "room": room,
            "namespace": getattr(frappe.local, "site", None),
        }
    )


def publish_progress(
    percent: float, title: str | None = None, doctype: str | None = None, docname: str | None = None
) -> None:
    publish_realtime(
        "progress", {"percent": percent, "title": title}, doctype=doctype, docname=docname
    )


def get_user_info() -> dict[str, str]:
    return {"user": frappe.session.user, "user_type": "System User"}


def can_subscribe_doc(doctype: str, docname: str) -> bool:
    return frappe.has_permission(doctype, doc=docname)


def can_subscribe_doctype(doctype: str) -> bool:
    return frappe.has_permission(doctype)
