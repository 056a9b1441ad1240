"""Writing to websocket clients without a writer greenlet, a queue or a syscall per packet.

python-engineio gives every websocket session a queue and a writer greenlet: each packet for a
client is a ``queue.put``, a greenlet switch, an encode, a frame header and a ``sendall`` of its
own, and between pings every session holds one more sleeping greenlet.  A broadcast to
thousands of clients pays all of that per recipient, and every connection carries the
greenlets' saved stacks.

Once a session is on websocket, :class:`Transport` replaces its queue with a :class:`Wire`:

- a packet becomes websocket frame bytes (a broadcast builds them once for every recipient),
  appended to the wire's pending list;
- pending frames are written by one event-loop callback per loop turn, every frame of a
  connection in one non-blocking ``send``: a burst of events costs one syscall per client;
- only a client whose kernel buffer is full gets a greenlet, which waits until the socket is
  writable again; frames written meanwhile queue behind it, so the order never changes;
- a client with ``limits.send_queue`` frames pending is not reading and is put out.

Every packet of an upgraded session goes through its wire (CONNECT, acks, pings, broadcasts,
CLOSE), so frames reach the client in the order ``Socket.send`` was called, as before.  Polling
sessions keep python-engineio's queue.  Pings, and the close of a client that misses its
PONG, come from one :class:`Pinger` for the server.

It also makes the server speak Engine.IO as the specification and Node's reference server do
(and as the protocol's official test suite checks), where python-engineio answers otherwise:
a second concurrent long-poll is refused and ends the session, a missed PONG closes the
session at its deadline, the pending poll of a closing session gets NOOP
(:class:`LeanSocket`); the handshake announces ``pingInterval`` to the millisecond
(:meth:`Transport.adopt`); a request without ``transport`` or with another method than
GET/POST/OPTIONS is answered 400 (:func:`request_refusal`), an accepted POST ``ok``
(:func:`accepted_post`), and a request that asked to close the connection is told
``Connection: close`` (:class:`LeanWebSocketHandler`).  Each of these hooks was verified
against python-engineio 4.11.0 (the lowest gsocket accepts) and 4.15.1, with
python-socketio 5.14.0 and 5.18.1.

The hook is :meth:`Transport.adopt`: python-engineio creates the session object itself, and
gsocket's server switches its class to :class:`LeanSocket` on the Engine.IO connect event,
before the session's websocket loop starts.

:class:`LeanWebSocketHandler` serves the connections with a smaller read buffer than gevent's
default (the buffer lives as long as the connection).
"""

from __future__ import annotations

import collections
import inspect
import json
import logging
import socket as pysocket
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import gevent
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import socket as eio_socket
from gevent.event import Event

from gsocket.protocol.headers import read_headers
from gsocket.protocol.limits import ScreenedWebSocketHandler
from gsocket.protocol.parked import park

log = logging.getLogger("gsocket.transport")

TEXT = 0x81
BINARY = 0x82
CLOSE_FRAME = b"\x88\x00"
"""A close frame without a status code: what gevent-websocket sends when python-engineio
closes a websocket, so clients see the same close as before."""

OPEN, CLOSING, DONE = 0, 1, 2

FLUSH_STEP = 2000
"""Connections a greenlet's flush writes before it lets the others run: the bridge's batch of
broadcasts to a room of 20 000 took over a second to hand to the kernel, and every socket
(pings, connects, handlers) stalled meanwhile."""
PACKETS_PER_POLL = 16
"""Packets in one long-polling answer: python-engineio's client (python-socketio's) drops the
session when an answer holds more, as its server refuses such a POST."""
ITEMS_PER_TURN = 256
"""Items (pings, deadlines) a :class:`Timeline` handles before it lets other greenlets run."""

READ_BUFFER = 1024
"""Bytes of each connection's read buffer (gevent's default is 8 KiB, held for the whole life
of a websocket): what clients send over a websocket is small, and a desk's request headers
take two reads instead of one."""


def next_loop_turn() -> None:
    """Let the event loop poll every socket and run its timers before going on.

    ``gevent.sleep(0)`` only lets the greenlets that are ready run, and gevent looks at the
    clock every 50 of them: the bridge yielding that way between 50 ms batches (flat-out
    fan-out) kept the loop from reading any other socket for seconds.  A positive sleep
    resumes after the loop's next poll.
    """
    gevent.sleep(0.000001)


def frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """Return an unmasked, unfragmented websocket frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((opcode, n)) + payload
    if n < 0x10000:
        return bytes((opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((opcode, 127)) + n.to_bytes(8, "big") + payload


_encode_open = json.JSONEncoder(separators=(",", ":")).encode
"""python-engineio's encoding of the OPEN packet's data, with an encoder built once
(``json.dumps`` with ``separators`` builds one per call: 2 % of a connect's CPU)."""


def packet_frame(pkt: eio_packet.Packet) -> bytes:
    """The websocket frame of an Engine.IO packet: text, or binary for a binary MESSAGE."""
    if pkt.packet_type == eio_packet.OPEN and type(pkt.data) is dict:
        return frame(("0" + _encode_open(pkt.data)).encode("utf-8"), TEXT)
    encoded = pkt.encode()
    if isinstance(encoded, str):
        return frame(encoded.encode("utf-8"), TEXT)
    return frame(bytes(encoded), BINARY)


PING_FRAME = packet_frame(eio_packet.Packet(eio_packet.PING))


ENGINEIO_METHODS = frozenset({"GET", "POST", "OPTIONS"})
"""HTTP methods of Engine.IO requests (OPTIONS for CORS preflights)."""
POST_ACCEPTED = b"ok"
"""The body of the answer to an accepted polling POST, as Node's reference server writes it."""


def request_refusal(environ: dict[str, Any]) -> str | None:
    """Why an Engine.IO request is answered 400 before python-engineio sees it, or ``None``.

    python-engineio answers other methods (PUT, DELETE ...) 405 and takes a request without
    ``transport`` for a polling one, opening a session for a handshake that names no
    transport.  Engine.IO, Node's reference server and the protocol's test suite refuse
    both with 400.
    """
    method = environ.get("REQUEST_METHOD")
    if method not in ENGINEIO_METHODS:
        return f"Bad request method {method}"
    if method != "OPTIONS" and "transport" not in parse_qs(environ.get("QUERY_STRING", "")):
        return "Transport unknown"
    return None


def accepted_post(environ: dict[str, Any], answer: Any) -> Any:
    """The answer to a request as Engine.IO words it: an accepted polling POST is ``ok``
    (python-engineio 4.11.0 to 4.15.1 write ``OK``; its clients accept either, the protocol's
    test suite only ``ok``).  Its answer has no Content-Length, so the body can change."""
    if environ.get("REQUEST_METHOD") == "POST" and answer == [b"OK"]:
        return [POST_ACCEPTED]
    return answer


class Wire:
    """The sending side of one websocket session, in place of its python-engineio queue.

    It answers the queue calls python-engineio and gsocket make on a session (``put``,
    ``qsize``, ``join``); ``put(None)``, python-engineio's "close the transport", sends the
    close frame after everything pending.

    :param transport: the server's transport.
    :param sid: Engine.IO session id.
    :param gsock: the connection's gevent socket.
    :param ws: gevent-websocket's object for the connection (its ``closed`` flag is kept
        true once this wire sent the close frame, so that no second one follows).
    """

    __slots__ = ("transport", "sid", "gsock", "ws", "out", "rest", "drainer", "state", "_idle")

    def __init__(self, transport: Transport, sid: str, gsock: Any, ws: Any) -> None:
        self.transport = transport
        self.sid = sid
        self.gsock = gsock
        self.ws = ws
        self.out: list[bytes] = []
        self.rest: memoryview | None = None
        self.drainer: gevent.Greenlet | None = None
        self.state = OPEN
        self._idle: Event | None = None

    # ---- the queue interface ---------------------------------------------------------

    def put(self, pkt: eio_packet.Packet | None, *args: Any, **kwargs: Any) -> None:
        """Send an Engine.IO packet; ``None`` closes the websocket after what is pending."""
        if pkt is None:
            self.close()
        else:
            self.write(packet_frame(pkt))

    def qsize(self) -> int:
        """Frames not yet handed to the kernel (a partly written batch counts as one)."""
        return len(self.out) + (self.rest is not None)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until everything written so far is handed to the kernel, or the wire ended.

        :returns: ``False`` when ``timeout`` ran out first.
        """
        if self.settled():
            return True
        if self._idle is None or self._idle.is_set():
            self._idle = Event()  # set again when this batch is out (or the wire ends)
        return bool(self._idle.wait(timeout))

    # ---- writing ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue one frame; it is sent at the end of the current event-loop turn."""
        if self.state:
            return
        out = self.out
        if not out:
            self.transport.mark(self)
        out.append(data)
        if len(out) >= self.transport.limit:
            self.transport.congested(self)

    def close(self, close_frame: bytes = CLOSE_FRAME) -> None:
        """Send the close frame after everything pending; nothing is written after it."""
        if self.state:
            return
        self.write(close_frame)
        if self.state == OPEN:
            self.state = CLOSING

    def settled(self) -> bool:
        """Nothing is pending (or the wire ended)."""
        return self.state == DONE or (not self.out and self.rest is None)

    def flush(self) -> None:
        """Hand pending frames to the kernel without waiting; a full buffer starts a drainer."""
        out = self.out
        if not out or self.drainer is not None or self.state == DONE:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        try:
            sent = self.gsock._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self.lost(e)
            return
        if sent < len(data):
            self.rest = memoryview(data)[sent:]
            self.drainer = gevent.spawn(self._drain)
        else:
            self._settle()

    def _drain(self) -> None:
        """Write what the kernel did not take, waiting for the socket (bounded by its timeout)."""
        try:
            while self.rest is not None:
                self.gsock.sendall(self.rest)
                out = self.out
                if out:
                    self.rest = memoryview(b"".join(out))
                    out.clear()
                else:
                    self.rest = None
        except OSError as e:
            self.lost(e)
        finally:
            self.drainer = None
        self._settle()

    def _settle(self) -> None:
        if self.out or self.rest is not None:
            return
        if self.state == CLOSING:
            self.state = DONE
            self.ws.closed = True
            self.transport.forget(self)
            self._release()
        if self._idle is not None:
            self._idle.set()

    def lost(self, error: BaseException | None = None) -> None:
        """The connection cannot be written any more: drop what is pending."""
        if self.state == DONE:
            return
        gsock = self.gsock
        self.state = DONE
        self.out.clear()
        self.rest = None
        self.transport.forget(self)
        if self.drainer is not None and self.drainer is not gevent.getcurrent():
            self.drainer.kill(block=False)
        self._release()
        if self._idle is not None:
            self._idle.set()
        if error is not None:
            log.debug("write to websocket %s failed: %s", self.sid, error)
            self.transport.broken(self.sid, gsock)

    def _release(self) -> None:
        """Let go of the connection's objects: the session may outlive it (a pending ping)."""
        self.gsock = None
        self.ws = None

    def finish(self) -> None:
        """The session's read loop ended: send what can go without waiting, then stop."""
        if self.state == OPEN and not self.ws.closed:
            self.close()
        if self.drainer is None:
            self.flush()
        self.lost()


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


class LeanSocket(eio_socket.Socket):
    """python-engineio's session with a wire once on websocket, and the shared pinger.

    Subclassed per :class:`Transport` (see :meth:`Transport.adopt`), which sets ``transport``.
    """

    transport: Transport
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

    def _websocket_handler(self, ws: Any) -> list[Any]:
        """Run the websocket transport: the upgrade handshake, then read until it ends.

        Sending goes through the session's :class:`Wire`; this greenlet only reads.
        """
        server = self.server
        max_size = server.max_http_buffer_size
        # A silent client is closed by its PONG deadline (CLOSE, then the close frame), one
        # interval plus one timeout after its last word; python-engineio's socket timeout of
        # that same length would race it and drop the connection without a word.  The
        # timeout stays, one ping timeout later, for a peer that vanished.
        _set_timeout(ws, server.ping_interval + 2 * server.ping_timeout)

        def receive() -> Any:
            data = ws.wait()
            if data and len(data) > max_size:
                raise ValueError("packet is too large")
            return data

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
        if park(self, _inner_websocket(ws), wire) is not None:
            return []  # read from now on by the event loop, without this greenlet
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


def _set_timeout(ws: Any, seconds: float) -> None:
    """Bound reads and writes of the connection, as python-engineio does (when it can)."""
    target = getattr(ws, "_sock", None)
    if hasattr(target, "settimeout"):
        target.settimeout(seconds)
        return
    handler = getattr(_inner_websocket(ws), "handler", None)
    sock = getattr(handler, "socket", None)
    if sock is not None:
        sock.settimeout(seconds)


def _inner_websocket(ws: Any) -> Any:
    """gevent-websocket's object behind python-engineio's wrapper and gsocket's guard."""
    request_ws = getattr(ws, "_sock", ws)
    return getattr(request_ws, "_ws", request_ws)


class Transport:
    """The server's websocket writer: every session's :class:`Wire`, the flush, the pinger.

    :param eio: the python-engineio server.
    :param limit: frames pending for one client before it is put out (``limits.send_queue``).
    :param kick: ``kick(eio_sid, why)`` puts a client out without a goodbye (gsocket's client
        guard); called outside of any broadcast loop.
    """

    def __init__(self, eio: Any, limit: int, kick: Callable[[str, str], None]) -> None:
        self.eio = eio
        self.limit = max(1, limit)
        self.kick = kick
        self.wires: dict[str, Wire] = {}
        self.pinger = Pinger(eio.ping_interval, eio.ping_timeout)
        self.socket_class = type("LeanSocket", (LeanSocket,), {"transport": self})
        self._dirty: list[Wire] = []
        self._scheduled = False
        self._loop = gevent.get_hub().loop
        self._last_packet: eio_packet.Packet | None = None
        self._last_frame = b""

    def adopt(self, session: Any) -> None:
        """Make a new python-engineio session use the wire and the pinger once upgraded,
        and give its handshake the ping interval in milliseconds."""
        if type(session) is eio_socket.Socket:
            session.__class__ = self.socket_class
        self._exact_ping_interval(session)

    def _exact_ping_interval(self, session: Any) -> None:
        """Write the OPEN packet's ``pingInterval`` in milliseconds, not whole seconds.

        python-engineio (4.11.0 to 4.15.1 at least) truncates the interval to whole seconds
        before it multiplies by 1000, so 0.3 s is announced as 0 and 2.5 s as 2000 ms: a
        client then expects pings on a schedule the server does not keep (``pingTimeout`` is
        truncated after the multiplication: rounded here too, so 1.001 s is 1001 ms).  The
        OPEN packet is still the first in the session's queue when the Engine.IO connect
        event runs (the only packet python-engineio sends before it); the queue's public
        ``peek`` reaches it.
        """
        eio = self.eio
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

    def attach(self, session: Any, ws: Any) -> Wire:
        """Switch an upgraded session to a wire; packets queued before go first, in order."""
        inner = _inner_websocket(ws)
        wire = Wire(self, session.sid, inner.handler.socket, inner)
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
        session.queue = wire
        if wire.state != DONE:
            self.wires[session.sid] = wire
        return wire

    def frame_of(self, pkt: eio_packet.Packet) -> bytes:
        """The frame of ``pkt``; python-socketio sends one packet object to every member of a
        room in a row, so the last one is remembered."""
        if pkt is not self._last_packet:
            self._last_frame = packet_frame(pkt)
            self._last_packet = pkt
        return self._last_frame

    def forget(self, wire: Wire) -> None:
        """Drop a wire that ended from the index broadcasts use."""
        if self.wires.get(wire.sid) is wire:
            del self.wires[wire.sid]

    def mark(self, wire: Wire) -> None:
        """Have ``wire`` flushed at the end of this event-loop turn."""
        self._dirty.append(wire)
        if not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self.flush)

    def flush(self) -> None:
        """Hand every pending frame to the kernel now (one ``send`` per connection)."""
        self._flush_wires(self._take_dirty())

    def flush_in_steps(self) -> None:
        """:meth:`flush` from a greenlet (never a loop callback), letting the others run after
        every :data:`FLUSH_STEP` connections.  A wire written to meanwhile keeps its frames
        in order: it is either still in this flush's list or marked for the next one."""
        dirty = self._take_dirty()
        for start in range(0, len(dirty), FLUSH_STEP):
            if start:
                next_loop_turn()
            self._flush_wires(dirty[start : start + FLUSH_STEP])

    def _take_dirty(self) -> list[Wire]:
        """The wires marked since the last flush; the next write marks its wire anew."""
        self._scheduled = False
        dirty = self._dirty
        if dirty:
            self._dirty = []
        return dirty

    @staticmethod
    def _flush_wires(wires: list[Wire]) -> None:
        for wire in wires:
            try:
                wire.flush()
            except Exception:  # noqa: BLE001 - one connection must not stop the others
                log.exception("flushing websocket %s failed", wire.sid)
                wire.lost()

    def broadcast(self, eio_sids: Iterable[str], data: bytes) -> list[str]:
        """Write one frame to many sessions; return the sessions without a wire (polling
        ones, or gone), for the caller to send to through python-engineio.

        Writing never changes room membership (a client put out is put out later), so
        ``eio_sids`` may be a live view of a room.
        """
        wires = self.wires
        others: list[str] = []
        for eio_sid in eio_sids:
            wire = wires.get(eio_sid)
            if wire is None:
                others.append(eio_sid)
            else:
                wire.write(data)
        return others

    def congested(self, wire: Wire) -> None:
        """A client stopped reading: stop writing to it and put it out (outside this call)."""
        wire.lost()
        gevent.spawn(
            self.kick,
            wire.sid,
            f"{self.limit} packets queued: the client does not read (send_queue)",
        )

    def broken(self, sid: str, gsock: Any) -> None:
        """A write to session ``sid`` failed (peer gone, or no progress within the socket
        timeout): end the session and its connection."""
        gevent.spawn(self._end, sid, gsock)

    def _end(self, sid: str, gsock: Any) -> None:
        session = self.eio.sockets.get(sid)
        if session is not None and not session.closed:
            session.close(wait=False, abort=True, reason=self.eio.reason.TRANSPORT_ERROR)
        try:
            gsock.shutdown(pysocket.SHUT_RDWR)
        except OSError:
            pass

    def stop(self) -> None:
        """Stop the pinger (server shutdown)."""
        self.pinger.stop()


class LeanWebSocketHandler(ScreenedWebSocketHandler):
    """gsocket's request handler (gevent-websocket's, handshake refusals answered cleanly),
    reading through a :data:`READ_BUFFER`-byte buffer instead of gevent's 8 KiB one, and
    reading request headers with :func:`gsocket.protocol.headers.read_headers`, and sending without
    Nagle's delay (as Node's ``ws`` does): a frame written while the client still holds back
    its acknowledgement of the previous one would otherwise wait up to 40 ms for it."""

    MessageClass = staticmethod(read_headers)

    def __init__(self, sock: Any, address: Any, server: Any, *args: Any, **kwargs: Any) -> None:
        if sock.family in _TCP_FAMILIES:
            try:
                sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
            except OSError:
                pass  # already reset by the peer: the handler finds out when it reads
        if _TAKES_RFILE and not args and "rfile" not in kwargs:
            kwargs["rfile"] = sock.makefile("rb", READ_BUFFER)
            super().__init__(sock, address, server, *args, **kwargs)
            return
        super().__init__(sock, address, server, *args, **kwargs)
        default = self.rfile
        self.rfile = sock.makefile("rb", READ_BUFFER)
        default.close()  # only releases the socket reference it counted; nothing was read

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        """Start the answer; one to an HTTP/1.1 request that asked to close the connection
        says ``Connection: close`` (RFC 9112 section 9.6), which gevent leaves out.

        Without it, a client that keeps connections alive by default (Node 19 and newer,
        whatever the request said) reuses the connection gevent closes after the answer,
        and its next request fails with "socket hang up".
        """
        if (
            self.close_connection
            and self.request_version == "HTTP/1.1"
            and not any(name.lower() == "connection" for name, _ in headers)
        ):
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)


_TCP_FAMILIES = (pysocket.AF_INET, pysocket.AF_INET6)
_TAKES_RFILE = "rfile" in inspect.signature(ScreenedWebSocketHandler.__init__).parameters
"""gevent's handler takes its read file as an argument (every version gsocket supports; it is
marked deprecated, so a version without it gets the file replaced after construction)."""
