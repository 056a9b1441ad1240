"""``gsocket doctor``: check a bench for everything gsocket needs, one verdict line per check.

An operator switching a bench from the Node realtime process, or wondering why desks get no
updates, runs this before (or instead of) reading logs.  Each check says what it found and,
when something is wrong, what to do.  Failures make the exit status non-zero; warnings do not.

Nothing here changes the bench.  The one thing sent anywhere is a probe message published on
Frappe's ``events`` channel to a room nobody can be in, which every realtime server (Node or
gsocket) emits to nobody.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Literal, TextIO
from urllib.parse import urlsplit, urlunsplit

import redis

from gsocket.config import Config, ConfigError, load_config
from gsocket.contract.bridge import CHANNEL
from gsocket.contract.frappe_shim import install_frappe_realtime
from gsocket.contract.secret import SECRET_KEY, SocketSecret
from gsocket.contract.webclient import Credential, Unauthorized, WebClient, WebUnavailable
from gsocket.errors import StartupError
from gsocket.handlers.registry import Registry
from gsocket.handlers_loader import SERVED_BY_GSOCKET, load_handlers, read_apps
from gsocket.metrics import Metrics
from gsocket.ops.dependencies import SUPPORTED, unsupported

Status = Literal["ok", "warn", "fail", "skip"]

PROBE_NAMESPACE = "gsocket-doctor"
NODE_EVENT = re.compile(r"""\.on\(\s*["'`]([^"'`]+)["'`]""")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check.

    :param status: ``ok``, ``warn`` (works, but look), ``fail`` (broken) or ``skip``.
    :param check: what was checked, e.g. ``redis`` or ``handlers (crm)``.
    :param detail: what was found, and what to do when it is not ``ok``.
    """

    status: Status
    check: str
    detail: str

    def line(self) -> str:
        """The verdict as printed: ``FAIL  redis: ...``."""
        return f"{self.status.upper():<5} {self.check}: {self.detail}"


def safe_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, fit for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))


def bench_sites(config: Config) -> list[str]:
    """The site folders of the bench (those holding a ``site_config.json``), sorted."""
    return sorted(
        p.parent.name
        for p in config.sites_path.glob("*/site_config.json")
        if p.parent.name != "assets"
    )


class Doctor:
    """Runs every check against one bench.

    :param bench: the bench folder.
    :param timeout: seconds for each network call.
    """

    def __init__(self, bench: str | Path, timeout: float = 3.0) -> None:
        self.bench = Path(bench)
        self.timeout = timeout
        # Whether the C driver was loaded before any app was imported: by the interpreter's
        # start-up (a sitecustomize or .pth file), which would hit gsocket the same way.
        self.mysqldb_at_startup = _mysqlclient_loaded()
        self.config: Config | None = None
        self._redis: redis.Redis | None = None
        self._web_rejected_secret = False

    def run(self) -> Iterator[Verdict]:
        """Yield one verdict per check, in a stable order."""
        yield self.check_config()
        if self.config is None:
            yield Verdict("skip", "redis", "needs a readable configuration")
        else:
            yield from self.check_redis()
            yield from self.check_web()
            yield from self.check_secret()
        yield self.check_dependencies()
        yield self.check_mysqlclient()
        yield from self.check_handlers()
        yield from self.check_node_handlers()
        if self._redis is not None:
            self._redis.close()

    # ---- configuration -------------------------------------------------------------------

    def check_config(self) -> Verdict:
        """``sites/common_site_config.json`` reads, with usable values."""
        try:
            config = load_config(self.bench)
        except ConfigError as e:
            return Verdict("fail", "config", str(e))
        self.config = config
        where = f"unix socket {config.uds}" if config.uds else f"port {config.port}"
        extras = []
        if config.scale_out:
            extras.append(f"scale-out on channel {config.scale_out_channel!r}")
        extras.append(f"drain {config.drain_timeout:g} s")
        return Verdict(
            "ok",
            "config",
            f"listens on {where}, Redis {safe_url(config.redis_url)}, "
            f"{len(bench_sites(config))} site(s), {', '.join(extras)}",
        )

    # ---- Redis -----------------------------------------------------------------------------

    def check_redis(self) -> Iterator[Verdict]:
        """Redis answers, and a message published on ``events`` comes back to a subscriber."""
        assert self.config is not None
        url = safe_url(self.config.redis_url)
        client = redis.Redis.from_url(
            self.config.redis_url,
            socket_connect_timeout=self.timeout,
            socket_timeout=self.timeout,
        )
        try:
            version = client.info("server").get("redis_version", "?")
        except redis.RedisError as e:
            client.close()
            yield Verdict(
                "fail",
                "redis",
                f"{url} unreachable ({type(e).__name__}: {e}); start the bench's redis-queue or "
                "fix redis_queue in common_site_config.json",
            )
            yield Verdict("skip", f"{CHANNEL} channel", "needs Redis")
            return
        self._redis = client
        yield Verdict("ok", "redis", f"{url} answers (Redis {version})")
        yield self._check_events_channel(client)

    def _check_events_channel(self, client: redis.Redis) -> Verdict:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        room = f"gsocket-doctor:{uuid.uuid4().hex}"
        probe = json.dumps(
            {"event": "gsocket_doctor_probe", "message": None, "room": room,
             "namespace": PROBE_NAMESPACE}
        )  # fmt: skip
        try:
            pubsub.subscribe(CHANNEL)
            pubsub.get_message(timeout=self.timeout)
            receivers = int(client.publish(CHANNEL, probe))
            deadline = time.monotonic() + self.timeout
            received = False
            while not received and time.monotonic() < deadline:
                message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                received = bool(message) and _text(message.get("data")) == probe
        except redis.RedisError as e:
            return Verdict("fail", f"{CHANNEL} channel", f"publish/subscribe failed: {e}")
        finally:
            pubsub.close()
        if not received:
            return Verdict(
                "fail",
                f"{CHANNEL} channel",
                "a message published on it did not come back to a subscriber: this Redis does "
                "not deliver pub/sub (a proxy or a replica?); published events would be lost",
            )
        others = receivers - 1
        if others <= 0:
            return Verdict(
                "ok",
                f"{CHANNEL} channel",
                "publish/subscribe works; no realtime server is subscribed right now",
            )
        return Verdict(
            "ok",
            f"{CHANNEL} channel",
            f"publish/subscribe works; {others} realtime server(s) subscribed right now",
        )

    # ---- web process and socket secret ----------------------------------------------------

    def web_base_url(self) -> str:
        """Where the doctor reaches the web process: ``webserver_host`` or the local gunicorn."""
        assert self.config is not None
        return self.config.web_url or f"http://127.0.0.1:{self.config.webserver_port}"

    def check_web(self) -> Iterator[Verdict]:
        """``get_user_info`` answers every site, with a Guest session, through the secret."""
        assert self.config is not None
        sites = bench_sites(self.config)
        if not sites:
            yield Verdict("warn", "web process", f"no site folder in {self.config.sites_path}")
            return
        if self._redis is None:
            secret_client = redis.Redis.from_url(
                self.config.redis_url, socket_connect_timeout=self.timeout
            )
        else:
            secret_client = self._redis
        web = WebClient(
            SocketSecret(secret_client),
            Metrics(),
            timeout=self.timeout,
            ca_file=self.config.ca_file,
            proxy_from_env=self.config.web_proxy_from_env,
        )
        base = self.web_base_url()
        try:
            for site in sites:
                yield self._check_site(web, base, site)
        finally:
            web.close()
            if secret_client is not self._redis:
                secret_client.close()

    def _check_site(self, web: WebClient, base: str, site: str) -> Verdict:
        check = f"web process ({site})"
        try:
            info = web.get_user_info(base, site, Credential(sid="Guest"))
        except Unauthorized:
            self._web_rejected_secret = True
            return Verdict(
                "fail",
                check,
                f"{base} answered get_user_info without a user: the socket secret in Redis "
                f"({SECRET_KEY}) is not the one this web process expects, or the site is "
                "broken; restart the web process after changing redis_queue",
            )
        except WebUnavailable as e:
            return Verdict(
                "fail",
                check,
                f"{e}; start the web process, or set webserver_host/webserver_port in "
                "common_site_config.json to where it listens",
            )
        shape = "v16 or newer" if info.installed_apps is not None else "v15 or older"
        return Verdict(
            "ok", check, f"get_user_info answers at {base} (Frappe {shape}, user {info.user})"
        )

    def check_secret(self) -> Iterator[Verdict]:
        """Whether Redis holds the socket secret; its value is never shown."""
        if self._redis is None:
            yield Verdict("skip", "socket secret", "needs Redis")
            return
        try:
            present = self._redis.exists(SECRET_KEY) > 0
        except redis.RedisError as e:
            yield Verdict("fail", "socket secret", f"cannot read {SECRET_KEY}: {e}")
            return
        if self._web_rejected_secret:
            state = "is set" if present else "is not set"
            yield Verdict(
                "fail",
                "socket secret",
                f"{SECRET_KEY} {state} in Redis but the web process refused the realtime "
                "server's call: both must use the same redis_queue",
            )
        elif present:
            yield Verdict("ok", "socket secret", f"{SECRET_KEY} is set (value not shown)")
        else:
            yield Verdict(
                "ok",
                "socket secret",
                f"{SECRET_KEY} is not set: normal on Frappe v15; newer Frappe creates it itself",
            )

    # ---- the Python environment -----------------------------------------------------------

    def check_dependencies(self) -> Verdict:
        """The libraries whose internals gsocket uses are at versions it was tested with
        (``gsocket serve`` refuses to start otherwise)."""
        problems = unsupported()
        if problems:
            return Verdict("fail", "dependencies", "; ".join(problems))
        found = ", ".join(f"{name} {version(name)}" for name in SUPPORTED)
        return Verdict("ok", "dependencies", f"tested versions: {found}")

    def check_mysqlclient(self) -> Verdict:
        """mysqlclient (its C calls block the gevent hub) is not loaded, ideally not installed."""
        if self.mysqldb_at_startup:
            return Verdict(
                "fail",
                "mysqlclient",
                "MySQLdb (mysqlclient) is imported when Python starts (a sitecustomize or .pth "
                "file?): gsocket refuses to start, since its calls would stall every socket",
            )
        try:
            spec = importlib.util.find_spec("MySQLdb")
        except (ImportError, ValueError):  # loaded since start-up by an app's handlers
            spec = None
        if spec is None or _is_pymysql_alias(spec.origin):
            return Verdict("ok", "mysqlclient", "not installed in this environment")
        return Verdict(
            "warn",
            "mysqlclient",
            f"installed ({spec.origin}); gsocket makes Frappe use PyMySQL, but anything that "
            "imports MySQLdb inside gsocket (an app's handlers, FRAPPE_PRELOAD_DATABASE_DRIVERS) "
            "stalls every socket while a query runs",
        )

    # ---- apps ------------------------------------------------------------------------------

    def _apps(self) -> list[str]:
        return read_apps(self.bench / "sites" / "apps.txt")

    def check_handlers(self) -> Iterator[Verdict]:
        """Every app's ``realtime/handlers.py`` imports cleanly, as gsocket would import it."""
        apps_path = self.bench / "apps"
        registry = Registry()
        install_frappe_realtime(registry)
        apps = [a for a in self._apps() if a not in SERVED_BY_GSOCKET]
        if not apps:
            yield Verdict("ok", "handlers", "no app besides frappe in sites/apps.txt")
            return
        for app in apps:
            yield self._check_app_handlers(app, apps_path, registry)

    def _check_app_handlers(self, app: str, apps_path: Path, registry: Registry) -> Verdict:
        check = f"handlers ({app})"
        driver_before = _mysqlclient_loaded()
        try:
            loaded = load_handlers([app], apps_path)
        except StartupError as e:
            cause = e.__cause__
            summary = f"{type(cause).__name__}: {cause}" if cause else str(e)
            return Verdict(
                "fail",
                check,
                f"{app}.realtime.handlers raises on import ({summary}); gsocket will not start "
                "until it is fixed or removed",
            )
        if _mysqlclient_loaded() and not driver_before:
            return Verdict(
                "fail",
                check,
                f"importing {app}.realtime.handlers loads MySQLdb (mysqlclient), which stalls "
                "every socket; import it lazily or use frappe_context=True handlers",
            )
        if not loaded:
            if not _importable(app, apps_path):
                return Verdict(
                    "warn", check, f"{app} is in apps.txt but neither installed nor in apps/"
                )
            return Verdict("ok", check, "no realtime/handlers.py (nothing to load)")
        events = sorted(
            {h.event for e in registry.events() for h in registry.handlers_for(e) if h.app == app}
        )
        return Verdict(
            "ok",
            check,
            f"{loaded[0]} imports; events: {', '.join(events) if events else '(none)'}",
        )

    def check_node_handlers(self) -> Iterator[Verdict]:
        """Apps that still ship Node handlers, which gsocket does not run."""
        found = False
        for app in self._apps():
            if app in SERVED_BY_GSOCKET:
                continue
            js = self.bench / "apps" / app / app / "realtime" / "handlers.js"
            if not js.is_file():
                continue
            found = True
            events = sorted(set(NODE_EVENT.findall(js.read_text(errors="replace"))))
            listed = ", ".join(events) if events else "no socket.on() found"
            yield Verdict(
                "warn",
                f"node handlers ({app})",
                f"{js} is Node code that gsocket does not run (events: {listed}); port each "
                f"socket.on(event, fn) to @realtime.on(event) in "
                f"apps/{app}/{app}/realtime/handlers.py "
                "(from frappe.realtime import Socket, realtime)",
            )
        if not found:
            yield Verdict("ok", "node handlers", "no app ships realtime/handlers.js")


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def _mysqlclient_loaded() -> bool:
    module = sys.modules.get("MySQLdb")
    return module is not None and getattr(module, "__name__", "") != "pymysql"


def _is_pymysql_alias(origin: str | None) -> bool:
    return bool(origin) and "pymysql" in str(origin).lower()


def _importable(app: str, apps_path: Path) -> bool:
    return importlib.util.find_spec(app) is not None or (apps_path / app / app).is_dir()


def run_doctor(bench: str | Path, out: TextIO = sys.stdout) -> int:
    """Print every verdict for ``bench`` and return the exit status (1 when any check failed).

    :param bench: the bench folder.
    :param out: where verdict lines go.
    """
    failed = 0
    warned = 0
    for verdict in Doctor(bench).run():
        print(verdict.line(), file=out, flush=True)
        failed += verdict.status == "fail"
        warned += verdict.status == "warn"
    summary = f"{failed} check(s) failed, {warned} warning(s)"
    print(("FAILED: " if failed else "healthy: ") + summary, file=out)
    return 1 if failed else 0
