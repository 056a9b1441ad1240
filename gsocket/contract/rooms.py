"""The names of the rooms a bench uses, in one place.

The web process publishes to rooms by name and the realtime server joins sockets to rooms by
name; the two only meet if both spell them exactly as Frappe does.  The publishing helpers and
the core handlers both take the names from here.
"""

from __future__ import annotations

from typing import Any

ALL = "all"
"""Room of every System User socket of the site."""

WEBSITE = "website"
"""Room of every socket of the site, Guests included."""


def user_room(user: str) -> str:
    """Room of every socket of one user."""
    return f"user:{user}"


def doctype_room(doctype: str | None) -> str:
    """Room of everyone watching a DocType's list."""
    return f"doctype:{doctype}"


def doc_room(doctype: str | None, name: Any) -> str:
    """Room of everyone subscribed to one document (the name is stringified, as Frappe does)."""
    return f"doc:{doctype}/{'' if name is None else name}"


def open_doc_room(doctype: str, name: str) -> str:
    """Room of everyone with the document's form open."""
    return f"open_doc:{doctype}/{name}"


def task_progress_room(task_id: str) -> str:
    """Room of everyone following one background task."""
    return f"task_progress:{task_id}"
