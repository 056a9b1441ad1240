"""A small keep-alive HTTP/1.1 client for the calls made to the web process.

Every connect asks the web process who the client is, and every ``doc_subscribe`` asks whether
it may read: during a reconnect storm that is thousands of calls a second.  requests spends
about a millisecond of CPU on each (request preparation, hooks, cookie jars, header parsing
through the ``email`` package); a connect costs about two.  These calls need little of it: a
GET with a few headers to one host, an answer of a few hundred bytes.  :class:`Pool` writes the
request in one ``send`` on a pooled keep-alive connection and reads ``Content-Length`` or
chunked answers.

What it does not do is left to requests by the caller: https (certificate checks with the same
CA bundle) and redirects (:class:`Redirected` says where).
"""

from __future__ import annotations

import json
import socket as pysocket
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from gevent import socket as gsocket
from gevent.lock import BoundedSemaphore

MAX_HEADER_BYTES = 64 * 1024
WAIT_FOR_CONNECTION = 30.0
"""Seconds a call may wait for one of the pool's connections before it is given up.  The
call's own time limit starts once it has a connection: a storm of 20 000 ``doc_subscribe``
checks queues for seconds behind 128 connections to a healthy web process, and that wait says
nothing about the web process being slow."""
MAX_BODY_BYTES = 16 * 1024 * 1024
RESOLVE_TTL = 30.0
"""Seconds a host name's addresses are reused: gevent resolves in a thread pool, which cost
a quarter of a connect's CPU when every call to a web process that closes its connections
(gunicorn's sync workers) resolved again."""


class HTTPFailure(Exception):
    """The call did not produce an answer: connection refused, reset, or malformed answer."""


class HTTPTimeout(HTTPFailure):
    """No complete answer within the call's time limit."""


class PoolBusy(HTTPTimeout):
    """Every connection to the host stayed busy for :data:`WAIT_FOR_CONNECTION` seconds."""


class Redirected(Exception):
    """The web process answered with a redirect (followed by the caller's other client)."""


class Response:
    """An answer: status, headers (lower-case names) and the whole body."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON.

        :raises ValueError: it is not JSON.
        """
        return json.loads(self.content)


class _Connection:
    """One keep-alive connection and the bytes read past the last answer."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = bytearray()

    def alive(self) -> bool:
        """An idle connection has nothing to read; EOF or stray bytes mean it is unusable."""
        try:
            return not self.sock._sock.recv(1, pysocket.MSG_PEEK)
        except BlockingIOError:
            return True
        except (OSError, AttributeError):
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Pool:
    """Pooled plain-HTTP GETs with a time limit per call.

    :param timeout: seconds for one call, from the moment it has a connection.
    :param maxsize: connections open to one host; more calls at once wait for one (like
        Node's agent ``maxSockets``): a reconnect storm then reuses warm connections instead
        of opening (and closing) hundreds.
    :param wait: seconds a call may wait for a connection (:data:`WAIT_FOR_CONNECTION`).
    """

    def __init__(
        self, timeout: float, maxsize: int = 50, wait: float = WAIT_FOR_CONNECTION
    ) -> None:
        self.timeout = timeout
        self.maxsize = maxsize
        self.wait = wait
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, tuple[str, int, str, str]] = {}
        self._addresses: dict[tuple[str, int], tuple[float, list[tuple[int, Any]]]] = {}
        self._slots: dict[tuple[str, int], BoundedSemaphore] = {}

    def close(self) -> None:
        """Close every idle connection."""
        for connections in self._idle.values():
            for conn in connections:
                conn.close()
        self._idle.clear()

    def get(
        self, url: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        """GET ``url`` (``http://`` only) with ``params`` as its query.

        :raises HTTPTimeout: no complete answer within the time limit.
        :raises PoolBusy: no connection to the host came free in time.
        :raises HTTPFailure: no connection, or the answer is not HTTP/1.x.
        :raises Redirected: a 3xx answer with a ``Location``.
        """
        host, port, host_header, path = self._target(url)
        if params:
            path += ("&" if "?" in path else "?") + urlencode(params)
        lines = [f"GET {path} HTTP/1.1", f"Host: {host_header}"]
        lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        key = (host, port)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = BoundedSemaphore(self.maxsize)
        if not slots.acquire(timeout=self.wait):
            raise PoolBusy(
                f"all {self.maxsize} connections to {host}:{port} stayed busy for {self.wait:g} s"
            )
        try:
            return self._call(key, host, port, request, time.monotonic() + self.timeout)
        finally:
            slots.release()

    def _call(
        self, key: tuple[str, int], host: str, port: int, request: bytes, deadline: float
    ) -> Response:
        conn = self._checkout(key)
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._open(host, port, deadline)
            try:
                response, reusable = self._exchange(conn, request, deadline)
            except _Stale:
                conn.close()
                if not reused:
                    raise HTTPFailure("connection closed before an answer") from None
                conn, reused = None, False
                continue
            except BaseException:
                conn.close()
                raise
            break
        if reusable:
            self._checkin(key, conn)
        else:
            conn.close()
        if 300 <= response.status_code < 400 and "location" in response.headers:
            raise Redirected(response.headers["location"])
        return response

    def _target(self, url: str) -> tuple[str, int, str, str]:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"not a plain http URL: {url!r}")
            port = parts.port or 80
            host_header = parts.hostname if port == 80 else f"{parts.hostname}:{port}"
            if ":" in parts.hostname:
                host_header = f"[{parts.hostname}]" + ("" if port == 80 else f":{port}")
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            target = (parts.hostname, port, host_header, path)
            if len(self._targets) < 1000:
                self._targets[url] = target
        return target

    def _checkout(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.alive():
                return conn
            conn.close()
        return None

    def _checkin(self, key: tuple[str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self.maxsize:
            idle.append(conn)
        else:
            conn.close()

    def _resolve(self, host: str, port: int) -> list[tuple[int, Any]]:
        """``(family, address)`` to try for ``host``: an IP literal as is, a name resolved
        at most every :data:`RESOLVE_TTL` seconds."""
        for family in (pysocket.AF_INET, pysocket.AF_INET6):
            try:
                pysocket.inet_pton(family, host)
            except OSError:
                continue
            return [(family, (host, port))]
        key = (host, port)
        cached = self._addresses.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        found = [
            (family, address)
            for family, _, _, _, address in gsocket.getaddrinfo(host, port, 0, pysocket.SOCK_STREAM)
        ]
        if found:
            self._addresses[key] = (now + RESOLVE_TTL, found)
        return found

    def _open(self, host: str, port: int, deadline: float) -> _Connection:
        error: Exception = OSError("no address")
        try:
            addresses = self._resolve(host, port)
        except OSError as e:
            raise HTTPFailure(f"cannot resolve {host}: {e}") from None
        for family, address in addresses:
            sock = gsocket.socket(family, pysocket.SOCK_STREAM)
            try:
                sock.settimeout(_remaining(deadline))
                sock.connect(address)
            except TimeoutError:
                sock.close()
                raise HTTPTimeout(f"no connection to {host}:{port} in time") from None
            except OSError as e:
                sock.close()
                error = e
                continue
            sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
            return _Connection(sock)
        self._addresses.pop((host, port), None)
        raise HTTPFailure(f"cannot connect to {host}:{port}: {error}")

    def _exchange(
        self, conn: _Connection, request: bytes, deadline: float
    ) -> tuple[Response, bool]:
        """Send the request and read the answer; ``_Stale`` if the connection was dead."""
        sock = conn.sock
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(request)
            head = self._read_head(conn, deadline)
        except _Stale:
            raise
        except TimeoutError:
            raise HTTPTimeout("the web process did not answer in time") from None
        except (BrokenPipeError, ConnectionResetError):
            raise _Stale from None
        except OSError as e:
            raise HTTPFailure(f"connection failed: {e}") from None
        status_line, _, header_block = head.partition(b"\r\n")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise HTTPFailure(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in header_block.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        keep_alive = parts[0] == b"HTTP/1.1"
        connection = headers.get("connection", "").lower()
        if "close" in connection:
            keep_alive = False
        elif "keep-alive" in connection:
            keep_alive = True
        try:
            if status in (204, 304) or 100 <= status < 200:
                body = b""
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                body = self._read_chunked(conn, deadline)
            elif "content-length" in headers:
                try:
                    length = int(headers["content-length"])
                except ValueError:
                    raise HTTPFailure("bad Content-Length") from None
                if not 0 <= length <= MAX_BODY_BYTES:
                    raise HTTPFailure(f"Content-Length {length} out of bounds")
                body = self._read_exactly(conn, length, deadline)
            else:
                body = self._read_to_close(conn, deadline)
                keep_alive = False
        except TimeoutError:
            raise HTTPTimeout("the web process did not finish its answer in time") from None
        except OSError as e:
            raise HTTPFailure(f"connection failed while reading: {e}") from None
        return Response(status, headers, body), keep_alive

    @staticmethod
    def _recv(conn: _Connection, deadline: float) -> bytes:
        conn.sock.settimeout(_remaining(deadline))
        return conn.sock.recv(65536)

    def _read_head(self, conn: _Connection, deadline: float) -> bytes:
        return self._read_until(conn, deadline, b"\r\n\r\n", "answer headers", stale=True)

    def _read_until(
        self, conn: _Connection, deadline: float, sep: bytes, what: str, stale: bool = False
    ) -> bytes:
        """Read up to ``sep`` (returned without it, consumed); ``what`` names the part in the
        error when it grows past :data:`MAX_HEADER_BYTES`.  With ``stale``, a connection that
        closes before sending anything is a kept-alive one the web process had closed."""
        buf = conn.buf
        first = True
        while True:
            end = buf.find(sep)
            if end >= 0:
                part = bytes(buf[:end])
                del buf[: end + len(sep)]
                return part
            if len(buf) > MAX_HEADER_BYTES:
                raise HTTPFailure(f"{what} too long")
            data = self._recv(conn, deadline)
            if not data:
                if stale and first and not buf:
                    raise _Stale
                raise HTTPFailure("connection closed in the middle of the answer")
            first = False
            buf += data

    def _read_exactly(self, conn: _Connection, length: int, deadline: float) -> bytes:
        buf = conn.buf
        while len(buf) < length:
            data = self._recv(conn, deadline)
            if not data:
                raise HTTPFailure("connection closed in the middle of the answer")
            buf += data
        body = bytes(buf[:length])
        del buf[:length]
        return body

    def _read_line(self, conn: _Connection, deadline: float) -> bytes:
        return self._read_until(conn, deadline, b"\r\n", "chunk header")

    def _read_chunked(self, conn: _Connection, deadline: float) -> bytes:
        chunks = []
        total = 0
        while True:
            size_line = self._read_line(conn, deadline).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise HTTPFailure("bad chunk size") from None
            if size == 0:
                while self._read_line(conn, deadline):  # trailers, up to the blank line
                    pass
                return b"".join(chunks)
            total += size
            if total > MAX_BODY_BYTES:
                raise HTTPFailure("answer too long")
            chunks.append(self._read_exactly(conn, size, deadline))
            if self._read_line(conn, deadline):
                raise HTTPFailure("chunk not followed by CRLF")

    def _read_to_close(self, conn: _Connection, deadline: float) -> bytes:
        buf = conn.buf
        while True:
            data = self._recv(conn, deadline)
            if not data:
                body = bytes(buf)
                buf.clear()
                return body
            buf += data
            if len(buf) > MAX_BODY_BYTES:
                raise HTTPFailure("answer too long")


class _Stale(Exception):
    """A pooled connection turned out closed before any answer: retry on a new one."""


def _remaining(deadline: float) -> float:
    """Seconds left before ``deadline``; an expired one still gets a moment (raises soon)."""
    return max(0.001, deadline - time.monotonic())
