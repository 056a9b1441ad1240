"""Two values Frappe reads from Redis in every context, kept per process while Redis reports
their keys unchanged: the module map and the ``print_sql`` flag.

``frappe.init`` ends with ``setup_module_map``, which reads the site's ``app_modules`` key
from the Redis cache (a round trip and an unpickling per ``frappe_context=True`` event; a web
worker does the same per request) and builds the reverse map ``module_app`` from it.  That
value changes only when some process writes or deletes the key: ``frappe.clear_cache()``
(``bench clear-cache``, ``migrate``, ``install-app`` and ``remove-app`` all call it), the
first ``setup_module_map`` after that, a ``FLUSHALL``, an eviction.  :func:`keep_module_map`
puts in front of ``frappe.setup_module_map`` a copy of the last value per site that is
dropped whenever Redis says the key changed: one connection per site and Redis server with
``CLIENT TRACKING ON BCAST PREFIX <key> REDIRECT <itself>``, subscribed to
``__redis__:invalidate``, receives a message for every write, delete, expiry, eviction or
flush of the key (Redis >= 6).  While that connection is not set up, or after it was lost
or went quiet (a ``PING`` unanswered), nothing is kept and Frappe's own function runs.

The same connection tracks ``flag_print_sql``, which Frappe's ``Database._log_query`` reads
with ``frappe.cache.get_value`` on the first query of every context of a site with
``allow_tests`` (another round trip); it changes only by ``frappe.print_sql(enable)`` (a
``set_value``) or a clear.  Its kept value (``None`` while the key is absent, a bool once set)
is handed out by a wrapper of that one client's ``get_value``, for that key only.

What a context gets is what Frappe would have read: a copy of the value as it was after the
last change Redis reported.  The difference is the delivery of that report: a context that
starts between a change and the hub running the tracker's greenlet (milliseconds; longer
while the loop is busy with a burst) sees the value from just before it, as a web request
that started that much earlier would; a tracking connection that died without a word (a
dropped NAT entry) is noticed by its ``PING`` within :data:`PING_SECONDS` +
:data:`PONG_SECONDS`.  A value read while a change was reported is never kept (the report
count is compared before and after the read).  Only ``frappe.init``'s own call gets the kept
map; a context's later ``setup_module_map`` (after its own ``clear_cache``) is Frappe's.
The kept ``print_sql`` flag has the same window after a context's own clear: it decides only
whether Frappe prints the queries.

Verified against Frappe v15.44.2 and develop (16.0.0-dev of October 2024), whose
``setup_module_map(include_all_apps=True)``:

- is looked up in ``frappe``'s module namespace by ``frappe.init`` at each call;
- with ``include_all_apps`` reads ``frappe.cache.get_value("app_modules")`` (key
  ``<db_name>|app_modules``), which also stores the value in ``frappe.local.cache`` under
  that key, the same object as ``frappe.local.app_modules``; without it (``frappe.request``,
  a job, a migrate) ``installed_app_modules``, which is left to Frappe here;
- when the value is empty builds it from the apps and ``set_value``\\ s it;
- sets ``frappe.local.module_app`` to the reverse map, warning about a module in two apps.

whose ``frappe.cache`` is one ``redis.Redis`` per process on a plain ``ConnectionPool``
(redis-py 4.5.5 on v15, 5.0.8 on develop; with a Sentinel or cluster client nothing is kept),
set up by ``frappe.init`` before ``setup_module_map``; and whose ``RedisWrapper.get_value(key,
generator=None, user=None, expires=False, shared=False)`` returns ``frappe.local.cache[<full
key>]`` when present, else GETs and unpickles the key (``None`` when absent or when Redis
cannot be reached) and stores the value in ``frappe.local.cache``.

A value Frappe read while Redis could not be reached is ``None`` (or, for the module map, the
map rebuilt from the apps); it may be kept if the tracking connection did not notice the
outage: both are Frappe's own fall-backs, and the next change of the key drops them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import gevent
import redis

from gsocket.protocol.internals.frappe_conf_hooks import verified_function

log = logging.getLogger("gsocket.frappe_cache")

MODULE_MAP = "app_modules"
PRINT_SQL = "flag_print_sql"
KEYS = (MODULE_MAP, PRINT_SQL)
"""The Redis keys (after Frappe's ``<db_name>|`` prefix) whose values are kept."""

_MISSING = object()

VERIFIED_REDIS = ((4, 5), (5, 0))
"""redis-py minor versions whose ``Connection.read_response`` returns pub/sub replies as they
come (Frappe v15 pins 4.5.5, develop 5.0.8).  From 5.1 on (seen with 8.1.0) its parser hands
``subscribe`` and ``message`` replies to a push handler and waits on, so the tracking
connection would never see a change: with such a redis-py nothing is kept."""

PING_SECONDS = 30.0
"""A tracking connection silent this long is pinged; without an answer in
:data:`PONG_SECONDS` it is dropped (and nothing is kept until it is set up again)."""

PONG_SECONDS = 5.0

RETRY_SECONDS = 5.0
"""Seconds between two attempts to set up a lost tracking connection."""


class KeyTracker:
    """One Redis connection told of every change of the keys starting with ``prefixes``.

    :param make_connection: returns a new, unconnected ``redis.Connection`` to the server
        Frappe's cache uses.
    :param prefixes: full keys (bytes, as Frappe's ``make_key`` returns them).
    """

    def __init__(self, make_connection: Callable[[], Any], prefixes: tuple[bytes, ...]) -> None:
        self.make_connection = make_connection
        self.prefixes = prefixes
        self.ready = False
        self.client_id: int | None = None
        self.changes = 0
        #: Values by full key, each as Frappe last read it after the last reported change.
        self.kept: dict[bytes, Any] = {}
        self.closed = False
        #: Whether the last attempt failed (an outage is logged when it starts and ends).
        self.failing = False
        self._greenlet = gevent.spawn(self._run)

    def changed(self, keys: Any = None) -> None:
        """``keys`` changed (None: any key may have, or changes may go unseen from now on):
        drop their kept values.  ``changes`` counts every report, so that a value read while
        one arrived is not kept."""
        self.changes += 1
        if isinstance(keys, list):
            for key in keys:
                self.kept.pop(key.encode() if isinstance(key, str) else key, None)
        else:
            self.kept.clear()

    def close(self) -> None:
        self.closed = True
        self._greenlet.kill(block=False)

    def _run(self) -> None:
        """Track until closed: set the connection up again :data:`RETRY_SECONDS` after a loss
        (logged once per outage), but give up at once when Redis refuses a command (a Redis
        before 6, ``CLIENT`` renamed away, an ACL user without the invalidation channel):
        asking again would only log the same refusal every few seconds for good."""
        while not self.closed:
            conn = self.make_connection()
            try:
                self._track(conn)
            except redis.exceptions.ResponseError as exc:
                log.warning(
                    "Redis refused to track %r (%s): Frappe's module map and print_sql flag "
                    "are read from Redis in every context of this site",
                    self.prefixes,
                    exc,
                )
                self.closed = True
            except Exception as exc:
                if not self.failing:
                    log.info(
                        "Redis tracking of %r lost (%r): read per context until it is back",
                        self.prefixes,
                        exc,
                    )
                self.failing = True
            finally:
                self.ready = False
                self.changed()
                conn.disconnect()
            if not self.closed:
                gevent.sleep(RETRY_SECONDS)

    def _track(self, conn: Any) -> None:
        conn.connect()
        conn.send_command("CLIENT", "ID")
        own_id = conn.read_response()
        self.client_id = int(own_id)
        prefixes = [part for prefix in self.prefixes for part in ("PREFIX", prefix)]
        conn.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST", *prefixes)
        if conn.read_response() not in (b"OK", "OK"):
            raise redis.exceptions.ResponseError("CLIENT TRACKING did not answer OK")
        conn.send_command("SUBSCRIBE", "__redis__:invalidate")
        conn.read_response()
        if self.failing:
            log.info("Redis tracking of %r is back", self.prefixes)
            self.failing = False
        self.ready = True
        pinged = False
        while not self.closed:
            if not conn.can_read(timeout=PONG_SECONDS if pinged else PING_SECONDS):
                if pinged:
                    raise TimeoutError("no answer to PING")
                conn.send_command("PING")
                pinged = True
                continue
            message = conn.read_response()
            kind = message[0] if isinstance(message, list) and message else b""
            if kind in (b"pong", "pong"):
                pinged = False
            elif kind in (b"message", "message"):
                # A list of keys, or None for FLUSHDB/FLUSHALL.
                self.changed(message[2] if len(message) > 2 else None)
                pinged = False


class ModuleMapCache:
    """``setup_module_map`` with each site's last ``app_modules`` kept while Redis reports
    no change of it (module docstring); also installs :class:`PrintSqlFlag` on the first
    call, when ``frappe.cache`` exists.

    :param original: Frappe's ``setup_module_map``.
    :param frappe: the ``frappe`` module (for ``local`` and ``cache``, looked up per call).
    """

    def __init__(self, original: Callable[..., Any], frappe: ModuleType) -> None:
        self.original = original
        self.frappe = frappe
        self.trackers: dict[tuple[Any, ...], KeyTracker] = {}
        self._by_site: dict[tuple[int, Any], tuple[Any, KeyTracker]] = {}
        self.reads = 0
        self.closed = False

    def __call__(self, include_all_apps: bool = True, *args: Any, **kw: Any) -> Any:
        # Only ``frappe.init``'s own call, which comes right after it set ``module_app`` to
        # None: a context that deleted the key (``clear_cache`` and then ``setup_module_map``,
        # as Frappe's ``clear_global_cache`` does) must rebuild the map as Frappe would, not
        # get the kept one back before Redis's report of its own delete is read.
        fresh = getattr(self.frappe.local, "module_app", None) is None
        tracker = None if args or kw or not include_all_apps or not fresh else self.tracker()
        if tracker is None or not tracker.ready:
            self.reads += 1
            return self.original(include_all_apps, *args, **kw)
        local = self.frappe.local
        key = tracker.prefixes[0]
        kept = tracker.kept.get(key)
        if kept is not None:
            # New lists and dicts: a handler that changes its map changes no other event's.
            app_modules = {app: list(modules) for app, modules in kept[0].items()}
            local.cache[key] = local.app_modules = app_modules
            local.module_app = dict(kept[1])
            return None
        self.reads += 1
        changes = tracker.changes
        result = self.original(include_all_apps)
        app_modules = local.app_modules
        if tracker.ready and tracker.changes == changes and app_modules:
            tracker.kept[key] = (
                {app: tuple(modules) for app, modules in app_modules.items()},
                dict(local.module_app),
            )
        return result

    def tracker(self) -> KeyTracker | None:
        """The tracker of the current site's keys on the server of ``frappe.cache``, started
        on first use; None outside a site's context or where the client is not a plain one
        (Sentinel, cluster)."""
        client = self.frappe.cache
        conf = getattr(self.frappe.local, "conf", None)
        if self.closed or client is None or conf is None:  # closed, or outside a site's context
            return None
        site = (id(client), conf.db_name)
        known = self._by_site.get(site)
        if known is not None and known[0] is client:
            return known[1]
        pool = getattr(client, "connection_pool", None)
        if type(pool) is not redis.ConnectionPool:
            return None
        if not isinstance(client.__dict__.get("get_value"), PrintSqlFlag):
            client.get_value = PrintSqlFlag(client.get_value, self)
        prefixes = tuple(_full_key(client, key) for key in KEYS)
        # The pool lives as long as its client (the tracker's connection factory holds it).
        where = (id(pool), prefixes)
        tracker = self.trackers.get(where)
        if tracker is None:
            kwargs = {**pool.connection_kwargs, "socket_timeout": None}
            tracker = KeyTracker(lambda: pool.connection_class(**kwargs), prefixes)
            self.trackers[where] = tracker
        self._by_site[site] = (client, tracker)
        return tracker

    def close(self) -> None:
        """Close every tracking connection; from now on every context reads as Frappe does."""
        self.closed = True
        for tracker in self.trackers.values():
            tracker.close()
        self.trackers.clear()
        self._by_site.clear()


class PrintSqlFlag:
    """``frappe.cache.get_value`` that answers ``get_value("flag_print_sql")`` from the site's
    tracker while Redis reports no change of that key; every other call is Frappe's."""

    def __init__(self, original: Callable[..., Any], owner: ModuleMapCache) -> None:
        self.original = original
        self.owner = owner
        self.reads = 0

    def __call__(self, key: Any, *args: Any, **kw: Any) -> Any:
        if key != PRINT_SQL or args or kw:
            return self.original(key, *args, **kw)
        tracker = self.owner.tracker()
        if tracker is None or not tracker.ready:
            self.reads += 1
            return self.original(key)
        full = tracker.prefixes[1]
        local_cache = self.owner.frappe.local.cache
        if full in local_cache:
            return local_cache[full]
        value = tracker.kept.get(full, _MISSING)
        if value is not _MISSING:
            local_cache[full] = value
            return value
        self.reads += 1
        changes = tracker.changes
        value = self.original(key)
        # Only values that no handler can change in place (print_sql sets a bool).
        if tracker.ready and tracker.changes == changes and isinstance(value, bool | type(None)):
            tracker.kept[full] = value
        return value


def redis_verified() -> bool:
    """Whether the installed redis-py is one of :data:`VERIFIED_REDIS`."""
    try:
        version = tuple(int(part) for part in redis.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return False
    return version in VERIFIED_REDIS


def _full_key(client: Any, key: str) -> bytes:
    full = client.make_key(key)
    return full.encode() if isinstance(full, str) else full


def keep_module_map(frappe: ModuleType) -> ModuleMapCache | None:
    """Put :class:`ModuleMapCache` in front of ``frappe.setup_module_map``; return it, or None
    when this Frappe or redis-py is not one it was verified with (then nothing changes)."""
    current = getattr(frappe, "setup_module_map", None)
    if isinstance(current, ModuleMapCache):
        return current
    current = verified_function(frappe, "setup_module_map", ["include_all_apps"])
    if current is None:
        log.info("this Frappe: its module map is read from Redis on every context")
        return None
    if not redis_verified():
        log.info("this redis-py: the module map is read from Redis on every context")
        return None
    cache = ModuleMapCache(current, frappe)
    frappe.setup_module_map = cache
    return cache
