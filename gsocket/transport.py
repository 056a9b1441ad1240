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
sessions keep python-engineio's queue.  Pings come from one :class:`Pinger` for the server.

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

import gevent
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import socket as eio_socket
from gevent.event import Event

from gsocket.headers import read_headers
from gsocket.limits import ScreenedWebSocketHandler

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
PINGS_PER_TURN = 256
"""Pings the scheduler sends before it lets other greenlets run."""

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

    def close(self) -> None:
        """Send the close frame after everything pending; nothing is written after it."""
        if self.state:
            return
        self.write(CLOSE_FRAME)
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


class Pinger:
    """One greenlet that sends every session's PING, in place of one greenlet per session.

    python-engineio schedules a ping ``ping_interval`` seconds after each PONG; with one
    interval for all sessions, due times arrive in order, so a FIFO is a timer wheel.

    :param interval: seconds between a PONG and the next PING.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.due: collections.deque[tuple[float, Any]] = collections.deque()
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None

    def schedule(self, session: Any) -> None:
        """Ping ``session`` one interval from now."""
        self.due.append((time.monotonic() + self.interval, session))
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        elif len(self.due) == 1:
            self._wake.set()

    def stop(self) -> None:
        """Stop pinging (server shutdown)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        self.due.clear()

    def _run(self) -> None:
        due = self.due
        sent = 0
        while True:
            if not due:
                self._wake.clear()
                self._wake.wait()
                continue
            at, session = due[0]
            delay = at - time.monotonic()
            if delay > 0:
                sent = 0
                gevent.sleep(delay)
                continue
            due.popleft()
            if session.closing or session.closed:
                continue
            session.last_ping = time.time()
            try:
                queue = session.queue
                if type(queue) is Wire:
                    queue.write(PING_FRAME)
                else:
                    session.send(eio_packet.Packet(eio_packet.PING))
            except Exception:  # noqa: BLE001 - one session must not stop every ping
                log.exception("could not ping session %s", session.sid)
            sent += 1
            if sent >= PINGS_PER_TURN:
                sent = 0
                gevent.sleep(0)


class LeanSocket(eio_socket.Socket):
    """python-engineio's session with a wire once on websocket, and the shared pinger.

    Subclassed per :class:`Transport` (see :meth:`Transport.adopt`), which sets ``transport``.
    """

    transport: Transport

    def send(self, pkt: eio_packet.Packet) -> None:
        """Send a packet (python-engineio's check for a missed PONG included)."""
        if self.check_ping_timeout():
            self.queue.put(pkt)

    def poll(self) -> list[eio_packet.Packet]:
        """Wait for packets for a long-polling client; answer with at most
        :data:`PACKETS_PER_POLL`, leaving the rest queued for its next poll (or for the
        websocket, should it upgrade meanwhile)."""
        empty = self.server.get_queue_empty_exception()
        queue = self.queue
        try:
            first = queue.get(timeout=self.server.ping_interval + self.server.ping_timeout)
        except empty:
            raise eio_exceptions.QueueEmpty() from None
        queue.task_done()
        if first is None:
            return []
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
        _set_timeout(ws, server.ping_interval + server.ping_timeout)

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
        self.pinger = Pinger(eio.ping_interval)
        self.socket_class = type("LeanSocket", (LeanSocket,), {"transport": self})
        self._dirty: list[Wire] = []
        self._scheduled = False
        self._loop = gevent.get_hub().loop
        self._last_packet: eio_packet.Packet | None = None
        self._last_frame = b""

    def adopt(self, session: Any) -> None:
        """Make a new python-engineio session use the wire and the pinger once upgraded."""
        if type(session) is eio_socket.Socket:
            session.__class__ = self.socket_class

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
    reading request headers with :func:`gsocket.headers.read_headers`, and sending without
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


_TCP_FAMILIES = (pysocket.AF_INET, pysocket.AF_INET6)
_TAKES_RFILE = "rfile" in inspect.signature(ScreenedWebSocketHandler.__init__).parameters
"""gevent's handler takes its read file as an argument (every version gsocket supports; it is
marked deprecated, so a version without it gets the file replaced after construction)."""
