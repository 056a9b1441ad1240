"""The Socket.IO server: every site a namespace, every request screened, every session bounded.

python-socketio does the protocol; this subclass adds what the protocol layer owns:

- every request is screened by the client guard (:mod:`gsocket.protocol.guards`) before
  python-engineio sees it, and answered as Engine.IO specifies (:mod:`gsocket.protocol.http`);
- every session is written through the transport (:mod:`gsocket.protocol.transport`), and a
  session that connects to no namespace within ``connect_timeout`` is closed;
- CONNECT, EVENT and the end of a socket are handed to the bench's sessions
  (:class:`SessionHandler`, :mod:`gsocket.handlers.sessions`), which authenticate, keep the
  sockets and dispatch; this server registers, acknowledges, refuses and acks for them.

The guard, the transport and the sessions are given by the application factory
(:meth:`Server.use`).  python-socketio's private hooks are reached only through
:class:`~gsocket.protocol.internals.socketio_hooks.HookedServer`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol

from gevent.event import Event
from socketio import packet

from gsocket.protocol.codec import PacketJSON, connect_text, encode, event_text, message_packet
from gsocket.protocol.guards import ClientGuard
from gsocket.protocol.http import accepted_post, request_refusal
from gsocket.protocol.internals.socketio_hooks import HookedServer
from gsocket.protocol.manager import Manager
from gsocket.protocol.session import SessionIds, Timeline
from gsocket.protocol.transport import Transport

log = logging.getLogger("gsocket.server")


class SessionHandler(Protocol):
    """What the server hands CONNECT, EVENT and the end of a socket to."""

    def connect(self, eio_sid: str, namespace: str, environ: dict[str, Any], data: Any) -> None:
        """Decide on a CONNECT: :meth:`Server.register` and :meth:`Server.accept` it, or
        :meth:`Server.refuse` it."""
        ...

    def event(self, eio_sid: str, sid: str, namespace: str, id: int | None, data: Any) -> None:
        """Handle an EVENT of connected socket ``sid`` (:meth:`Server.ack` it when ``id``)."""
        ...

    def disconnect(self, sid: str, namespace: str, reason: str | None) -> None:
        """Forget socket ``sid``, which the server has already taken out of every room."""
        ...


class Server(HookedServer):
    """A multi-tenant python-socketio server in gevent mode.

    :param client_manager: python-socketio client manager (a Redis one for scale-out);
        gsocket's :class:`~gsocket.protocol.manager.Manager` by default.
    :param connect_timeout: seconds an Engine.IO session may stay without a namespace
        before it is closed (Socket.IO's ``connectTimeout``).
    :param engineio_options: passed to the Engine.IO server (ping intervals, buffer size).
    """

    guard: ClientGuard
    transport: Transport
    sessions: SessionHandler

    def __init__(
        self,
        client_manager: Any = None,
        connect_timeout: float = 45.0,
        **engineio_options: Any,
    ) -> None:
        super().__init__(
            client_manager=client_manager if client_manager is not None else Manager(),
            async_mode="gevent",
            namespaces="*",
            cors_allowed_origins="*",
            cors_credentials=True,
            always_connect=False,
            async_handlers=True,
            logger=False,
            engineio_logger=False,
            json=PacketJSON,
            # the transport's Sweep does its service task's work (session.Sweep)
            monitor_clients=False,
            **engineio_options,
        )
        self.eio.generate_id = SessionIds()
        self._connecting: dict[tuple[str, str], Event] = {}
        self._unconnected: set[str] = set()
        self._connect_deadlines = Timeline(
            connect_timeout, self._connect_timed_out, "a connect timeout"
        )

    def use(self, guard: ClientGuard, transport: Transport, sessions: SessionHandler) -> None:
        """Give the server its client guard, its transport and the bench's sessions."""
        self.guard = guard
        self.transport = transport
        self.sessions = sessions

    def site_namespaces(self) -> list[str]:
        """Return the namespaces that have at least one socket (one per site in use)."""
        return [ns for ns in self.manager.get_namespaces() if ns != "/"]

    # ---- Socket.IO: what the sessions decide, said on the wire -------------------------------

    def on_connect(self, eio_sid: str, namespace: str, data: Any) -> None:
        """Hand a CONNECT to the sessions; a repeated one is answered with the sid the
        session already has (once the first is decided)."""
        key = (eio_sid, namespace)
        pending = self._connecting.get(key)
        if pending is not None:
            pending.wait()
        existing = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if existing is not None and self.manager.is_connected(existing, namespace):
            self.accept(eio_sid, namespace, existing)
            return
        environ = self.environ.get(eio_sid)
        if environ is None:
            return
        done = self._connecting[key] = Event()
        try:
            self.sessions.connect(eio_sid, namespace, environ, data)
        finally:
            del self._connecting[key]
            done.set()

    def register(self, eio_sid: str, namespace: str, sid: str | None = None) -> str | None:
        """Register a socket of session ``eio_sid`` on ``namespace``: a new one, or (``sid``)
        a recovered one under its old sid.  ``None`` when the session is gone or already
        has a socket there."""
        if eio_sid not in self.environ:
            return None
        if sid is None:
            sid = self.manager.connect(eio_sid, namespace)
        elif self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
            return None
        else:
            self.manager.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
            self.manager.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        if sid is not None:
            self._unconnected.discard(eio_sid)
        return sid

    def accept(self, eio_sid: str, namespace: str, sid: str, pid: str | None = None) -> None:
        """Answer CONNECT with the socket's sid (and the ``pid`` of its recoverable session),
        encoded as python-socketio encodes it but without building its ``Packet`` (whose
        binary walk and per-call JSON encoder were 3 % of a connect's CPU)."""
        self.send_eio_packet(eio_sid, message_packet(connect_text(namespace, sid, pid)))

    def refuse(self, eio_sid: str, namespace: str, message: str) -> None:
        """Answer CONNECT with CONNECT_ERROR and ``message``."""
        self.send_packet(
            eio_sid,
            self.packet_class(packet.CONNECT_ERROR, data={"message": message}, namespace=namespace),
        )

    def send_event(self, eio_sid: str, namespace: str, body: str) -> None:
        """Send an EVENT already encoded (``body``: the JSON array) to one session."""
        self.send_eio_packet(eio_sid, message_packet(event_text(namespace, body)))

    def ack(self, eio_sid: str, namespace: str, id: int, data: list[Any]) -> None:
        """Acknowledge EVENT ``id`` with ``data``."""
        self.send_packet(
            eio_sid, self.packet_class(packet.ACK, namespace=namespace, id=id, data=data)
        )

    def on_disconnect(self, eio_sid: str, namespace: str, reason: str | None) -> None:
        """Take an ending socket out of every room, then hand it to the sessions."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        self.manager.pre_disconnect(sid, namespace=namespace)
        self.drop_binary(eio_sid)
        self.manager.disconnect(sid, namespace, ignore_queue=True)
        self.sessions.disconnect(sid, namespace, reason)

    def on_event(self, eio_sid: str, namespace: str, id: int | None, data: Any) -> None:
        """Hand an EVENT of a connected socket to the sessions."""
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            log.debug("event on %s from a session that is not connected to it", namespace)
            return
        self.sessions.event(eio_sid, sid, namespace, id, data)

    def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        """Put a socket in a room; a socket that left meanwhile joins nothing.

        A handler runs in its own greenlet and may still be waiting on the web process when
        its client goes away (a tab closed right after subscribing): its ``join`` then has no
        socket to add, which is not an error.
        """
        if not self.manager.is_connected(sid, namespace or "/"):
            log.debug("%s left %s before joining %r", sid, namespace, room)
            return
        super().enter_room(sid, room, namespace=namespace)

    # ---- protections (gsocket.protocol.guards): applied before python-socketio sees the input

    def handle_request(self, environ: dict[str, Any], start_response: Any) -> Any:
        """Serve one Engine.IO HTTP or websocket request, screened by the client guard.

        Malformed transport input ends that client's session only; whatever python-engineio
        still raises on is answered 400 and ends the session, never the server.
        """
        problem = request_refusal(environ)
        if problem is not None:
            ws = environ.get("wsgi.websocket")
            if ws is not None:  # already upgraded by gevent-websocket: no status to send
                ws.close()
                return []
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [encode(problem).encode()]
        refusal = self.guard.screen_request(environ)
        if refusal is not None:
            status, body = refusal
            start_response(status, [("Content-Type", "text/plain")])
            return [body]
        try:
            return accepted_post(environ, super().handle_request(environ, start_response))
        except Exception as e:  # noqa: BLE001 - one client's bad request must not surface
            self.guard.request_failed(environ, e)
            if environ.get("wsgi.websocket") is not None:
                return []
            start_response("400 Bad Request", [("Content-Type", "text/plain")], sys.exc_info())
            return [b"Bad Request"]
        finally:
            self.guard.request_done(environ)

    def on_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> bool | None:
        """Count the new Engine.IO session against its address (``connections_per_ip``)."""
        if not self.guard.admit(eio_sid, environ):
            return False
        super().on_eio_connect(eio_sid, environ)
        session = self.eio.sockets.get(eio_sid)
        if session is not None:
            self.transport.adopt(session)
        self._unconnected.add(eio_sid)
        self._connect_deadlines.add(eio_sid)
        return None

    def _connect_timed_out(self, eio_sid: str) -> None:
        """Close a session that has not connected to any namespace within the connect timeout.

        Socket.IO's server does so (``connectTimeout``, 45 s by default): an Engine.IO
        session without a namespace serves nothing, and would otherwise hold its connection
        and its place in ``connections_per_ip`` for as long as the client answers pings.
        """
        if eio_sid not in self._unconnected:
            return
        self._unconnected.discard(eio_sid)
        session = self.eio.sockets.get(eio_sid)
        if session is None or session.closed or session.closing:
            return
        log.info(
            "closed session %s (%s): no namespace connected within %g s",
            eio_sid,
            self.guard.peer(eio_sid),
            self._connect_deadlines.delay,
        )
        session.close(wait=False, reason=self.reason.SERVER_DISCONNECT)

    def on_eio_disconnect(self, eio_sid: str, reason: str | None) -> None:
        """End every namespace of the session, then release what the guard held for it."""
        self._unconnected.discard(eio_sid)
        try:
            super().on_eio_disconnect(eio_sid, reason)
        finally:
            self.guard.forget(eio_sid)

    def on_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        """Rate-limit and decode one Socket.IO packet; a packet that does not decode ends
        the client's session with one log line (as the Node server does on a parse error)."""
        pending = self.binary_pending(eio_sid)
        if pending is None:
            if not self.guard.allow_packet(eio_sid):
                return
        elif self._binary_refused(eio_sid, pending, data):
            return
        try:
            super().on_eio_message(eio_sid, data)
        except (ValueError, TypeError, RecursionError, IndexError, KeyError) as e:
            self.guard.kick(eio_sid, f"malformed Socket.IO packet ({type(e).__name__}: {e})"[:300])
            return
        except Exception:
            log.exception("packet from client %s could not be handled", eio_sid)
            self.guard.kick(eio_sid, "its packet could not be handled")
            return
        pending = self.binary_pending(eio_sid)
        if pending is not None:
            self._binary_refused(eio_sid, pending, "")

    def _binary_refused(self, eio_sid: str, pending: Any, data: str | bytes) -> bool:
        """Put out a session whose binary packet the guard refuses (too many attachments, or
        too many bytes of them with ``data``, the next one)."""
        problem = self.guard.binary_problem(pending.attachments, pending.attachment_count, data)
        if problem is None:
            return False
        self.drop_binary(eio_sid)
        self.guard.kick(eio_sid, problem)
        return True

    def send_packet(self, eio_sid: str, pkt: Any) -> None:
        """Queue a packet for a client, unless its send queue is full (then it is put out)."""
        if not self.transport.queue_full(eio_sid):
            super().send_packet(eio_sid, pkt)

    def send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        """Queue an encoded packet (room broadcasts) under the same send-queue bound.

        A websocket session's wire enforces the bound itself; the frame of a packet sent to
        many sessions in a row is built once.
        """
        wire = self.transport.wires.get(eio_sid)
        if wire is not None:
            wire.write(self.transport.frame_of(eio_pkt))
        elif not self.transport.queue_full(eio_sid):
            super().send_eio_packet(eio_sid, eio_pkt)

    def shutdown(self) -> None:
        """Stop python-socketio's background tasks, the transport's pinger and the connect
        timeouts."""
        self.transport.stop()
        self._connect_deadlines.stop()
        super().shutdown()
