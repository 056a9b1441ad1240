"""A stand-in ``Socket`` for app authors' unit tests of their handlers.

``@realtime.on`` returns the handler unchanged, so a test can call it directly; what it needs
is a socket that records what the handler did (rooms joined, events emitted, state kept) and
answers permission checks from a table, without a server, Redis or a web process.
:func:`call` runs a handler as gsocket does, ``async def`` ones included, so one test works for
both kinds.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Emitted:
    """One ``socket.emit`` call recorded by :class:`FakeSocket`."""

    event: str
    data: Any
    room: str | None


@dataclass
class FakeSocket:
    """Behaves like :class:`gsocket.handlers.socket.Socket` for a handler under test.

    :param site: the socket's site.
    :param user: the socket's user (``"Guest"`` for anonymous).
    :param user_type: the user's type.
    :param installed_apps: apps installed on the site.
    :param permissions: ``(doctype, name)`` pairs the user may read; ``(doctype, None)`` grants
        the whole DocType.
    :param sid: the socket's sid.
    """

    site: str = "test.localhost"
    user: str = "Administrator"
    user_type: str = "System User"
    installed_apps: list[str] = field(default_factory=lambda: ["frappe"])
    permissions: set[tuple[str, str | None]] = field(default_factory=set)
    sid: str = "fake-sid"
    rooms: set[str] = field(default_factory=set)
    emitted: list[Emitted] = field(default_factory=list)
    others: dict[str, str] = field(default_factory=dict)
    _state: dict[str, Any] = field(default_factory=dict)

    def join(self, room: str) -> None:
        """Record joining ``room``."""
        self.rooms.add(room)

    def leave(self, room: str) -> None:
        """Record leaving ``room``."""
        self.rooms.discard(room)

    def emit(self, event: str, data: Any = None, room: str | None = None) -> None:
        """Record an emit."""
        self.emitted.append(Emitted(event, data, room))

    def get(self, key: str, default: Any = None) -> Any:
        """Read state set by :meth:`set`."""
        return self._state.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Keep state for later calls in the same test."""
        self._state[key] = value

    def has_permission(self, doctype: str, name: str | None = None) -> bool:
        """Answer from ``permissions``."""
        return (doctype, None) in self.permissions or (
            name is not None and (doctype, name) in self.permissions
        )

    def participants(self, room: str) -> list[str]:
        """This socket's sid when it is in ``room``, plus every sid of ``others``."""
        return ([self.sid] if room in self.rooms else []) + list(self.others)

    def user_of(self, sid: str) -> str | None:
        """The user of ``sid``: this socket's, or one from ``others``."""
        return self.user if sid == self.sid else self.others.get(sid)

    def events(self, name: str) -> Iterable[Emitted]:
        """The recorded emits of event ``name``."""
        return [e for e in self.emitted if e.event == name]


async def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def call(handler: Callable[..., Any], socket: FakeSocket, *args: Any) -> Any:
    """Run ``handler(socket, *args)`` as gsocket would and return its result.

    A plain handler gets ``socket`` itself; an ``async def`` handler gets the awaitable view
    of it (:class:`gsocket.handlers.socket.AsyncSocket`) and runs on a fresh asyncio loop, so
    ``await socket.join(...)`` and ``asyncio`` calls work in the test as on the server.
    """
    from gsocket.handlers.registry import is_async_callable
    from gsocket.handlers.socket import AsyncSocket

    if is_async_callable(handler):
        return asyncio.run(_awaited(handler(AsyncSocket(socket, _direct), *args)))
    result = handler(socket, *args)
    if inspect.isawaitable(result):
        return asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def install_registry() -> None:
    """Make ``from frappe.realtime import Socket, realtime`` work in a test process.

    Call it (e.g. in ``conftest.py``) before importing a handlers module, exactly as gsocket
    does before loading apps; on Frappe v15 that import fails otherwise.
    """
    from gsocket.contract.frappe_shim import install_frappe_realtime
    from gsocket.handlers.registry import realtime

    install_frappe_realtime(realtime)
