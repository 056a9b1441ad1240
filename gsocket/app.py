"""Assembling the server from a bench's configuration, and serving it.

:func:`create_app` is the application factory: it wires configuration, Redis, the web client,
the handler registry (core events plus every app's handlers), the Socket.IO server and the
Redis bridge into an :class:`App`, without listening yet.  :meth:`App.serve` listens on the
bench's port or Unix socket with gevent's WSGI server and gevent-websocket.
"""

from __future__ import annotations

import json
import logging
import socket as pysocket
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import redis
import socketio

from gsocket.cluster.presence import Presence, name_sessions, node_name
from gsocket.cluster.recovery import Recovery
from gsocket.config import Config
from gsocket.contract.auth import Authenticator
from gsocket.contract.bridge import Bridge
from gsocket.contract.core_handlers import (
    announce_lost_viewers,
    join_default_rooms,
    register_core_handlers,
)
from gsocket.contract.dbpool import DBPool
from gsocket.contract.frappe_shim import install_frappe_realtime
from gsocket.contract.secret import SocketSecret
from gsocket.contract.sites import is_trusted_proxy
from gsocket.contract.webclient import WebClient
from gsocket.frappe_ctx import FrappeContext
from gsocket.handlers.registry import Registry, realtime
from gsocket.handlers.sessions import Sessions
from gsocket.handlers_loader import load_handlers, read_apps
from gsocket.metrics import Metrics
from gsocket.ops.arrival import DOCTOR_PATH, serve_arrival
from gsocket.ops.lifecycle import InFlight, TrackedDispatcher, drain
from gsocket.ops.listener import open_listener
from gsocket.ops.logs import ConnectionSummary
from gsocket.protocol.guards import ClientGuard
from gsocket.protocol.http import LeanWebSocketHandler
from gsocket.protocol.internals.gevent_hooks import HookedWSGIServer
from gsocket.protocol.scaleout import make_client_manager, start_client_manager
from gsocket.protocol.server import Server
from gsocket.protocol.stall import watch_event_loop
from gsocket.protocol.transport import Transport
from gsocket.protocol.workers import workers

log = logging.getLogger("gsocket.app")

StartResponse = Callable[..., Any]


class App:
    """A configured gsocket server: the Socket.IO server, its bridge and its HTTP endpoints.

    Build it with :func:`create_app`.
    """

    def __init__(
        self,
        config: Config,
        registry: Registry,
        metrics: Metrics,
        redis_client: redis.Redis,
        web: WebClient,
        frappe_ctx: FrappeContext,
        server: Server,
        sessions: Sessions,
        bridge: Bridge,
        in_flight: InFlight | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.metrics = metrics
        self.redis = redis_client
        self.web = web
        self.frappe_ctx = frappe_ctx
        self.server = server
        self.sessions = sessions
        self.bridge = bridge
        self.in_flight = in_flight or InFlight()
        self.draining = False
        self.summary = ConnectionSummary(metrics, config.log_summary_seconds)
        self._socketio_app = socketio.WSGIApp(server, socketio_path="socket.io")
        self._wsgi_server: HookedWSGIServer | None = None

    def health(self) -> tuple[int, dict[str, Any]]:
        """Return the HTTP status and body of ``GET /health``.

        Healthy means the bridge is subscribed: without it no published event reaches anyone.
        """
        body: dict[str, Any] = {
            "bridge": self.bridge.reason,
            "sockets": len(self.sessions.sockets()),
        }
        if self.sessions.presence is not None:
            body["node"] = self.sessions.presence.node
        if self.draining:
            return 503, {"status": "draining", **body}
        if self.bridge.subscribed:
            return 200, {"status": "ok", **body}
        return 503, {"status": "unavailable", "reason": self.bridge.reason, **body}

    def wsgi(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI application: ``/health``, ``/metrics``, Socket.IO under ``/socket.io/``, and
        what arrived for ``gsocket doctor --url`` (:mod:`gsocket.ops.arrival`)."""
        path = environ.get("PATH_INFO", "")
        if path == "/health":
            status, body = self.health()
            payload = json.dumps(body).encode()
            reason = "OK" if status == 200 else "Service Unavailable"
            start_response(
                f"{status} {reason}",
                [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
            )
            return [payload]
        if path == DOCTOR_PATH:
            return serve_arrival(environ, start_response, self.config)
        if path == "/metrics":
            payload = self.metrics.render().encode()
            start_response(
                "200 OK",
                [
                    ("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                    ("Content-Length", str(len(payload))),
                ],
            )
            return [payload]
        if self.draining and "sid=" not in environ.get("QUERY_STRING", ""):
            # A new session on a process that is going away would be closed at once; the
            # client retries, and finds the process that takes over.
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return []
        return self._socketio_app(environ, start_response)

    def start(self, listener: pysocket.socket | None = None) -> None:
        """Listen and start the bridge, without blocking.

        :param listener: a listening socket to serve (one inherited from ``gsocket serve
            --handover``'s parent); by default the configured port or Unix socket is bound.
        """
        if listener is None:
            listener = open_listener(self.config)
        listener.setblocking(False)
        watch_event_loop()
        self._wsgi_server = HookedWSGIServer(
            listener,
            self.wsgi,
            handler_class=LeanWebSocketHandler,
            spawn=workers.spawn,  # each request in a kept greenlet (gsocket.protocol.workers)
            log=None,
            error_log=log,
        )
        self._wsgi_server.start()
        if self.config.scale_out:
            start_client_manager(self.server)
        if self.sessions.presence is not None:
            self.sessions.presence.start()
        if self.sessions.recovery is not None:
            self.sessions.recovery.start()
        self.bridge.start()
        self.summary.start()
        where = self.config.uds or f"{self.config.host}:{self.config.port}"
        log.info("gsocket listening on %s for bench %s", where, self.config.bench_path)

    def stop(self, timeout: float | None = None) -> None:
        """Drain: refuse new sessions, make every client reconnect, stop accepting, let
        running handlers finish; then stop the bridge.

        Published events keep flowing to the clients until they are closed.  Returns within
        ``timeout`` plus about a second.

        :param timeout: seconds granted to the drain; ``gsocket.drain_timeout`` by default.
        """
        timeout = self.config.drain_timeout if timeout is None else timeout
        self.draining = True
        drain(self.server, self.in_flight, timeout, self._stop_accepting)
        self.sessions.dispatcher.aio.close()
        self.frappe_ctx.close()
        self.bridge.stop()
        if self.sessions.presence is not None:
            self.sessions.presence.stop()
        if self.sessions.recovery is not None:
            self.sessions.recovery.stop()
        with gevent.Timeout(1.0, False):
            self.server.shutdown()
        if self._wsgi_server is not None:
            self._wsgi_server.stop(timeout=0.5)
        self.web.close()
        self.summary.stop()

    def _stop_accepting(self) -> None:
        if self._wsgi_server is not None:
            self._wsgi_server.close()

    def serve(self) -> None:
        """Listen and serve until the server is stopped."""
        self.start()
        assert self._wsgi_server is not None
        self._wsgi_server.serve_forever()


def _installed_apps_resolver(frappe_ctx: FrappeContext) -> Callable[[str], tuple[str, ...]]:
    """Where a site's installed apps come from when ``get_user_info`` does not say (v15)."""
    warned: set[str] = set()

    def installed_apps_of(site: str) -> tuple[str, ...]:
        if frappe_ctx.available():
            try:
                return tuple(frappe_ctx.installed_apps(site))
            except Exception as e:  # noqa: BLE001 - a failed lookup must not refuse the user
                log.error("cannot read the installed apps of %s: %s", site, e)
        if site not in warned:
            warned.add(site)
            log.warning(
                "the web process of %s does not report installed apps and Frappe is not "
                "importable here: only frappe's own events are served on that site",
                site,
            )
        return ("frappe",)

    return installed_apps_of


def join_cluster(
    server: Server, sessions: Sessions, redis_client: redis.Redis, config: Config
) -> None:
    """Make a scaled-out server one node of the bench's cluster (:mod:`gsocket.cluster.presence`):
    session ids that name it, and presence shared with the other processes."""
    node = node_name(config.process or 0)
    name_sessions(server.eio, node)
    presence = Presence(
        redis_client,
        node,
        f"{config.scale_out_channel}:presence:",
        config.presence_ttl,
        lambda namespace, rooms: announce_lost_viewers(sessions, namespace, rooms),
        lambda: ((s.namespace, s.sid, s.user, s.rooms) for s in sessions.sockets()),
    )
    sessions.presence = presence
    server.manager.presence = presence


def enable_recovery(
    server: Server, sessions: Sessions, redis_client: redis.Redis, config: Config
) -> None:
    """Turn on connection state recovery (:mod:`gsocket.cluster.recovery`), logging under this
    process's cluster node name (a fresh one per start when it is the bench's only process)."""
    presence = sessions.presence
    node = presence.node if presence is not None else node_name(config.process or 0)
    manager = server.manager

    def rooms_of(namespace: str, sid: str) -> list[str] | None:
        return manager.get_rooms(sid, namespace) if manager.is_connected(sid, namespace) else None

    recovery = Recovery(
        redis_client,
        node,
        f"{config.scale_out_channel}:recovery:",
        config.recovery_seconds,
        config.recovery_events,
        config.recovery_missed,
        rooms_of,
    )
    sessions.recovery = recovery
    manager.rooms_changed = recovery.rooms_changed
    manager.numbering = recovery.log.append


def create_app(
    config: Config, registry: Registry | None = None, load_app_handlers: bool = True
) -> App:
    """Build a server for ``config``.

    :param config: the bench configuration.
    :param registry: handler registry; defaults to the one handler modules import.
    :param load_app_handlers: import every app's ``realtime/handlers.py`` (from ``apps.txt``).
    :raises gsocket.errors.StartupError: when an app's handlers module fails to import.
    """
    registry = realtime if registry is None else registry
    metrics = Metrics()
    redis_client = redis.Redis.from_url(
        config.redis_url, socket_connect_timeout=2, socket_timeout=5
    )
    web = WebClient(
        SocketSecret(redis_client),
        metrics,
        timeout=config.web_timeout,
        ca_file=config.ca_file,
        proxy_from_env=config.web_proxy_from_env,
    )
    pool = None
    if config.db_pool_size or config.db_max_connections:
        pool = DBPool(
            config.db_pool_size,
            config.db_pool_idle_seconds,
            max_connections=config.db_max_connections,
        )
        metrics.collect(pool.metric_families)
    frappe_ctx = FrappeContext(str(config.sites_path), pool=pool)

    register_core_handlers(registry, redis_client, config.developer_mode)
    if load_app_handlers:
        install_frappe_realtime(registry)
        load_handlers(read_apps(config.apps_txt), config.bench_path / "apps", registry)

    authenticator = Authenticator(config, web, _installed_apps_resolver(frappe_ctx))
    in_flight = InFlight()
    dispatcher = TrackedDispatcher(
        registry, frappe_ctx, metrics, config.limits.handler_timeout, in_flight=in_flight
    )
    server = Server(
        client_manager=make_client_manager(config) if config.scale_out else None,
        connect_timeout=config.connect_timeout,
        max_http_buffer_size=config.limits.max_message_bytes,
        ping_interval=config.ping_interval,
        ping_timeout=config.ping_timeout,
    )
    guard = ClientGuard(
        server.eio,
        config.limits,
        metrics,
        lambda address: is_trusted_proxy(address, config.trusted_proxies),
    )
    transport = Transport(
        server.eio,
        config.limits.send_queue,
        kick=lambda eio_sid, why: guard.kick(eio_sid, why, abort=True),
    )
    sessions = Sessions(
        server, authenticator, dispatcher, web, metrics, connect_hooks=[join_default_rooms]
    )
    server.use(guard, transport, sessions)
    if config.scale_out:
        join_cluster(server, sessions, redis_client, config)
    if config.recovery_seconds > 0:
        enable_recovery(server, sessions, redis_client, config)
    bridge = Bridge(server, config.redis_url, metrics)
    return App(
        config,
        registry,
        metrics,
        redis_client,
        web,
        frappe_ctx,
        server,
        sessions,
        bridge,
        in_flight,
    )
