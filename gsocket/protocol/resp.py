"""A Redis pub/sub subscriber that reads every message already received in one go.

redis-py's ``PubSub.get_message`` returns one message per call, through several layers of
Python (retry wrapper, parser, push handlers, observability hooks): at thousands of messages a
second that is a large part of a realtime process's CPU.  The bridge only subscribes to one
channel and reads, so this module speaks just that part of RESP2 on a gevent socket: connect,
``AUTH``, ``SUBSCRIBE``, ``PING``, and a reader that parses every complete reply in its buffer
after each ``recv``.

The reader waits for the socket itself, then reads once: gevent's ``recv`` reads first and
waits on ``EAGAIN``, so every wakeup of a quiet channel cost a second ``recv`` (and the
exception, and a ``Waiter``) just to learn that the socket is empty again.  A wakeup is now
one libev watcher callback that switches straight to the reading greenlet, and one ``recv``.

URLs are parsed by redis-py (``redis://``, ``unix://``, credentials); TLS (``rediss://``) is
not spoken here (:func:`supported` says so and the caller keeps redis-py for it).
"""

from __future__ import annotations

import socket as pysocket
from typing import Any

import gevent
from gevent import socket as gsocket
from redis.connection import UnixDomainSocketConnection, parse_url

from gsocket.protocol.internals.gevent_hooks import raw_socket

MESSAGE = b"*3\r\n$7\r\nmessage\r\n"
"""How a published message starts on a RESP2 subscriber connection."""

READ_SIZE = 256 * 1024
"""Bytes one read takes at most, into a buffer made once: ``recv(READ_SIZE)`` would allocate
that much per call, which glibc serves with ``mmap``, ``mremap`` and ``munmap`` above 128 KiB
(about 11 µs a read, more than the rest of a lone event's Python)."""


class ReplyError(Exception):
    """Redis answered a command with an error (for example a wrong password)."""


class ProtocolError(ConnectionError):
    """The connection carries something that is not RESP2: it cannot be trusted any more."""


class _Incomplete(Exception):
    """The buffer ends in the middle of a reply."""


def supported(url: str) -> bool:
    """This module can subscribe at ``url`` (plain TCP or a Unix socket, not TLS)."""
    return url.startswith(("redis://", "unix://"))


def command(*args: str | bytes) -> bytes:
    """Encode a command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse_reply(buf: bytes, pos: int) -> tuple[Any, int]:
    """Parse one RESP2 reply of ``buf`` at ``pos``; return it and the position after it.

    Errors are returned as :class:`ReplyError` instances, not raised.

    :raises _Incomplete: the reply is not all in ``buf`` yet.
    :raises ProtocolError: the bytes are not RESP2.
    """
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos : pos + 1]
    line = buf[pos + 1 : end]
    after = end + 2
    try:
        if kind == b"$":
            n = int(line)
            if n < 0:
                return None, after
            if after + n + 2 > len(buf):
                raise _Incomplete
            return buf[after : after + n], after + n + 2
        if kind == b"*":
            n = int(line)
            if n < 0:
                return None, after
            items = []
            for _ in range(n):
                item, after = parse_reply(buf, after)
                items.append(item)
            return items, after
        if kind == b":":
            return int(line), after
    except ValueError:
        raise ProtocolError(f"bad RESP length {line[:20]!r}") from None
    if kind == b"+":
        return line, after
    if kind == b"-":
        return ReplyError(line.decode("utf-8", "replace")), after
    raise ProtocolError(f"unexpected RESP type {kind!r}")


class Subscriber:
    """One connection in subscribe mode.

    :param url: Redis URL (``redis://[[user]:password@]host[:port]`` or ``unix://path``).
    :param connect_timeout: seconds to connect and to get each handshake answer.
    """

    def __init__(self, url: str, connect_timeout: float = 2.0) -> None:
        if not supported(url):
            raise ValueError(f"cannot subscribe at {url!r} without redis-py (TLS)")
        self.options = parse_url(url)
        self.connect_timeout = connect_timeout
        self._sock: Any = None
        self._raw: Any = None
        self._watcher: Any = None
        self._chunk = memoryview(b"")
        self._buf = bytearray()
        self._ahead = False
        self._prefix = MESSAGE

    def connect(self) -> None:
        """Open the connection and authenticate.

        :raises OSError: Redis cannot be reached.
        :raises ReplyError: Redis refused the credentials.
        """
        opts = self.options
        if opts.get("connection_class") is UnixDomainSocketConnection:
            sock = gsocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect(opts["path"])
            except BaseException:
                sock.close()
                raise
        else:
            sock = gsocket.create_connection(
                (opts.get("host") or "localhost", int(opts.get("port") or 6379)),
                timeout=self.connect_timeout,
            )
            sock.setsockopt(pysocket.IPPROTO_TCP, pysocket.TCP_NODELAY, 1)
            sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_KEEPALIVE, 1)
        self._sock = sock
        self._raw = raw_socket(sock)  # non-blocking: read only once the watcher said so
        loop = gevent.get_hub().loop
        # First of the sockets a poll finds readable: the events go out before the loop
        # turns to client input (a page reload's frames, its web calls' answers).
        self._watcher = loop.io(sock.fileno(), 1, priority=loop.MAXPRI)
        self._chunk = memoryview(bytearray(READ_SIZE))
        self._buf = bytearray()
        password = opts.get("password")
        if password:
            username = opts.get("username")
            args = ("AUTH", username, password) if username else ("AUTH", password)
            self._sock.sendall(command(*args))
            reply = self._reply()
            if isinstance(reply, ReplyError):
                raise reply

    def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel`` and wait for Redis to confirm it.

        :raises ReplyError: Redis refused.
        """
        self._sock.sendall(command("SUBSCRIBE", channel))
        reply = self._reply()
        if isinstance(reply, ReplyError):
            raise reply
        if not (isinstance(reply, list) and reply and reply[0] == b"subscribe"):
            raise ProtocolError(f"unexpected answer to SUBSCRIBE: {reply!r}"[:200])
        name = channel.encode()
        # Every message of this channel starts the same way, up to its payload's length.
        self._prefix = MESSAGE + b"$%d\r\n%s\r\n$" % (len(name), name)
        self._ahead = bool(self._buf)  # messages that came with the answer: read them first

    def ping(self) -> None:
        """Send ``PING``; the answer arrives among the messages (and is left out of them)."""
        self._sock.sendall(command("PING"))

    def _reply(self) -> Any:
        """Read one reply, within the connect timeout (handshake only)."""
        self._sock.settimeout(self.connect_timeout)
        while True:
            try:
                reply, pos = parse_reply(self._buf, 0)
            except _Incomplete:
                self._fill()
                continue
            del self._buf[:pos]
            return reply

    def _fill(self) -> None:
        data = self._sock.recv(READ_SIZE)
        if not data:
            raise ConnectionResetError("Redis closed the connection")
        self._buf += data

    def read(self, timeout: float | None = None, ready: bool = False) -> list[bytes] | None:
        """Wait until the socket is readable, read what it holds (one ``recv``) and return
        the payloads of every complete message received so far (possibly none: a PONG, a
        partial message).

        :param timeout: seconds to wait; ``None`` waits without a timer (the cheapest wait
            gevent has), until data comes or :meth:`abort` is called.
        :param ready: the caller expects data (it let messages gather): ``recv`` first, and
            wait only if the socket turns out empty.
        :returns: ``None`` when nothing at all arrived within ``timeout``.
        :raises OSError: the connection is lost.
        """
        buf = self._buf
        if self._ahead:
            self._ahead = False
        else:
            size = self._recv() if ready else None
            if size is None:
                if timeout is None:
                    self._wait()
                else:
                    try:
                        gsocket.wait_read(self._raw.fileno(), timeout)
                    except TimeoutError:
                        return None
                size = self._recv()
                if size is None:
                    return []  # woken, but another reader (none in gsocket) took the bytes
            if not size:
                raise ConnectionResetError("Redis closed the connection")
            buf += self._chunk[:size]
        out: list[bytes] = []
        view = memoryview(buf)
        try:
            pos = self._parse(buf, view, len(buf), out)
        finally:
            view.release()
        del buf[:pos]
        return out

    def _recv(self) -> int | None:
        """Read what the socket holds into the read buffer; ``None`` when it is empty."""
        try:
            return self._raw.recv_into(self._chunk)
        except BlockingIOError:
            return None

    def _wait(self) -> None:
        """Block this greenlet until the socket is readable: the watcher's callback switches
        back to it directly (gevent's wait would add a ``Waiter`` and its checks)."""
        watcher = self._watcher
        watcher.start(gevent.getcurrent().switch)
        try:
            gevent.get_hub().switch()
        finally:
            watcher.stop()

    def _parse(self, buf: bytearray, view: memoryview, size: int, out: list[bytes]) -> int:
        """Append the payload of every complete message of ``buf`` to ``out``; return the
        position after the last complete reply."""
        pos = 0
        find = buf.find
        prefix = self._prefix
        skip = len(prefix)
        while pos < size:
            if buf.startswith(prefix, pos):
                # A message of the subscribed channel: the hot path.
                end = find(b"\r\n", pos + skip)
                if end < 0:
                    break
                try:
                    start = end + 2
                    stop = start + int(buf[pos + skip : end])
                except ValueError:
                    raise ProtocolError("malformed pub/sub message") from None
                if stop + 2 > size:
                    break
                out.append(bytes(view[start:stop]))
                pos = stop + 2
                continue
            try:
                reply, pos = parse_reply(buf, pos)
            except _Incomplete:
                break
            if isinstance(reply, ReplyError):
                raise reply
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                # Another channel's message (none in practice): the general parser will do.
                if not isinstance(reply[2], bytearray):
                    raise ProtocolError("malformed pub/sub message")
                out.append(bytes(reply[2]))
        return pos

    def abort(self) -> None:
        """Shut the connection down, waking a greenlet blocked in :meth:`read` (which then
        raises)."""
        if self._sock is not None:
            try:
                self._sock.shutdown(pysocket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Close the connection."""
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = self._raw = None
                self._chunk = memoryview(b"")
