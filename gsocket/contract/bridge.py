"""The Redis bridge: events published by the web process and workers, emitted to sockets.

``frappe.publish_realtime`` does ``PUBLISH events {"event", "message", "room", "namespace"}``
on ``redis_queue``.  One greenlet listens on that channel and emits each message to its room
of ``/<namespace>``, or to every site when it has no room: the bridge hands ``(namespace, room,
event, message)`` to the manager (:meth:`gsocket.protocol.manager.RoomIndex.deliver`), which
encodes it once for every recipient.  Redis pub/sub keeps nothing for a subscriber that is
away, so a lost connection is retried at once and then at short, bounded intervals, forever;
a malformed message costs one log line.

Every message received by one read is delivered in one go (:mod:`gsocket.protocol.resp`
parses them all), the frames for each client are written together at the end of the batch,
and the next read waits for the socket through the event loop: a busy channel neither starves
the clients nor costs a syscall per message and client.

Data path: Redis -> bridge -> emit.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import gevent
import redis

from gsocket.metrics import Metrics
from gsocket.protocol import resp
from gsocket.protocol.server import Server
from gsocket.protocol.writer import next_loop_turn

log = logging.getLogger("gsocket.bridge")

CHANNEL = "events"
MAX_BACKOFF = 0.25
"""Longest wait between reconnection attempts: pub/sub keeps nothing for an absent
subscriber, so every interval while Redis is back but unsubscribed loses messages."""
PING_EVERY = 10.0
BATCH = 64
"""Messages delivered before the pending frames are written and other greenlets may run."""
WRITES_PER_TURN = 100_000
"""Frames queued (messages times recipients) after which the pending frames are written and
other greenlets may run, whatever :data:`BATCH` says: 64 broadcasts to a room of 20 000 held
the event loop for over a second."""
YIELD_EVERY = 0.005
"""Seconds of delivering after which the redis-py reader lets other greenlets run (the
RESP reader passes through the event loop before every read)."""
GATHER = 0.002
"""Seconds the bridge lets messages gather in its socket before the next read, while they
come faster than one per :data:`GATHER`: at 5 000 events/s to ``user:`` rooms Redis wrote
them one or two per wakeup, and each wakeup (epoll, greenlet switches, a ``recv``) cost
about 40 µs of CPU, five times the event's own work.  An event then waits at most this
long; a quiet or sparse channel is read at once (:meth:`Bridge.gathers`)."""
GATHER_BELOW = 32
"""Messages in one read under which gathering pays: a larger batch is already amortised."""


RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
"""Event names socket.io reserves: the Node server refuses to emit them, and a client would
take one for its own connection event."""


class BadMessage(ValueError):
    """A message on the channel that is not Frappe's realtime shape."""


def _reject_constant(name: str) -> Any:
    raise BadMessage(f"{name} is not JSON")


_scan = json.JSONDecoder(parse_constant=_reject_constant).scan_once
"""The C scanner of a decoder built once (``json.loads`` with arguments builds one per call)."""


def _loads(data: bytes | str) -> Any:
    if isinstance(data, bytes) and data[:1] == b"{":
        # What Frappe publishes: UTF-8 JSON (json.loads would detect the same encoding).
        text = data.decode("utf-8")
        try:
            value, end = _scan(text, 0)
        except StopIteration:
            raise ValueError("no JSON value") from None
        if end != len(text) and text[end:].strip(" \t\n\r"):
            raise ValueError("extra data after the JSON value")
        return value
    return json.loads(data, parse_constant=_reject_constant)


def parse_message(data: bytes | str) -> tuple[str, Any, str | None, str | None]:
    """Return ``(event, message, room, namespace)`` of one published message.

    :raises BadMessage: when it is not JSON, not an object, or its fields have wrong types.
    """
    try:
        # NaN and Infinity would reach browsers as text JSON.parse rejects, breaking every
        # client in the room; nesting past the recursion limit must not end the bridge.
        payload = _loads(data)
    except BadMessage:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadMessage(f"not JSON ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(payload, dict):
        raise BadMessage("not a JSON object")
    event = payload.get("event")
    room = payload.get("room")
    namespace = payload.get("namespace")
    if not isinstance(event, str) or not event:
        raise BadMessage("no event name")
    if event in RESERVED_EVENTS:
        raise BadMessage(f"event name {event!r} is reserved by socket.io")
    if room is not None and not isinstance(room, str):
        raise BadMessage("room is not a string")
    if namespace is not None and not isinstance(namespace, str):
        raise BadMessage("namespace is not a string")
    if room and not namespace:
        raise BadMessage("a room without a namespace")
    return event, payload.get("message"), room or None, namespace or None


class Bridge:
    """Subscribes to ``events`` and emits what arrives; runs in one greenlet.

    :param server: the Socket.IO server to emit on (to this process's sockets only).
    :param redis_url: URL of ``redis_queue``.
    :param metrics: where bridged messages and reconnects are counted.
    """

    def __init__(self, server: Server, redis_url: str, metrics: Metrics) -> None:
        self.server = server
        self.redis_url = redis_url
        self.metrics = metrics
        self.subscribed = False
        self.reason = "not started"
        self._greenlet: gevent.Greenlet | None = None
        self._stopping = False
        self._heard = 0.0
        self._unanswered = False
        self._deliver = server.manager.deliver

    def start(self) -> None:
        """Start the bridge greenlet."""
        self._stopping = False
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        """Stop listening."""
        self._stopping = True
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
        self.subscribed = False
        self.reason = "stopped"

    def deliver(self, data: bytes | str) -> int | None:
        """Emit one published message to its sockets; a bad one is logged and skipped.

        The frames are written when the caller flushes (:meth:`deliver_batch`) or at the end
        of the event-loop turn.

        :returns: the number of frames queued (about one per recipient), or ``None`` when
            the message was skipped.
        """
        try:
            event, message, room, namespace = parse_message(data)
        except BadMessage as e:
            self.metrics.bridged.inc("malformed")
            log.warning("skipped a malformed message on Redis channel %r: %s", CHANNEL, e)
            return None
        try:
            return self._deliver(namespace, room, event, message)
        except Exception:  # noqa: BLE001 - one message must never end the bridge
            self.metrics.bridged.inc("failed")
            log.exception(
                "could not emit event %r from Redis to room %r of %s", event, room, namespace
            )
            return None

    def deliver_batch(self, payloads: list[bytes]) -> None:
        """Deliver messages in order, writing frames every :data:`BATCH` messages or
        :data:`WRITES_PER_TURN` frames, whichever comes first, and at the end.

        The greenlet lets the others run after each of those but the last: its next read
        waits for the socket, which passes through the event loop's poll anyway.
        """
        flush = self.server.transport.flush_in_steps
        delivered = messages = writes = 0
        for data in payloads:
            written = self.deliver(data)
            messages += 1
            if written is not None:
                delivered += 1
                writes += written
            if messages == BATCH or writes >= WRITES_PER_TURN:
                flush()
                next_loop_turn()
                messages = writes = 0
        flush()
        if delivered:
            self.metrics.bridged.inc("delivered", amount=delivered)

    def _run(self) -> None:
        backoff = 0.0
        while not self._stopping:
            try:
                if resp.supported(self.redis_url):
                    self._listen()
                else:
                    self._listen_redis_py()
            except (redis.RedisError, OSError, resp.ReplyError) as e:
                if self.subscribed:
                    backoff = 0.0
                    log.error(
                        "lost the Redis connection at %s (%s); resubscribing",
                        self.redis_url,
                        type(e).__name__,
                    )
                else:
                    log.warning("cannot subscribe at %s: %s", self.redis_url, e)
                self.subscribed = False
                self.reason = f"Redis at {self.redis_url} unreachable: {type(e).__name__}"
                self.metrics.bridge_reconnects.inc()
            gevent.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2 or 0.05)

    def _subscribed(self) -> None:
        self.subscribed = True
        self.reason = "subscribed"
        log.info("subscribed to Redis channel %r at %s", CHANNEL, self.redis_url)

    @staticmethod
    def gathers(spacing: float, before: float, messages: int) -> bool:
        """Whether to let messages gather before the next read, after a read that found
        ``messages`` a mean ``spacing`` seconds apart (``before``: the read before it): only
        while they come densely, a few per read.

        The spacing is the time since the previous read's deliveries ended, gathering sleep
        included, per message: a gathering sleep saves wakeups only while more than one
        message comes per :data:`GATHER`.  Timing the wait after the sleep instead (as
        before) made any stream above one event per ``GATHER`` gather for good: at the desk
        mix's ~400 events/s (one every ~2.7 ms) a read waited ~0.7 ms after its 2 ms sleep,
        so nearly every event paid a timer wakeup and one that came during the sleep waited
        for its end.  A lone message soon after a long spacing is no dense stream either:
        the read before came late (the loop was busy with a page reload), so its deliveries
        ended late; a dense stream coming back after a pause shows itself by several
        messages in one read.
        """
        if not 0 < messages < GATHER_BELOW or spacing >= GATHER:
            return False
        return before < GATHER or messages > 1

    def _listen(self) -> None:
        """Subscribe with :mod:`gsocket.protocol.resp` and deliver until the connection is lost.

        Each read waits for the socket without a timer (a timer per wait costs more than the
        rest of an event's CPU at low rates) and then reads once; :meth:`_watch` pings a
        silent connection instead, and gives it up when the PING goes unanswered.  Dense
        traffic is read in gathered batches (:meth:`gathers`).  A lone event costs one
        wakeup: the watcher's callback, one ``recv``, the deliveries, and the writer's
        flush at the end of that loop turn.
        """
        subscriber = resp.Subscriber(self.redis_url)
        watchdog: gevent.Greenlet | None = None
        try:
            subscriber.connect()
            subscriber.subscribe(CHANNEL)
            self._subscribed()
            self._heard = time.monotonic()
            self._unanswered = False
            watchdog = gevent.spawn(self._watch, subscriber)
            delivered = self._heard  # when the last deliveries ended
            before = GATHER  # the spacing the previous read found
            gathered = False
            while not self._stopping:
                try:
                    payloads = subscriber.read(ready=gathered)
                except OSError:
                    if self._unanswered:
                        raise TimeoutError(f"no answer to PING in {PING_EVERY:g} s") from None
                    raise
                self._heard = heard = time.monotonic()
                gathered = False
                if payloads:
                    spacing = (heard - delivered) / len(payloads)
                    self.deliver_batch(payloads)
                    delivered = time.monotonic()
                    if self.gathers(spacing, before, len(payloads)):
                        gevent.sleep(GATHER)
                        gathered = True
                    before = spacing
        finally:
            if watchdog is not None:
                watchdog.kill(block=False)
            subscriber.close()

    def _watch(self, subscriber: resp.Subscriber) -> None:
        """Ping the subscription after :data:`PING_EVERY` seconds of silence; shut it down
        (the reader then resubscribes) when the answer does not come within as long."""
        pinged: float | None = None
        while True:
            gevent.sleep(1.0)
            now = time.monotonic()
            if now - self._heard < PING_EVERY:
                pinged = None
                continue
            try:
                if pinged is None:
                    subscriber.ping()
                    pinged = now
                elif now - pinged > PING_EVERY:
                    self._unanswered = True
                    subscriber.abort()
                    return
            except OSError:
                subscriber.abort()
                return

    def _listen_redis_py(self) -> None:
        """Subscribe through redis-py (the URLs :mod:`gsocket.protocol.resp` does not speak:
        TLS)."""
        client = redis.Redis.from_url(
            self.redis_url, socket_connect_timeout=2, socket_keepalive=True
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(CHANNEL)
            pubsub.get_message(timeout=1.0)
            self._subscribed()
            last_seen = yielded = time.monotonic()
            while not self._stopping:
                message = pubsub.get_message(timeout=1.0)
                now = time.monotonic()
                if message is None:
                    if now - last_seen > PING_EVERY:
                        pubsub.ping()
                        last_seen = now
                    continue
                last_seen = now
                if message.get("type") == "message":
                    self.deliver_batch([message["data"]])
                if now - yielded > YIELD_EVERY:
                    # a read that finds data buffered does not yield: a busy channel would
                    # hold the event loop
                    next_loop_turn()
                    yielded = time.monotonic()
        finally:
            pubsub.close()
            client.close()
