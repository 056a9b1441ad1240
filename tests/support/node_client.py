"""Drive the real Node socket.io-client (``node/client.js``) from Python tests.

The desk's client library is the ground truth for the wire protocol, so tests talk to gsocket
through it: commands go to the driver as JSON lines, and every line it prints (connect,
events, acks, disconnects, ...) is collected by a reader thread that wakes waiters through a
condition variable.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from gsocket.demo.processes import Child

log = logging.getLogger("gsocket.tests.node_client")

NODE_DIR = Path(__file__).resolve().parent / "node"
NODE_BINARY = shutil.which("node") or "node"
NPM_BINARY = shutil.which("npm") or "npm"

Event = dict[str, Any]
Predicate = Callable[[Event], bool]


def _installed(node_dir: Path) -> bool:
    modules = node_dir / "node_modules"
    return (modules / ".package-lock.json").is_file() and (
        modules / "socket.io-client" / "package.json"
    ).is_file()


def ensure_node_modules(node_dir: Path = NODE_DIR, timeout: float = 300.0) -> None:
    """Run ``npm ci`` once if ``node_modules`` is missing.

    Parallel test processes (pytest-xdist, several helpers) would otherwise run ``npm ci`` in
    the same folder at once and wreck each other's install, so the check-and-install happens
    under an exclusive file lock kept outside the repository.
    """
    if _installed(node_dir):
        return
    digest = hashlib.sha1(str(node_dir).encode()).hexdigest()[:12]
    lock_path = Path(tempfile.gettempdir()) / f"gsocket-npm-ci-{digest}.lock"
    with open(lock_path, "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            if _installed(node_dir):
                return
            log.info("installing socket.io-client with npm ci in %s", node_dir)
            result = subprocess.run(
                [NPM_BINARY, "ci", "--no-audit", "--no-fund"],
                cwd=node_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if result.returncode != 0:
                raise RuntimeError(f"npm ci failed in {node_dir}:\n{result.stdout}{result.stderr}")
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


class NodeClient:
    """One ``node client.js`` process holding any number of sockets, each under a test id.

    Every output line is a dict; per-socket lines carry ``"id"``. ``wait_for`` scans all
    lines received so far (from index ``start``), so an event that arrived before the test
    started waiting is still found: use ``mark()`` to wait only for later lines.
    """

    def __init__(self, node_dir: Path = NODE_DIR) -> None:
        self.node_dir = node_dir
        self.lines: list[Event] = []
        self.stderr_lines: list[str] = []
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._child: Child | None = None
        self._threads: list[threading.Thread] = []
        self._exited = False

    # ---- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> NodeClient:
        """Install the client library if needed, start the driver, wait for its ready line."""
        if self._child is not None:
            return self
        ensure_node_modules(self.node_dir)
        self._exited = False
        self._child = Child(
            "node client",
            [NODE_BINARY, "client.js"],
            cwd=self.node_dir,
            stdin=subprocess.PIPE,
            stdout_pipe=True,
            stderr_pipe=True,
            text=True,
        )
        proc = self._child.proc
        assert proc.stdout is not None and proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(proc.stderr,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        try:
            self.wait_for(lambda e: e.get("type") == "ready", timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Ask the driver to exit, and kill it if it does not at once. Safe to call twice."""
        child, self._child = self._child, None
        if child is None:
            return
        proc = child.proc
        try:
            if child.alive():
                try:
                    self._send_to(proc, {"cmd": "exit"})
                    proc.wait(timeout=3)
                except (OSError, ValueError, subprocess.TimeoutExpired):
                    pass
        finally:
            child.kill()
            for thread in self._threads:
                thread.join(timeout=5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def __enter__(self) -> NodeClient:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- reader threads ----------------------------------------------------------------

    def _read_stdout(self, stream: IO[str]) -> None:
        try:
            for raw in stream:
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    event = json.loads(raw)
                except json.JSONDecodeError:
                    event = {"type": "unparsed", "line": raw}
                log.debug("node: %s", raw)
                with self._cond:
                    self.lines.append(event)
                    self._cond.notify_all()
        except ValueError:
            pass  # stream closed under us by stop()
        finally:
            with self._cond:
                self._exited = True
                self._cond.notify_all()

    def _read_stderr(self, stream: IO[str]) -> None:
        try:
            for raw in stream:
                log.debug("node stderr: %s", raw.rstrip())
                with self._cond:
                    self.stderr_lines.append(raw.rstrip("\n"))
        except ValueError:
            pass

    # ---- commands ----------------------------------------------------------------------

    @staticmethod
    def _send_to(proc: subprocess.Popen[str], command: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(command) + "\n")
        proc.stdin.flush()

    def send(self, command: dict[str, Any]) -> None:
        """Write one raw command line to the driver."""
        if self._child is None or not self._child.alive():
            raise RuntimeError(f"node client is not running; stderr: {self.stderr_lines[-20:]}")
        with self._write_lock:
            self._send_to(self._child.proc, command)

    def connect(
        self,
        id: str,
        url: str,
        transports: Sequence[str] = ("polling", "websocket"),
        headers: dict[str, str] | None = None,
        reconnection: bool = False,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Open socket ``id`` to ``url`` (``http://host:port/<namespace>``).

        ``headers`` become socket.io-client ``extraHeaders`` and are sent on every polling
        request and on the websocket upgrade (Cookie, Origin, Authorization,
        X-Frappe-Site-Name, ...). ``options`` are merged into the ``io()`` options last.
        Overriding ``Host`` only reaches the server on the websocket transport.
        """
        self.send(
            {
                "cmd": "connect",
                "id": id,
                "url": url,
                "transports": list(transports),
                "headers": headers or {},
                "reconnection": reconnection,
                "options": options or {},
            }
        )

    def emit(self, id: str, event: str, *args: Any, ack: bool = False) -> int:
        """Emit ``event`` with positional ``args`` on socket ``id``; return the sequence number.

        With ``ack=True`` the server's acknowledgement comes back as
        ``{"type": "ack", "seq": seq, "args": [...]}``.
        """
        seq = next(self._seq)
        self.send(
            {"cmd": "emit", "id": id, "event": event, "args": list(args), "ack": ack, "seq": seq}
        )
        return seq

    def close(self, id: str) -> None:
        """Disconnect socket ``id`` cleanly (a socket.io DISCONNECT, then transport close)."""
        self.send({"cmd": "close", "id": id})

    def drop(self, id: str) -> None:
        """Close socket ``id``'s transport without a DISCONNECT ("transport close")."""
        self.send({"cmd": "drop", "id": id})

    def send_raw(self, id: str, data: str) -> None:
        """Send a raw Socket.IO packet string (e.g. ``'0/site1,'``) on socket ``id``'s engine."""
        self.send({"cmd": "raw", "id": id, "data": data})

    # ---- observing ---------------------------------------------------------------------

    def mark(self) -> int:
        """Index of the next line to arrive; pass it as ``start`` to wait only for later lines."""
        with self._cond:
            return len(self.lines)

    def wait_for(self, predicate: Predicate, timeout: float = 5.0, start: int = 0) -> Event:
        """Return the first line at index >= ``start`` that matches ``predicate``.

        Raises ``TimeoutError`` (with the recent lines) after ``timeout`` seconds, or
        ``RuntimeError`` at once if the driver process has died.
        """
        found: list[Event] = []

        def ready() -> bool:
            for event in itertools.islice(self.lines, start, None):
                if predicate(event):
                    found.append(event)
                    return True
            return self._exited

        with self._cond:
            self._cond.wait_for(ready, timeout=timeout)
            if found:
                return found[0]
            recent = self.lines[-20:]
            if self._exited:
                raise RuntimeError(
                    f"node client exited; last lines {recent}; stderr {self.stderr_lines[-20:]}"
                )
        raise TimeoutError(f"no matching node client line within {timeout}s; last lines {recent}")

    def wait_type(self, id: str, type: str, timeout: float = 5.0, start: int = 0) -> Event:
        """Wait for a line of ``type`` (connect, disconnect, upgrade, ...) on socket ``id``."""
        return self.wait_for(
            lambda e: e.get("id") == id and e.get("type") == type, timeout=timeout, start=start
        )

    def wait_connected(self, id: str, timeout: float = 5.0, start: int = 0) -> Event:
        """Wait until socket ``id`` connects; raise ``AssertionError`` on ``connect_error``."""
        event = self.wait_for(
            lambda e: e.get("id") == id and e.get("type") in ("connect", "connect_error"),
            timeout=timeout,
            start=start,
        )
        if event["type"] == "connect_error":
            raise AssertionError(f"socket {id} was refused: {event}")
        return event

    def wait_event(self, id: str, event: str, timeout: float = 5.0, start: int = 0) -> Event:
        """Wait for incoming socket.io ``event`` on socket ``id``."""
        return self.wait_for(
            lambda e: e.get("id") == id and e.get("type") == "event" and e.get("event") == event,
            timeout=timeout,
            start=start,
        )

    def wait_ack(self, seq: int, timeout: float = 5.0) -> Event:
        """Wait for the acknowledgement of the emit numbered ``seq``."""
        return self.wait_for(lambda e: e.get("type") == "ack" and e.get("seq") == seq, timeout)

    def events(self, id: str, types: Iterable[str] | None = None) -> list[Event]:
        """Lines received so far for socket ``id`` (optionally only of the given types)."""
        wanted = set(types) if types is not None else None
        with self._cond:
            return [
                e
                for e in self.lines
                if e.get("id") == id and (wanted is None or e.get("type") in wanted)
            ]
