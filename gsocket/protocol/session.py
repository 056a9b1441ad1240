"""The Engine.IO session: python-engineio's, with a wire once on websocket and one pinger.

gsocket makes the server speak Engine.IO as the specification and Node's reference server do
(and as the protocol's official test suite checks), where python-engineio answers otherwise:
a second concurrent long-poll is refused and ends the session, a missed PONG closes the
session at its deadline, the pending poll of a closing session gets NOOP
(:class:`LeanSocket`); the handshake announces ``pingInterval`` to the millisecond
(:func:`exact_ping_interval`).  Pings, and the close of a client that misses its PONG, come
from one :class:`Pinger` for the server instead of a greenlet per session.  Each of these
hooks was verified against python-engineio 4.11.0 (the lowest gsocket accepts) and 4.15.1,
with python-socketio 5.14.0 and 5.18.1.

The hooks into python-engineio (the session's class, its websocket loop) are in
:mod:`gsocket.protocol.internals.engineio_hooks`.
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from gevent.event import Event

from gsocket.protocol.codec import PING_FRAME
from gsocket.protocol.internals.engineio_hooks import HookedSocket, set_timeout, websocket_of
from gsocket.protocol.parked import park
from gsocket.protocol.writer import Wire

log = logging.getLogger("gsocket.transport")

PACKETS_PER_POLL = 16
"""Packets in one long-polling answer: python-engineio's client (python-socketio's) drops the
session when an answer holds more, as its server refuses such a POST."""
ITEMS_PER_TURN = 256
"""Items (pings, deadlines) a :class:`Timeline` handles before it lets other greenlets run."""


SWEEP_SLICE = 1000
"""Sessions the :class:`Sweep` looks at per wakeup."""


RANDOM_BATCH = 4096
"""Random bytes drawn from the kernel at once for session ids (341 ids)."""


class SessionIds:
    """python-engineio's session and socket ids (12 random bytes and a 3-byte sequence
    number, in URL-safe base64: 20 characters), from random bytes drawn
    :data:`RANDOM_BATCH` at a time.

    python-engineio asks the kernel (``getrandom``) for 12 bytes per id, and each connect
    takes two ids (the Engine.IO session's, the socket's): 1-3 % of a connect storm's CPU.
    The bytes come from the same source (``os.urandom``, which ``secrets`` uses); a forked
    child draws afresh, so that no two processes hand out the same ids.
    """

    def __init__(self) -> None:
        self._random = b""
        self._used = 0
        self._sequence = int.from_bytes(os.urandom(3), "big")
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._random, self._used = b"", 0

    def __call__(self) -> str:
        used = self._used
        if used + 12 > len(self._random):
            self._random, used = os.urandom(RANDOM_BATCH), 0
        self._used = used + 12
        sequence = self._sequence
        self._sequence = (sequence + 1) & 0xFFFFFF
        raw = self._random[used : used + 12] + sequence.to_bytes(3, "big")
        return base64.urlsafe_b64encode(raw).decode("ascii")


class Timeline:
    """Items that fall due one fixed delay after they were added, handled in order by one
    greenlet (in place of a timer or a sleeping greenlet per item).

    With one delay for every item, due times arrive in the order the items were added, so a
    FIFO is a timer wheel.

    :param delay: seconds from :meth:`add` to the call of ``due``.
    :param due: called with each item when it falls due; an exception is logged, and the
        other items are still handled.
    :param name: what the items are, for that log line.
    """

    def __init__(self, delay: float, due: Callable[[Any], None], name: str) -> None:
        self.delay = delay
        self.due = due
        self.name = name
        self.items: collections.deque[tuple[float, Any]] = collections.deque()
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None

    def add(self, item: Any) -> None:
        """Have ``item`` handled one delay from now."""
        self.items.append((time.monotonic() + self.delay, item))
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        elif len(self.items) == 1:
            self._wake.set()

    def stop(self) -> None:
        """Stop handling items (server shutdown)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        self.items.clear()

    def _run(self) -> None:
        items = self.items
        handled = 0
        while True:
            if not items:
                self._wake.clear()
                self._wake.wait()
                continue
            at, item = items[0]
            delay = at - time.monotonic()
            if delay > 0:
                handled = 0
                gevent.sleep(delay)
                continue
            items.popleft()
            try:
                self.due(item)
            except Exception:  # noqa: BLE001 - one item must not stop the others
                log.exception("%s failed", self.name)
            handled += 1
            if handled >= ITEMS_PER_TURN:
                handled = 0
                gevent.sleep(0)


class Pinger:
    """Every session's PING, and the close of a session whose PONG is late, for the server.

    python-engineio gives each session a greenlet that sleeps ``ping_interval`` and sends
    the PING; a client that does not answer is only noticed when something is next sent to
    it, or by its service task, which looks at each session once per ``ping_timeout``: up
    to one ping timeout late.  Engine.IO closes a session ``ping_timeout`` after its PING
    when no PONG came, as Node's reference server does; two :class:`Timeline` do both.

    :param interval: seconds between a PONG and the next PING.
    :param timeout: seconds a client has to answer a PING.
    """

    def __init__(self, interval: float, timeout: float) -> None:
        self.pings = Timeline(interval, self._ping, "a ping")
        self.deadlines = Timeline(timeout, self._pong_due, "a pong deadline")

    def schedule(self, session: Any) -> None:
        """Ping ``session`` one interval from now."""
        self.pings.add(session)

    def expect_pong(self, session: Any) -> None:
        """A PING went to ``session`` (its ``last_ping`` is set): close it unless it answers
        within the timeout."""
        self.deadlines.add((session, session.last_ping))

    def stop(self) -> None:
        """Stop pinging (server shutdown)."""
        self.pings.stop()
        self.deadlines.stop()

    def _ping(self, session: Any) -> None:
        if session.closing or session.closed:
            return
        session.last_ping = time.time()
        queue = session.queue
        if type(queue) is Wire:
            queue.write(PING_FRAME)
            self.expect_pong(session)
        else:
            session.send(eio_packet.Packet(eio_packet.PING))

    @staticmethod
    def _pong_due(entry: tuple[Any, float]) -> None:
        session, pinged = entry
        if session.closing or session.closed or session.last_ping != pinged:
            return  # gone, or answered (a PONG clears last_ping; a later PING renews it)
        server = session.server
        log.info("session %s did not answer its ping within %g s", session.sid, server.ping_timeout)
        # CLOSE first (python-engineio means to send one for a missed PONG too, but its
        # close finds the PONG missed again and drops it), so that a half-open client that
        # still reads learns it is disconnected.
        session.queue.put(eio_packet.Packet(eio_packet.CLOSE))
        session.close(wait=False, abort=True, reason=server.reason.PING_TIMEOUT)


class Sweep:
    """python-engineio's service task, :data:`SWEEP_SLICE` sessions per wakeup.

    The service task looks at every session once per ``ping_timeout``: it drops closed ones
    from ``eio.sockets`` and closes one whose PONG is late.  It sleeps between two sessions
    (``ping_timeout / sessions``), each sleep an :class:`gevent.Event` wait whose timeout is
    an exception thrown into the greenlet: at 10 000 clients 500 wakeups a second, about
    0.03 cores of an idle server, which run.py's per-user phase (long after its connect
    storm) counted as ~6 µs per event.  The late PONG is the :class:`Pinger`'s job already
    (at its deadline, not up to a ping timeout later); what is left is one pass over the
    sessions per ping timeout, 1 000 at a time (one wakeup a second or less at 10 000).
    Measured in ``benchmarks/results/issue16-s7-scale.md``.

    :param eio: the python-engineio server, created with ``monitor_clients=False``.
    """

    def __init__(self, eio: Any) -> None:
        self.eio = eio
        self._greenlet: gevent.Greenlet | None = None
        self._stopped = False

    def start(self) -> None:
        """Start sweeping (at the first session, as python-engineio starts its task); not
        again once stopped (a session adopted during the shutdown)."""
        if self._greenlet is None and not self._stopped:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop sweeping (server shutdown)."""
        self._stopped = True
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        period = self.eio.ping_timeout
        while True:
            sockets = self.eio.sockets
            sessions = list(sockets.values())
            slices = range(0, len(sessions), SWEEP_SLICE)
            pause = period / max(1, len(slices))
            for start in slices:
                for session in sessions[start : start + SWEEP_SLICE]:
                    try:
                        if session.closed:
                            if sockets.get(session.sid) is session:
                                del sockets[session.sid]
                        elif not session.closing:
                            session.check_ping_timeout()
                    except Exception:  # noqa: BLE001 - one session must not stop the sweep
                        log.exception("sweeping session %s failed", session.sid)
                gevent.sleep(pause)
            if not sessions:
                gevent.sleep(period)


class SessionTransport(Protocol):
    """What a :class:`LeanSocket` needs of the server's transport."""

    pinger: Pinger

    def attach(self, session: Any, ws: Any) -> Wire:
        """Switch an upgraded session to a wire."""
        ...


class LeanSocket(HookedSocket):
    """python-engineio's session with a wire once on websocket, and the shared pinger.

    Subclassed per :class:`~gsocket.protocol.transport.Transport` (see its ``adopt``), which
    sets ``transport``.
    """

    transport: SessionTransport
    polling = False
    """A long-poll of this session is waiting for packets."""

    def send(self, pkt: eio_packet.Packet) -> None:
        """Send a packet (python-engineio's check for a missed PONG included); a PING starts
        the wait for its PONG (python-engineio 4.11 sends a session's first PING itself)."""
        if self.check_ping_timeout():
            self.queue.put(pkt)
            if pkt.packet_type == eio_packet.PING:
                self.transport.pinger.expect_pong(self)

    def handle_get_request(self, environ: dict[str, Any], start_response: Any) -> Any:
        """Serve a long-poll or a websocket upgrade; refuse a second concurrent long-poll.

        python-engineio lets two polls wait on one queue, each taking part of what is sent.
        Engine.IO forbids it: Node's reference server ends the session (its pending poll gets
        CLOSE) and refuses the second poll, and the protocol's test suite checks exactly
        that.  Raising python-engineio's error makes it answer 400.

        A second websocket for a session that is upgrading or upgraded is closed, and the
        session goes on: python-engineio 4.11 raised on it (and gsocket's guard then ended
        the session), 4.15.1 refuses it as the reference server does.
        """
        ws = environ.get("wsgi.websocket")
        if ws is None:
            if self.polling:
                log.info("session %s sent a second long-poll while one was pending", self.sid)
                self.close(wait=False, abort=False, reason=self.server.reason.TRANSPORT_ERROR)
                raise eio_exceptions.EngineIOError("concurrent long-poll")
        elif self.upgrading or self.upgraded:
            log.info("session %s opened a second websocket; it is closed", self.sid)
            ws.close()
            return []
        return super().handle_get_request(environ, start_response)

    def poll(self) -> list[eio_packet.Packet]:
        """Wait for packets for a long-polling client; answer with at most
        :data:`PACKETS_PER_POLL`, leaving the rest queued for its next poll (or for the
        websocket, should it upgrade meanwhile).

        A session closed without a CLOSE packet (the client's own CLOSE, or a client put
        out) answers the pending poll with NOOP, as Node's reference server does, instead
        of python-engineio's empty body, which is no Engine.IO payload at all.
        """
        empty = self.server.get_queue_empty_exception()
        queue = self.queue
        self.polling = True
        try:
            first = queue.get(timeout=self.server.ping_interval + self.server.ping_timeout)
        except empty:
            raise eio_exceptions.QueueEmpty() from None
        finally:
            self.polling = False
        queue.task_done()
        if first is None:
            return [eio_packet.Packet(eio_packet.NOOP)]
        packets = [first]
        while len(packets) < PACKETS_PER_POLL:
            try:
                pkt = queue.get(block=False)
            except empty:
                break
            queue.task_done()
            if pkt is None:
                queue.put(None)  # the close comes with the next poll, after these
                break
            packets.append(pkt)
        return packets

    def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        """Close the session; a parked connection (:mod:`gsocket.protocol.parked`) is shut
        once the client had a moment to read the close."""
        super().close(wait=wait, abort=abort, reason=reason)
        parked = self.__dict__.get("parked")
        if parked is not None:
            parked.session_closed()

    def schedule_ping(self) -> None:
        """Have the server's pinger send the next PING (unless one is scheduled already)."""
        if self.last_ping:
            self.last_ping = None
            self.transport.pinger.schedule(self)

    def serve_websocket(self, ws: Any) -> list[Any]:
        """Run the websocket transport: the upgrade handshake, then read until it ends.

        Sending goes through the session's :class:`Wire`; this greenlet only reads.
        """
        server = self.server
        # A silent client is closed by its PONG deadline (CLOSE, then the close frame), one
        # interval plus one timeout after its last word; python-engineio's socket timeout of
        # that same length would race it and drop the connection without a word.  The
        # timeout stays, one ping timeout later, for a peer that vanished.
        set_timeout(ws, server.ping_interval + 2 * server.ping_timeout)

        receive = ws.wait  # frames over max_message_bytes never get here (the client guard)

        if self.connected:
            # An upgrade from polling: packets sent meanwhile wait in the polling queue.
            self.upgrading = True
            probe = eio_packet.Packet(encoded_packet=receive())
            if probe.packet_type != eio_packet.PING or probe.data != "probe":
                self.upgrading = False
                return []
            ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
            self.queue.put(eio_packet.Packet(eio_packet.NOOP))  # ends the pending poll
            upgrade = eio_packet.Packet(encoded_packet=receive())
            if upgrade.packet_type != eio_packet.UPGRADE:
                self.upgraded = False
                self.upgrading = False
                return []
            self.upgraded = True
            self.upgrading = False
        else:
            self.connected = True
            self.upgraded = True

        wire = self.transport.attach(self, ws)
        if park(self, websocket_of(ws), wire) is not None:
            return []  # read from now on when the socket is readable, without this greenlet
        try:
            while True:
                try:
                    data = receive()
                except Exception as e:  # noqa: BLE001 - the connection is over either way
                    if not self.closed:
                        log.debug("websocket of session %s ended: %s", self.sid, e)
                    break
                if data is None:
                    break
                pkt = eio_packet.Packet(encoded_packet=data)
                data = None  # not kept alive while waiting for the next frame
                try:
                    self.receive(pkt)
                except eio_exceptions.UnknownPacketError:
                    pass
                except eio_exceptions.SocketIsClosedError:
                    break
                except Exception:
                    log.exception("packet from session %s could not be handled", self.sid)
                    break
                pkt = None
        finally:
            wire.finish()
        self.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
        return []


def exact_ping_interval(eio: Any, session: Any) -> None:
    """Write the OPEN packet's ``pingInterval`` in milliseconds, not whole seconds.

    python-engineio (4.11.0 to 4.15.1 at least) truncates the interval to whole seconds
    before it multiplies by 1000, so 0.3 s is announced as 0 and 2.5 s as 2000 ms: a
    client then expects pings on a schedule the server does not keep (``pingTimeout`` is
    truncated after the multiplication: rounded here too, so 1.001 s is 1001 ms).  The
    OPEN packet is still the first in the session's queue when the Engine.IO connect
    event runs (the only packet python-engineio sends before it); the queue's public
    ``peek`` reaches it.
    """
    try:
        first = session.queue.peek(block=False)
    except eio.get_queue_empty_exception():
        first = None
    if first is None or first.packet_type != eio_packet.OPEN or type(first.data) is not dict:
        log.debug("session %s has no OPEN packet queued at connect", session.sid)
        return
    grace = getattr(eio, "ping_interval_grace_period", 0)
    first.data["pingInterval"] = round((eio.ping_interval + grace) * 1000)
    first.data["pingTimeout"] = round(eio.ping_timeout * 1000)
