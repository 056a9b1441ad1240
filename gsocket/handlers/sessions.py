"""The bench's sessions: connect -> authenticate -> session -> dispatch, on top of the protocol.

The protocol :class:`~gsocket.protocol.server.Server` hands each CONNECT, EVENT and the end of
each socket to :class:`Sessions`, which applies the bench's rules:

- CONNECT runs the contract's checks (:mod:`gsocket.contract.auth`) for any ``/<site>``
  namespace, registers the socket (under its old sid when connection state recovery claims
  it), runs the connect hooks (the default rooms) and acknowledges;
- EVENT goes to the :class:`~gsocket.handlers.dispatch.Dispatcher` in a greenlet of its own;
- DISCONNECT lets handlers see the socket one last time.

It also holds what handlers and the cluster ask of the connected sockets (:meth:`socket_of`,
:meth:`participants`, :meth:`user_of`).

Data path: connect -> authenticate -> session (:class:`~gsocket.handlers.socket.Socket`) ->
dispatch -> handler -> emit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import gevent

from gsocket.cluster.presence import Presence
from gsocket.cluster.recovery import Claim, Recovery
from gsocket.contract.auth import Authenticator, Refused
from gsocket.contract.webclient import WebClient
from gsocket.handlers.dispatch import Dispatcher
from gsocket.handlers.socket import Socket
from gsocket.metrics import Metrics
from gsocket.protocol.server import Server

log = logging.getLogger("gsocket.server")


class Sessions:
    """Every connected socket of one server, and the bench's rules for them.

    :param server: the protocol server (it calls :meth:`connect`, :meth:`event` and
        :meth:`disconnect`; set as its ``sessions`` by the application factory).
    :param authenticator: runs the connection checks.
    :param dispatcher: runs handlers for client events.
    :param web: client of the web process (used by :meth:`Socket.has_permission`).
    :param metrics: where connects, refusals and sockets are counted.
    :param connect_hooks: run for each new socket before its CONNECT is acknowledged
        (joining the default rooms), so that nothing published after the client learns it is
        connected misses it.
    """

    def __init__(
        self,
        server: Server,
        authenticator: Authenticator,
        dispatcher: Dispatcher,
        web: WebClient,
        metrics: Metrics,
        connect_hooks: Iterable[Callable[[Socket], None]] = (),
    ) -> None:
        self.server = server
        self.authenticator = authenticator
        self.dispatcher = dispatcher
        self.web = web
        self.metrics = metrics
        self.connect_hooks = list(connect_hooks)
        self._sockets: dict[str, Socket] = {}
        self.presence: Presence | None = None
        """The cluster's shared presence (:mod:`gsocket.cluster.presence`), when this process
        is one of several; set by the application factory."""
        self.recovery: Recovery | None = None
        """Connection state recovery (:mod:`gsocket.cluster.recovery`), when
        ``gsocket.recovery_seconds`` turns it on; set by the application factory."""
        # What a Socket asks of its server, bound once (no extra call per emit).
        self.emit = server.emit
        self.rooms = server.rooms
        self.enter_room = server.enter_room
        self.leave_room = server.leave_room

    # ---- what handlers and the cluster ask ----------------------------------------------

    def socket_of(self, sid: str) -> Socket | None:
        """Return the connected socket with ``sid``, or ``None``."""
        return self._sockets.get(sid)

    def sockets(self) -> list[Socket]:
        """Return every connected socket of this process."""
        return list(self._sockets.values())

    def participants(self, namespace: str, room: str) -> list[str]:
        """Return the sids of the sockets in ``room`` of ``namespace``: this process's, then
        the other cluster processes' ones."""
        local = [sid for sid, _ in self.server.manager.get_participants(namespace, room)]
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

    # ---- what the protocol server hands over ---------------------------------------------

    def connect(self, eio_sid: str, namespace: str, environ: dict[str, Any], data: Any) -> None:
        """Check a CONNECT to ``namespace``; register, hook and acknowledge it, or refuse it."""
        server = self.server
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
            server.refuse(eio_sid, namespace, refusal.message)
            return
        claim = None
        if self.recovery is not None and isinstance(data, dict) and "pid" in data:
            claim = self.recovery.claim(
                data["pid"], data.get("offset"), namespace, identity.user, identity.credential
            )
        missed = self._missed(claim, namespace)
        if claim is None or missed is None:
            claim = None
            sid = server.register(eio_sid, namespace)
        else:
            sid = server.register(eio_sid, namespace, claim.sid)
        if sid is None:
            return
        socket = Socket(self, sid, identity)
        self._sockets[sid] = socket
        if self.presence is not None:
            self.presence.connected(namespace, sid, identity.user)
        for hook in self.connect_hooks:
            hook(socket)
        pid = None
        if self.recovery is not None:
            for room in claim.rooms if claim is not None else ():
                server.enter_room(sid, room, namespace=namespace)
            pid = self.recovery.connected(
                namespace, sid, identity.user, identity.credential, claim and claim.pid
            )
        server.accept(eio_sid, namespace, sid, pid)
        for body in missed or ():
            server.send_event(eio_sid, namespace, body)
        if claim is not None:
            log.info("recovered session %s with %d missed events", sid, len(missed or ()))
        self.metrics.connects.inc(identity.site)
        self.metrics.sockets.inc(identity.site)
        log.debug("connect site=%s user=%s sid=%s peer=%s", identity.site, identity.user, sid, peer)
        if self.dispatcher.registry.handlers_for("connect"):
            server.start_background_task(self.dispatcher.dispatch, socket, "connect", ())

    def _missed(self, claim: Claim | None, namespace: str) -> list[str] | None:
        """The packets a recovered session missed; ``None`` when it cannot be recovered here
        (its sid is still a live socket of this process, or its events are not all known)."""
        if claim is None or self.recovery is None or claim.sid in self._sockets:
            return None
        return self.recovery.missed(claim, namespace)

    def disconnect(self, sid: str, namespace: str, reason: str | None) -> None:
        """Forget a socket that ended, then run ``disconnect`` handlers."""
        if self.presence is not None:
            self.presence.gone(namespace, sid)
        closed_by_client = self.server.reason.CLIENT_DISCONNECT
        if self.recovery is not None:
            self.recovery.disconnected(sid, reason not in (None, closed_by_client))
        socket = self._sockets.pop(sid, None)
        if socket is None:
            return
        reason = reason or closed_by_client
        self.metrics.sockets.dec(socket.site)
        self.metrics.disconnects.inc(reason)
        log.debug(
            "disconnect site=%s user=%s sid=%s reason=%s", socket.site, socket.user, sid, reason
        )
        self.server.start_background_task(self.dispatcher.dispatch, socket, "disconnect", ())

    def event(self, eio_sid: str, sid: str, namespace: str, id: int | None, data: Any) -> None:
        """Dispatch an EVENT in a greenlet of its own, acknowledged if the client asked."""
        socket = self._sockets.get(sid)
        if socket is None:
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
            self.server.ack(eio_sid, namespace, id, ack)
