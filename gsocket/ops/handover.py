"""``gsocket serve --handover``: restarts without a moment when nobody listens.

supervisord restarts a program by stopping it and then starting it, so between the two nobody
listens on the realtime port: desks reconnecting then are refused, and a slow start (a loaded
machine, many apps) eats into the three attempts a desk makes.  With ``--handover`` the
supervised process is a small parent that binds the port (or Unix socket) once and runs the
server in a child that inherits it:

- on start the socket is bound before the server's imports, so connections that arrive while
  the child starts wait in the kernel's backlog instead of being refused;
- on SIGHUP (``supervisorctl signal HUP <bench>-web:<bench>-gsocket``) a new child starts on
  the same socket, and only once it serves (listening, handlers loaded, bridge subscribed)
  does the old child drain; clients it closes reconnect straight to the new one.  A new child
  that fails to start is stopped and the old one keeps serving;
- on SIGTERM or SIGINT every child drains and the parent exits with the serving child's status.

The children watch their parent: one left behind by a parent that was killed drains and exits.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import gevent
import gevent.os
from gevent.event import Event

from gsocket.config import Config
from gsocket.ops.listener import open_listener

log = logging.getLogger("gsocket.handover")

#: Seconds a new child has to become ready before the hand-over is given up.
READY_TIMEOUT = 60.0
READY = b"1"


class Child:
    """One server process, and the pipe on which it says it serves.

    :param command: the command line, which names the inherited descriptors.
    :param pass_fds: descriptors the child inherits (the listener, the pipe's write end).
    :param ready_fd: read end of the readiness pipe.
    """

    def __init__(self, command: list[str], pass_fds: tuple[int, ...], ready_fd: int) -> None:
        self.proc = subprocess.Popen(command, pass_fds=pass_fds)
        self.ready_fd = ready_fd
        self.exited = gevent.spawn(self.proc.wait)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def wait_ready(self, timeout: float, cancel: Event) -> bool:
        """Wait until the child says it serves.

        :returns: ``False`` when it exited first, ``timeout`` ran out or ``cancel`` was set
            (the parent is asked to stop meanwhile).
        """
        gevent.os.make_nonblocking(self.ready_fd)
        reader = gevent.spawn(gevent.os.nb_read, self.ready_fd, 1)
        try:
            gevent.wait([reader, cancel], timeout=timeout, count=1)
            return reader.ready() and reader.value == READY
        finally:
            reader.kill()
            os.close(self.ready_fd)

    def stop(self) -> None:
        """Ask the child to drain and exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


class Master:
    """The parent process of ``--handover``: holds the listener, runs and replaces children.

    :param config: the bench configuration (where to listen).
    :param argv: the ``gsocket`` arguments this process got, repeated to every child.
    """

    def __init__(self, config: Config, argv: Sequence[str]) -> None:
        self.config = config
        # argparse also takes an abbreviation (--hand): a child must never be a parent again.
        self.argv = [a for a in argv if not (a.startswith("--ha") and "--handover".startswith(a))]
        self._hup = Event()
        self._stop = Event()
        self._current: Child | None = None
        self._retiring: list[Child] = []

    def spawn(self, listen_fd: int) -> Child:
        """Start a child serving the socket ``listen_fd``."""
        ready_r, ready_w = os.pipe()
        command = [
            sys.executable,
            "-m",
            "gsocket",
            *self.argv,
            "--listen-fd",
            str(listen_fd),
            "--ready-fd",
            str(ready_w),
        ]
        try:
            child = Child(command, (listen_fd, ready_w), ready_r)
        finally:
            os.close(ready_w)
        log.info("started server process %d", child.pid)
        return child

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            log.info("received SIGHUP: handing over to a new server process")
            self._hup.set()
        elif self._stop.is_set():
            log.warning("received %s again: killing the server processes", name)
            for child in (*self._retiring, self._current):
                if child is not None:
                    child.proc.kill()
            os._exit(1)
        else:
            log.info("received %s: stopping the server processes", name)
            self._stop.set()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status of the serving child."""
        listener = open_listener(self.config)
        where = self.config.uds or f"{self.config.host}:{self.config.port}"
        log.info("listening on %s; the server process takes the connections", where)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            gevent.signal_handler(signum, self._on_signal, signum)
        started = time.monotonic()
        current = self._current = self.spawn(listener.fileno())
        if not current.wait_ready(READY_TIMEOUT, self._stop):
            if self._stop.is_set():
                return self._shutdown(current)
            return self._failed_start(current)
        log.info("serving %.2f s after start", time.monotonic() - started)
        while True:
            gevent.wait([self._stop, self._hup, current.exited], count=1)
            if self._stop.is_set():
                return self._shutdown(current)
            if current.exited.ready():
                log.error("the server process %d exited with %s", current.pid, current.exited.value)
                self._stop_retiring()
                return current.exited.value or 1
            self._hup.clear()
            current = self._current = self._handover(current, listener.fileno())

    def _failed_start(self, child: Child) -> int:
        # A child that closed the pipe by exiting is reaped in a moment.
        child.exited.join(timeout=5.0)
        if child.exited.ready():
            log.error("the server process exited with %s before serving", child.exited.value)
            return child.exited.value or 1
        log.error("the server process did not serve within %.0f s", READY_TIMEOUT)
        child.proc.kill()
        child.exited.join()
        return 1

    def _handover(self, old: Child, listen_fd: int) -> Child:
        """Start a new child; once it serves, drain ``old``.  Returns the child now serving."""
        started = time.monotonic()
        new = self.spawn(listen_fd)
        if not new.wait_ready(READY_TIMEOUT, self._stop):
            if not new.exited.ready():
                new.proc.kill()
            if not self._stop.is_set():
                log.error("the new server process %d did not serve; %d goes on", new.pid, old.pid)
            return old
        log.info(
            "server process %d serves (%.2f s after SIGHUP); %d drains",
            new.pid,
            time.monotonic() - started,
            old.pid,
        )
        old.stop()
        self._retiring = [c for c in (*self._retiring, old) if not c.exited.ready()]
        return new

    def _stop_retiring(self) -> None:
        for child in self._retiring:
            child.stop()
        gevent.joinall([c.exited for c in self._retiring])

    def _shutdown(self, current: Child) -> int:
        current.stop()
        self._stop_retiring()
        code = current.exited.get()
        log.info("the server process exited with %s", code)
        # Stopped by our SIGTERM before it had its handlers in place: a stop, not a failure.
        return 0 if code == -signal.SIGTERM else code


def watch_parent(on_orphaned: Event, interval: float = 1.0) -> gevent.Greenlet:
    """In a child: set ``on_orphaned`` when the parent process is gone (it was killed).

    :param interval: seconds between two looks at the parent process id.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            gevent.sleep(interval)
        log.warning("the handover parent process %d is gone: stopping", parent)
        on_orphaned.set()

    return gevent.spawn(watch)
