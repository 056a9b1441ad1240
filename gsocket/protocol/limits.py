"""Protective bounds on what one client can cost the server, and the transport-level guards.

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
  put out (:meth:`ClientGuard.kick`) when its input is malformed or it stops reading;
- :func:`watch_event_loop`: gevent cannot preempt a handler that burns CPU, so the hub is
  watched from a native thread and every stall is logged with the stack that caused it.
"""

from __future__ import annotations

import base64
import binascii
import collections
import io
import logging
import socket as pysocket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import gevent
from gevent._tracer import GreenletTracer
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.handler import WebSocketHandler

from gsocket.config import Config
from gsocket.contract.sites import is_trusted_proxy
from gsocket.metrics import Metrics

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


def client_address(
    environ: Mapping[str, Any], trusted_proxies: tuple[str, ...] | None
) -> str | None:
    """Return the address a connection is counted against, or ``None`` when it cannot be told.

    A direct client is its peer address.  Behind a trusted proxy (loopback or a Unix socket by
    default, else ``gsocket.trusted_proxies``) it is the right-most ``X-Forwarded-For`` hop
    that is not itself a trusted proxy: the left part of that header is written by the client
    and proves nothing.  A trusted proxy that sends no ``X-Forwarded-For`` (Frappe's generated
    nginx configuration does not for ``/socket.io``) hides its clients, so they are not
    limited per address rather than all sharing the proxy's one quota.
    """
    peer = environ.get("REMOTE_ADDR") or ""
    if not is_trusted_proxy(peer, trusted_proxies):
        return peer
    forwarded = environ.get("HTTP_X_FORWARDED_FOR") or ""
    for hop in reversed([h.strip() for h in forwarded.split(",")]):
        if hop and not is_trusted_proxy(hop, trusted_proxies):
            return hop
    return None


def frame_problem(data: str | bytes, handshake: bool, max_bytes: int) -> str | None:
    """Return why a websocket frame is not an Engine.IO packet a client may send, or ``None``.

    :param data: the frame as gevent-websocket returns it (text as ``str``).
    :param handshake: the frame is one of the two of an upgrade (``2probe``, then ``5``).
    :param max_bytes: ``max_message_bytes``.
    """
    if len(data) > max_bytes:
        return f"frame of {len(data)} bytes over the {max_bytes} limit"
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
        read_payload = ws.raw_read

        def bounded_read(size: int) -> bytes:
            self._read += size
            if self._read > self._max_bytes:
                self.rejected = f"message over {self._max_bytes} bytes"
                raise WebSocketError(self.rejected)
            return read_payload(size)

        ws.raw_read = bounded_read

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
        problem = frame_problem(data, handshake, self._max_bytes)
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
        handler = getattr(self._ws, "handler", None)
        return getattr(handler, "socket", None)


def _query_sid(environ: Mapping[str, Any]) -> str | None:
    sids = parse_qs(environ.get("QUERY_STRING", "")).get("sid")
    return sids[0] if sids else None


class ClientGuard:
    """Per-session protective state of one server, and the way bad clients are put out.

    :param eio: the python-engineio server (its ``sockets`` hold each session's send queue).
    :param config: the bench configuration (limits and trusted proxies).
    :param metrics: where refused connections are counted.
    """

    def __init__(self, eio: Any, config: Config, metrics: Metrics) -> None:
        self.eio = eio
        self.limits = config.limits
        self.trusted_proxies = config.trusted_proxies
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
        if length < 0 or length > self.limits.max_message_bytes:
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
        address = client_address(environ, self.trusted_proxies)
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

    def congested(self, eio_sid: str) -> bool:
        """Tell whether a session's send queue is full; a full one is put out at once.

        A client that does not read (a stalled tab, a hostile script) would otherwise make
        the server buffer every broadcast for it until its ping timeout.
        """
        session = self.eio.sockets.get(eio_sid)
        if session is None or session.closed:
            return False
        if session.queue.qsize() < self.limits.send_queue:
            return False
        self.kick(
            eio_sid,
            f"{self.limits.send_queue} packets queued: the client does not read (send_queue)",
            abort=True,
        )
        return True

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


class ScreenedWebSocketHandler(WebSocketHandler):
    """gevent-websocket's request handler, answering a malformed websocket handshake cleanly.

    gevent-websocket answers a bad handshake (unknown ``Sec-WebSocket-Version``, missing key)
    with a ``str`` body that gevent's WSGI server cannot write: the client gets no answer and
    the log a traceback per request.  Use it as ``WSGIServer(handler_class=...)``.
    """

    def upgrade_websocket(self) -> Any:
        """Upgrade, or return the refusal's body as bytes."""
        result = super().upgrade_websocket()
        if isinstance(result, list):
            return [r.encode() if isinstance(r, str) else r for r in result]
        return result


_watching = threading.Lock()
_watch_started = False


def watch_event_loop(max_blocking: float, report: Callable[[str], None] | None = None) -> bool:
    """Log every time one greenlet holds the gevent hub longer than ``max_blocking`` seconds.

    gevent switches greenlets only when one waits; a handler stuck in a CPU loop (or a C call
    that does not yield) stops every socket of the process and no time limit can end it.  A
    timer in the hub counts loop turns; a native thread looks at the count four times per
    ``max_blocking`` and, when it has not moved for that long, takes the hub thread's current
    frame at once, while the culprit is still running (gevent's own monitor formats every
    greenlet first, and by then the culprit has often returned).  The report is handed back to
    the hub to be logged once it runs again, because logging takes gevent locks that a native
    thread must not touch.

    A loop turn can also be long without any greenlet misbehaving: 10 000 sockets ready at
    once (a disconnect storm) are all served in one turn.  The watch tells the two apart by
    gevent's count of greenlet switches (its C tracer, about 0.1 µs a switch): no switch in
    the last ``max_blocking`` seconds is a stall (an error, once per stall); switches mean a
    saturated loop (a warning, once per turn: too much work at once, nothing stuck).

    :param max_blocking: seconds without a loop turn that count as a stall.
    :param report: called in the hub with each log line (defaults to ``log.error``).
    :returns: ``True`` when the watch was started by this call.
    """
    global _watch_started
    from gevent import monkey

    with _watching:
        if _watch_started:
            return False
        _watch_started = True
    hub = gevent.get_hub()
    emit = report or (lambda line: log.error("%s", line))
    saturated = report or (lambda line: log.warning("%s", line))
    turns = [0]
    period = max_blocking / 4

    def turn() -> None:
        turns[0] += 1

    tracer = GreenletTracer()
    timer = hub.loop.timer(0, period)
    timer.ref = False
    timer.start(turn)
    native_sleep = monkey.get_original("time", "sleep")

    def watch() -> None:
        seen, since = turns[0], time.monotonic()
        stuck_reported = saturation_reported = False
        looks: collections.deque[int] = collections.deque(maxlen=4)
        while True:
            native_sleep(period)
            now = time.monotonic()
            if turns[0] != seen:
                seen, since = turns[0], now
                stuck_reported = saturation_reported = False
                looks.clear()
                continue
            frame = sys._current_frames().get(hub.thread_ident)
            looks.append(tracer.greenlet_switch_counter)
            if now - since < max_blocking:
                continue
            stuck = len(looks) == looks.maxlen and len(set(looks)) == 1
            if stuck_reported or (not stuck and saturation_reported):
                continue
            stack = traceback.extract_stack(frame, limit=12)[-3:] if frame is not None else []
            where = " <- ".join(
                f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(stack)
            )
            if stuck:
                stuck_reported = True
                line = (
                    f"the event loop was blocked for more than {max_blocking:.2f} s "
                    f"(every socket stalled meanwhile): {where or 'unknown code'}"
                )
                hub.loop.run_callback_threadsafe(emit, line)
            else:
                saturation_reported = True
                line = (
                    f"the event loop fell behind by more than {max_blocking:.2f} s: many "
                    f"greenlets ran in one turn (too much work at once, nothing stuck), "
                    f"last at {where or 'unknown code'}"
                )
                hub.loop.run_callback_threadsafe(saturated, line)

    monkey.get_original("_thread", "start_new_thread")(watch, ())
    return True
