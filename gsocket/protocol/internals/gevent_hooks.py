"""gevent's and gevent-websocket's internals that gsocket relies on, in one place.

- :func:`switch_counter`: gevent's C greenlet tracer (``gevent._tracer``), whose switch count
  tells a stalled event loop from a saturated one (:mod:`gsocket.protocol.stall`);
- :func:`thread_frame`: the current frame of another thread (``sys._current_frames``), to
  name the code holding the event loop while it still holds it;
- :func:`raw_socket`: the plain socket inside a gevent socket (``_sock``), for a
  non-blocking ``send`` without gevent's wait machinery (the writer's flush, the web client);
- :func:`bound_frame_reads`: gevent-websocket reads a whole frame whatever length its header
  announces; wrapping its ``raw_read`` counts the bytes before they are buffered;
- :func:`handler_socket`: the connection's socket behind gevent-websocket's object
  (``ws.handler.socket``), for timeouts and shutdowns;
- :func:`detach_connection`: a websocket's connection taken from gevent's WSGI handler, so
  that its greenlet can end while the connection stays open (:mod:`gsocket.protocol.parked`):
  the handler's ``socket``, ``rfile``, ``wsgi_input`` (whose ``_discard`` gevent calls after
  the application) and ``close_connection``, the server's ``do_close``
  (:class:`HookedWSGIServer`), and gevent-websocket's ``closed``, ``handler``, ``stream``,
  ``raw_read`` and ``raw_write``;
- :class:`HookedWSGIHandler`: gevent's request handler parses headers with its
  ``MessageClass`` (an ``email`` parser) and reads through an 8 KiB buffer made in its
  constructor (its ``rfile`` argument, marked deprecated): both are replaced through class
  attributes with public names; it can hold back a websocket upgrade's ``101`` answer (what
  its ``_sendall`` is given) until :func:`take_upgrade_answer`, wrapping gevent-websocket's
  ``stream.read`` and ``raw_write`` so that the answer goes out before anything else;
- :func:`lock_is_free`: whether a lock made before the monkey-patch is held (the private
  ``_is_owned`` of a native ``RLock``), to re-create Frappe's pre-patch locks.

Verified against gevent 24.11.1 (the lowest gsocket accepts) to 26.9.0 (the newest) and
gevent-websocket 0.10.1 (gsocket/ops/dependencies.py), on CPython 3.10 to 3.12.
"""

from __future__ import annotations

import inspect
import io
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any, ClassVar

from gevent._tracer import GreenletTracer
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

EMPTY_INPUT = io.BytesIO(b"")
"""The request body left in a detached websocket's environ (a GET has none): gevent's reader
there kept the connection's buffer and old socket object alive for the session's life."""


def switch_counter() -> Callable[[], int]:
    """Start counting greenlet switches; return what reads the count (about 0.1 µs a switch,
    counted in C)."""
    tracer = GreenletTracer()
    return lambda: tracer.greenlet_switch_counter


def thread_frame(thread_ident: int) -> FrameType | None:
    """The frame thread ``thread_ident`` is running now, or ``None``."""
    return sys._current_frames().get(thread_ident)


def raw_socket(gsock: Any) -> Any:
    """The standard-library socket a gevent socket wraps (its ``send`` never waits)."""
    return gsock._sock


def bound_frame_reads(
    ws: Any, wrap: Callable[[Callable[[int], bytes]], Callable[[int], bytes]]
) -> None:
    """Route every payload read of gevent-websocket's ``ws`` through ``wrap(read)``."""
    ws.raw_read = wrap(ws.raw_read)


def handler_socket(ws: Any) -> Any:
    """The connection's socket behind gevent-websocket's object, or ``None``."""
    handler = getattr(ws, "handler", None)
    return getattr(handler, "socket", None)


def detach_connection(ws: Any, holder: Any) -> tuple[Any, bytes] | None:
    """Take the connection of gevent-websocket's ``ws`` from gevent's WSGI handler.

    Returns the connection's gevent socket, which gevent's handler and server then leave open
    when the request's greenlet ends (the handler forgets it, :class:`HookedWSGIServer` does
    not close it), and the bytes the handler had read ahead; ``None`` when the objects are not
    as expected (another server class among them).  The handler's read file is closed (it
    counted as a user of the socket, whose close would otherwise wait for it) and its request
    body replaced by an empty one.  gevent-websocket's object is marked closed (its handler
    would send a close frame as the request ends), its ``handler`` becomes ``holder`` (whose
    ``socket`` :func:`handler_socket` then finds), and its reading objects are let go.
    """
    handler = getattr(ws, "handler", None)
    sock = getattr(handler, "socket", None)
    rfile = getattr(handler, "rfile", None)
    server = getattr(handler, "server", None)
    if sock is None or rfile is None or not isinstance(server, HookedWSGIServer):
        return None
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        buffered = bytes(rfile.peek())
    finally:
        sock.settimeout(timeout)
    rfile.close()
    handler.wsgi_input = _NO_BODY
    ws.closed = True
    ws.handler = holder
    ws.stream = ws.raw_read = ws.raw_write = None
    environ = getattr(ws, "environ", None)
    if environ is not None and "wsgi.input" in environ:
        environ["wsgi.input"] = EMPTY_INPUT
    handler.close_connection = True
    handler.socket = None
    server.keep_open(sock)  # last: nothing after it can fail and leave it kept by nobody
    return sock, buffered


class HookedWSGIServer(WSGIServer):
    """gevent's WSGI server, which closes each accepted socket when its handler returns
    (``do_close``) unless :func:`detach_connection` took the connection for a parked websocket.

    The parked connection keeps the socket object gevent made at accept: making a second one
    on its descriptor (with two watchers, and its family and type looked up through enum
    conversions) was 3 % of a connect's CPU.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept: set[Any] = set()

    def keep_open(self, sock: Any) -> None:
        """Leave ``sock`` open when its request's handler returns; its new owner closes it."""
        self._kept.add(sock)

    def do_close(self, sock: Any, *args: Any) -> None:
        if sock in self._kept:
            self._kept.discard(sock)
            return
        super().do_close(sock, *args)


class _NoBody:
    """The request body gevent's handler discards after the application, once the
    connection is detached (its read file is closed by then)."""

    def _discard(self) -> None:
        """Nothing left to read."""


_NO_BODY = _NoBody()


def take_upgrade_answer(ws: Any) -> bytes:
    """The ``101`` answer of gevent-websocket's ``ws`` held back by its handler
    (:attr:`HookedWSGIHandler.defer_upgrade_answer`), now the caller's to send before any
    frame; ``b""`` when none is held (it went out already, or the handler holds none)."""
    take = getattr(getattr(ws, "handler", None), "take_upgrade_answer", None)
    return take() if take is not None else b""


def lock_is_free(lock: Any) -> bool:
    """Whether nobody holds ``lock`` (an OS ``Lock`` or ``RLock``, made before gevent's
    monkey-patch); probing leaves it as found.  An ``RLock`` without ``locked()`` (before
    Python 3.14) is asked through its private ``_is_owned``."""
    if hasattr(lock, "locked"):
        return not lock.locked()
    if lock._is_owned():
        return False
    if lock.acquire(blocking=False):
        lock.release()
        return True
    return False


class HookedWSGIHandler(WebSocketHandler):
    """gevent-websocket's request handler reading headers with :attr:`header_reader` and
    requests through a :attr:`read_buffer`-byte buffer (gevent's: an ``email`` parser, 8 KiB).

    :cvar header_reader: ``header_reader(rfile)``, what gevent's ``MessageClass`` does.
    :cvar read_buffer: bytes of each connection's read buffer.
    """

    header_reader: ClassVar[Callable[..., Any] | None] = None
    read_buffer: ClassVar[int] = 8192
    defer_upgrade_answer: ClassVar[bool] = False
    held_answer: Any = None
    """The ``101`` answer held back: :data:`_HOLD` until gevent writes it, then its bytes."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.header_reader is not None:
            cls.MessageClass = staticmethod(cls.header_reader)

    def __init__(self, sock: Any, address: Any, server: Any, *args: Any, **kwargs: Any) -> None:
        if _TAKES_RFILE and not args and "rfile" not in kwargs:
            kwargs["rfile"] = sock.makefile("rb", self.read_buffer)
            super().__init__(sock, address, server, *args, **kwargs)
            return
        super().__init__(sock, address, server, *args, **kwargs)
        default = self.rfile
        self.rfile = sock.makefile("rb", self.read_buffer)
        default.close()  # only releases the socket reference it counted; nothing was read

    def upgrade_websocket(self) -> Any:
        """Upgrade (gevent-websocket); with :attr:`defer_upgrade_answer`, hold the ``101``
        answer back until :meth:`take_upgrade_answer`, or until the websocket is first read
        or written (then it is sent first, as gevent would have)."""
        result = super().upgrade_websocket()
        ws = getattr(self, "websocket", None)
        if self.defer_upgrade_answer and ws is not None and result is None:
            self.held_answer = _HOLD
            stream = ws.stream
            read, write = stream.read, ws.raw_write

            def read_after_answer(*args: Any) -> Any:
                self.release_upgrade_answer()
                return read(*args)

            def write_after_answer(data: Any) -> Any:
                self.release_upgrade_answer()
                return write(data)

            stream.read = read_after_answer
            ws.raw_write = write_after_answer
        return result

    def take_upgrade_answer(self) -> bytes:
        """The held ``101`` answer, which the caller now sends first; ``b""`` if none."""
        held = self.held_answer
        self.held_answer = None
        return held if isinstance(held, bytes) else b""

    def release_upgrade_answer(self) -> None:
        """Send the held ``101`` answer now (nobody took it)."""
        held = self.held_answer
        if held is None:
            return
        self.held_answer = None
        if isinstance(held, bytes) and self.socket is not None:
            super()._sendall(held)

    def _sendall(self, data: Any) -> None:
        if self.held_answer is _HOLD:
            self.held_answer = bytes(data)
            self.response_length += len(data)
            return
        if self.held_answer is not None:
            self.release_upgrade_answer()
        super()._sendall(data)

    def run_application(self) -> None:
        try:
            super().run_application()
        finally:
            self.release_upgrade_answer()


_HOLD = object()
"""The handler's next write is the ``101`` answer to hold (``HookedWSGIHandler.held_answer``)."""

_TAKES_RFILE = "rfile" in inspect.signature(WebSocketHandler.__init__).parameters
"""gevent's handler takes its read file as an argument (every version gsocket supports; it is
marked deprecated, so a version without it gets the file replaced after construction)."""
