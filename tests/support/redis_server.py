"""A throw-away real ``redis-server`` for tests.

gsocket's bridge must survive Redis crashes and restarts, and the web process stores the socket
secret in Redis; both are only credible against the real server, so tests get a private
instance on a free loopback port, without persistence, that they can kill and bring back.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import subprocess
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType

import redis

from .ports import free_port

log = logging.getLogger("gsocket.tests.redis_server")

REDIS_BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"

_live: weakref.WeakSet[RedisServer] = weakref.WeakSet()


def _kill_all_live() -> None:
    """Kill every instance still running at interpreter exit, so a failed test leaks nothing."""
    for server in list(_live):
        server.kill()


atexit.register(_kill_all_live)


class RedisServer:
    """One private ``redis-server`` process in ``tmpdir``.

    The port is chosen on the first ``start()`` and kept for the object's life, so that
    ``restart()`` brings Redis back where gsocket expects it, like a bench's supervisor does.
    """

    def __init__(self, tmpdir: Path, port: int | None = None) -> None:
        self.dir = Path(tmpdir)
        self.port: int = port or 0
        self.log_path = self.dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT``, the form Frappe's ``redis_queue`` setting uses."""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may not answer PING yet)."""
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        """A new redis-py client for this server (``decode_responses`` etc. via kwargs)."""
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, **kwargs)

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Launch the server and return once it answers PING.

        A bind can fail right after a kill on the same port (or, on first start, because
        another process grabbed the port we picked), so a process that exits during startup
        is retried until ``timeout``; on first start a fresh port is picked for each retry.
        """
        with self._lock:
            if self.running:
                return self
            self.dir.mkdir(parents=True, exist_ok=True)
            fixed_port = self.port != 0
            deadline = time.monotonic() + timeout
            while True:
                if not fixed_port:
                    self.port = free_port()
                self._proc = self._spawn()
                _live.add(self)
                if self._wait_ready(deadline):
                    log.debug("redis-server pid %s ready on %s", self._proc.pid, self.port)
                    return self
                self._reap()
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start on port {self.port} "
                        f"within {timeout}s:\n{self._log_tail()}"
                    )
                time.sleep(0.05)

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = [
            REDIS_BINARY,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--protected-mode", "no",
        ]  # fmt: skip
        return subprocess.Popen(
            args,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_ready(self, deadline: float) -> bool:
        """Poll PING until it answers (True) or the process dies or time runs out (False)."""
        assert self._proc is not None
        probe = self.client()
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    return False
                try:
                    if probe.ping():
                        return True
                except redis.ConnectionError:
                    pass
                time.sleep(0.02)
            return False
        finally:
            probe.close()

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return "(no redis log)"

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown, clients see a dropped socket."""
        with self._lock:
            self._reap()

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate gracefully (SIGTERM), falling back to SIGKILL after ``timeout``."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("redis-server %s ignored SIGTERM, killing", proc.pid)
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

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
