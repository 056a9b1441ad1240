"""The realtime process's configuration, read from a bench the way the Node server reads it.

A bench describes its realtime process in ``sites/common_site_config.json`` (plus a few
``FRAPPE_*`` environment overrides).  gsocket reads the same keys with the same defaults so that
an operator changes nothing on the bench; the handful of gsocket-only settings (limits, log
level, trusted proxies) live under the same file's ``gsocket`` key or come from the command line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("gsocket.config")

DEFAULT_REDIS_QUEUE = "redis://127.0.0.1:11000"

# Channels of redis_queue that Frappe itself uses; the scale-out channel must be another one.
RESERVED_CHANNELS = frozenset({"events", "open_in_editor"})

# gsocket settings of the Engine.IO and Socket.IO protocols, in seconds (Node's are in ms).
ENGINE = ("ping_interval", "ping_timeout", "connect_timeout")


LOG_FORMATS = ("text", "json")
"""Values of ``gsocket.log_format`` (and ``--log-format``)."""

DEFAULT_POOL_SIZE = 32
"""Database connections kept per site between Frappe contexts (``gsocket.db_pool_size``)."""

DEFAULT_POOL_IDLE_SECONDS = 60.0
"""Seconds a kept connection may stay unused (``gsocket.db_pool_idle_seconds``)."""

DEFAULT_DB_MAX_CONNECTIONS = 100
"""Database connections gsocket opens at once, every site together
(``gsocket.db_max_connections``): two thirds of Debian's MariaDB ``max_connections`` (151),
leaving the rest to the bench's web and background workers."""


class ConfigError(Exception):
    """The bench configuration cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class Limits:
    """Protective bounds on what one client may cost the server.

    :param max_message_bytes: largest Engine.IO message accepted from a client.
    :param events_per_second: sustained events a socket may send (token bucket refill rate).
    :param event_burst: events a socket may send at once before the rate applies.
    :param connections_per_ip: simultaneous Engine.IO sessions from one client address.
    :param handler_timeout: seconds a handler may run before it is ended with a log line.
    :param send_queue: outgoing packets buffered for one client before it is disconnected.
    """

    max_message_bytes: int = 1_000_000
    events_per_second: float = 50.0
    event_burst: int = 100
    connections_per_ip: int = 500
    handler_timeout: float = 30.0
    send_queue: int = 1000


@dataclass(frozen=True)
class Config:
    """Everything the server needs to run against one bench.

    :param bench_path: the bench folder (parent of ``sites/`` and ``apps/``).
    :param port: TCP port to listen on (``socketio_port``).
    :param uds: Unix domain socket path to listen on instead of ``port`` (``socketio_uds``).
    :param host: address to bind the TCP port to.
    :param redis_url: Redis whose ``events`` channel carries published events.
    :param default_site: site for connections whose Host is ``localhost``/``127.0.0.1``.
    :param webserver_port: port of the bench web process.
    :param webserver_host: where the web process is, when it is not the client's Origin: a
        host, a host:port or a full URL with scheme (:attr:`web_url`).
    :param developer_mode: enables ``open_in_editor`` and the developer-mode web URL rule.
    :param trusted_proxies: client addresses whose ``X-Frappe-Site-Name`` header is believed;
        ``None`` means "only loopback", the safe default when nginx runs on the same machine.
    :param web_timeout: seconds for one call to the web process.
    :param log_level: logging level name.
    :param log_format: ``text``, or ``json`` for one JSON object per line (log shippers).
    :param log_summary_seconds: seconds between two INFO lines counting the connects,
        disconnects and refusals (``gsocket.log_summary_seconds``; each connect and
        disconnect is a DEBUG line); 0 turns the line off.
    :param limits: per-client protective bounds.
    :param drain_timeout: seconds a stopping server grants to closing its clients and to the
        handlers still running; supervisord's ``stopwaitsecs`` must exceed it.
    :param reuse_port: bind the TCP port with ``SO_REUSEPORT``, so that a new process can
        listen before the old one has stopped (a hand-over restart).
    :param scale_out: share rooms with the other gsocket processes of the bench through
        python-socketio's Redis manager on ``redis_url``.
    :param scale_out_channel: Redis channel of that manager; never Frappe's ``events``.
    :param processes: how many gsocket processes serve the bench (``gsocket.processes``);
        above 1 they form a cluster (:mod:`gsocket.cluster.presence`) and each is started with
        ``--process K``.
    :param process: which of them this one is (0-based), ``None`` when not started as one.
    :param presence_ttl: seconds without a heartbeat after which a cluster process counts as
        dead and the presence of its sockets is removed (``gsocket.presence_ttl``).
    :param recovery_seconds: Socket.IO connection state recovery (:mod:`gsocket.cluster.recovery`):
        how long after losing its connection a client may come back with its session id,
        rooms and missed events (``gsocket.recovery_seconds``); 0, the default, turns it off.
    :param db_pool_size: database connections kept open per site between
        ``frappe_context=True`` events (``gsocket.db_pool_size``), reset before reuse
        (:mod:`gsocket.contract.dbpool`); 0 opens and closes one per event.
    :param db_pool_idle_seconds: seconds such a connection is kept unused before it is closed
        (``gsocket.db_pool_idle_seconds``).
    :param db_max_connections: database connections open at once, lent and kept, every site
        together (``gsocket.db_max_connections``); at the cap events wait for one; 0: no cap.
    :param recovery_events: published events each process keeps for recovery
        (``gsocket.recovery_events``), in memory and in Redis.
    :param recovery_missed: most events replayed to one recovering client
        (``gsocket.recovery_missed``); one that missed more gets a fresh session.
    :param ping_interval: seconds between a client's PONG and the next PING (Engine.IO's
        ``pingInterval``; fractions are kept, to the millisecond).
    :param ping_timeout: seconds a client has to answer a PING before it is closed.
    :param connect_timeout: seconds a client may stay connected without joining a site's
        namespace (Socket.IO's ``connectTimeout``).
    :param ca_file: a private CA's certificate (PEM) trusted for https calls to the web
        process, besides the system's store, ``SSL_CERT_FILE`` and ``REQUESTS_CA_BUNDLE``.
    :param web_proxy_from_env: make the calls to the web process through the environment's
        ``https_proxy`` / ``http_proxy`` (honouring ``no_proxy``); by default they go direct.
    """

    bench_path: Path
    port: int = 9000
    uds: str | None = None
    host: str = "0.0.0.0"
    redis_url: str = DEFAULT_REDIS_QUEUE
    default_site: str | None = None
    webserver_port: int = 8000
    webserver_host: str | None = None
    developer_mode: bool = False
    trusted_proxies: tuple[str, ...] | None = None
    web_timeout: float = 5.0
    log_level: str = "INFO"
    log_format: str = "text"
    log_summary_seconds: float = 60.0
    limits: Limits = field(default_factory=Limits)
    drain_timeout: float = 5.0
    reuse_port: bool = False
    scale_out: bool = False
    scale_out_channel: str = "gsocket"
    processes: int = 1
    process: int | None = None
    presence_ttl: float = 15.0
    recovery_seconds: float = 0.0
    recovery_events: int = 10_000
    db_pool_size: int = DEFAULT_POOL_SIZE
    db_pool_idle_seconds: float = DEFAULT_POOL_IDLE_SECONDS
    db_max_connections: int = DEFAULT_DB_MAX_CONNECTIONS
    recovery_missed: int = 1_000
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    connect_timeout: float = 45.0
    ca_file: str | None = None
    web_proxy_from_env: bool = False

    @property
    def sites_path(self) -> Path:
        """The bench's ``sites`` folder: the working directory of every bench process."""
        return self.bench_path / "sites"

    @property
    def apps_txt(self) -> Path:
        """The bench's list of apps, one per line."""
        return self.sites_path / "apps.txt"

    def for_process(self, process: int) -> Config:
        """Return the configuration of process ``process`` of the bench's ``processes``.

        Process K listens on ``socketio_port + K``, or on ``socketio_uds`` with ``.K``
        appended (process 0 keeps the bench's own address, so one process is served where
        the bench always served it); with more than one process the Redis manager is on.

        :raises ConfigError: when ``process`` is not one of ``0 .. processes - 1``.
        """
        if not 0 <= process < self.processes:
            raise ConfigError(
                f"--process {process} is not one of the bench's gsocket.processes "
                f"({self.processes}): use 0 to {self.processes - 1}"
            )
        uds = f"{self.uds}.{process}" if self.uds and process else self.uds
        return replace(
            self,
            process=process,
            port=self.port + process,
            uds=uds,
            scale_out=self.scale_out or self.processes > 1,
        )

    @property
    def web_url(self) -> str | None:
        """Base URL of the web process from ``webserver_host``, or ``None`` to use the Origin.

        ``host`` and ``host:port`` are http (``webserver_port`` unless a port is given); a
        URL with its scheme is used as it is, without ``webserver_port``.

        :raises ConfigError: the value is none of those.
        """
        if not self.webserver_host:
            return None
        return configured_web_url(self.webserver_host, self.webserver_port)

    def with_overrides(self, **changes: Any) -> Config:
        """Return a copy with ``changes`` applied, ignoring ``None`` values (unset CLI flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@lru_cache(maxsize=16)
def configured_web_url(webserver_host: str, webserver_port: int) -> str:
    """The base URL ``webserver_host`` names (see :attr:`Config.web_url`).

    :raises ConfigError: not a host, host:port or http(s) URL.
    """
    value = webserver_host.strip()
    explicit = "://" in value
    try:
        parts = urlsplit(value if explicit else f"//{value}")
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
        or (explicit and parts.scheme not in ("http", "https"))
        or (not explicit and parts.path)
    ):
        raise ConfigError(
            f"webserver_host {webserver_host!r} must be a host, host:port or a URL such as "
            "https://erp.example.com (IPv6 addresses in brackets)"
        )
    if explicit:
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    if port is None:
        return f"http://{parts.netloc}:{webserver_port}"
    return f"http://{parts.netloc}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: is --bench the bench folder?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _limits(raw: Any) -> Limits:
    if raw is None:
        return Limits()
    if not isinstance(raw, dict):
        raise ConfigError("gsocket.limits in common_site_config.json must be an object")
    known = Limits.__dataclass_fields__
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(f"unknown gsocket.limits keys: {', '.join(sorted(unknown))}")
    try:
        return Limits(**{k: type(getattr(Limits(), k))(v) for k, v in raw.items()})
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad gsocket.limits value: {e}") from None


def load_config(bench_path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read a bench's realtime configuration.

    :param bench_path: the bench folder holding ``sites/common_site_config.json``.
    :param env: environment to read overrides from (``os.environ`` by default): the Node
        process's ``FRAPPE_*`` ones, and ``GSOCKET_HOST``, ``GSOCKET_TRUSTED_PROXIES``
        (comma-separated), ``GSOCKET_LOG_LEVEL``, ``GSOCKET_LOG_FORMAT``, ``GSOCKET_PROCESSES``,
        so that a container (frappe_docker's ``websocket`` service) is configured by its
        environment alone.
    :raises ConfigError: when the file is missing, unreadable or holds a bad value.
    """
    env = os.environ if env is None else env
    bench = Path(bench_path).resolve()
    if not (bench / "sites").is_dir():
        raise ConfigError(f"{bench} has no sites/ folder: is --bench the bench folder?")
    conf = _read_json(bench / "sites" / "common_site_config.json")
    ours = conf.get("gsocket") or {}
    if not isinstance(ours, dict):
        raise ConfigError("the gsocket key in common_site_config.json must be an object")

    redis_url = (
        env.get("FRAPPE_REDIS_QUEUE")
        or conf.get("redis_queue")
        or conf.get("redis_socketio")
        or DEFAULT_REDIS_QUEUE
    )
    try:
        port = int(env.get("FRAPPE_SOCKETIO_PORT") or conf.get("socketio_port") or 9000)
        webserver_port = int(conf.get("webserver_port") or 8000)
        web_timeout = float(ours.get("web_timeout", 5.0))
        drain_timeout = float(ours.get("drain_timeout", 5.0))
        log_summary_seconds = float(ours.get("log_summary_seconds", 60.0))
        processes = int(env.get("GSOCKET_PROCESSES") or ours.get("processes", 1))
        presence_ttl = float(ours.get("presence_ttl", 15.0))
        recovery_seconds = float(ours.get("recovery_seconds", 0.0))
        recovery_events = int(ours.get("recovery_events", 10_000))
        recovery_missed = int(ours.get("recovery_missed", 1_000))
        db_pool_size = int(ours.get("db_pool_size", DEFAULT_POOL_SIZE))
        db_pool_idle_seconds = float(ours.get("db_pool_idle_seconds", DEFAULT_POOL_IDLE_SECONDS))
        db_max_connections = int(ours.get("db_max_connections", DEFAULT_DB_MAX_CONNECTIONS))
        engine = {k: float(ours.get(k, Config.__dataclass_fields__[k].default)) for k in ENGINE}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad port or timeout in common_site_config.json: {e}") from None
    for key, seconds in engine.items():
        if not seconds > 0:
            raise ConfigError(f"gsocket.{key} must be a positive number of seconds")
    proxies = ours.get("trusted_proxies")
    if env.get("GSOCKET_TRUSTED_PROXIES") is not None:
        proxies = [p.strip() for p in env["GSOCKET_TRUSTED_PROXIES"].split(",") if p.strip()]
    if proxies is not None and not (
        isinstance(proxies, list) and all(isinstance(p, str) for p in proxies)
    ):
        raise ConfigError("gsocket.trusted_proxies must be a list of addresses")
    log_format = str(env.get("GSOCKET_LOG_FORMAT") or ours.get("log_format", "text")).lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"gsocket.log_format must be one of {', '.join(LOG_FORMATS)}")
    if drain_timeout < 0:
        raise ConfigError("gsocket.drain_timeout must not be negative")
    if not log_summary_seconds >= 0:
        raise ConfigError("gsocket.log_summary_seconds must be 0 (off) or a number of seconds")
    if processes < 1:
        raise ConfigError("gsocket.processes must be 1 or more")
    if presence_ttl <= 0:
        raise ConfigError("gsocket.presence_ttl must be positive")
    if recovery_seconds < 0 or recovery_events < 1 or recovery_missed < 1:
        raise ConfigError(
            "gsocket.recovery_seconds must be 0 (off) or more, "
            "recovery_events and recovery_missed 1 or more"
        )
    if db_pool_size < 0 or not db_pool_idle_seconds > 0 or db_max_connections < 0:
        raise ConfigError(
            "gsocket.db_pool_size must be 0 (no pool) or more, "
            "db_pool_idle_seconds a positive number of seconds, "
            "db_max_connections 0 (no cap) or more"
        )
    ca_file = ours.get("ca_file") or None
    if ca_file is not None:
        ca_file = str(bench / "sites" / str(ca_file))
        if not os.path.isfile(ca_file):
            raise ConfigError(f"gsocket.ca_file {ca_file} is not a file")
    channel = str(ours.get("scale_out_channel", "gsocket"))
    if channel in RESERVED_CHANNELS or not channel:
        raise ConfigError(
            f"gsocket.scale_out_channel must not be {channel!r}: Frappe publishes its own "
            "messages there, and every gsocket process would take them for its own"
        )

    config = Config(
        bench_path=bench,
        port=port,
        uds=env.get("FRAPPE_SOCKETIO_UDS") or conf.get("socketio_uds") or None,
        host=str(env.get("GSOCKET_HOST") or ours.get("host", "0.0.0.0")),
        redis_url=str(redis_url),
        default_site=env.get("FRAPPE_SITE") or conf.get("default_site") or None,
        webserver_port=webserver_port,
        webserver_host=str(conf["webserver_host"]) if conf.get("webserver_host") else None,
        developer_mode=_as_bool(conf.get("developer_mode", False)),
        trusted_proxies=tuple(proxies) if proxies is not None else None,
        web_timeout=web_timeout,
        log_level=str(env.get("GSOCKET_LOG_LEVEL") or ours.get("log_level", "INFO")).upper(),
        log_format=log_format,
        log_summary_seconds=log_summary_seconds,
        limits=_limits(ours.get("limits")),
        drain_timeout=drain_timeout,
        reuse_port=_as_bool(ours.get("reuse_port", False)),
        scale_out=_as_bool(ours.get("scale_out", False)),
        scale_out_channel=channel,
        processes=processes,
        presence_ttl=presence_ttl,
        recovery_seconds=recovery_seconds,
        recovery_events=recovery_events,
        recovery_missed=recovery_missed,
        db_pool_size=db_pool_size,
        db_pool_idle_seconds=db_pool_idle_seconds,
        db_max_connections=db_max_connections,
        **engine,
        ca_file=ca_file,
        web_proxy_from_env=_as_bool(ours.get("web_proxy_from_env", False)),
    )
    if config.webserver_host is not None:
        # a bad value stops the start, not every connect
        configured_web_url(str(config.webserver_host), webserver_port)
    return config
