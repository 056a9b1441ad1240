"""The ``Socket`` a handler receives: one client connection on one site.

Its identity (site, user, user type, installed apps) is fixed at connect by the web process and
read-only afterwards; handlers act through it (rooms, emits, permission checks) and may keep
transient state on it, dropped at disconnect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gsocket.contract.auth import Identity


class SocketHost(Protocol):
    """What a socket asks of the sessions that hold it
    (:class:`gsocket.handlers.sessions.Sessions`)."""

    web: Any
    """The web process client (``has_permission``)."""

    def rooms(self, sid: str, namespace: str | None = None) -> list[str]:
        """The rooms ``sid`` is in."""
        ...

    def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        """Put ``sid`` in ``room``."""
        ...

    def leave_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        """Take ``sid`` out of ``room``."""
        ...

    def emit(self, event: str, data: Any = None, **options: Any) -> Any:
        """Emit ``event`` (``to``, ``namespace``: where)."""
        ...

    def participants(self, namespace: str, room: str) -> list[str]:
        """The sids in ``room``, on every process of the cluster."""
        ...

    def user_of(self, namespace: str, sid: str) -> str | None:
        """The user of socket ``sid``, on any process of the cluster."""
        ...


class Socket:
    """A connected client, as seen by handlers.

    :param server: the sessions that hold the connection.
    :param sid: Socket.IO session id of this socket in its namespace.
    :param identity: who connected, as established at connect.
    """

    __slots__ = ("_server", "sid", "identity", "_state")

    def __init__(self, server: SocketHost, sid: str, identity: Identity) -> None:
        self._server = server
        self.sid = sid
        self.identity = identity
        self._state: dict[str, Any] = {}

    @property
    def site(self) -> str:
        """The site this socket is on."""
        return self.identity.site

    @property
    def namespace(self) -> str:
        """The Socket.IO namespace of the site, ``/<site>``."""
        return f"/{self.identity.site}"

    @property
    def user(self) -> str:
        """The user, ``"Guest"`` for anonymous visitors."""
        return self.identity.user

    @property
    def user_type(self) -> str:
        """The user's type, e.g. ``"System User"``."""
        return self.identity.user_type

    @property
    def installed_apps(self) -> list[str]:
        """Apps installed on this socket's site."""
        return list(self.identity.installed_apps)

    @property
    def rooms(self) -> list[str]:
        """Rooms this socket is in (its own sid room excluded)."""
        return [r for r in self._server.rooms(self.sid, namespace=self.namespace) if r != self.sid]

    def join(self, room: str) -> None:
        """Add this socket to ``room`` of its site.

        :param room: room name, e.g. ``"project:PROJ-0001"``.
        """
        self._server.enter_room(self.sid, str(room), namespace=self.namespace)

    def leave(self, room: str) -> None:
        """Remove this socket from ``room``; leaving a room it is not in does nothing.

        :param room: room name.
        """
        self._server.leave_room(self.sid, str(room), namespace=self.namespace)

    def emit(self, event: str, data: Any = None, room: str | None = None) -> None:
        """Emit ``event`` with ``data`` to ``room`` of this site, or to this client alone.

        :param event: event name the client listens for.
        :param data: one JSON-serialisable value (``None`` sends no argument).
        :param room: a room of this socket's site; ``None`` means this client only.
        """
        self._server.emit(event, data, to=room or self.sid, namespace=self.namespace)

    def get(self, key: str, default: Any = None) -> Any:
        """Read transient per-socket state.

        :param key: state key.
        :param default: returned when ``key`` was never set.
        """
        return self._state.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Keep transient per-socket state until disconnect.

        :param key: state key.
        :param value: any Python value; it never leaves the process.
        """
        self._state[key] = value

    def has_permission(self, doctype: str, name: str | None = None) -> bool:
        """Ask the web process, with this socket's own credential, whether it may read.

        :param doctype: the DocType.
        :param name: a document name; ``None`` asks about the DocType as a whole.
        :returns: ``True`` only on a clear yes; errors and timeouts are a no.
        """
        identity = self.identity
        return self._server.web.has_permission(
            identity.web_url, identity.site, identity.credential, doctype, name
        )

    def participants(self, room: str) -> list[str]:
        """Return the sids of the sockets of this site in ``room``, on every process of the
        bench's cluster (this process's first).

        :param room: room name.
        """
        return self._server.participants(self.namespace, room)

    def user_of(self, sid: str) -> str | None:
        """Return the user of another socket of this site, or ``None`` if it is gone.

        :param sid: a sid, e.g. from :meth:`participants` (of any process of the cluster).
        """
        return self._server.user_of(self.namespace, sid)

    def __repr__(self) -> str:
        return f"<Socket {self.sid} site={self.site} user={self.user}>"


SyncSocket = Socket
"""The name Frappe's asyncio server gives the blocking socket of plain ``def`` handlers.

On gsocket every plain handler gets that socket, so the two names are one class.
"""

Offload = Callable[..., Awaitable[Any]]
"""Runs a blocking callable away from the asyncio loop and awaits it:
``await offload(fn, *args)``."""


class AsyncSocket:
    """What an ``async def`` handler receives: the :class:`Socket` API, awaitable.

    The actions (``join``, ``leave``, ``emit``, ``set``, ``has_permission``, ``user_of``) are
    coroutines, as on Frappe's asyncio server, so a handler written for it runs unchanged;
    reads (identity, ``get``, ``participants``, ``rooms``) are plain.  Room and emit calls
    complete without waiting (they only queue packets); ``has_permission``, an HTTP call to the
    web process, runs through ``offload`` so that it never blocks the loop other async
    handlers share.

    :param sync: the blocking socket behind it (a :class:`Socket`, or a
        :class:`gsocket.handlers.testing.FakeSocket` in an app author's test).
    :param offload: how blocking calls are run (:meth:`gsocket.handlers.aio.AsyncRunner.offload`).
    """

    __slots__ = ("sync", "_offload")

    def __init__(self, sync: Any, offload: Offload) -> None:
        self.sync = sync
        self._offload = offload

    @property
    def sid(self) -> str:
        """Socket.IO session id."""
        return self.sync.sid

    @property
    def site(self) -> str:
        """The site this socket is on."""
        return self.sync.site

    @property
    def user(self) -> str:
        """The user, ``"Guest"`` for anonymous visitors."""
        return self.sync.user

    @property
    def user_type(self) -> str:
        """The user's type, e.g. ``"System User"``."""
        return self.sync.user_type

    @property
    def installed_apps(self) -> list[str]:
        """Apps installed on this socket's site."""
        return list(self.sync.installed_apps)

    @property
    def rooms(self) -> list[str]:
        """Rooms this socket is in."""
        return sorted(self.sync.rooms)

    async def join(self, room: str) -> None:
        """Add this socket to ``room`` of its site."""
        self.sync.join(room)

    async def leave(self, room: str) -> None:
        """Remove this socket from ``room``."""
        self.sync.leave(room)

    async def emit(self, event: str, data: Any = None, room: str | None = None) -> None:
        """Emit ``event`` to ``room`` of this site, or to this client alone."""
        self.sync.emit(event, data, room)

    def get(self, key: str, default: Any = None) -> Any:
        """Read transient per-socket state."""
        return self.sync.get(key, default)

    async def set(self, key: str, value: Any) -> None:
        """Keep transient per-socket state until disconnect."""
        self.sync.set(key, value)

    async def has_permission(self, doctype: str, name: str | None = None) -> bool:
        """Ask the web process whether this socket's user may read; see :class:`Socket`."""
        return await self._offload(self.sync.has_permission, doctype, name)

    def participants(self, room: str) -> list[str]:
        """Sids of this site's sockets in ``room``."""
        return self.sync.participants(room)

    async def user_of(self, sid: str) -> str | None:
        """The user of another socket of this site, or ``None``."""
        return self.sync.user_of(sid)

    def __repr__(self) -> str:
        return f"<AsyncSocket {self.sid} site={self.site} user={self.user}>"
