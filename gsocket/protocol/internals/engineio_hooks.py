"""python-engineio's internals that gsocket's session relies on, in one place.

- :class:`HookedSocket`: python-engineio's session runs its websocket loop in the private
  ``_websocket_handler``; gsocket's session (:class:`gsocket.protocol.session.LeanSocket`)
  replaces it through the public-named :meth:`HookedSocket.serve_websocket`;
- :func:`adopt`: python-engineio builds each session object itself, so gsocket's session
  class is swapped onto it (``__class__``) at the Engine.IO connect event, before its
  websocket loop starts;
- :func:`replace_queue`: an upgraded session's send queue becomes gsocket's wire (the session
  and python-engineio's polling code only ``put``, ``get``, ``qsize`` and ``join`` it);
- :func:`websocket_of`: gevent-websocket's object behind python-engineio's wrapper
  (``_sock``) and gsocket's guard (``_ws``).

Verified against python-engineio 4.11.0 (the lowest gsocket accepts) to 4.15.1 (the newest),
with gevent-websocket 0.10.1 (gsocket/ops/dependencies.py).
"""

from __future__ import annotations

from typing import Any

from engineio import socket as eio_socket

from gsocket.protocol.internals.gevent_hooks import handler_socket


class HookedSocket(eio_socket.Socket):
    """python-engineio's session whose websocket loop is :meth:`serve_websocket`."""

    def _websocket_handler(self, ws: Any) -> list[Any]:
        return self.serve_websocket(ws)

    def serve_websocket(self, ws: Any) -> list[Any]:
        """Run the websocket transport of this session (python-engineio's loop by default)."""
        return super()._websocket_handler(ws)


def adopt(session: Any, cls: type[HookedSocket]) -> bool:
    """Make a session python-engineio just created an instance of ``cls`` (a subclass of
    :class:`HookedSocket` adding no state); ``False`` when it is not python-engineio's own
    class (already adopted, or another one)."""
    if type(session) is not eio_socket.Socket:
        return False
    session.__class__ = cls
    return True


def replace_queue(session: Any, queue: Any) -> None:
    """Make ``queue`` the session's send queue from now on."""
    session.queue = queue


def websocket_of(ws: Any) -> Any:
    """gevent-websocket's object behind python-engineio's wrapper and gsocket's guard."""
    request_ws = getattr(ws, "_sock", ws)
    return getattr(request_ws, "_ws", request_ws)


def set_timeout(ws: Any, seconds: float) -> None:
    """Bound reads and writes of the connection, as python-engineio does (when it can)."""
    target = getattr(ws, "_sock", None)
    if hasattr(target, "settimeout"):
        target.settimeout(seconds)
        return
    sock = handler_socket(websocket_of(ws))
    if sock is not None:
        sock.settimeout(seconds)
