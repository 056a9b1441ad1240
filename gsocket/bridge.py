"""The Redis bridge: events published by the web process and workers, emitted to sockets.

``frappe.publish_realtime`` does ``PUBLISH events {"event", "message", "room", "namespace"}``
on ``redis_queue``.  One greenlet listens on that channel and emits each message to its room
of ``/<namespace>``, or to every site when it has no room.  Redis pub/sub keeps nothing for a
subscriber that is away, so a lost connection is retried at once and then at short, bounded
intervals, forever; a malformed message costs one log line.

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
from gsocket.server import Server

log = logging.getLogger("gsocket.bridge")

CHANNEL = "events"
MAX_BACKOFF = 0.5
PING_EVERY = 10.0


RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
"""Event names socket.io reserves: the Node server refuses to emit them, and a client would
take one for its own connection event."""


class BadMessage(ValueError):
    """A message on the channel that is not Frappe's realtime shape."""


def _reject_constant(name: str) -> Any:
    raise BadMessage(f"{name} is not JSON")


def parse_message(data: bytes | str) -> tuple[str, Any, str | None, str | None]:
    """Return ``(event, message, room, namespace)`` of one published message.

    :raises BadMessage: when it is not JSON, not an object, or its fields have wrong types.
    """
    try:
        # NaN and Infinity would reach browsers as text JSON.parse rejects, breaking every
        # client in the room; nesting past the recursion limit must not end the bridge.
        payload = json.loads(data, parse_constant=_reject_constant)
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

    def deliver(self, data: bytes | str) -> None:
        """Emit one published message to its sockets; a bad one is logged and skipped."""
        try:
            event, message, room, namespace = parse_message(data)
        except BadMessage as e:
            self.metrics.bridged.inc("malformed")
            log.warning("skipped a malformed message on Redis channel %r: %s", CHANNEL, e)
            return
        try:
            if room is not None:
                self.server.emit(
                    event, message, to=room, namespace=f"/{namespace}", ignore_queue=True
                )
            else:
                for ns in self.server.site_namespaces():
                    self.server.emit(event, message, namespace=ns, ignore_queue=True)
        except Exception:  # noqa: BLE001 - one message must never end the bridge
            self.metrics.bridged.inc("failed")
            log.exception(
                "could not emit event %r from Redis to room %r of %s", event, room, namespace
            )
            return
        self.metrics.bridged.inc("delivered")

    def _run(self) -> None:
        backoff = 0.0
        while not self._stopping:
            client = redis.Redis.from_url(
                self.redis_url, socket_connect_timeout=2, socket_keepalive=True
            )
            try:
                self._listen(client)
            except (redis.RedisError, OSError) as e:
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
            finally:
                client.close()
            gevent.sleep(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2 or 0.05)

    def _listen(self, client: redis.Redis) -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(CHANNEL)
            pubsub.get_message(timeout=1.0)
            self.subscribed = True
            self.reason = "subscribed"
            log.info("subscribed to Redis channel %r at %s", CHANNEL, self.redis_url)
            last_seen = time.monotonic()
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
                    self.deliver(message["data"])
        finally:
            pubsub.close()
