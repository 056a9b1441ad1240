"""Request headers read without the ``email`` package.

gevent's WSGI handler hands the header block to ``http.client.parse_headers``, which builds an
``email`` feed parser and a ``Message`` for every request: a tenth of a websocket connect's
CPU in a reconnect storm, for the dozen headers a browser sends.  :func:`read_headers` reads
the same block into :class:`RequestHeaders`, the small part of that message's interface the
handler uses (``status``, ``get``, ``getheader``, ``typeheader``, ``headers``, ``del``).

It is stricter than the ``email`` parser where RFC 9112 asks a server to be: a line without a
colon, or whitespace before the colon, makes the request a 400 instead of silently ending the
headers there.  Obsolete line folding is unfolded into one space (RFC 9112 section 5.2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

MAX_LINE = 65536
"""Longest header line (``http.client``'s bound)."""
MAX_HEADERS = 100
"""Most header lines in one request (``http.client``'s bound)."""
MAX_REMEMBERED = 300
"""Longest header value (or query string, or address) whose parse is remembered: a client
must not fill the caches with its 64 KiB headers (1 024 such values would pin 64 MiB)."""

T = TypeVar("T")


def remember_short(maxsize: int) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Remember ``parse(value, *rest)`` for the last ``maxsize`` values of at most
    :data:`MAX_REMEMBERED` characters; longer ones are parsed every time.

    Every connect sends the same few Host, Origin and query values, and parsing them
    (``urlsplit``, ``parse_qs``) was a few per cent of a connect's CPU.  The returned function
    has the cache's ``cache_info`` and ``cache_clear``.
    """

    def decorate(parse: Callable[..., T]) -> Callable[..., T]:
        cached = functools.lru_cache(maxsize=maxsize)(parse)

        @functools.wraps(parse)
        def remembered(value: str, *rest: Any) -> T:
            if len(value) > MAX_REMEMBERED:
                return parse(value, *rest)
            return cached(value, *rest)

        remembered.cache_info = cached.cache_info  # type: ignore[attr-defined]
        remembered.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return remembered

    return decorate


class RequestHeaders:
    """The headers of one request, in order, looked up without regard to case.

    :param fields: ``(name, value)`` pairs in the order received.
    :param status: why the header block is invalid, or ``""`` (gevent answers 400 when set).
    """

    __slots__ = ("fields", "status", "_first")

    def __init__(self, fields: list[tuple[str, str]], status: str = "") -> None:
        self.fields = fields
        self.status = status
        self._first: dict[str, str] = {}
        for name, value in fields:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default: Any = None) -> Any:
        """The value of the first header called ``name``, or ``default``."""
        return self._first.get(name.lower(), default)

    getheader = get

    @property
    def typeheader(self) -> str | None:
        """``Content-Type`` (gevent's environ reads it under this name)."""
        return self._first.get("content-type")

    @property
    def headers(self) -> Iterator[str]:
        """Each header as a ``"Name: value\\r\\n"`` line, which gevent turns into the environ."""
        for name, value in self.fields:
            yield f"{name}: {value}\r\n"

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        self.fields = [(n, v) for n, v in self.fields if n.lower() != key]
        self._first.pop(key, None)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first


def read_headers(rfile: BinaryIO, *args: Any) -> RequestHeaders:
    """Read a header block up to its empty line from ``rfile``.

    Takes the arguments of gevent's ``WSGIHandler.MessageClass``.  A bad block is returned
    with its ``status`` set, never raised: gevent then answers 400 and logs one line.
    """
    fields: list[tuple[str, str]] = []
    lines = 0
    while True:
        raw = rfile.readline(MAX_LINE + 1)
        if len(raw) > MAX_LINE:
            return RequestHeaders([], "header line too long")
        if raw in (b"\r\n", b"\n", b""):
            return RequestHeaders(fields)
        lines += 1
        if lines > MAX_HEADERS:
            return RequestHeaders([], f"more than {MAX_HEADERS} header lines")
        line = raw.decode("iso-8859-1").rstrip("\r\n")
        if not line:
            return RequestHeaders([], "malformed header line")
        if line[0] in " \t":
            if not fields:
                return RequestHeaders([], "continuation line before the first header")
            name, value = fields[-1]
            more = line.strip(" \t")
            fields[-1] = (name, f"{value} {more}" if value and more else value or more)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or " " in name or "\t" in name:
            return RequestHeaders([], "malformed header line")
        fields.append((name, value.strip(" \t")))
