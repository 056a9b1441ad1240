"""The server's transport: python-engineio's sessions, written to through gsocket's writer.

The concepts live in their own modules: :mod:`~gsocket.protocol.codec` (what goes on the
wire), :mod:`~gsocket.protocol.writer` (websocket wires, the flush, the send-queue bound),
:mod:`~gsocket.protocol.session` (the Engine.IO session as the specification has it, the
pinger) and :mod:`~gsocket.protocol.http` (Engine.IO over HTTP, the request handler).
:class:`Transport` joins them for one server: it adopts each new session and switches it to a
wire once it is on websocket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engineio import packet as eio_packet

from gsocket.protocol.codec import packet_frame
from gsocket.protocol.internals.engineio_hooks import adopt, replace_queue, websocket_of
from gsocket.protocol.internals.gevent_hooks import take_upgrade_answer
from gsocket.protocol.session import LeanSocket, Pinger, Sweep, exact_ping_interval
from gsocket.protocol.writer import DONE, Wire, Writer


class Transport(Writer):
    """The server's websocket writer (:class:`~gsocket.protocol.writer.Writer`), its
    sessions' class, the server's pinger and its sweep of the sessions.

    :param eio: the python-engineio server.
    :param limit: frames pending for one client before it is put out (``limits.send_queue``).
    :param kick: ``kick(eio_sid, why)`` puts a client out without a goodbye (gsocket's client
        guard); called outside of any broadcast loop.
    """

    def __init__(self, eio: Any, limit: int, kick: Callable[[str, str], None]) -> None:
        super().__init__(eio, limit, kick)
        self.pinger = Pinger(eio.ping_interval, eio.ping_timeout)
        self.sweep = Sweep(eio)
        self.socket_class = type("LeanSocket", (LeanSocket,), {"transport": self})

    def adopt(self, session: Any) -> None:
        """Make a new python-engineio session use the wire and the pinger once upgraded,
        and give its handshake the ping interval in milliseconds."""
        adopt(session, self.socket_class)
        exact_ping_interval(self.eio, session)
        self.sweep.start()

    def attach(self, session: Any, ws: Any) -> Wire:
        """Switch an upgraded session to a wire; packets queued before go first, in order.

        The upgrade's ``101`` answer, when the request handler held it back
        (:attr:`gsocket.protocol.http.LeanWebSocketHandler.defer_upgrade_answer`), goes
        first of all: a websocket-only client gets it and the OPEN packet in one ``send``.
        """
        inner = websocket_of(ws)
        wire = Wire(self, session.sid, inner.handler.socket, inner)
        answer = take_upgrade_answer(inner)
        if answer:
            wire.write(answer)
        queue = session.queue
        ended_poll = False
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                wire.close()
                break
            if pkt.packet_type == eio_packet.NOOP:
                ended_poll = True
            else:
                wire.write(packet_frame(pkt))
        if ended_poll:
            # Still meant for a poll that may be waiting on the old queue.
            queue.put(eio_packet.Packet(eio_packet.NOOP))
        replace_queue(session, wire)
        if wire.state != DONE:
            self.wires[session.sid] = wire
        return wire

    def stop(self) -> None:
        """Stop the pinger and the sweep (server shutdown)."""
        self.pinger.stop()
        self.sweep.stop()
