"""The client guards: protective bounds on what one client can cost the server.

A realtime process is exposed to every browser tab of every site; one broken or hostile client
must cost at most its own connection.  This module holds the pieces the
:class:`~gsocket.protocol.server.Server` applies before anything reaches a handler:

- :class:`TokenBucket`: Socket.IO packets per second per connection (``events_per_second``,
  ``event_burst``); packets over the rate are dropped, so a flood costs one cheap check each;
- :class:`ConnectionCounter` and :func:`client_address`: simultaneous Engine.IO sessions per
  client address (``connections_per_ip``), the address being taken from ``X-Forwarded-For``
  only when the peer is a trusted proxy;
- :class:`GuardedWebSocket`, :func:`frame_problem`, :func:`payload_problem`: Engine.IO frames
  and polling bodies are checked before python-engineio decodes them, because some malformed
  input makes it raise outside its own error handling (leaving a session half-closed until
  its ping timeout) or hang (an oversized POST waits forever for a poll that never comes);
- :class:`ClientGuard`: the state that ties these to sessions, and the one way a client is
  put out (:meth:`ClientGuard.kick`) when its input is malformed or it stops reading.

Every bound on the size of a client's message (``max_message_bytes``) is checked here, once
per way a message arrives: a websocket frame while it is read, a polling body before it is
decoded, a binary packet's attachments as they come.  The send-queue bound is the writer's
(:mod:`gsocket.protocol.writer`).  The event-loop stall watch is :mod:`gsocket.protocol.stall`.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import socket as pysocket
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import gevent
from geventwebsocket.exceptions import WebSocketError

from gsocket.config import Limits
from gsocket.metrics import Metrics
from gsocket.protocol.internals.gevent_hooks import bound_frame_reads, handler_socket

log = logging.getLogger("gsocket.limits")

MAX_ATTACHMENTS = 10
"""Binary attachments one Socket.IO packet may announce (the parser would accept 10 digits)."""

MAX_PACKETS_PER_POLL = 16
"""Engine.IO packets in one polling POST (python-engineio's own decoding bound)."""

CLOSE_GRACE = 1.0
"""Seconds a kicked websocket client has to read its CLOSE before its TCP socket is shut."""

# Engine.IO packet types a client may send: CLOSE, PONG and MESSAGE on any transport; PING
# ("2probe") and UPGRADE only as the first two frames of a websocket upgrade.
CLIENT_PACKET_TYPES = frozenset("134")
HANDSHAKE_FRAMES = ("2probe", "5")


class TokenBucket:
    """A rate limit that tolerates bursts: ``burst`` at once, then ``rate`` per second.

    :param rate: tokens added per second.
    :param burst: tokens the bucket holds (and starts with).
    """

    __slots__ = ("rate", "burst", "tokens", "stamp", "limited")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(burst, 1))
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.limited = False

    def take(self) -> bool:
        """Spend one token; ``False`` when there is none (the caller drops the work)."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ConnectionCounter:
    """Live sessions per client address, refused beyond ``limit``.

    :param limit: sessions one address may hold at once (``0`` disables the limit).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def acquire(self, address: str) -> bool:
        """Count one more session of ``address``, unless it already holds ``limit``."""
        held = self.counts.get(address, 0)
        if self.limit and held >= self.limit:
            return False
        self.counts[address] = held + 1
        return True

    def release(self, address: str) -> None:
        """Forget one session of ``address``; an address with none left is dropped."""
        held = self.counts.get(address, 0) - 1
        if held > 0:
            self.counts[address] = held
        else:
            self.counts.pop(address, None)


def client_address(environ: Mapping[str, Any], is_proxy: Callable[[str], bool]) -> str | None:
    """Return the address a connection is counted against, or ``None`` when it cannot be told.

    A direct client is its peer address.  Behind a trusted proxy (loopback or a Unix socket by
    default, else ``gsocket.trusted_proxies``) it is the right-most ``X-Forwarded-For`` hop
    that is not itself a trusted proxy: the left part of that header is written by the client
    and proves nothing.  A trusted proxy that sends no ``X-Forwarded-For`` (Frappe's generated
    nginx configuration does not for ``/socket.io``) hides its clients, so they are not
    limited per address rather than all sharing the proxy's one quota.

    :param is_proxy: tells whether an address is a trusted proxy (the contract's
        :func:`gsocket.contract.sites.is_trusted_proxy` with the bench's setting).
    """
    peer = environ.get("REMOTE_ADDR") or ""
    if not is_proxy(peer):
        return peer
    forwarded = environ.get("HTTP_X_FORWARDED_FOR") or ""
    for hop in reversed([h.strip() for h in forwarded.split(",")]):
        if hop and not is_proxy(hop):
            return hop
    return None


def oversized(length: int, max_bytes: int) -> str | None:
    """The one size rule for what a client sends: why ``length`` bytes of one message are
    refused (``max_message_bytes``), or ``None``.  Every way a message arrives (a frame read
    by gevent-websocket or by a parked websocket, a polling body, a binary packet's
    attachments) asks this before it keeps the bytes."""
    if length > max_bytes:
        return f"message over {max_bytes} bytes"
    return None


def frame_problem(data: str | bytes, handshake: bool) -> str | None:
    """Return why a websocket frame is not an Engine.IO packet a client may send, or ``None``.

    Its size was bounded while it was read (:class:`GuardedWebSocket`).

    :param data: the frame as gevent-websocket returns it (text as ``str``).
    :param handshake: the frame is one of the two of an upgrade (``2probe``, then ``5``).
    """
    if isinstance(data, bytes | bytearray):
        return None
    if handshake and data in HANDSHAKE_FRAMES:
        return None
    if not data:
        return "empty frame"
    if data[0] not in CLIENT_PACKET_TYPES:
        return f"Engine.IO packet type {data[0]!r} not allowed from a client here"
    return None


def payload_problem(body: bytes) -> str | None:
    """Return why a polling POST body is not a valid client payload, or ``None``.

    Engine.IO v4 separates packets with ``\\x1e``; binary packets are base64 with a ``b``
    prefix.  JSONP (``d=``) belongs to protocol v3, which this server does not speak.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    if not text:
        return "empty body"
    packets = text.split("\x1e")
    if len(packets) > MAX_PACKETS_PER_POLL:
        return f"{len(packets)} packets in one POST (at most {MAX_PACKETS_PER_POLL})"
    for pkt in packets:
        if not pkt:
            return "empty packet"
        if pkt[0] == "b":
            try:
                base64.b64decode(pkt[1:], validate=True)
            except (binascii.Error, ValueError):
                return "binary packet that is not base64"
        elif pkt[0] not in CLIENT_PACKET_TYPES:
            return f"Engine.IO packet type {pkt[0]!r} not allowed from a client here"
    return None


class GuardedWebSocket:
    """A gevent-websocket connection as python-engineio sees it, with every frame checked.

    A frame that is not an Engine.IO packet a client may send reads as "connection closed",
    so python-engineio runs its ordinary close path (session and rooms released at once)
    instead of raising out of its receive loop.  It also gives python-engineio the
    ``settimeout`` it looks for (gevent-websocket's object has none), so a peer that vanishes
    without closing, or stops reading, times out after the ping interval plus ping timeout.

    :param ws: the ``wsgi.websocket`` object of the request.
    :param upgrade: this request upgrades a polling session (its first two frames are the
        probe and the upgrade packet).
    :param max_bytes: ``max_message_bytes``.
    :param peer: client address, for log lines.
    """

    def __init__(self, ws: Any, upgrade: bool, max_bytes: int, peer: str) -> None:
        self._ws = ws
        self._handshake = len(HANDSHAKE_FRAMES) if upgrade else 0
        self._max_bytes = max_bytes
        self._peer = peer
        self._read = 0
        self.rejected: str | None = None

        # gevent-websocket reads a whole frame (and joins fragments) before returning it,
        # whatever length its header announces: payload reads are counted and refused past
        # the limit, before the bytes are buffered.
        def bounded(read_payload: Callable[[int], bytes]) -> Callable[[int], bytes]:
            def bounded_read(size: int) -> bytes:
                self._read += size
                self.rejected = oversized(self._read, self._max_bytes)
                if self.rejected is not None:
                    raise WebSocketError(self.rejected)
                return read_payload(size)

            return bounded_read

        bound_frame_reads(ws, bounded)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    def receive(self) -> str | bytes | None:
        """Return the next acceptable frame, or ``None`` (closed) after a bad one."""
        self._read = 0
        try:
            data = self._ws.receive()
        except WebSocketError as e:
            log.info("websocket from %s ended: %s", self._peer, e)
            data = None
        if data is None:
            if self.rejected is not None:
                log.warning("closed a websocket from %s: %s", self._peer, self.rejected)
            # An oversized or truncated frame leaves the stream out of step: drop the TCP
            # connection rather than wait for a close handshake.
            self.abort()
            return None
        handshake = self._handshake > 0
        if handshake:
            self._handshake -= 1
        problem = frame_problem(data, handshake)
        if problem is None:
            return data
        self.rejected = problem
        log.warning("closed a websocket from %s: %s", self._peer, problem)
        self.close()
        gevent.spawn_later(CLOSE_GRACE, self.abort)
        return None

    def send(self, message: str | bytes) -> None:
        """Send one frame."""
        self._ws.send(message)

    def close(self) -> None:
        """Send a close frame (once) and stop reading."""
        if not self._ws.closed:
            try:
                self._ws.close()
            except Exception as e:  # noqa: BLE001 - a peer that is gone cannot be told
                log.debug("close of a websocket from %s failed: %s", self._peer, e)

    def settimeout(self, seconds: float) -> None:
        """Bound every read and write of the underlying TCP socket."""
        raw = self._raw_socket()
        if raw is not None:
            raw.settimeout(seconds)

    def abort(self) -> None:
        """Shut the TCP socket down, waking any greenlet blocked reading or writing it."""
        raw = self._raw_socket()
        if raw is None:
            return
        try:
            raw.shutdown(pysocket.SHUT_RDWR)
        except OSError:
            pass

    def _raw_socket(self) -> Any:
        return handler_socket(self._ws)


def _query_sid(environ: Mapping[str, Any]) -> str | None:
    sids = parse_qs(environ.get("QUERY_STRING", "")).get("sid")
    return sids[0] if sids else None


class ClientGuard:
    """Per-session protective state of one server, and the way bad clients are put out.

    :param eio: the python-engineio server (its ``sockets`` hold each session).
    :param limits: the bench's ``gsocket.limits``.
    :param metrics: where refused connections are counted.
    :param is_proxy: tells whether a peer address is a trusted proxy (see
        :func:`client_address`).
    """

    def __init__(
        self, eio: Any, limits: Limits, metrics: Metrics, is_proxy: Callable[[str], bool]
    ) -> None:
        self.eio = eio
        self.limits = limits
        self.is_proxy = is_proxy
        self.metrics = metrics
        self.per_address = ConnectionCounter(self.limits.connections_per_ip)
        self.addresses: dict[str, tuple[str, bool]] = {}
        self.buckets: dict[str, TokenBucket] = {}
        self.websockets: dict[str, GuardedWebSocket] = {}

    # ---- HTTP requests ----------------------------------------------------------------

    def screen_request(self, environ: dict[str, Any]) -> tuple[str, bytes] | None:
        """Check a request before python-engineio sees it.

        Wraps a websocket in :class:`GuardedWebSocket`; reads and checks a polling POST body
        (then hands python-engineio a copy).  Returns ``(status, body)`` of the answer to send
        instead of handling the request, or ``None`` to go on.
        """
        sid = _query_sid(environ)
        peer = environ.get("REMOTE_ADDR") or "unix"
        ws = environ.get("wsgi.websocket")
        if ws is not None:
            guarded = GuardedWebSocket(ws, sid is not None, self.limits.max_message_bytes, peer)
            environ["wsgi.websocket"] = guarded
            if sid is not None:
                self.websockets[sid] = guarded
            return None
        if environ.get("REQUEST_METHOD") != "POST" or sid is None:
            return None
        session = self.eio.sockets.get(sid)
        if session is None:
            return None
        if session.closed:
            return "400 Bad Request", b"Session is closed"
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length < 0 or oversized(length, self.limits.max_message_bytes):
            self.kick(sid, f"polling POST with Content-Length {environ.get('CONTENT_LENGTH')!r}")
            return "413 Payload Too Large", b"Payload Too Large"
        body = environ["wsgi.input"].read(length)
        problem = payload_problem(body)
        if problem is not None:
            self.kick(sid, f"malformed polling payload: {problem}")
            return "400 Bad Request", b"Bad Request"
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return None

    def request_failed(self, environ: Mapping[str, Any], error: BaseException) -> None:
        """Put out the session of a request python-engineio raised on (a last resort)."""
        sid = _query_sid(environ)
        if sid is None:
            sid = next((s for s, ws in self.websockets.items() if ws.environ is environ), None)
        log.warning(
            "request from %s failed (%s: %s); its session is closed",
            environ.get("REMOTE_ADDR") or "unix",
            type(error).__name__,
            str(error)[:200],
        )
        if sid is not None:
            self.kick(sid, f"request failed with {type(error).__name__}", abort=True)

    def request_done(self, environ: Mapping[str, Any]) -> None:
        """Forget the websocket of an upgrade request that ended."""
        ws = environ.get("wsgi.websocket")
        sid = _query_sid(environ)
        if sid is not None and ws is not None and self.websockets.get(sid) is ws:
            del self.websockets[sid]

    # ---- sessions -----------------------------------------------------------------------

    def admit(self, eio_sid: str, environ: Mapping[str, Any]) -> bool:
        """Count a new Engine.IO session against its client address; ``False`` refuses it."""
        address = client_address(environ, self.is_proxy)
        label = address or environ.get("REMOTE_ADDR") or "unix"
        if address is not None:
            if not self.per_address.acquire(address):
                self.metrics.refusals.inc("too_many_connections")
                drops = self.metrics.clients_dropped
                if drops.value("too_many_connections") % 100 == 0:
                    log.warning(
                        "refused a connection from %s: it already holds %d (connections_per_ip)",
                        address,
                        self.limits.connections_per_ip,
                    )
                drops.inc("too_many_connections")
                return False
        self.addresses[eio_sid] = (label, address is not None)
        ws = environ.get("wsgi.websocket")
        if isinstance(ws, GuardedWebSocket):
            self.websockets[eio_sid] = ws
        return True

    def forget(self, eio_sid: str) -> None:
        """Release everything held for a session that ended."""
        label, counted = self.addresses.pop(eio_sid, ("", False))
        if counted:
            self.per_address.release(label)
        self.buckets.pop(eio_sid, None)
        self.websockets.pop(eio_sid, None)

    def allow_packet(self, eio_sid: str) -> bool:
        """Charge one Socket.IO packet to the session's rate; ``False`` drops it."""
        bucket = self.buckets.get(eio_sid)
        if bucket is None:
            if eio_sid not in self.addresses:
                # The rest of a POST or of a websocket's buffered frames, after the session
                # was put out: nothing to charge, and no bucket to leak.
                return False
            bucket = self.buckets[eio_sid] = TokenBucket(
                self.limits.events_per_second, self.limits.event_burst
            )
        if bucket.take():
            bucket.limited = False
            return True
        self.metrics.clients_dropped.inc("rate_limited")
        if not bucket.limited:
            bucket.limited = True
            log.warning(
                "client %s (%s) sends more than %g packets/s (burst %d): dropping the excess",
                eio_sid,
                self.peer(eio_sid),
                self.limits.events_per_second,
                self.limits.event_burst,
            )
        return False

    def binary_problem(self, attachments: list[bytes], count: int, data: str | bytes) -> str | None:
        """Why a binary Socket.IO packet being received ends its session, or ``None``.

        Its attachments arrive as Engine.IO messages of their own, each within
        ``max_message_bytes``: the bound applies to the packet as a whole too.

        :param attachments: the attachments received so far.
        :param count: the number of attachments the packet announced.
        :param data: the message being received (the packet itself, or its next attachment).
        """
        if oversized(sum(map(len, attachments)) + len(data), self.limits.max_message_bytes):
            return "binary attachments over max_message_bytes"
        if count > MAX_ATTACHMENTS:
            return f"binary packet announcing {count} attachments"
        return None

    def kick(self, eio_sid: str, why: str, abort: bool = False) -> None:
        """Close a session because of its own behaviour, logging why once.

        :param abort: drop the connection without a goodbye (the client is not reading),
            rather than sending Engine.IO CLOSE first.
        """
        session = self.eio.sockets.get(eio_sid)
        ws = self.websockets.get(eio_sid)
        self.metrics.clients_dropped.inc("kicked")
        if session is not None and not session.closed and not session.closing:
            log.warning("disconnected client %s (%s): %s", eio_sid, self.peer(eio_sid), why)
            session.close(wait=False, abort=abort, reason=self.eio.reason.SERVER_DISCONNECT)
        if ws is not None:
            if abort:
                ws.abort()
            else:
                gevent.spawn_later(CLOSE_GRACE, ws.abort)

    def peer(self, eio_sid: str) -> str:
        """The client address of a session, for log lines."""
        return self.addresses.get(eio_sid, ("?", False))[0]

    def state(self) -> dict[str, int]:
        """Sizes of the per-session tables, for leak checks."""
        return {
            "guard_addresses": len(self.addresses),
            "guard_address_counts": len(self.per_address.counts),
            "guard_buckets": len(self.buckets),
            "guard_websockets": len(self.websockets),
        }
