"""Stopping a server without losing desks: the drain run on SIGTERM and SIGINT.

A desk gives up after three reconnection attempts and does not re-subscribe its rooms, so a
stopping process must not leave its clients hanging on a dead TCP connection until their ping
times out.  It closes each Engine.IO session the protocol's way (a CLOSE packet, then a clean
WebSocket close), which every socket.io client treats as "transport close" and answers by
reconnecting at once, to the next process.  A namespace DISCONNECT would be wrong: clients take
it as "the server does not want me" and never come back.

Handlers still running when the clients are gone are given the rest of the drain time to
finish their work (a commit, a publish); the ones still running after it end with the process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
from engineio import packet as engineio_packet
from gevent.event import Event

from gsocket.handlers.dispatch import Dispatcher
from gsocket.handlers.socket import Socket
from gsocket.protocol.server import Server

log = logging.getLogger("gsocket.lifecycle")

#: Seconds a long-polling client has to collect its CLOSE packet.  Such a client is between two
#: polls for milliseconds; one that does not come back within a second is gone or stuck, and
#: waiting longer would only hold up the restart.
CLOSE_GRACE = 1.0


class InFlight:
    """Counts handler runs in progress, so that a stopping server can wait for them."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = Event()
        self._idle.set()

    @property
    def count(self) -> int:
        """Handler runs in progress now."""
        return self._count

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count the enclosed block as one run in progress."""
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if not self._count:
                self._idle.set()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no run is in progress; return ``False`` when ``timeout`` ran out first.

        Greenlets spawned just before the call (``disconnect`` handlers of the clients that were
        just closed) have not started yet, so the hub is let to run them before idleness counts.
        """
        deadline = time.monotonic() + timeout
        while True:
            gevent.sleep(0)
            if not self._count:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._idle.wait(remaining):
                return not self._count


class TrackedDispatcher(Dispatcher):
    """A :class:`~gsocket.handlers.dispatch.Dispatcher` whose every run is counted by an
    :class:`InFlight`.

    :param in_flight: the counter the stopping server waits on.
    """

    def __init__(self, *args: Any, in_flight: InFlight, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight = in_flight

    def dispatch(self, socket: Socket, event: str, args: tuple[Any, ...]) -> Any:
        """Run the handlers of ``event`` as :meth:`Dispatcher.dispatch` does, counted."""
        with self.in_flight.track():
            return super().dispatch(socket, event, args)


def close_session(eio_socket: Any, timeout: float) -> bool:
    """Close one Engine.IO session so that its client reconnects; ``False`` if it was dropped.

    A WebSocket client gets the CLOSE packet and a close frame at once.  A long-polling client
    gets the CLOSE packet in answer to its pending (or next) poll, which is why the session
    stays open until the packet is collected: python-engineio answers the poll of a closed
    session with HTTP 400, which the client sees as a transport error.

    :param eio_socket: the ``engineio.socket.Socket``.
    :param timeout: seconds the client has to collect the packet.
    """
    if eio_socket.closed or eio_socket.closing:
        return True
    if eio_socket.upgraded or eio_socket.upgrading:
        eio_socket.close(wait=False)
        return bool(eio_socket.queue.join(timeout))
    eio_socket.send(engineio_packet.Packet(engineio_packet.CLOSE))
    collected = bool(eio_socket.queue.join(timeout))
    eio_socket.close(wait=False, abort=True)
    return collected


def close_clients(server: Server, timeout: float) -> tuple[int, int]:
    """Close every Engine.IO session of ``server`` at once, each by :func:`close_session`.

    :param timeout: seconds granted to the slowest client.
    :returns: ``(closed, dropped)`` session counts; a dropped long-polling client did not come
        back for its CLOSE packet and reconnects when its next poll fails.
    """
    sessions = dict(server.eio.sockets)
    if not sessions:
        return 0, 0
    closers = [gevent.spawn(close_session, s, timeout) for s in sessions.values()]
    gevent.joinall(closers, timeout=timeout + 0.5)
    for sid in sessions:
        server.eio.sockets.pop(sid, None)
    dropped = sum(1 for g in closers if not g.value)
    gevent.killall([g for g in closers if not g.dead], block=False)
    return len(sessions) - dropped, dropped


def drain(
    server: Server, in_flight: InFlight, timeout: float, stop_accepting: Callable[[], None]
) -> None:
    """Close every client, stop accepting, wait for the handlers still running.

    The listener stays open while the clients are closed: a long-polling client collects its
    CLOSE packet with a new request, often on a new connection (nginx opens one per request),
    and the caller refuses new sessions meanwhile.  The caller stops the bridge afterwards.

    :param timeout: seconds for the whole drain.
    :param stop_accepting: closes the listener.
    """
    started = time.monotonic()
    closed, dropped = close_clients(server, min(CLOSE_GRACE, timeout))
    stop_accepting()
    remaining = max(0.0, timeout - (time.monotonic() - started))
    finished = in_flight.wait_idle(remaining)
    elapsed = time.monotonic() - started
    if dropped:
        log.warning(
            "%d long-polling client(s) did not collect their close packet within %.1f s; "
            "they reconnect when their next poll fails",
            dropped,
            min(CLOSE_GRACE, timeout),
        )
    if not finished:
        log.warning(
            "%d handler run(s) still busy after the %.1f s drain (gsocket.drain_timeout); "
            "they end with the process",
            in_flight.count,
            timeout,
        )
    log.info("drained %d session(s) in %.2f s", closed + dropped, elapsed)
