"""The events every Frappe desk sends (contract section 7), as ``frappe``'s handlers.

They are what the Node server's ``frappe_handlers.js`` does: subscriptions to doctype,
document and task rooms (checked with the web process where the Node server checks), the
"who is viewing this form" bookkeeping, ``ping`` and, in developer mode, ``open_in_editor``.
Keeping them in the same registry as app handlers gives one dispatch path with one set of
rules for argument checks, Guest gating and errors.

Guests are treated as the Node server treats them, which has no Guest rule of its own: task
and progress rooms are open to them (a website visitor follows the job they started), and
their doctype and document subscriptions go through the same permission check as everyone's,
so the web process decides.  The documents a socket has open are kept in its state under
``subscribed_documents`` as ``[doctype, name]`` pairs, where Frappe keeps them, so an app's
handler can read them with ``socket.get("subscribed_documents")``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import redis

from gsocket.contract.rooms import (
    ALL,
    WEBSITE,
    doc_room,
    doctype_room,
    open_doc_room,
    task_progress_room,
    user_room,
)
from gsocket.handlers.registry import Registry
from gsocket.handlers.socket import Socket

if TYPE_CHECKING:
    from gsocket.handlers.sessions import Sessions

log = logging.getLogger("gsocket.core_handlers")

OWNER = "frappe"

OPEN_DOCS = "subscribed_documents"
"""Socket state key of the forms a socket has open, as Frappe names it."""


def join_default_rooms(socket: Socket) -> None:
    """Join the rooms every socket is in from connect: its user's, ``website``, and ``all``."""
    socket.join(user_room(socket.user))
    socket.join(WEBSITE)
    if socket.user_type == "System User":
        socket.join(ALL)


def ping(socket: Socket) -> None:
    """Answer a liveness probe."""
    socket.emit("pong")


def doctype_subscribe(socket: Socket, doctype: str) -> None:
    """Join a DocType's room when the user may read the DocType."""
    if socket.has_permission(doctype):
        socket.join(doctype_room(doctype))


def doctype_unsubscribe(socket: Socket, doctype: str) -> None:
    """Leave a DocType's room."""
    socket.leave(doctype_room(doctype))


def doc_subscribe(socket: Socket, doctype: str, name: str) -> None:
    """Join a document's room when the user may read the document."""
    if socket.has_permission(doctype, name):
        socket.join(doc_room(doctype, name))


def doc_unsubscribe(socket: Socket, doctype: str, name: str) -> None:
    """Leave a document's room."""
    socket.leave(doc_room(doctype, name))


def distinct_users(sids: Iterable[str], user_of: Callable[[str], str | None]) -> list[str]:
    """The users of ``sids`` (gone sockets left out), each once, in the order of ``sids``."""
    users: dict[str, None] = {}
    for sid in sids:
        user = user_of(sid)
        if user is not None:
            users[user] = None
    return list(users)


def notify_viewers(socket: Socket, doctype: str, name: str) -> None:
    """Tell the form's viewers who is viewing it: the distinct users of its sockets.

    Nothing is sent when the form's only socket is one of this socket's user (the opener
    alone, or the other tab of the user who closed it), as Frappe's Node server decides it:
    by sockets, so two tabs of one user opening a form are each told that user.
    """
    room = open_doc_room(doctype, name)
    users = [user for user in map(socket.user_of, socket.participants(room)) if user is not None]
    if users == [socket.user]:
        return
    socket.emit(
        "doc_viewers",
        {"doctype": doctype, "docname": name, "users": list(dict.fromkeys(users))},
        room=room,
    )


def doc_open(socket: Socket, doctype: str, name: str) -> None:
    """Record that this socket has the form open, and tell the other viewers."""
    if not socket.has_permission(doctype, name):
        return
    socket.join(open_doc_room(doctype, name))
    pair = [doctype, name]
    open_docs = socket.get(OPEN_DOCS) or []
    if pair not in open_docs:
        socket.set(OPEN_DOCS, [*open_docs, pair])
    notify_viewers(socket, doctype, name)


def doc_close(socket: Socket, doctype: str, name: str) -> None:
    """Record that this socket closed the form (only that one), and tell the other viewers."""
    socket.leave(open_doc_room(doctype, name))
    open_docs = socket.get(OPEN_DOCS) or []
    socket.set(OPEN_DOCS, [pair for pair in open_docs if pair != [doctype, name]])
    notify_viewers(socket, doctype, name)


def close_open_docs(socket: Socket) -> None:
    """On disconnect: tell the viewers of every form this socket still had open."""
    for doctype, name in socket.get(OPEN_DOCS) or []:
        socket.leave(open_doc_room(doctype, name))
        notify_viewers(socket, doctype, name)
    socket.set(OPEN_DOCS, [])


def announce_lost_viewers(server: Sessions, namespace: str, rooms: Iterable[str]) -> None:
    """Tell the viewers of each form in ``rooms`` who is left, after the sockets of a dead
    cluster process were removed from them (they never sent ``doc_close``)."""
    prefix = open_doc_room("", "").removesuffix("/")
    for room in rooms:
        if not room.startswith(prefix):
            continue
        doctype, _, name = room[len(prefix) :].partition("/")
        users = distinct_users(
            server.participants(namespace, room), lambda sid: server.user_of(namespace, sid)
        )
        server.emit(
            "doc_viewers",
            {"doctype": doctype, "docname": name, "users": users},
            to=room,
            namespace=namespace,
        )


def task_subscribe(socket: Socket, task_id: str) -> None:
    """Follow a background task's progress (no check, as in Frappe)."""
    socket.join(task_progress_room(task_id))


def task_unsubscribe(socket: Socket, task_id: str) -> None:
    """Stop following a background task's progress."""
    socket.leave(task_progress_room(task_id))


def make_open_in_editor(client: redis.Redis) -> Callable[[Socket, Any], None]:
    """Build the developer-mode handler that asks the bench to open a file in an editor.

    :param client: Redis client of ``redis_queue``, where the bench listens.
    """

    def open_in_editor(socket: Socket, data: Any) -> None:
        """Forward the request to the bench's ``open_in_editor`` Redis channel."""
        client.publish("open_in_editor", json.dumps(data))

    return open_in_editor


def register_core_handlers(
    registry: Registry, redis_client: redis.Redis, developer_mode: bool
) -> None:
    """Add the desk's events to ``registry``, owned by ``frappe``.

    :param registry: the registry app handlers are in.
    :param redis_client: Redis client of ``redis_queue``.
    :param developer_mode: whether ``open_in_editor`` is served.
    """
    for event, handler in (
        ("ping", ping),
        ("doctype_subscribe", doctype_subscribe),
        ("doctype_unsubscribe", doctype_unsubscribe),
        ("doc_subscribe", doc_subscribe),
        ("doc_unsubscribe", doc_unsubscribe),
        ("doc_open", doc_open),
        ("doc_close", doc_close),
        ("task_subscribe", task_subscribe),
        ("task_unsubscribe", task_unsubscribe),
        ("progress_subscribe", task_subscribe),
        ("disconnect", close_open_docs),
    ):
        registry.add(event, handler, OWNER, allow_guest=True)
    if developer_mode:
        registry.add("open_in_editor", make_open_in_editor(redis_client), OWNER)
