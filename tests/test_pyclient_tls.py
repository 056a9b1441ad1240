"""The test client's websocket over TLS lets one thread into OpenSSL at a time.

python-engineio's client (python-socketio's) reads its websocket in one thread while another
writes to it.  Over TLS, CPython's ``ssl`` let both into OpenSSL on the same connection, which
OpenSSL does not support: on the real-bench lane about one websocket in a thousand read a false
end of stream (``SSLEOFError``, which ``ssl`` turns into ``b""``) just after its upgrade, while
its CONNECT was being written.  The client then closed its own connection, and the test reported
gsocket closing it ("transport close" right after the connect).

Here a reader waits on a real TLS connection while another thread writes to it, and a probe on
the connection's OpenSSL object records whether both were ever inside it at once.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.nginx import make_self_signed_cert
from tests.support.pyclient import PyClient, SerialTLSSocket, websocket_tls


class OverlapProbe:
    """Stands for a TLS socket's OpenSSL object and notes when a read and a write overlap."""

    def __init__(self, sslobj: Any) -> None:
        self._sslobj = sslobj
        self._inside = 0
        self._count = threading.Lock()
        self.overlapped = False
        self.reading = threading.Event()

    def _enter(self) -> None:
        with self._count:
            self._inside += 1
            self.overlapped = self.overlapped or self._inside > 1

    def _leave(self) -> None:
        with self._count:
            self._inside -= 1

    def read(self, *args: Any) -> Any:
        self._enter()
        self.reading.set()
        try:
            return self._sslobj.read(*args)
        finally:
            self._leave()

    def write(self, data: Any) -> int:
        self._enter()
        try:
            return self._sslobj.write(data)
        finally:
            self._leave()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sslobj, name)


@pytest.fixture
def tls_echo(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A TLS server answering the first thing each connection sends with ``pong:`` and it."""
    cert, key = make_self_signed_cert(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def answer(conn: socket.socket) -> None:
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"pong:" + tls.recv(1024))
                done.wait(10)
        except OSError:
            pass  # a client that only waited for its timeout left first

    def serve() -> None:
        listener.settimeout(0.1)  # to see ``done``: closing a listener does not end accept()
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    yield listener.getsockname()
    done.set()
    server.join(10)
    listener.close()


def exchange(
    context: ssl.SSLContext, address: tuple[str, int]
) -> tuple[bytes | None, OverlapProbe]:
    """Read in a second thread (as python-engineio's client does) while this thread writes once
    the reader is waiting; return what the reader got (``None``: nothing within 3 s) and the
    probe."""
    tls = context.wrap_socket(socket.create_connection(address), server_hostname="localhost")
    tls.settimeout(3)
    probe = tls._sslobj = OverlapProbe(tls._sslobj)
    answer: list[bytes] = []

    def read() -> None:
        try:
            answer.append(tls.recv(1024))
        except (OSError, ValueError):
            pass  # closed under a reader that got nothing (the control's failure)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert probe.reading.wait(10), "the reader never read"
        tls.send(b"ping")
        reader.join(5)
    finally:
        tls.close()
    return (answer[0] if answer else None), probe


def test_plain_tls_socket_lets_a_write_into_openssl_during_a_read(tls_echo):
    """The control: CPython's own TLS socket runs the write while the read waits inside OpenSSL
    (what made the lane's clients read a false end of stream; here the reader sometimes even
    misses the answer)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    _, probe = exchange(context, tls_echo)
    assert probe.overlapped


def test_client_websocket_tls_never_reads_and_writes_at_once(tls_echo):
    for _ in range(20):
        answer, probe = exchange(websocket_tls(verify=False), tls_echo)
        assert answer == b"pong:ping"
        assert not probe.overlapped


def test_client_websocket_tls_read_still_times_out(tls_echo):
    """Waiting outside the lock keeps the socket's timeout: python-engineio's client relies on
    it to notice a server that stopped answering."""
    tls = websocket_tls(verify=False).wrap_socket(
        socket.create_connection(tls_echo), server_hostname="localhost"
    )
    try:
        tls.settimeout(0.3)
        with pytest.raises(TimeoutError):
            tls.recv(1024)
    finally:
        tls.close()


def test_pyclient_websockets_use_the_serial_tls_socket():
    for verify in (True, False):
        options = PyClient(ssl_verify=verify).client.eio.websocket_extra_options
        assert options["sslopt"]["context"].sslsocket_class is SerialTLSSocket
