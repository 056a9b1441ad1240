"""A private ``redis-server`` on loopback: the demo's Redis, the test suite's and the benchmarks'.

gsocket's bridge must survive Redis crashes and restarts, and the web process stores the socket
secret in Redis; both are only credible against the real server.  Every local stack therefore
starts the system's ``redis-server`` the same way: on a free loopback port, without
persistence, its log in a file, able to be killed (a crash) and brought back on the same port
(a restart under supervisor).  This is the one launcher.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

from gsocket.demo.ports import LOOPBACK, free_port
from gsocket.demo.processes import Child, log_tail, wait_until

log = logging.getLogger("gsocket.demo.redis_server")

NOT_FOUND = "redis-server not found on PATH (Debian/Ubuntu: apt-get install redis-server)"

_live: weakref.WeakSet[RedisServer] = weakref.WeakSet()


def _kill_all_live() -> None:
    """Kill every instance still running at interpreter exit, so a failed run leaks nothing."""
    for server in list(_live):
        server.kill()


atexit.register(_kill_all_live)


def redis_binary() -> str | None:
    """The ``redis-server`` on PATH, or ``None``."""
    return shutil.which("redis-server")


class RedisServer:
    """One private ``redis-server`` process keeping its log in ``directory/redis.log``.

    The port is chosen on the first ``start()`` and kept for the object's life, so that
    ``restart()`` brings Redis back where gsocket expects it, like a bench's supervisor does.

    :param directory: its working folder (created); nothing is persisted there.
    :param port: a fixed port; by default a free one.
    :param extra_args: more ``redis-server`` options (a benchmark lifts the pub/sub output
        buffer limit with ``--client-output-buffer-limit "pubsub 0 0 0"``).
    :param tie_to_parent: see :class:`~gsocket.demo.processes.Child`.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        extra_args: Sequence[str] = (),
        tie_to_parent: bool = False,
    ) -> None:
        self.dir = Path(directory)
        self.port: int = port or 0
        self.log_path = self.dir / "redis.log"
        self.extra_args = list(extra_args)
        self.tie_to_parent = tie_to_parent
        self.child: Child | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``, the form Frappe's ``redis_queue`` setting uses."""
        return f"redis://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may not answer PING yet)."""
        return self.child is not None and self.child.alive()

    def client(self, **kwargs: object) -> redis.Redis:
        """A new redis-py client for this server (``decode_responses`` etc. via kwargs)."""
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, **kwargs)

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Launch the server and return once it answers PING.

        A bind can fail right after a kill on the same port (or, on first start, because
        another process grabbed the port picked), so a process that exits during startup is
        retried until ``timeout``; on first start a fresh port is picked for each retry.

        :raises RuntimeError: no ``redis-server``, or it did not answer within ``timeout``
            (with the end of its log).
        """
        binary = redis_binary()
        if binary is None:
            raise RuntimeError(NOT_FOUND)
        with self._lock:
            if self.running:
                return self
            self.dir.mkdir(parents=True, exist_ok=True)
            fixed_port = self.port != 0
            deadline = time.monotonic() + timeout
            while True:
                if not fixed_port:
                    self.port = free_port()
                self.child = self._spawn(binary)
                _live.add(self)
                if self._wait_ready(self.child, deadline):
                    log.debug("redis-server pid %s ready on %s", self.child.pid, self.port)
                    return self
                self._reap()
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start on port {self.port} within {timeout:g} s:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.05)

    def _spawn(self, binary: str) -> Child:
        args = [
            binary,
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            *self.extra_args,
        ]  # fmt: skip
        return Child(
            "redis-server",
            args,
            log_path=self.log_path,
            cwd=self.dir,
            tie_to_parent=self.tie_to_parent,
        )

    def _wait_ready(self, child: Child, deadline: float) -> bool:
        """Wait until PING answers (True), or the process dies or time runs out (False)."""
        probe = self.client()

        def answers_or_exited() -> bool:
            if not child.alive():
                return True
            try:
                return bool(probe.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_until(answers_or_exited, deadline - time.monotonic())
        except TimeoutError:
            return False
        finally:
            probe.close()
        return child.alive()

    def _reap(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.kill()

    def log_tail(self, lines: int = 20) -> str:
        """The end of its log, for a failure message."""
        return log_tail(self.log_path, lines)

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self.child.pid if self.child is not None else None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown, clients see a dropped socket."""
        with self._lock:
            self._reap()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate gracefully (SIGTERM), falling back to SIGKILL after ``timeout``."""
        with self._lock:
            if self.child is not None:
                self.child.stop(timeout)
            self._reap()

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Kill if running, then start again on the same port."""
        self.kill()
        return self.start(timeout=timeout)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
