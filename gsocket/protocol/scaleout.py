"""Several gsocket processes sharing rooms: python-socketio's Redis client manager.

When one process is not enough, a bench runs several behind nginx.  Each keeps its own
sockets; an emit made by a handler (``socket.emit(..., room=...)``) must still reach the members
of that room on every process.  python-socketio's :class:`socketio.RedisManager` does that: an
emit is delivered to this process's sockets and published on a Redis channel, and every other
process delivers it to its own.

Events from the web process take another path: every process runs its own bridge on Frappe's
``events`` channel and emits with ``ignore_queue=True`` (to its own sockets only), so each
published event reaches each socket exactly once.  That is also why the manager's channel must
not be ``events``.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import socketio

from gsocket.config import Config
from gsocket.protocol.internals.socketio_hooks import start_manager
from gsocket.protocol.manager import RoomIndex


class RoomWatcher(Protocol):
    """What the manager tells of every room change (the cluster's presence)."""

    def joined(self, namespace: str, sid: str, room: str) -> None:
        """``sid`` entered ``room``."""
        ...

    def left(self, namespace: str, sid: str, room: str, emptied: bool = False) -> None:
        """``sid`` left ``room`` (``emptied``: no socket of this process is left in it)."""
        ...


log = logging.getLogger("gsocket.scaleout")


class ScaleOutManager(RoomIndex, socketio.RedisManager):
    """A Redis client manager that keeps an emit to one of this process's sockets off Redis.

    It keeps its rooms in gsocket's lean room index, like the single-process manager.

    Handlers mostly answer their own client (``pong``, ``doc_viewers`` to a single sid ...);
    publishing those only for every other process to find no such socket would cost a Redis
    round trip and a decode in every process per answer.

    Every room a socket enters or leaves (but its own and the "everyone" one) is also told to
    the cluster's :class:`~gsocket.cluster.presence.Presence`, when there is one, whichever way the
    room was changed (a handler's ``join``, a disconnect).
    """

    presence: RoomWatcher | None = None

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        """Enter the room here, and in the cluster's presence."""
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        if self.presence is not None and room is not None and room != sid:
            self.presence.joined(namespace, sid, room)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        """Leave the room here, and in the cluster's presence if ``sid`` was in it."""
        member = sid in self.rooms.get(namespace, {}).get(room, ())
        super().basic_leave_room(sid, namespace, room)
        if member and self.presence is not None and room is not None and room != sid:
            emptied = room not in self.rooms.get(namespace, {})
            self.presence.left(namespace, sid, room, emptied=emptied)

    def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: str | None = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Emit as :class:`socketio.RedisManager` does, locally only when ``to`` is a local sid."""
        room = to or room
        if room is not None and self.is_connected(room, namespace or "/"):
            kwargs["ignore_queue"] = True
        return super().emit(
            event,
            data,
            namespace=namespace,
            room=room,
            skip_sid=skip_sid,
            callback=callback,
            **kwargs,
        )


def make_client_manager(config: Config) -> ScaleOutManager:
    """Build the client manager of a scaled-out process.

    :param config: its ``redis_url`` (``redis_queue``, shared by the whole bench) carries the
        channel ``scale_out_channel``.
    """
    return ScaleOutManager(
        config.redis_url,
        channel=config.scale_out_channel,
        redis_options={"socket_connect_timeout": 2, "socket_keepalive": True},
    )


def start_client_manager(server: socketio.Server) -> None:
    """Subscribe the manager now rather than at the first client's connect.

    python-socketio starts the manager's listener lazily; a process whose listener is not yet
    subscribed would miss emits made meanwhile by handlers on the other processes.
    """
    start_manager(server)
    log.info("scale-out: sharing rooms on Redis channel %r", server.manager.channel)
