"""Engine.IO over HTTP: which requests are Engine.IO's, how an accepted one is answered, and
the request handler every connection is served by.

python-engineio answers some requests otherwise than the specification, Node's reference
server and the protocol's official test suite: a request without ``transport`` or with
another method than GET/POST/OPTIONS is answered 400 here (:func:`request_refusal`), an
accepted POST ``ok`` (:func:`accepted_post`), and a request that asked to close the
connection is told ``Connection: close`` (:class:`LeanWebSocketHandler`).  Verified against
python-engineio 4.11.0 and 4.15.1, gevent 24.11.1 to 26.9.0 and gevent-websocket 0.10.1.

:class:`LeanWebSocketHandler` serves the connections with a smaller read buffer than gevent's
default (the buffer lives as long as the connection).
"""

from __future__ import annotations

import socket as pysocket
from typing import Any
from urllib.parse import parse_qs

from gsocket.protocol.headers import read_headers, remember_short
from gsocket.protocol.internals.gevent_hooks import HookedWSGIHandler

READ_BUFFER = 1024
"""Bytes of each connection's read buffer (gevent's default is 8 KiB, held for the whole life
of a websocket): what clients send over a websocket is small, and a desk's request headers
take two reads instead of one."""

ENGINEIO_METHODS = frozenset({"GET", "POST", "OPTIONS"})
"""HTTP methods of Engine.IO requests (OPTIONS for CORS preflights)."""
POST_ACCEPTED = b"ok"
"""The body of the answer to an accepted polling POST, as Node's reference server writes it."""


def request_refusal(environ: dict[str, Any]) -> str | None:
    """Why an Engine.IO request is answered 400 before python-engineio sees it, or ``None``.

    python-engineio answers other methods (PUT, DELETE ...) 405 and takes a request without
    ``transport`` for a polling one, opening a session for a handshake that names no
    transport.  Engine.IO, Node's reference server and the protocol's test suite refuse
    both with 400.
    """
    method = environ.get("REQUEST_METHOD")
    if method not in ENGINEIO_METHODS:
        return f"Bad request method {method}"
    if method != "OPTIONS" and not names_transport(environ.get("QUERY_STRING", "")):
        return "Transport unknown"
    return None


@remember_short(256)
def names_transport(query: str) -> bool:
    """Whether a query string gives ``transport`` a value (as ``parse_qs`` reads it).

    Every websocket-only client of one kind sends the same query string
    (``EIO=4&transport=websocket``), so short ones are answered from a small cache.
    """
    return "transport" in parse_qs(query)


def accepted_post(environ: dict[str, Any], answer: Any) -> Any:
    """The answer to a request as Engine.IO words it: an accepted polling POST is ``ok``
    (python-engineio 4.11.0 to 4.15.1 write ``OK``; its clients accept either, the protocol's
    test suite only ``ok``).  Its answer has no Content-Length, so the body can change."""
    if environ.get("REQUEST_METHOD") == "POST" and answer == [b"OK"]:
        return [POST_ACCEPTED]
    return answer


class ScreenedWebSocketHandler(HookedWSGIHandler):
    """gevent-websocket's request handler, answering a malformed websocket handshake cleanly.

    gevent-websocket answers a bad handshake (unknown ``Sec-WebSocket-Version``, missing key)
    with a ``str`` body that gevent's WSGI server cannot write: the client gets no answer and
    the log a traceback per request.  Use it as ``HookedWSGIServer(handler_class=...)`` (a plain
    ``WSGIServer`` serves it too, but without parking idle websockets).
    """

    def upgrade_websocket(self) -> Any:
        """Upgrade, or return the refusal's body as bytes."""
        result = super().upgrade_websocket()
        if isinstance(result, list):
            return [r.encode() if isinstance(r, str) else r for r in result]
        return result


class LeanWebSocketHandler(ScreenedWebSocketHandler):
    """gsocket's request handler (gevent-websocket's, handshake refusals answered cleanly),
    reading through a :data:`READ_BUFFER`-byte buffer instead of gevent's 8 KiB one, and
    reading request headers with :func:`gsocket.protocol.headers.read_headers` (both through
    :class:`~gsocket.protocol.internals.gevent_hooks.HookedWSGIHandler`), holding a websocket
    upgrade's ``101`` answer back for the session's first frames, and sending without
    Nagle's delay (as Node's ``ws`` does): a frame written while the client still holds back
    its acknowledgement of the previous one would otherwise wait up to 40 ms for it."""

    header_reader = read_headers
    read_buffer = READ_BUFFER
    defer_upgrade_answer = True
    """The ``101`` answer of a websocket upgrade goes out with the session's first frames, in
    one ``send`` of the transport's flush (:meth:`gsocket.protocol.transport.Transport.attach`):
    written on its own from the request's greenlet it was the dearest ``send`` of a connect
    (the client, woken for it alone, is charged to the server on loopback)."""

    def __init__(self, sock: Any, address: Any, server: Any, *args: Any, **kwargs: Any) -> None:
        if sock.family in _TCP_FAMILIES:
            try:
                sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
            except OSError:
                pass  # already reset by the peer: the handler finds out when it reads
        super().__init__(sock, address, server, *args, **kwargs)

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Any:
        """Start the answer; one to an HTTP/1.1 request that asked to close the connection
        says ``Connection: close`` (RFC 9112 section 9.6), which gevent leaves out.

        Without it, a client that keeps connections alive by default (Node 19 and newer,
        whatever the request said) reuses the connection gevent closes after the answer,
        and its next request fails with "socket hang up".
        """
        if (
            self.close_connection
            and self.request_version == "HTTP/1.1"
            and not any(name.lower() == "connection" for name, _ in headers)
        ):
            headers = [*headers, ("Connection", "close")]
        return super().start_response(status, headers, exc_info)


_TCP_FAMILIES = (pysocket.AF_INET, pysocket.AF_INET6)
