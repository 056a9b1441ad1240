"""The Socket.IO server: every site a namespace, every connection checked, every event dispatched.

python-socketio does the protocol; this subclass replaces its three decision points with the
bench's rules:

- CONNECT runs the contract's checks (:mod:`gsocket.contract.auth`) for any ``/<site>`` namespace,
  joins the default rooms, and answers a repeated CONNECT with the sid it already has;
- EVENT goes to the :class:`~gsocket.handlers.dispatch.Dispatcher` in a greenlet of its own;
- DISCONNECT lets handlers see the socket one last time.

Data path: connect -> authenticate -> session (:class:`~gsocket.handlers.socket.Socket`) -> dispatch
-> handler -> emit.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import gevent
import socketio
from engineio import packet as eio_packet
from gevent.event import Event
from socketio import packet

from gsocket.cluster.presence import Presence
from gsocket.cluster.recovery import Claim, Recovery
from gsocket.contract.auth import Authenticator, Refused
from gsocket.contract.core_handlers import join_default_rooms
from gsocket.contract.webclient import WebClient
from gsocket.handlers.dispatch import Dispatcher
from gsocket.handlers.socket import Socket
from gsocket.metrics import Metrics
from gsocket.protocol.limits import MAX_ATTACHMENTS, ClientGuard, watch_event_loop
from gsocket.protocol.manager import Manager
from gsocket.protocol.transport import Timeline, Transport, accepted_post, request_refusal

log = logging.getLogger("gsocket.server")

BLOCKING_REPORT_SECONDS = 1.0
"""A greenlet that holds the event loop this long (a handler burning CPU) is logged."""


class Server(socketio.Server):
    """A multi-tenant python-socketio server in gevent mode.

    :param authenticator: runs the connection checks.
    :param dispatcher: runs handlers for client events.
    :param web: client of the web process (used by :meth:`Socket.has_permission`).
    :param metrics: where connects, refusals and sockets are counted.
    :param client_manager: python-socketio client manager (a Redis one for scale-out);
        gsocket's :class:`~gsocket.protocol.manager.Manager` by default.
    :param connect_timeout: seconds an Engine.IO session may stay without a namespace
        before it is closed (Socket.IO's ``connectTimeout``).
    :param engineio_options: passed to the Engine.IO server (ping intervals, buffer size).
    """

    def __init__(
        self,
        authenticator: Authenticator,
        dispatcher: Dispatcher,
        web: WebClient,
        metrics: Metrics,
        client_manager: socketio.Manager | None = None,
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
            **engineio_options,
        )
        self.authenticator = authenticator
        self.dispatcher = dispatcher
        self.web = web
        self.metrics = metrics
        self._sockets: dict[str, Socket] = {}
        self.presence: Presence | None = None
        """The cluster's shared presence (:mod:`gsocket.cluster.presence`), when this process is one
        of several; set by the application factory."""
        self.recovery: Recovery | None = None
        """Connection state recovery (:mod:`gsocket.cluster.recovery`), when
        ``gsocket.recovery_seconds`` turns it on; set by the application factory."""
        self._connecting: dict[tuple[str, str], Event] = {}
        self.guard = ClientGuard(self.eio, authenticator.config, metrics)
        self.transport = Transport(
            self.eio,
            authenticator.config.limits.send_queue,
            kick=lambda eio_sid, why: self.guard.kick(eio_sid, why, abort=True),
        )
        self._unconnected: set[str] = set()
        self._connect_deadlines = Timeline(
            connect_timeout, self._connect_timed_out, "a connect timeout"
        )
        watch_event_loop(BLOCKING_REPORT_SECONDS)

    def socket_of(self, sid: str) -> Socket | None:
        """Return the connected socket with ``sid``, or ``None``."""
        return self._sockets.get(sid)

    def sockets(self) -> list[Socket]:
        """Return every connected socket of this process."""
        return list(self._sockets.values())

    def site_namespaces(self) -> list[str]:
        """Return the namespaces that have at least one socket (one per site in use)."""
        return [ns for ns in self.manager.get_namespaces() if ns != "/"]

    def participants(self, namespace: str, room: str) -> list[str]:
        """Return the sids of the sockets in ``room`` of ``namespace``: this process's, then
        the other cluster processes' ones."""
        local = [sid for sid, _ in self.manager.get_participants(namespace, room)]
        if self.presence is None:
            return local
        return local + self.presence.participants(namespace, room)

    def user_of(self, namespace: str, sid: str) -> str | None:
        """Return the user of socket ``sid`` of ``namespace``, on any cluster process, or
        ``None`` if it is gone."""
        socket = self._sockets.get(sid)
        if socket is not None:
            return socket.user if f"/{socket.site}" == namespace else None
        if self.presence is None:
            return None
        return self.presence.user_of(namespace, sid)

    def _send_connect_error(self, eio_sid: str, namespace: str, message: str) -> None:
        self._send_packet(
            eio_sid,
            self.packet_class(packet.CONNECT_ERROR, data={"message": message}, namespace=namespace),
        )

    def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        """Handle a CONNECT packet: check, register, join default rooms, acknowledge."""
        namespace = namespace or "/"
        key = (eio_sid, namespace)
        pending = self._connecting.get(key)
        if pending is not None:
            pending.wait()
        existing = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if existing is not None and self.manager.is_connected(existing, namespace):
            self._send_connected(eio_sid, namespace, existing)
            return
        environ = self.environ.get(eio_sid)
        if environ is None:
            return
        done = self._connecting[key] = Event()
        try:
            self._connect(eio_sid, namespace, environ, data)
        finally:
            del self._connecting[key]
            done.set()

    def _connect(
        self, eio_sid: str, namespace: str, environ: dict[str, Any], data: Any = None
    ) -> None:
        peer = environ.get("REMOTE_ADDR") or "unix"
        try:
            identity = self.authenticator.authenticate(namespace, environ)
        except Refused as refusal:
            self.metrics.refusals.inc(refusal.reason)
            log.warning(
                "refused connection to %s from %s: %s: %s (session %s)",
                namespace,
                peer,
                refusal.reason,
                self.authenticator.explain(refusal, namespace, environ),
                eio_sid,
            )
            self._send_connect_error(eio_sid, namespace, refusal.message)
            return
        claim = None
        if self.recovery is not None and isinstance(data, dict) and "pid" in data:
            claim = self.recovery.claim(
                data["pid"], data.get("offset"), namespace, identity.user, identity.credential
            )
        if eio_sid not in self.environ:
            return
        missed = self._missed(claim, namespace)
        if claim is None or missed is None:
            claim = None
            sid = self.manager.connect(eio_sid, namespace)
        else:
            sid = self._connect_as(eio_sid, namespace, claim.sid)
        if sid is None:
            return
        self._unconnected.discard(eio_sid)
        socket = Socket(self, sid, identity)
        self._sockets[sid] = socket
        if self.presence is not None:
            self.presence.connected(namespace, sid, identity.user)
        join_default_rooms(socket)
        pid = None
        if self.recovery is not None:
            for room in claim.rooms if claim is not None else ():
                self.enter_room(sid, room, namespace=namespace)
            pid = self.recovery.connected(
                namespace, sid, identity.user, identity.credential, claim and claim.pid
            )
        self._send_connected(eio_sid, namespace, sid, pid)
        for body in missed or ():
            self._send_eio_packet(
                eio_sid, eio_packet.Packet(eio_packet.MESSAGE, f"{packet.EVENT}{namespace},{body}")
            )
        if claim is not None:
            log.info("recovered session %s with %d missed events", sid, len(missed or ()))
        self.metrics.connects.inc(identity.site)
        self.metrics.sockets.inc(identity.site)
        log.info("connect site=%s user=%s sid=%s peer=%s", identity.site, identity.user, sid, peer)
        if self.dispatcher.registry.handlers_for("connect"):
            self.start_background_task(self.dispatcher.dispatch, socket, "connect", ())

    def _missed(self, claim: Claim | None, namespace: str) -> list[str] | None:
        """The packets a recovered session missed; ``None`` when it cannot be recovered here
        (its sid is still a live socket of this process, or its events are not all known)."""
        if claim is None or self.recovery is None or claim.sid in self._sockets:
            return None
        return self.recovery.missed(claim, namespace)

    def _connect_as(self, eio_sid: str, namespace: str, sid: str) -> str | None:
        """Register a recovered socket under its old ``sid``, as ``manager.connect`` does a
        new one."""
        if self.manager.sid_from_eio_sid(eio_sid, namespace) is not None:
            return None
        self.manager.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        self.manager.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        return sid

    def _handle_disconnect(
        self, eio_sid: str, namespace: str | None, reason: str | None = None
    ) -> None:
        """Handle the end of a socket: forget it, then run ``disconnect`` handlers."""
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        self.manager.pre_disconnect(sid, namespace=namespace)
        self._binary_packet.pop(eio_sid, None)
        self.manager.disconnect(sid, namespace, ignore_queue=True)
        if self.presence is not None:
            self.presence.gone(namespace, sid)
        if self.recovery is not None:
            self.recovery.disconnected(sid, reason not in (None, self.reason.CLIENT_DISCONNECT))
        socket = self._sockets.pop(sid, None)
        if socket is None:
            return
        self.metrics.sockets.dec(socket.site)
        log.info(
            "disconnect site=%s user=%s sid=%s reason=%s",
            socket.site,
            socket.user,
            sid,
            reason or self.reason.CLIENT_DISCONNECT,
        )
        self.start_background_task(self.dispatcher.dispatch, socket, "disconnect", ())

    def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: Any) -> None:
        """Handle an EVENT packet: dispatch it in a greenlet of its own, ack if asked."""
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        socket = self._sockets.get(sid) if sid is not None else None
        if socket is None or not self.manager.is_connected(sid, namespace):
            log.debug("event on %s from a session that is not connected to it", namespace)
            return
        if not data or not isinstance(data[0], str):
            log.warning("event without a name from site=%s sid=%s ignored", socket.site, sid)
            return
        gevent.spawn(self._run_event, socket, eio_sid, namespace, id, data[0], tuple(data[1:]))

    def _run_event(
        self,
        socket: Socket,
        eio_sid: str,
        namespace: str,
        id: int | None,
        event: str,
        args: tuple[Any, ...],
    ) -> None:
        result = self.dispatcher.dispatch(socket, event, args)
        if id is not None:
            ack = [] if result is None else list(result) if isinstance(result, tuple) else [result]
            self._send_packet(
                eio_sid, self.packet_class(packet.ACK, namespace=namespace, id=id, data=ack)
            )

    # ---- protections (gsocket.protocol.limits): applied before python-socketio sees the input

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
            return [json.dumps(problem).encode()]
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

    def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> bool | None:
        """Count the new Engine.IO session against its address (``connections_per_ip``)."""
        if not self.guard.admit(eio_sid, environ):
            return False
        super()._handle_eio_connect(eio_sid, environ)
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

    def _handle_eio_disconnect(self, eio_sid: str, reason: str | None = None) -> None:
        """End every namespace of the session, then release what the guard held for it."""
        self._unconnected.discard(eio_sid)
        try:
            super()._handle_eio_disconnect(eio_sid, reason)
        finally:
            self.guard.forget(eio_sid)

    def _handle_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        """Rate-limit and decode one Socket.IO packet; a packet that does not decode ends
        the client's session with one log line (as the Node server does on a parse error)."""
        pending = self._binary_packet.get(eio_sid)
        if pending is None:
            if not self.guard.allow_packet(eio_sid):
                return
        elif sum(map(len, pending.attachments)) + len(data) > self.guard.limits.max_message_bytes:
            del self._binary_packet[eio_sid]
            self.guard.kick(eio_sid, "binary attachments over max_message_bytes")
            return
        try:
            super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, RecursionError, IndexError, KeyError) as e:
            self.guard.kick(eio_sid, f"malformed Socket.IO packet ({type(e).__name__}: {e})"[:300])
            return
        except Exception:
            log.exception("packet from client %s could not be handled", eio_sid)
            self.guard.kick(eio_sid, "its packet could not be handled")
            return
        pending = self._binary_packet.get(eio_sid)
        if pending is not None and pending.attachment_count > MAX_ATTACHMENTS:
            del self._binary_packet[eio_sid]
            self.guard.kick(
                eio_sid, f"binary packet announcing {pending.attachment_count} attachments"
            )

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

    def _send_connected(
        self, eio_sid: str, namespace: str, sid: str, pid: str | None = None
    ) -> None:
        """Answer CONNECT with the socket's sid (and the ``pid`` of its recoverable session),
        encoded as python-socketio encodes it but without building its ``Packet`` (whose
        binary walk and per-call JSON encoder were 3 % of a connect's CPU)."""
        prefix = "" if namespace == "/" else f"{namespace},"
        offer = "" if pid is None else f',"pid":{json.dumps(pid)}'
        encoded = f'{packet.CONNECT}{prefix}{{"sid":{json.dumps(sid)}{offer}}}'
        self._send_eio_packet(eio_sid, eio_packet.Packet(eio_packet.MESSAGE, encoded))

    def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        """Queue a packet for a client, unless its send queue is full (then it is put out)."""
        if not self.guard.congested(eio_sid):
            super()._send_packet(eio_sid, pkt)

    def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        """Queue an encoded packet (room broadcasts) under the same send-queue bound.

        A websocket session's wire enforces the bound itself; the frame of a packet sent to
        many sessions in a row is built once.
        """
        wire = self.transport.wires.get(eio_sid)
        if wire is not None:
            wire.write(self.transport.frame_of(eio_pkt))
        elif not self.guard.congested(eio_sid):
            super()._send_eio_packet(eio_sid, eio_pkt)

    def shutdown(self) -> None:
        """Stop python-socketio's background tasks, the transport's pinger and the connect
        timeouts."""
        self.transport.stop()
        self._connect_deadlines.stop()
        super().shutdown()
