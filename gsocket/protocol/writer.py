"""Writing to websocket clients without a writer greenlet, a queue or a syscall per packet.

python-engineio gives every websocket session a queue and a writer greenlet: each packet for a
client is a ``queue.put``, a greenlet switch, an encode, a frame header and a ``sendall`` of its
own, and between pings every session holds one more sleeping greenlet.  A broadcast to
thousands of clients pays all of that per recipient, and every connection carries the
greenlets' saved stacks.

Once a session is on websocket, its queue is a :class:`Wire` (see
:meth:`gsocket.protocol.transport.Transport.attach`):

- a packet becomes websocket frame bytes (a broadcast builds them once for every recipient),
  appended to the wire's pending list;
- pending frames are written by one event-loop callback per loop turn, every frame of a
  connection in one non-blocking ``send``: a burst of events costs one syscall per client;
- only a client whose kernel buffer is full gets a greenlet, which waits until the socket is
  writable again; frames written meanwhile queue behind it, so the order never changes;
- a client with ``limits.send_queue`` frames pending is not reading and is put out; the same
  bound applies to a polling session's queue (:meth:`Writer.queue_full`).
"""

from __future__ import annotations

import logging
import socket as pysocket
from collections.abc import Callable, Collection, Iterable
from typing import Any

import gevent
from engineio import packet as eio_packet
from gevent.event import Event

from gsocket.protocol.codec import CLOSE_FRAME, packet_frame
from gsocket.protocol.internals.gevent_hooks import raw_socket

log = logging.getLogger("gsocket.transport")

OPEN, CLOSING, DONE = 0, 1, 2

FLUSH_STEP = 2000
"""Connections a greenlet's flush writes before it lets the others run: the bridge's batch of
broadcasts to a room of 20 000 took over a second to hand to the kernel, and every socket
(pings, connects, handlers) stalled meanwhile."""


def next_loop_turn() -> None:
    """Let the event loop poll every socket and run its timers before going on.

    ``gevent.sleep(0)`` only lets the greenlets that are ready run, and gevent looks at the
    clock every 50 of them: the bridge yielding that way between 50 ms batches (flat-out
    fan-out) kept the loop from reading any other socket for seconds.  A positive sleep
    resumes after the loop's next poll.
    """
    gevent.sleep(0.000001)


def send_pending(wires: Iterable[Wire]) -> None:
    """Hand each wire's pending frames to the kernel in one non-blocking ``send``.

    The one loop behind every flush: at a fixed event rate each client has one frame pending
    and the kernel takes it whole, so that case costs a ``send`` and a few slot reads, with
    no method call.  A wire that is draining (its frames queue behind the drainer) or has
    ended is passed over; what the kernel does not take goes to a drainer
    (:meth:`Wire.drain_later`); a failing connection is dropped and its session ended
    (:meth:`Wire.lost`), and one connection never stops the others.
    """
    for wire in wires:
        try:
            out = wire.out
            if not out or wire.drainer is not None or wire.state == DONE:
                continue
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()  # (a pop to empty reallocates the list's storage: 3 % in perf)
            try:
                sent = wire.raw.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                wire.lost(e)
                continue
            if sent != len(data):
                wire.drain_later(data, sent)
            elif wire.state or wire.idle is not None:
                wire.settle()  # the close frame went out, or join() waits
        except Exception:  # noqa: BLE001 - one connection must not stop the others
            log.exception("flushing websocket %s failed", wire.sid)
            wire.lost()


class Wire:
    """The sending side of one websocket session, in place of its python-engineio queue.

    It answers the queue calls python-engineio and gsocket make on a session (``put``,
    ``qsize``, ``join``); ``put(None)``, python-engineio's "close the transport", sends the
    close frame after everything pending.

    :param transport: the server's writer (:class:`Writer`).
    :param sid: Engine.IO session id.
    :param gsock: the connection's gevent socket.
    :param ws: gevent-websocket's object for the connection (its ``closed`` flag is kept
        true once this wire sent the close frame, so that no second one follows).
    """

    __slots__ = (
        "transport",
        "sid",
        "gsock",
        "raw",
        "ws",
        "out",
        "rest",
        "drainer",
        "state",
        "idle",
    )

    def __init__(self, transport: Writer, sid: str, gsock: Any, ws: Any) -> None:
        self.transport = transport
        self.sid = sid
        self.gsock = gsock
        self.raw = raw_socket(gsock)  # whose send never waits (a full buffer starts a drainer)
        self.ws = ws
        self.out: list[bytes] = []
        self.rest: memoryview | None = None
        self.drainer: gevent.Greenlet | None = None
        self.state = OPEN
        self.idle: Event | None = None  # what join() waits on, set once nothing is pending

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
        if self.idle is None or self.idle.is_set():
            self.idle = Event()  # set again when this batch is out (or the wire ends)
        return bool(self.idle.wait(timeout))

    # ---- writing ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue one frame; it is sent at the end of the current event-loop turn."""
        self.transport.queue((self,), data)

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
        send_pending((self,))

    def drain_later(self, data: bytes, sent: int) -> None:
        """The kernel took ``sent`` bytes of ``data``: a greenlet writes the rest when the
        socket is writable again, and frames written meanwhile after it."""
        self.rest = memoryview(data)[sent:]
        self.drainer = gevent.spawn(self._drain)

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
        self.settle()

    def settle(self) -> None:
        """Once nothing is pending: a closing wire whose close frame went out ends, and a
        waiter of :meth:`join` is woken."""
        if self.out or self.rest is not None:
            return
        if self.state == CLOSING:
            self.state = DONE
            self.ws.closed = True
            self.transport.forget(self)
            self._release()
        if self.idle is not None:
            self.idle.set()

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
        if self.idle is not None:
            self.idle.set()
        if error is not None:
            log.debug("write to websocket %s failed: %s", self.sid, error)
            self.transport.broken(self.sid, gsock)

    def _release(self) -> None:
        """Let go of the connection's objects: the session may outlive it (a pending ping)."""
        self.gsock = None
        self.raw = None
        self.ws = None

    def finish(self) -> None:
        """The session's read loop ended: send what can go without waiting, then stop."""
        if self.state == OPEN and not self.ws.closed:
            self.close()
        if self.drainer is None:
            self.flush()
        self.lost()


class Writer:
    """The server's websocket writer: every session's :class:`Wire`, the flush, and the one
    bound on what may wait for a client (``limits.send_queue``), polling sessions included.

    :param eio: the python-engineio server.
    :param limit: packets pending for one client before it is put out (``limits.send_queue``).
    :param kick: ``kick(eio_sid, why)`` puts a client out without a goodbye (gsocket's client
        guard); called outside of any broadcast loop.
    """

    def __init__(self, eio: Any, limit: int, kick: Callable[[str, str], None]) -> None:
        self.eio = eio
        self.limit = max(1, limit)
        self.kick = kick
        self.wires: dict[str, Wire] = {}
        self._dirty: list[Wire] = []
        self._scheduled = False
        self._loop = gevent.get_hub().loop
        self._last_packet: eio_packet.Packet | None = None
        self._last_frame = b""

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

    def flush(self) -> None:
        """Hand every pending frame to the kernel now (one ``send`` per connection)."""
        send_pending(self._take_dirty())

    def flush_in_steps(self) -> None:
        """:meth:`flush` from a greenlet (never a loop callback), letting the others run after
        every :data:`FLUSH_STEP` connections.  A wire written to meanwhile keeps its frames
        in order: it is either still in this flush's list or marked for the next one."""
        dirty = self._take_dirty()
        for start in range(0, len(dirty), FLUSH_STEP):
            if start:
                next_loop_turn()
            send_pending(dirty[start : start + FLUSH_STEP])

    def _take_dirty(self) -> list[Wire]:
        """The wires marked since the last flush; the next write marks its wire anew."""
        self._scheduled = False
        dirty = self._dirty
        if dirty:
            self._dirty = []
        return dirty

    def queue(self, wires: Iterable[Wire | None], data: bytes) -> int:
        """Append frame ``data`` to every wire in ``wires`` (``None`` entries are skipped and
        counted); a wire's first pending frame has it flushed at the end of the loop turn.

        The rules of every write, for one wire (:meth:`Wire.write`) or a room
        (:meth:`broadcast`): nothing after the close frame; a client with ``limit`` frames
        pending is put out (:meth:`congested`).

        :returns: the number of ``None`` entries.
        """
        dirty = self._dirty
        limit = self.limit
        missing = 0
        for wire in wires:
            if wire is None:
                missing += 1
            elif not wire.state:  # closing or ended: nothing goes after the close frame
                out = wire.out
                out.append(data)
                pending = len(out)
                if pending == 1:
                    dirty.append(wire)
                if pending >= limit:
                    self.congested(wire)
        if dirty and not self._scheduled:
            self._scheduled = True
            self._loop.run_callback(self.flush)
        return missing

    def broadcast(self, eio_sids: Collection[str], data: bytes) -> list[str]:
        """Write one frame to many sessions; return the sessions without a wire (polling
        ones, or gone), for the caller to send to through python-engineio.

        Writing never changes room membership (a client put out is put out later), so
        ``eio_sids`` may be a live view of a room; it is read twice when some session has
        no wire.
        """
        wires = list(map(self.wires.get, eio_sids))
        if not self.queue(wires, data):
            return []
        return [eio_sid for eio_sid, wire in zip(eio_sids, wires, strict=True) if wire is None]

    def congested(self, wire: Wire) -> None:
        """A client stopped reading: stop writing to it and put it out (outside this call)."""
        wire.lost()
        gevent.spawn(self.kick, wire.sid, self._unread())

    def queue_full(self, eio_sid: str) -> bool:
        """Tell whether a polling session's send queue is full; a full one is put out at once.

        The same bound as a websocket's wire (:meth:`Wire.write`), for the sessions that keep
        python-engineio's queue: a client that does not read (a stalled tab, a hostile
        script) would otherwise make the server buffer every broadcast for it until its ping
        timeout.
        """
        session = self.eio.sockets.get(eio_sid)
        if session is None or session.closed or session.queue.qsize() < self.limit:
            return False
        self.kick(eio_sid, self._unread())
        return True

    def _unread(self) -> str:
        return f"{self.limit} packets queued: the client does not read (send_queue)"

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
