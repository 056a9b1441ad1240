"""Rooms of the connected sockets, indexed for a bench's shape, and broadcasts encoded once.

python-socketio's manager keeps ``rooms[namespace][room]`` as a ``bidict`` (two dicts and an
object per room) and finds a socket's rooms, at disconnect, by scanning every room of the
namespace.  A bench has one ``user:`` room per user and a ``doc:`` room per open document, so
that is memory per user and a disconnect that costs O(rooms).  :class:`RoomIndex` keeps the same
``rooms[namespace][room] = {sid: eio_sid}`` layout with plain dicts, plus an inverse index of
the connected sockets and the set of rooms of each socket.

:class:`RoomIndex` is a mixin that replaces only python-socketio's room bookkeeping, so it
applies to :class:`socketio.Manager` (:class:`Manager`) and to its Redis scale-out subclass
alike: put it first among the bases.  Its ``emit`` delivers a callback-less emit to this
process's sockets by encoding the Socket.IO packet and its websocket frame once
(:meth:`gsocket.protocol.transport.Transport.broadcast`); anything else goes the
python-socketio way.

It overrides only public methods of python-socketio's ``BaseManager``, but keeps its data
model (``rooms``, ``callbacks``, ``pending_connect``/``pending_disconnect``) for the methods it
leaves to the library: verified against python-socketio 5.14.0 to 5.18.1
(gsocket/ops/dependencies.py), whose ``connect`` is called with an Engine.IO sid from 5.12 to
5.17 and with a pre-connected sid after.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import socketio
from socketio import packet as sio_packet

from gsocket.protocol.codec import (
    EVENT,
    MESSAGE,
    TEXT,
    PacketJSON,
    append_argument,
    encode,
    encode_acyclic,
    event_text,
    frame,
    message_packet,
)

log = logging.getLogger("gsocket.manager")

_ROOM_LISTS = (list, tuple)
"""Types python-socketio accepts as "several rooms" (a constant: ``list | tuple`` would build
a union object per call)."""


def _default_serializer(packet_class: type) -> bool:
    """Packets are python-socketio's JSON ones encoded by gsocket's codec (not msgpack, no
    other JSON module)."""
    return packet_class is sio_packet.Packet and packet_class.json is PacketJSON


class RoomIndex:
    """python-socketio's room bookkeeping in plain dicts, with per-socket room sets.

    Layout (as python-socketio's): ``rooms[namespace][room][sid] = eio_sid``, where room
    ``None`` holds every connected socket and each socket has a room named by its sid.
    """

    rooms: dict[str, dict[Any, dict[str, str]]]
    callbacks: dict[str, Any]
    server: Any
    rooms_changed: Callable[[str, str], None] | None = None
    """``rooms_changed(namespace, sid)`` after a socket entered or left a room of its own
    choosing (connection state recovery keeps a copy of every socket's rooms)."""
    numbering: Callable[[str, str, str], str] | None = None
    """``numbering(site, room, body)`` gives each delivered event its offset, sent as its last
    argument (connection state recovery's log; ``site`` and ``room`` empty for every one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rooms = {}
        self._eio_sids: dict[str, dict[str, str]] = {}
        # namespace -> sid -> rooms (a dict used as an insertion-ordered set)
        self._rooms_of: dict[str, dict[str, dict[Any, None]]] = {}
        # namespace -> sids being authenticated / leaving (python-socketio keeps lists)
        self.pending_connect: dict[str, set[str]] = {}
        self.pending_disconnect: dict[str, set[str]] = {}

    # ---- connection state --------------------------------------------------------------

    def get_namespaces(self) -> Iterable[str]:
        """The namespaces that have sockets."""
        return self.rooms.keys()

    def pre_connect(self, eio_sid: str, namespace: str) -> str | None:
        """Register a socket that is still being authenticated; ``None`` if the session
        already has one on ``namespace``."""
        if eio_sid in self._eio_sids.get(namespace, ()):
            return None
        sid = self.server.eio.generate_id()
        self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, set()).add(sid)
        return sid

    def connect(self, sid: str, namespace: str) -> str | None:
        """Mark a pre-connected ``sid`` connected; given an Engine.IO sid instead, register
        and connect a new socket at once (python-socketio 5.12 to 5.17 call it that way)."""
        if not self.is_pre_connected(sid, namespace):
            sid = self.pre_connect(sid, namespace)
            if sid is None:
                return None
        self._discard(self.pending_connect, namespace, sid)
        return sid

    def is_pre_connected(self, sid: str, namespace: str) -> bool:
        """``sid`` is registered on ``namespace`` and still being authenticated."""
        return sid in self.pending_connect.get(namespace, ()) and sid in self.rooms.get(
            namespace, {}
        ).get(None, ())

    def is_connected(self, sid: str, namespace: str) -> bool:
        """``sid`` is connected to ``namespace`` and not on its way in or out."""
        if sid in self.pending_connect.get(namespace, ()):
            return False
        if sid in self.pending_disconnect.get(namespace, ()):
            return False
        try:
            return self.rooms[namespace][None][sid] is not None
        except KeyError:
            return False

    def sid_from_eio_sid(self, eio_sid: str, namespace: str) -> str | None:
        """The socket of Engine.IO session ``eio_sid`` on ``namespace``."""
        return self._eio_sids.get(namespace, {}).get(eio_sid)

    def eio_sid_from_sid(self, sid: str, namespace: str) -> str | None:
        """The Engine.IO session of socket ``sid``."""
        return self.rooms.get(namespace, {}).get(None, {}).get(sid)

    def pre_disconnect(self, sid: str, namespace: str) -> str | None:
        """Mark ``sid`` as leaving (its rooms stay until :meth:`basic_disconnect`)."""
        self.pending_disconnect.setdefault(namespace, set()).add(sid)
        return self.eio_sid_from_sid(sid, namespace)

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """Remove ``sid`` from every room it is in: O(its rooms), not O(rooms)."""
        joined = self._rooms_of.get(namespace, {}).get(sid)
        if joined is not None:
            for room in list(joined):
                self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        self._discard(self.pending_connect, namespace, sid)
        self._discard(self.pending_disconnect, namespace, sid)

    # ---- rooms -------------------------------------------------------------------------

    def is_sid_room(self, namespace: str, room: Any) -> bool:
        """``room`` is the private room of a connected socket."""
        return room in self.rooms.get(namespace, {}).get(None, ())

    def basic_enter_room(
        self, sid: str, namespace: str, room: Any, eio_sid: str | None = None
    ) -> None:
        """Put ``sid`` in ``room``.

        :raises ValueError: ``sid`` is not connected, or ``room`` is another socket's room.
        """
        ns = self.rooms.get(namespace)
        if eio_sid is None:
            if ns is None:
                raise ValueError("sid is not connected to requested namespace")
            eio_sid = ns[None][sid]
        if sid != room and room is not None and self.is_sid_room(namespace, room):
            raise ValueError("cannot enter a sid room")
        if ns is None:
            ns = self.rooms[namespace] = {}
        members = ns.get(room)
        if members is None:
            members = ns[room] = {}
        members[sid] = eio_sid
        if room is None:
            self._eio_sids.setdefault(namespace, {})[eio_sid] = sid
        self._rooms_of.setdefault(namespace, {}).setdefault(sid, {})[room] = None
        if self.rooms_changed is not None and room is not None and room != sid:
            self.rooms_changed(namespace, sid)

    def basic_leave_room(self, sid: str, namespace: str, room: Any) -> None:
        """Take ``sid`` out of ``room``; empty rooms and namespaces are dropped."""
        ns = self.rooms.get(namespace)
        if ns is None:
            return
        members = ns.get(room)
        if members is None:
            return
        eio_sid = members.pop(sid, None)
        if eio_sid is None:
            return
        if not members:
            del ns[room]
            if not ns:
                del self.rooms[namespace]
        if room is None:
            self._discard(self._eio_sids, namespace, eio_sid)
        self._discard(self._rooms_of.get(namespace, {}), sid, room)
        if not self._rooms_of.get(namespace, True):
            del self._rooms_of[namespace]
        if self.rooms_changed is not None and room is not None and room != sid:
            self.rooms_changed(namespace, sid)

    def basic_close_room(self, room: Any, namespace: str) -> None:
        """Take every socket out of ``room``.

        :raises ValueError: ``room`` is a socket's own room.
        """
        if self.is_sid_room(namespace, room):
            raise ValueError("cannot close a sid room")
        for sid in list(self.rooms.get(namespace, {}).get(room, ())):
            self.basic_leave_room(sid, namespace, room)

    def get_rooms(self, sid: str, namespace: str) -> list[Any]:
        """The rooms ``sid`` is in, its own room included."""
        joined = self._rooms_of.get(namespace, {}).get(sid, ())
        return [room for room in joined if room is not None]

    def get_participants(self, namespace: str, room: Any) -> Iterator[tuple[str, str]]:
        """``(sid, eio_sid)`` of every socket in ``room`` (or in any of a list of rooms)."""
        yield from self._members(namespace, room).items()

    def _members(self, namespace: str, room: Any) -> dict[str, str]:
        """A snapshot of the members of ``room``, a list of rooms, or (``None``) everyone."""
        ns = self.rooms.get(namespace)
        if ns is None:
            return {}
        if isinstance(room, _ROOM_LISTS):
            members: dict[str, str] = {}
            for r in room:
                members.update(ns.get(r, ()))
            return members
        return dict(ns.get(room, ()))

    @staticmethod
    def _discard(index: dict[Any, Any], key: Any, member: Any) -> None:
        """Remove ``member`` from the set or dict at ``index[key]``, dropping it when empty."""
        group = index.get(key)
        if group is None:
            return
        if isinstance(group, dict):
            group.pop(member, None)
        else:
            group.discard(member)
        if not group:
            del index[key]

    # ---- emitting ----------------------------------------------------------------------

    def emit(
        self,
        event: str,
        data: Any,
        namespace: str | None = None,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Emit as python-socketio does; local callback-less emits are encoded once.

        An emit is local when the manager shares no queue (plain :class:`Manager`) or the
        caller asked for ``ignore_queue``; a Redis manager publishes the others as before.
        """
        room = to or room
        transport = getattr(self.server, "transport", None)
        local = kwargs.get("ignore_queue") or not isinstance(self, socketio.PubSubManager)
        if callback is not None or transport is None or not local:
            return super().emit(  # type: ignore[misc]
                event,
                data,
                namespace=namespace,
                room=room,
                skip_sid=skip_sid,
                callback=callback,
                **kwargs,
            )
        namespace = namespace or "/"
        if namespace not in self.rooms:
            return None
        if isinstance(data, tuple):
            args = list(data)
        elif data is None:
            args = []
        else:
            args = [data]
        if not _default_serializer(self.server.packet_class):
            return socketio.Manager.emit(self, event, data, namespace, room=room, skip_sid=skip_sid)
        try:
            body = encode([event, *args])
        except TypeError:
            # bytes (binary attachments) or something JSON cannot hold: python-socketio's
            # own path sends the attachments, or raises as it always did.
            return socketio.Manager.emit(self, event, data, namespace, room=room, skip_sid=skip_sid)
        self.emit_encoded(namespace, room, event_text(namespace, body), skip_sid)
        return None

    def deliver(self, site: str | None, room: str | None, event: str, message: Any) -> int:
        """Deliver a published event to this process's sockets in ``room`` of ``site``, or
        (no room) to every socket of every site.

        :param message: the event's one argument (none when ``None``), decoded from JSON.
        :returns: the number of sockets it was written to.
        :raises ValueError: the message cannot be sent as JSON.
        """
        try:
            body = encode_acyclic([event] if message is None else [event, message])
        except TypeError as e:
            raise ValueError(f"cannot be sent as JSON ({e})") from None
        numbering = self.numbering
        if numbering is not None:
            body = append_argument(body, numbering(site or "", room or "", body))
        if room is not None:  # what Frappe publishes nearly always: one room of one site
            namespace = "/" + site  # type: ignore[operator] - a room comes with its site
            return self.emit_encoded(namespace, room, EVENT + namespace + "," + body)
        written = 0
        for namespace in [ns for ns in self.rooms if ns != "/"]:
            written += self.emit_encoded(namespace, None, EVENT + namespace + "," + body)
        return written

    def emit_encoded(self, namespace: str, room: Any, encoded: str, skip_sid: Any = None) -> int:
        """Deliver an encoded Socket.IO EVENT packet to this process's sockets in ``room``.

        :param encoded: the packet as python-socketio encodes it (``2/ns,[...]``).
        :param room: a room, a list of rooms, or ``None`` for every socket of ``namespace``.
        :param skip_sid: a sid or a list of sids not to send to.
        :returns: the number of sockets it was written to.
        """
        ns = self.rooms.get(namespace)
        if ns is None:
            return 0
        if isinstance(room, _ROOM_LISTS):
            members = self._members(namespace, room)
        else:
            members = ns.get(room)
            if members is None:
                return 0
        if skip_sid is not None:
            members = dict(members)
            for sid in skip_sid if isinstance(skip_sid, list) else (skip_sid,):
                members.pop(sid, None)
        data = frame((MESSAGE + encoded).encode(), TEXT)
        polling = self.server.transport.broadcast(members.values(), data)
        if polling:
            pkt = message_packet(encoded)
            for eio_sid in polling:
                self.server.send_eio_packet(eio_sid, pkt)
        return len(members)


class Manager(RoomIndex, socketio.Manager):
    """python-socketio's in-process manager with gsocket's room index and broadcasts."""
