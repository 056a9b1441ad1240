"""Greenlets kept for the next job: a new connection's request, a parked connection's read.

Each websocket connect ran in two greenlets made for it and ended after it: gevent's WSGI
server's, serving the upgrade request, and the parked reader's, reading the CONNECT
(:mod:`gsocket.protocol.parked`).  A greenlet made, started and ended costs about 10 µs (its
object, its first switch, and on CPython 3.11 and newer a frame stack of its own, mapped and
unmapped: 2 ``mmap`` and 2 ``munmap`` per connect in ``strace``); a worker waiting for its next
job on a :class:`gevent.hub.Waiter` is handed one in under 2 µs.

A job handed over by the event loop (the accept of a connection, a parked socket found
readable: both are watcher callbacks) goes straight to an idle worker, which runs it until it
waits; a job from any other greenlet, or when no worker is idle, gets a new worker.  A worker
whose job ends waits for the next one unless :data:`KEEP` are waiting already; then it ends.
An exception ends its worker as it ends a greenlet of gevent's own (printed by the hub); one
thrown into an idle worker (a kill) takes it out of the idle list first, so no job is handed
to a worker that is gone.  Each job runs in a new, empty ``contextvars`` context, as in a new
greenlet, so that nothing a job sets there is seen by the next job of the same worker.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import gevent
from gevent import getcurrent
from gevent.hub import Waiter, get_hub

KEEP = 64
"""Idle workers kept at most: a connect storm starts and ends hundreds of jobs a second, and
an idle worker holds little (a shallow saved stack, one frame-stack chunk)."""


class Workers:
    """Greenlets that run one job after the other.

    :param keep: idle workers kept at most.
    """

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self.idle: list[Waiter] = []

    def start(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` in an idle worker, at once when called by the event loop (a
        watcher's callback: what it watched for is there now), or in a new worker (scheduled,
        as ``gevent.spawn`` does)."""
        if self.idle and getcurrent() is get_hub():
            self.idle.pop().switch((func, args))
        else:
            # The job in a list the worker empties: a kept worker never ends, and gevent
            # keeps a greenlet's spawn arguments until it ends.
            gevent.spawn(self._work, [(func, args)])

    def spawn(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` in a worker when the event loop next runs its callbacks, as
        ``gevent.spawn`` does (gevent's server uses it as its ``spawn``): an accepted
        connection's request has usually arrived by then, where a worker started at once
        would find nothing to read yet and wait for it."""
        get_hub().loop.run_callback(self.start, func, *args)

    def _work(self, first: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
        idle = self.idle
        func, args = first.pop()
        while True:
            contextvars.Context().run(func, *args)
            func = args = None  # type: ignore[assignment]  # nothing of the job kept meanwhile
            if len(idle) >= self.keep:
                return
            waiter = Waiter()
            idle.append(waiter)
            try:
                func, args = waiter.get()
            except BaseException:
                idle.remove(waiter)  # killed while idle: no job may be handed to it
                raise


workers = Workers()
"""The process's workers (gevent's WSGI server and the parked readers share them)."""
