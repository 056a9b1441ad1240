"""Idle websockets without a greenlet: the connection is read when the kernel says it is
readable, by a worker greenlet that holds it only as long as there is something to read.

gevent serves each connection in the greenlet that accepted it, and python-engineio's
websocket loop blocks that greenlet in a read for the life of the connection.  A blocked
greenlet keeps its saved C stack and a chunk of Python's frame stack (about 14 KB), and
through its frames gevent's handler objects (read buffer, parsed request headers, socket
objects): most of the 31 KB an idle websocket cost (``benchmarks/memory_profile.py``; 6.7 KB
parked), for a connection that sends a PONG every 25 s.

Once a session is on websocket (:class:`gsocket.protocol.session.LeanSocket`), :func:`park`
takes the connection out of gevent's WSGI handler: the socket gevent accepted is kept
(gevent's handler forgets it and its server leaves it open when the request's greenlet ends),
bytes the handler had already buffered are kept, and gevent-websocket's object is marked
closed (its handler would otherwise send a close frame as the request ends).  From then on
:class:`Parked` reads: a libev watcher wakes it, a worker greenlet reads every complete frame
(RFC 6455: masked client frames, fragments, control frames), hands each message to the
session exactly as the blocking loop did, and goes on to other jobs
(:mod:`gsocket.protocol.workers`).
Writing stays with the session's :class:`gsocket.protocol.writer.Wire`.

Every use of another library's internals is in :mod:`gsocket.protocol.internals`
(``detach_connection``, ``raw_socket``); the session's side (``serve_websocket``, ``close``)
is in :mod:`gsocket.protocol.session`.

A connection that cannot be parked safely (a write waiting on a full buffer) keeps its
greenlet and the blocking loop: parking saves memory, it never changes what is sent.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet

from gsocket.protocol.codec import CLOSE_NORMAL_FRAME, PONG, frame
from gsocket.protocol.guards import CLOSE_GRACE, frame_problem, oversized
from gsocket.protocol.internals.gevent_hooks import detach_connection, raw_socket
from gsocket.protocol.workers import workers

log = logging.getLogger("gsocket.parked")

READ_SIZE = 65536
"""Bytes one ``recv`` asks for: a burst of frames is taken in one call."""
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG_OPCODE = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
"""Opcodes of client frames (RFC 6455 section 5.2)."""


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class Parked:
    """One parked websocket: the reader of the connection and the end of its session.

    It also stands in for gevent's handler where gsocket's guard looks for the socket
    (``socket``) and for gevent-websocket's object where the wire records that it sent the
    close frame (``closed``).
    """

    __slots__ = (
        "session",
        "wire",
        "socket",
        "peer",
        "max_bytes",
        "buffer",
        "fragments",
        "fragment_opcode",
        "watcher",
        "ended",
        "closed",
    )

    def __init__(self, session: Any, wire: Any, peer: str) -> None:
        self.session = session
        self.wire = wire
        self.socket: Any = None
        self.peer = peer
        self.max_bytes: int = session.server.max_http_buffer_size
        self.buffer = b""
        self.fragments: list[bytes] | None = None
        self.fragment_opcode = TEXT
        self.watcher: Any = None
        self.ended = False
        self.closed = False
        """The close frame went out (the wire sets it, as on gevent-websocket's object)."""

    def session_closed(self) -> None:
        """The session was closed (by the server, the client's CLOSE packet, a missed PONG):
        the client has a moment to read the close frame and answer it (its answer or its FIN
        ends the connection at once), then the connection is shut."""
        if not self.ended:
            gevent.spawn_later(CLOSE_GRACE, self.end)

    # ---- reading ---------------------------------------------------------------------

    def take(self, sock: Any, buffered: bytes) -> None:
        """Own the connection (``sock``, and what was read ahead) and start reading it."""
        self.socket = sock
        self.buffer = buffered
        self.watcher = gevent.get_hub().loop.io(sock.fileno(), 1)
        self.wire.gsock = sock
        self.wire.raw = raw_socket(sock)
        self.wire.ws = self
        if self.buffer:
            workers.start(self._read)
        else:
            self.watcher.start(self._readable)

    def _readable(self) -> None:
        """The socket has data (run by the event loop): read it in a worker greenlet
        (:mod:`gsocket.protocol.workers`), which goes on to other jobs once it is read."""
        self.watcher.stop()
        workers.start(self._read)

    def _read(self) -> None:
        sock = raw_socket(self.socket)
        try:
            if self.buffer and not self._frames():
                return
            while not self.ended:
                try:
                    chunk = sock.recv(READ_SIZE)
                except BlockingIOError:
                    break
                except OSError as e:
                    log.debug("websocket of session %s ended: %s", self.session.sid, e)
                    self.end()
                    return
                if not chunk:
                    self.end()
                    return
                self.buffer = self.buffer + chunk if self.buffer else chunk
                if not self._frames():
                    return
                if len(chunk) < READ_SIZE:
                    break  # the kernel had no more; the watcher says when it has
        except Exception:  # noqa: BLE001 - the connection ends, the server goes on
            log.exception("reading the websocket of session %s failed", self.session.sid)
            self.end()
            return
        if not self.ended:
            self.watcher.start(self._readable)

    def _frames(self) -> bool:
        """Handle every complete frame in the buffer; ``False`` once the connection ended."""
        buf = self.buffer
        size = len(buf)
        pos = 0
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            fin, opcode, length = first & 0x80, first & 0x0F, second & 0x7F
            if first & 0x70 or not second & 0x80:
                return self._fail("reserved bits set or an unmasked client frame")
            at = pos + 2
            if length == 126:
                if size - at < 2:
                    break
                length, at = int.from_bytes(buf[at : at + 2], "big"), at + 2
            elif length == 127:
                if size - at < 8:
                    break
                length, at = int.from_bytes(buf[at : at + 8], "big"), at + 8
            if opcode >= CLOSE and (not fin or length > 125):
                return self._fail("a fragmented or long control frame")
            held = sum(len(f) for f in self.fragments) if self.fragments else 0
            problem = oversized(length + held, self.max_bytes)
            if problem is not None:
                log.warning("closed a websocket from %s: %s", self.peer, problem)
                return self._fail(None)
            if size - at < 4 + length:
                break
            payload = _unmask(buf[at + 4 : at + 4 + length], buf[at : at + 4])
            pos = at + 4 + length
            if not self._frame(fin, opcode, payload):
                return False
        self.buffer = buf[pos:] if pos else buf
        return True

    def _frame(self, fin: int, opcode: int, payload: bytes) -> bool:
        if opcode == PING:
            self.wire.write(frame(payload, PONG))
            return True
        if opcode == PONG_OPCODE:
            return True
        if opcode == CLOSE:
            self.wire.close(CLOSE_NORMAL_FRAME)
            self.end()
            return False
        if opcode == CONTINUATION:
            if self.fragments is None:
                return self._fail("a continuation frame without a first fragment")
            self.fragments.append(payload)
            if not fin:
                return True
            payload, opcode = b"".join(self.fragments), self.fragment_opcode
            self.fragments = None
        elif opcode in (TEXT, BINARY):
            if self.fragments is not None:
                return self._fail("a new message inside a fragmented one")
            if not fin:
                self.fragments, self.fragment_opcode = [payload], opcode
                return True
        else:
            return self._fail(f"unknown opcode {opcode}")
        return self._message(payload, opcode)

    def _message(self, payload: bytes, opcode: int) -> bool:
        """One Engine.IO packet: checked as the guard checks a frame, then received."""
        data: str | bytes
        if opcode == TEXT:
            try:
                data = payload.decode("utf-8")
            except UnicodeDecodeError:
                return self._fail("invalid UTF-8 in a text frame")
        else:
            data = payload
        problem = frame_problem(data, False)
        if problem is not None:
            log.warning("closed a websocket from %s: %s", self.peer, problem)
            self.wire.close(CLOSE_NORMAL_FRAME)
            self.end()
            return False
        session = self.session
        try:
            session.receive(eio_packet.Packet(encoded_packet=data))
        except eio_exceptions.UnknownPacketError:
            pass
        except eio_exceptions.SocketIsClosedError:
            self.end()
            return False
        except Exception:  # noqa: BLE001 - as the blocking loop: the connection ends
            log.exception("packet from session %s could not be handled", session.sid)
            self.end()
            return False
        return not self.ended

    def _fail(self, why: str | None) -> bool:
        """A frame the protocol forbids: drop the connection without a goodbye."""
        if why is not None:
            log.info("websocket from %s ended: %s", self.peer, why)
        self.wire.lost()
        self.end()
        return False

    # ---- the end -----------------------------------------------------------------------

    def end(self) -> None:
        """End the connection and its session (once): what the blocking loop did when its
        read ended, then what gevent's handler does with the socket."""
        if self.ended:
            return
        self.ended = True
        self.watcher.stop()
        self.wire.finish()
        session = self.session
        session.close(wait=False, abort=True, reason=session.server.reason.TRANSPORT_CLOSE)
        sock = self.socket
        try:
            raw_socket(sock).recv(16384)  # unread input would turn the close into a reset
        except OSError:
            pass
        sock.close()
        self.buffer = b""
        self.fragments = None


def park(session: Any, inner: Any, wire: Any) -> Parked | None:
    """Take an upgraded session's connection from gevent's handler greenlet.

    :param session: the python-engineio session; its ``parked`` is set.
    :param inner: gevent-websocket's object.
    :param wire: the session's wire (attached already).
    :returns: the parked connection (started), or ``None`` when it must stay with the
        greenlet (a write waiting for the socket, or gevent's objects not as expected).
    """
    if wire.drainer is not None or wire.state:
        log.debug("session %s keeps its greenlet: its wire is busy", session.sid)
        return None
    peer = str((getattr(inner, "environ", None) or {}).get("REMOTE_ADDR") or "unix")
    parked = Parked(session, wire, peer)
    taken = detach_connection(inner, parked)
    if taken is None:
        log.debug("session %s keeps its greenlet: gevent's handler is not as expected", session.sid)
        return None
    parked.take(*taken)
    session.parked = parked
    return parked
