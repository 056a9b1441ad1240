"""python-socketio's private decision points, turned into methods with public names.

python-socketio has no public hook for what gsocket decides at CONNECT, EVENT and DISCONNECT,
for each Engine.IO session and message, and for every packet it sends: its ``Server`` calls
private methods (``_handle_connect``, ``_send_packet`` ...).  :class:`HookedServer` overrides
exactly those and forwards each to a method without the underscore, whose default is the
library's own behaviour; gsocket's :class:`~gsocket.protocol.server.Server` overrides the
public ones.  So this module is the only one that knows the private names.

Verified against python-socketio 5.14.0 (the lowest gsocket accepts) to 5.18.1 (the newest),
with python-engineio 4.11.0 to 4.15.1 (gsocket/ops/dependencies.py).
"""

from __future__ import annotations

from typing import Any

import socketio


class HookedServer(socketio.Server):
    """``socketio.Server`` whose private hooks call public-named methods."""

    # ---- python-socketio calls these (private names) ---------------------------------------

    def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        self.on_connect(eio_sid, namespace or "/", data)

    def _handle_disconnect(
        self, eio_sid: str, namespace: str | None, reason: str | None = None
    ) -> None:
        self.on_disconnect(eio_sid, namespace or "/", reason)

    def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        self.on_event(eio_sid, namespace or "/", id, data)

    def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> bool | None:
        return self.on_eio_connect(eio_sid, environ)

    def _handle_eio_disconnect(self, eio_sid: str, reason: str | None = None) -> None:
        self.on_eio_disconnect(eio_sid, reason)

    def _handle_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        self.on_eio_message(eio_sid, data)

    def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        self.send_packet(eio_sid, pkt)

    def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        self.send_eio_packet(eio_sid, eio_pkt)

    # ---- the library's behaviour, under public names (override these) ----------------------

    def on_connect(self, eio_sid: str, namespace: str, data: Any) -> None:
        """A CONNECT packet for ``namespace``."""
        super()._handle_connect(eio_sid, namespace, data)

    def on_disconnect(self, eio_sid: str, namespace: str, reason: str | None) -> None:
        """The end of the session's socket on ``namespace``."""
        super()._handle_disconnect(eio_sid, namespace, reason)

    def on_event(self, eio_sid: str, namespace: str, id: int | None, data: Any) -> None:
        """An EVENT packet (``id`` set when the client wants an ack)."""
        super()._handle_event(eio_sid, namespace, id, data)

    def on_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> bool | None:
        """A new Engine.IO session; ``False`` refuses it."""
        return super()._handle_eio_connect(eio_sid, environ)

    def on_eio_disconnect(self, eio_sid: str, reason: str | None) -> None:
        """The end of an Engine.IO session: every namespace of it ends."""
        super()._handle_eio_disconnect(eio_sid, reason)

    def on_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        """One Engine.IO message: a Socket.IO packet, or an attachment of a binary one."""
        super()._handle_eio_message(eio_sid, data)

    def send_packet(self, eio_sid: str, pkt: Any) -> None:
        """Encode and queue a Socket.IO packet for one session."""
        super()._send_packet(eio_sid, pkt)

    def send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        """Queue an encoded Engine.IO packet for one session."""
        super()._send_eio_packet(eio_sid, eio_pkt)

    # ---- state python-socketio keeps privately ----------------------------------------------

    def binary_pending(self, eio_sid: str) -> Any:
        """The binary packet the session is sending attachments of, or ``None`` (its
        ``attachments`` so far and ``attachment_count`` announced)."""
        return self._binary_packet.get(eio_sid)

    def binary_pending_count(self) -> int:
        """Sessions with a binary packet being received (for leak checks)."""
        return len(self._binary_packet)

    def drop_binary(self, eio_sid: str) -> None:
        """Forget the binary packet the session was sending."""
        self._binary_packet.pop(eio_sid, None)


def start_manager(server: socketio.Server) -> bool:
    """Initialize the client manager now, as python-socketio does lazily at the first
    connect (its ``manager_initialized`` flag); ``False`` when it already was."""
    if server.manager_initialized:
        return False
    server.manager_initialized = True
    server.manager.initialize()
    return True
