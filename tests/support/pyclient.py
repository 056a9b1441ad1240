"""A python-socketio client that records what it receives, for assertions with timeouts.

The pytest process is not gevent-patched, so this is python-socketio's ordinary threaded
client talking to the gsocket process over real HTTP and websockets.
"""

from __future__ import annotations

import os
import selectors
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import requests
import socketio


class SerialTLSSocket(ssl.SSLSocket):
    """A TLS socket that never lets two threads into OpenSSL at once.

    python-engineio's client reads its websocket in one thread while another writes to it, and
    CPython's ``ssl`` lets both into OpenSSL on the same connection, which OpenSSL does not
    support.  Over TLS about one websocket in a thousand then read a false end of stream just
    after the upgrade, while the socket's CONNECT was being written: the client closed its own
    connection (nginx saw the client's FIN first, gsocket a clean EOF), and the test blamed the
    server.  Here every read and write runs under one lock and never blocks inside it: a call
    that would wait leaves the lock and waits for the socket outside, then tries again.
    """

    _creating = threading.Lock()

    def _serial(self) -> threading.Lock:
        with SerialTLSSocket._creating:
            lock = self.__dict__.get("_serial_lock")
            if lock is None:
                lock = self.__dict__["_serial_lock"] = threading.Lock()
        return lock

    def _one_at_a_time(self, call: Callable[[], Any]) -> Any:
        lock = self._serial()
        with lock:
            timeout = self.gettimeout()
            if timeout == 0.0:
                return call()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with lock:
                timeout = self.gettimeout()
                super().settimeout(0.0)
                try:
                    return call()
                except ssl.SSLWantReadError:
                    event = selectors.EVENT_READ
                except ssl.SSLWantWriteError:
                    event = selectors.EVENT_WRITE
                finally:
                    super().settimeout(timeout)
            remaining = None if deadline is None else deadline - time.monotonic()
            with selectors.DefaultSelector() as selector:
                selector.register(self, event)
                if (remaining is not None and remaining <= 0) or not selector.select(remaining):
                    raise TimeoutError("timed out")

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        """Read what the connection has, waiting for it outside the lock."""
        return self._one_at_a_time(lambda: super(SerialTLSSocket, self).recv(buflen, flags))

    def send(self, data: Any, flags: int = 0) -> int:
        """Write what the kernel takes, waiting for room outside the lock."""
        return self._one_at_a_time(lambda: super(SerialTLSSocket, self).send(data, flags))

    def settimeout(self, value: float | None) -> None:
        """Change the timeout between two calls, never during one."""
        with self._serial():
            super().settimeout(value)


def websocket_tls(verify: bool) -> ssl.SSLContext:
    """The TLS context of a client's websocket: :class:`SerialTLSSocket` connections that check
    the server's certificate (against ``REQUESTS_CA_BUNDLE`` when set, as the client's polling
    requests do) or, with ``verify`` off, accept any."""
    if verify:
        context = ssl.create_default_context(cafile=os.environ.get("REQUESTS_CA_BUNDLE") or None)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.sslsocket_class = SerialTLSSocket
    return context


class PyClient:
    """One Socket.IO connection to one site namespace.

    :param transports: ``["polling", "websocket"]`` (polling first, then upgrade, like the
        desk) or ``["websocket"]`` (like mobile clients).
    :param ssl_verify: check the server's certificate (off for a test nginx's self-signed one,
        where the client's trust is not what is tested).
    :param reconnection: reconnect when the connection is lost, as the desk does.
    """

    def __init__(
        self,
        transports: list[str] | None = None,
        ssl_verify: bool = True,
        reconnection: bool = False,
    ) -> None:
        self.transports = transports or ["polling", "websocket"]
        session = None
        if not ssl_verify:
            # requests would take REQUESTS_CA_BUNDLE from the environment over verify=False
            session = requests.Session()
            session.trust_env = False
            session.verify = False
        self.client = socketio.Client(
            reconnection=reconnection,
            reconnection_delay=0.2,
            reconnection_delay_max=1,
            ssl_verify=ssl_verify,
            http_session=session,
            websocket_extra_options={"sslopt": {"context": websocket_tls(ssl_verify)}},
        )
        self.received: list[tuple[str, str, tuple[Any, ...]]] = []
        self.namespace: str | None = None
        self._cond = threading.Condition()
        self.client.on("*", self._record, namespace="*")
        self.client.on(
            "connect_error",
            lambda namespace, data=None: self._record("connect_error", namespace, data),
            namespace="*",
        )

    def _record(self, event: str, namespace: str, *args: Any) -> None:
        with self._cond:
            self.received.append((event, namespace, args))
            self._cond.notify_all()

    def connect(
        self, base_url: str, namespace: str, headers: dict[str, str], timeout: float = 10.0
    ) -> PyClient:
        """Connect to ``namespace``; raises ``socketio.exceptions.ConnectionError`` if refused."""
        self.namespace = namespace
        self.client.connect(
            base_url,
            headers=headers,
            transports=self.transports,
            namespaces=[namespace],
            wait_timeout=timeout,
        )
        return self

    @property
    def sid(self) -> str | None:
        """The sid the server gave this socket in its namespace."""
        return self.client.get_sid(self.namespace)

    @property
    def transport(self) -> str:
        """The Engine.IO transport in use now."""
        return self.client.transport()

    def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` with positional ``args``."""
        self.client.emit(event, args if len(args) != 1 else args[0], namespace=self.namespace)

    def call(self, event: str, *args: Any, timeout: float = 5.0) -> Any:
        """Send ``event`` and wait for its acknowledgement."""
        data = tuple(args) if len(args) != 1 else args[0]
        return self.client.call(event, data, namespace=self.namespace, timeout=timeout)

    def events(self, name: str) -> list[tuple[Any, ...]]:
        """Argument tuples of every ``name`` event received so far."""
        with self._cond:
            return [args for event, _, args in self.received if event == name]

    def wait_for(
        self,
        name: str,
        predicate: Callable[[tuple[Any, ...]], bool] | None = None,
        timeout: float = 5.0,
    ) -> tuple[Any, ...]:
        """Wait for an event called ``name`` (matching ``predicate``) and return its args."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event, _, args in self.received:
                    if event == name and (predicate is None or predicate(args)):
                        return args
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no {name!r} event within {timeout}s; got {self.received!r}"
                    )
                self._cond.wait(remaining)

    def disconnect(self) -> None:
        """Close the connection."""
        self.client.disconnect()
