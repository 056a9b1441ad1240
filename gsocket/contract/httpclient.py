"""The one HTTP/1.1 client of the calls made to the web process: plain http, https, redirects.

Every connect asks the web process who the client is, and every ``doc_subscribe`` asks whether
it may read: during a reconnect storm that is thousands of calls a second.  requests spends
about a millisecond of CPU on each (request preparation, hooks, cookie jars, header parsing
through the ``email`` package); a connect costs about two.  These calls need little of it: a
GET with a few headers to one host, an answer of a few hundred bytes.  :class:`Pool` writes the
request in one ``send`` on a pooled keep-alive connection and reads ``Content-Length`` or
chunked answers.

It keeps nothing of one call for the next but the open connections themselves: no cookie jar,
no stored credentials.  Each call carries exactly the headers its caller gives, on every hop of
a redirect, so one socket's credential can never ride on another socket's call.  https goes
through Python's ``ssl`` (gevent's cooperative sockets) with the trust an operator configures
(:func:`tls_context`); a redirect is followed only to the same host and never from https down
to http, so a credential never leaves the host it was meant for nor travels in clear text.
"""

from __future__ import annotations

import base64
import json
import os
import socket as pysocket
import ssl
import time
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlencode, urljoin, urlsplit

from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.lock import BoundedSemaphore

from gsocket.protocol.internals.gevent_hooks import raw_socket

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
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
PERMANENT_REDIRECTS = frozenset({301, 308})
MAX_REMEMBERED = 1000
"""Bound of the per-URL tables (parsed targets, permanent redirects)."""
DEFAULT_PORTS = {"http": 80, "https": 443}
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
"""Variables naming a CA bundle that operators set for requests and curl; ``SSL_CERT_FILE``
and ``SSL_CERT_DIR`` are read by OpenSSL itself when the system store is loaded."""


def tls_context(ca_file: str | None = None, env: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """The trust for https calls: what an operator has configured, nothing weaker.

    Certificates and host names are always checked.  Trusted are the system's CA store (which
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` replace, as for every OpenSSL program), the bundle named
    by ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` (what the bench's own Python tools trust),
    and ``ca_file``, a private CA of the bench (the ``gsocket.ca_file`` setting).

    :raises OSError: a named CA file cannot be read.
    :raises ssl.SSLError: a named CA file holds no certificate.
    """
    env = os.environ if env is None else env
    context = gssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_default_certs()
    for name in CA_BUNDLE_VARIABLES:
        bundle = env.get(name)
        if bundle:
            _load_ca(context, bundle)
    if ca_file:
        _load_ca(context, ca_file)
    return context


def _load_ca(context: ssl.SSLContext, path: str) -> None:
    if os.path.isdir(path):
        context.load_verify_locations(capath=path)
    else:
        context.load_verify_locations(cafile=path)


class Proxies:
    """The HTTP proxies of the environment (``http_proxy``, ``https_proxy``, ``no_proxy``).

    Read once, and only when an operator asks for them (the ``gsocket.web_proxy_from_env``
    setting): a proxy sees the credentials of every call, so it is never picked up silently.
    Only ``http://`` proxies are supported; https goes through them with ``CONNECT``.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._proxies: dict[str, str] = {}
        for name, value in env.items():
            lower = name.lower()
            if value and lower.endswith("_proxy") and lower != "no_proxy":
                # lower-case wins, as in curl and urllib
                if lower == name or lower[:-6] not in self._proxies:
                    self._proxies[lower[:-6]] = value
        no_proxy = env.get("no_proxy") or env.get("NO_PROXY")
        if no_proxy:
            self._proxies["no"] = no_proxy

    def for_target(self, scheme: str, host: str, port: int) -> tuple[str, int, str | None] | None:
        """``(host, port, Proxy-Authorization value)`` of the proxy for a target, or ``None``.

        :raises HTTPFailure: the proxy is not an ``http://`` URL.
        """
        proxy = self._proxies.get(scheme) or self._proxies.get("all")
        if not proxy:
            return None
        if urllib.request.proxy_bypass_environment(f"{host}:{port}", self._proxies):
            return None
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.scheme != "http" or not parts.hostname:
            raise HTTPFailure(f"only http:// proxies are supported, not {parts.scheme}://")
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        return parts.hostname, parts.port or 80, auth


class HTTPFailure(Exception):
    """The call did not produce an answer: connection refused, reset, or malformed answer."""


class HTTPTimeout(HTTPFailure):
    """No complete answer within the call's time limit."""


class PoolBusy(HTTPTimeout):
    """Every connection to the host stayed busy for :data:`WAIT_FOR_CONNECTION` seconds."""


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
        content = self.content
        if content[:1] == b"{" and content[1:2] not in (b"", b"\x00"):
            # What json.loads finds for such bytes (UTF-8), without its encoding detection.
            return json.loads(content.decode("utf-8", "surrogatepass"))
        return json.loads(content)


class _Connection:
    """One keep-alive connection and the bytes read past the last answer."""

    __slots__ = ("sock", "buf")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = bytearray()

    def alive(self) -> bool:
        """An idle connection has nothing to read; EOF or stray bytes mean it is unusable.

        Stray bytes (kept past the last answer, decrypted and waiting in TLS, or in the
        kernel) would be read as the next caller's answer: the connection is dropped instead.
        """
        if self.buf or (isinstance(self.sock, gssl.SSLSocket) and self.sock.pending()):
            return False
        try:
            return not raw_socket(self.sock).recv(1, pysocket.MSG_PEEK)
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
    """Pooled GETs over http and https with a time limit per call; redirects followed.

    :param timeout: seconds for one call, from the moment it has a connection.
    :param maxsize: connections open to one host; more calls at once wait for one (like
        Node's agent ``maxSockets``): a reconnect storm then reuses warm connections instead
        of opening (and closing) hundreds.
    :param wait: seconds a call may wait for a connection (:data:`WAIT_FOR_CONNECTION`).
    :param tls: the trust for https (:func:`tls_context` by default, made on first use).
    :param proxies: proxies to go through (:class:`Proxies`); none by default.
    """

    def __init__(
        self,
        timeout: float,
        maxsize: int = 50,
        wait: float = WAIT_FOR_CONNECTION,
        tls: ssl.SSLContext | None = None,
        proxies: Proxies | None = None,
    ) -> None:
        self.timeout = timeout
        self.maxsize = maxsize
        self.wait = wait
        self.tls = tls
        self.proxies = proxies
        self._idle: dict[_Key, list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._moved: dict[str, str] = {}
        self._addresses: dict[tuple[str, int], tuple[float, list[tuple[int, Any]]]] = {}
        self._slots: dict[_Key, BoundedSemaphore] = {}

    def close(self) -> None:
        """Close every idle connection."""
        for connections in self._idle.values():
            for conn in connections:
                conn.close()
        self._idle.clear()

    def get(
        self, url: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        """GET ``url`` (http or https) with ``params`` as its query and exactly ``headers``.

        A redirect is followed (up to :data:`MAX_REDIRECTS`) with the same headers, only to
        the same host name and never from https to http; a permanent one (301, 308) that
        keeps the path's query is remembered for ``url``, so that later calls go straight to
        where it pointed.

        :raises HTTPTimeout: no complete answer within the time limit.
        :raises PoolBusy: no connection to the host came free in time.
        :raises HTTPFailure: no connection, a TLS failure, an answer that is not HTTP/1.x, or
            a redirect that may not be followed.
        """
        query = urlencode(params) if params else ""
        base = self._moved.get(url, url)
        current = base + (("&" if "?" in base else "?") + query if query else "")
        lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        if lines.count("\n") != len(headers or ()) or lines.count("\r") != len(headers or ()):
            raise HTTPFailure("a header holds a line break")
        target = self._target(base)  # parsed once per URL; the query varies per call
        if query:
            target = target.with_query(query)
        for _ in range(MAX_REDIRECTS + 1):
            response = self._fetch(target, lines)
            location = response.headers.get("location")
            if response.status_code not in REDIRECT_STATUSES or location is None:
                return response
            following = urljoin(current, location)
            source, target = target, self._target(following, remember=False)
            _check_redirect(source, target)
            moved_base, _, moved_query = following.partition("?")
            if response.status_code in PERMANENT_REDIRECTS and moved_query == query:
                if "?" not in url and len(self._moved) < MAX_REMEMBERED:
                    self._moved[url] = moved_base
            current = following
        raise HTTPFailure(f"more than {MAX_REDIRECTS} redirects from {url}")

    def _fetch(self, target: _Target, header_lines: str) -> Response:
        """One request and its answer, on a pooled connection to ``target``'s host."""
        proxy = None
        if self.proxies is not None:
            proxy = self.proxies.for_target(target.scheme, target.host, target.port)
        path = target.path
        extra = ""
        if proxy is not None and target.scheme == "http":
            path = f"http://{target.host_header}{path}"
            if proxy[2]:
                extra = f"Proxy-Authorization: {proxy[2]}\r\n"
        request = f"GET {path} HTTP/1.1\r\nHost: {target.host_header}\r\n{extra}{header_lines}\r\n"
        try:
            data = request.encode("latin-1")
        except UnicodeEncodeError:
            raise HTTPFailure("a header value is not Latin-1") from None
        key = target.key
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = BoundedSemaphore(self.maxsize)
        if not slots.acquire(timeout=self.wait):
            raise PoolBusy(
                f"all {self.maxsize} connections to {target.host}:{target.port} stayed busy "
                f"for {self.wait:g} s"
            )
        try:
            return self._call(target, proxy, data, time.monotonic() + self.timeout)
        finally:
            slots.release()

    def _call(
        self,
        target: _Target,
        proxy: tuple[str, int, str | None] | None,
        request: bytes,
        deadline: float,
    ) -> Response:
        key = target.key
        conn = self._checkout(key)
        reused = conn is not None
        while True:
            if conn is None:
                conn = self._open(target, proxy, deadline)
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
        return response

    def _target(self, url: str, remember: bool = True) -> _Target:
        target = self._targets.get(url)
        if target is None:
            try:
                parts = urlsplit(url)
                port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
            except ValueError:
                raise HTTPFailure(f"not a URL gsocket can call: {url!r}") from None
            if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
                raise HTTPFailure(f"not an http or https URL: {url!r}")
            host = parts.hostname
            shown = f"[{host}]" if ":" in host else host
            host_header = shown if port == DEFAULT_PORTS[parts.scheme] else f"{shown}:{port}"
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            target = _Target(parts.scheme, host, port, host_header, path)
            if remember and len(self._targets) < MAX_REMEMBERED:
                self._targets[url] = target
        return target

    def _checkout(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.alive():
                return conn
            conn.close()
        return None

    def _checkin(self, key: _Key, conn: _Connection) -> None:
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

    def _open(
        self, target: _Target, proxy: tuple[str, int, str | None] | None, deadline: float
    ) -> _Connection:
        """A new connection to ``target`` (through ``proxy``), TLS set up for https."""
        host, port = (proxy[0], proxy[1]) if proxy is not None else (target.host, target.port)
        sock = self._connect(host, port, deadline)
        try:
            if proxy is not None and target.scheme == "https":
                self._tunnel(sock, target, proxy[2], deadline)
            if target.scheme == "https":
                sock = self._handshake(sock, target.host, deadline)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def _connect(self, host: str, port: int, deadline: float) -> Any:
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
            return sock
        self._addresses.pop((host, port), None)
        raise HTTPFailure(f"cannot connect to {host}:{port}: {error}")

    def _handshake(self, sock: Any, host: str, deadline: float) -> Any:
        """TLS over ``sock``: the certificate must be trusted and name ``host``."""
        if self.tls is None:
            self.tls = tls_context()
        try:
            sock.settimeout(_remaining(deadline))
            return self.tls.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            raise HTTPFailure(
                f"the certificate of {host} is not trusted: {e.verify_message}"
            ) from None
        except TimeoutError:
            raise HTTPTimeout(f"no TLS handshake with {host} in time") from None
        except OSError as e:
            raise HTTPFailure(f"TLS with {host} failed: {e}") from None

    def _tunnel(self, sock: Any, target: _Target, auth: str | None, deadline: float) -> None:
        """Ask an http proxy for a tunnel to ``target`` (``CONNECT``), for https through it."""
        shown = f"[{target.host}]" if ":" in target.host else target.host
        authority = f"{shown}:{target.port}"
        request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if auth:
            request += f"Proxy-Authorization: {auth}\r\n"
        conn = _Connection(sock)
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall((request + "\r\n").encode("latin-1"))
            head = self._read_until(conn, deadline, b"\r\n\r\n", "proxy answer")
        except TimeoutError:
            raise HTTPTimeout("the proxy did not answer in time") from None
        except OSError as e:
            raise HTTPFailure(f"proxy connection failed: {e}") from None
        status = head.split(None, 2)[1:2]
        if status != [b"200"] or conn.buf:
            raise HTTPFailure(f"the proxy refused a tunnel to {authority}: {head[:80]!r}")

    def _exchange(
        self, conn: _Connection, request: bytes, deadline: float
    ) -> tuple[Response, bool]:
        """Send the request and read the answer; ``_Stale`` if the connection was dead."""
        sock = conn.sock
        try:
            sock.settimeout(_remaining(deadline))
            sock.sendall(request)
            head = self._read_head(conn, deadline)
            while _interim(head):  # "100 Continue" and the like precede the answer
                head = self._read_until(conn, deadline, b"\r\n\r\n", "answer headers")
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


class _Target:
    """Where one URL leads: scheme, host, port, ``Host`` header and path with query."""

    __slots__ = ("scheme", "host", "port", "host_header", "path", "key")

    def __init__(self, scheme: str, host: str, port: int, host_header: str, path: str) -> None:
        self.scheme = scheme
        self.host = host
        self.port = port
        self.host_header = host_header
        self.path = path
        self.key: _Key = (scheme, host, port)

    def with_query(self, query: str) -> _Target:
        """The same target with ``query`` added to its path."""
        sep = "&" if "?" in self.path else "?"
        return _Target(self.scheme, self.host, self.port, self.host_header, self.path + sep + query)


_Key = tuple[str, str, int]
"""Connections are pooled per scheme, host and port."""


def _check_redirect(source: _Target, target: _Target) -> None:
    """Refuse a redirect that would carry a caller's credential where it must not go."""
    if target.host.lower() != source.host.lower():
        raise HTTPFailure(f"redirect from {source.host} to another host ({target.host}) refused")
    if source.scheme == "https" and target.scheme != "https":
        raise HTTPFailure(f"redirect from https to {target.scheme} refused")


class _Stale(Exception):
    """A pooled connection turned out closed before any answer: retry on a new one."""


def _interim(head: bytes) -> bool:
    """Whether an answer head is an interim 1xx one (not ``101``, which ends HTTP)."""
    status = head[9:13]
    return head.startswith(b"HTTP/1.") and status[:1] == b"1" and status[:3] != b"101"


def _remaining(deadline: float) -> float:
    """Seconds left before ``deadline``; an expired one still gets a moment (raises soon)."""
    return max(0.001, deadline - time.monotonic())
