"""The shared secret that proves to the web process that a call comes from the realtime server.

Newer Frappe keeps it in the Redis key ``socketio_auth_secret`` and may create or rotate it at
any time; v15 has none.  Reading Redis on every connect would put Redis on the connect path, so
the value is kept for a few seconds only, and read afresh whenever the web process refuses.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

log = logging.getLogger("gsocket.secret")

SECRET_KEY = "socketio_auth_secret"


class SocketSecret:
    """A briefly cached view of the Redis key ``socketio_auth_secret``.

    :param client: Redis client of ``redis_queue``.
    :param ttl: seconds a read value (or its absence) is trusted.
    """

    def __init__(self, client: redis.Redis, ttl: float = 2.0) -> None:
        self.client = client
        self.ttl = ttl
        self._value: str | None = None
        self._read_at = -float("inf")
        self._reading = threading.Lock()

    def get(self, fresh: bool = False) -> str | None:
        """Return the secret, or ``None`` when Redis has none (Frappe v15).

        One greenlet reads at a time: when the cache runs out during a connect storm, the
        others wait for that read instead of each taking a Redis connection.  When Redis cannot
        be read, the last value known is kept: a stale secret may still be the right one, no
        secret never is on a bench that has one.

        :param fresh: ignore the cached value and read Redis now.
        """
        asked = time.monotonic()
        if not fresh and asked - self._read_at <= self.ttl:
            return self._value
        with self._reading:
            if self._read_at >= asked:
                return self._value
            try:
                raw = self.client.get(SECRET_KEY)
            except redis.RedisError as e:
                log.warning("cannot read the socket secret from Redis: %s", type(e).__name__)
            else:
                self._value = raw.decode() if isinstance(raw, bytes) else raw
            self._read_at = time.monotonic()
        return self._value

    def changed(self) -> bool:
        """Tell whether a fresh read gives another value than the one used last; reads Redis."""
        before = self._value
        return self.get(fresh=True) != before
