"""Publishing realtime events from outside Frappe: the message ``frappe.publish_realtime`` sends.

The web process and the workers of a bench never talk to the realtime process directly: they
``PUBLISH`` one JSON message on the Redis channel ``events`` of ``redis_queue`` and the realtime
process emits it (contract section 8).  Scripts, operators and services that are not a Frappe
process still need to push events to the browsers of a bench, and they must send byte for byte
what Frappe sends, room derivation included, or the desk would not recognise the event.
:class:`Publisher` does that for one site; its methods carry the names and room mapping of
Frappe's ``publish_realtime`` and its named helpers (``publish_to_user`` ...).

Where Frappe takes the site and the current user from the request (``frappe.local.site``,
``frappe.session.user``), a :class:`Publisher` is told them once: the site is the message's
``namespace``, the session user is where ``msgprint`` and ``publish_progress`` go when no other
target is given (``Administrator`` by default, the user of a script or scheduler job).

Inside Frappe's own processes (web, workers, console) the named helpers the documentation
shows, ``from frappe.realtime import publish_to_user, ...``, exist only in newer Frappe.  The
module-level functions :data:`FRAPPE_HELPERS` are those helpers for older Frappe: each is a thin
call of ``frappe.publish_realtime``, so the site, ``after_commit`` and the task come from
Frappe as for any other publish.  :mod:`gsocket.contract.frappe_hook` adds them to
``frappe.realtime`` where it lacks them; where Frappe has its own, Frappe's stay.
"""

from __future__ import annotations

import datetime
import decimal
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterable
from typing import Any

import redis

from gsocket.config import load_config
from gsocket.contract.rooms import (
    ALL,
    WEBSITE,
    doc_room,
    doctype_room,
    task_progress_room,
    user_room,
)

log = logging.getLogger("gsocket.publish")

CHANNEL = "events"
"""The Redis channel the realtime process listens on."""


def _json_default(value: Any) -> Any:
    """Serialise what Frappe's JSON handler serialises: dates and times as text, decimals."""
    if isinstance(value, datetime.date | datetime.time | datetime.timedelta | uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | dict):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(payload: dict[str, Any]) -> str:
    """Encode a message exactly as ``frappe.as_json`` does (sorted keys, indent 1, ASCII)."""
    return json.dumps(
        payload,
        indent=1,
        sort_keys=True,
        separators=(",", ": "),
        ensure_ascii=True,
        default=_json_default,
    )


class Publisher:
    """Publishes realtime events to the sockets of one site of a bench.

    :param redis_url: URL of the bench's ``redis_queue``.
    :param site: the site whose sockets receive the events (the message's ``namespace``).
    :param session_user: stands for ``frappe.session.user``: the target of ``msgprint`` and
        ``publish_progress`` when no room, user or document is given.
    :param client: an existing Redis client to publish with, instead of one made from the URL.
    """

    def __init__(
        self,
        redis_url: str,
        site: str,
        session_user: str = "Administrator",
        client: redis.Redis | None = None,
    ) -> None:
        if not site:
            raise ValueError("a site is needed: it is the namespace the event is emitted on")
        self.redis_url = redis_url
        self.site = site
        self.session_user = session_user
        self._owns_client = client is None
        self._client = client or redis.Redis.from_url(
            redis_url, socket_connect_timeout=2, socket_timeout=5
        )

    @classmethod
    def for_bench(
        cls, bench: str | os.PathLike[str], site: str, session_user: str = "Administrator"
    ) -> Publisher:
        """Build a publisher for ``site`` of the bench at ``bench``, on its ``redis_queue``.

        :raises gsocket.config.ConfigError: when the bench configuration cannot be read.
        """
        return cls(load_config(bench).redis_url, site, session_user)

    def close(self) -> None:
        """Close the Redis connections this publisher opened (a client passed in stays open)."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, event: str, message: Any, room: str) -> int:
        """Publish one message as it is, with this site as its namespace.

        :returns: how many Redis subscribers received it (0: no realtime process listens).
        :raises redis.RedisError: when Redis is unreachable.
        """
        payload = {"event": event, "message": message, "room": room, "namespace": self.site}
        receivers = int(self._client.publish(CHANNEL, encode(payload)))
        log.debug("published %r to room %r of %s (%d receivers)", event, room, self.site, receivers)
        return receivers

    def derive(
        self,
        event: str | None = None,
        message: Any = None,
        room: str | None = None,
        user: str | None = None,
        doctype: str | None = None,
        docname: str | None = None,
        task_id: str | None = None,
    ) -> tuple[str, Any, str]:
        """Return the ``(event, message, room)`` that ``frappe.publish_realtime`` would send.

        - no event: ``task_progress`` with a task id, else ``global``;
        - ``msgprint`` without a user goes to the session user;
        - ``list_update`` always goes to the room of ``doctype`` (or of the message's
          ``doctype``), ``docinfo_update`` to the room of ``doctype``/``docname``;
        - without a room: a task id gives its ``task_progress:`` room (and a dict message gets
          a ``task_id``), else a user gives ``user:<user>``, else a document gives its ``doc:``
          room, else ``all``.
        """
        if message is None:
            message = {}
        elif isinstance(message, dict):
            message = dict(message)
        if event is None:
            event = "task_progress" if task_id else "global"
        elif event == "msgprint" and not user:
            user = self.session_user
        elif event == "list_update":
            doctype = doctype or (message.get("doctype") if isinstance(message, dict) else None)
            room = doctype_room(doctype)
        elif event == "docinfo_update":
            room = doc_room(doctype, docname)

        if not room:
            if task_id:
                if isinstance(message, dict):
                    message.setdefault("task_id", task_id)
                room = task_progress_room(task_id)
            elif user:
                room = user_room(user)
            elif doctype and docname:
                room = doc_room(doctype, docname)
            else:
                room = ALL
        return event, message, room

    def publish_realtime(
        self,
        event: str | None = None,
        message: Any = None,
        room: str | None = None,
        user: str | None = None,
        doctype: str | None = None,
        docname: str | None = None,
        task_id: str | None = None,
    ) -> int:
        """Publish like ``frappe.publish_realtime``, deriving the room as it does (:meth:`derive`).

        :returns: how many Redis subscribers received it.
        :raises redis.RedisError: when Redis is unreachable.
        """
        return self.send(*self.derive(event, message, room, user, doctype, docname, task_id))

    def publish_progress(
        self,
        percent: float,
        title: str | None = None,
        doctype: str | None = None,
        docname: str | None = None,
        description: str | None = None,
        task_id: str | None = None,
    ) -> int:
        """Publish ``progress`` like ``frappe.publish_progress``: the desk's progress dialog.

        It goes to the document's room when a document is named, else to the session user.
        """
        return self.publish_realtime(
            "progress",
            {"percent": percent, "title": title, "description": description},
            user=None if doctype and docname else self.session_user,
            doctype=doctype,
            docname=docname,
            task_id=task_id,
        )

    def publish_to_user(self, user: str, event: str, message: Any = None) -> int:
        """Publish to every socket of ``user`` (room ``user:<user>``)."""
        return self.publish_realtime(event, message, user=user)

    def publish_to_doc(self, doctype: str, docname: str, event: str, message: Any = None) -> int:
        """Publish to a document's subscribers (room ``doc:<doctype>/<docname>``)."""
        return self.publish_realtime(event, message, doctype=doctype, docname=docname)

    def publish_to_doctype(self, doctype: str, event: str, message: Any = None) -> int:
        """Publish to a DocType's list watchers (room ``doctype:<doctype>``).

        The DocType is passed on as well, so that a ``list_update`` whose message names no
        ``doctype`` still reaches this room.
        """
        return self.publish_realtime(event, message, room=doctype_room(doctype), doctype=doctype)

    def publish_task_progress(self, task_id: str, message: Any = None) -> int:
        """Publish ``task_progress`` for a background task (room ``task_progress:<task_id>``)."""
        return self.publish_realtime(message=message, task_id=task_id)

    def publish_to_website(self, event: str, message: Any = None) -> int:
        """Publish to every socket of the site, Guests included (room ``website``)."""
        return self.publish_realtime(event, message, room=WEBSITE)

    def publish_to_all(self, event: str, message: Any = None) -> int:
        """Publish to the System Users of this site (room ``all``), not to every site."""
        return self.publish_realtime(event, message, room=ALL)

    def publish_to_room(self, room: str, event: str, message: Any = None) -> int:
        """Publish to any room, e.g. one a custom handler joined (``project:PROJ-0001``)."""
        return self.publish_realtime(event, message, room=room)


def _frappe() -> Any:
    import frappe

    return frappe


def publish_to_user(
    user: str, event: str, message: Any = None, *, after_commit: bool = False
) -> None:
    """Publish to every socket of ``user`` (room ``user:<user>``) of the current site."""
    _frappe().publish_realtime(event, message, user=user, after_commit=after_commit)


def publish_to_doc(
    doctype: str, docname: str, event: str, message: Any = None, *, after_commit: bool = False
) -> None:
    """Publish to a document's subscribers (room ``doc:<doctype>/<docname>``)."""
    _frappe().publish_realtime(
        event, message, doctype=doctype, docname=docname, after_commit=after_commit
    )


def publish_to_doctype(
    doctype: str, event: str, message: Any = None, *, after_commit: bool = False
) -> None:
    """Publish to a DocType's list watchers (room ``doctype:<doctype>``)."""
    _frappe().publish_realtime(
        event, message, room=doctype_room(doctype), doctype=doctype, after_commit=after_commit
    )


def publish_task_progress(task_id: str, message: Any = None, *, after_commit: bool = False) -> None:
    """Publish ``task_progress`` for a background task (room ``task_progress:<task_id>``)."""
    _frappe().publish_realtime(message=message, task_id=task_id, after_commit=after_commit)


def publish_to_website(event: str, message: Any = None, *, after_commit: bool = False) -> None:
    """Publish to every socket of the current site, Guests included (room ``website``)."""
    _frappe().publish_realtime(event, message, room=WEBSITE, after_commit=after_commit)


def publish_to_all(event: str, message: Any = None, *, after_commit: bool = False) -> None:
    """Publish to the System Users of the current site (room ``all``)."""
    _frappe().publish_realtime(event, message, room=ALL, after_commit=after_commit)


def publish_to_room(
    room: str, event: str, message: Any = None, *, after_commit: bool = False
) -> None:
    """Publish to any room of the current site, e.g. one a handler joined."""
    _frappe().publish_realtime(event, message, room=room, after_commit=after_commit)


FRAPPE_HELPERS = {
    fn.__name__: fn
    for fn in (
        publish_to_user,
        publish_to_doc,
        publish_to_doctype,
        publish_task_progress,
        publish_to_website,
        publish_to_all,
        publish_to_room,
    )
}
"""The named helpers of Frappe's documentation, for Frappe versions that lack them."""


def add_frappe_helpers(module: Any) -> list[str]:
    """Set every helper ``module`` (``frappe.realtime``) lacks on it; return the names added."""
    added = [name for name in FRAPPE_HELPERS if not hasattr(module, name)]
    for name in added:
        setattr(module, name, FRAPPE_HELPERS[name])
    return added


def publish_command(
    bench: str,
    site: str,
    event: str | None,
    message_json: str | None,
    room: str | None = None,
    user: str | None = None,
    doctype: str | None = None,
    docname: str | None = None,
    task_id: str | None = None,
) -> int:
    """``gsocket publish``: publish one event from the command line; return the exit status.

    :param message_json: the message as JSON text (``None``: an empty object, as in Frappe).
    """
    try:
        message = None if message_json is None else json.loads(message_json)
    except ValueError as e:
        print(f"gsocket publish: the message is not valid JSON: {e}", file=sys.stderr)
        return 2
    with Publisher.for_bench(bench, site) as publisher:
        sent = publisher.derive(event, message, room, user, doctype, docname, task_id)
        try:
            receivers = publisher.send(*sent)
        except redis.RedisError as e:
            print(f"gsocket publish: cannot publish on {publisher.redis_url}: {e}", file=sys.stderr)
            return 1
    print(
        f"published {sent[0]!r} to room {sent[2]!r} of site {site} "
        f"({receivers} subscriber{'s' if receivers != 1 else ''} on {publisher.redis_url})"
    )
    if receivers == 0:
        print(
            "gsocket publish: nothing is subscribed to the 'events' channel there: "
            "is the realtime server running on this bench?",
            file=sys.stderr,
        )
    return 0
