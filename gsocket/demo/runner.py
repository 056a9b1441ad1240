"""``gsocket demo``: everything a bench has around its realtime process, started in one command.

A newcomer has no bench, no Redis configured and no site; the demo brings all of it up on
loopback with nothing to configure:

1. a Redis: the system's ``redis-server`` on a free port, without persistence (or, with
   ``--redis-url``, a Redis that already runs);
2. a demo bench in a temporary folder: ``sites/common_site_config.json`` like a development
   bench's (``default_site``, ``developer_mode``, ``socketio_port``, ``webserver_port``),
   ``apps.txt`` with the demo app, whose ``realtime/handlers.py`` has custom handlers;
3. the demo web process (:mod:`gsocket.demo.web`) in this process;
4. gsocket itself, exactly as a bench runs it: ``python -m gsocket serve --bench <bench>``.

Then it prints the page's URL and waits.  Ctrl-C (or SIGTERM, or closing the terminal) stops
gsocket, the web process and Redis in that order and removes the temporary bench.  Children run
in process groups of their own so that the terminal's Ctrl-C reaches only this process, which
stops them in order; on Linux they also die with it if it is killed outright.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import redis
import requests
from gevent.event import Event
from gevent.lock import Semaphore

import gsocket
from gsocket.demo.ports import free_port, port_is_free
from gsocket.demo.processes import Child, wait_until
from gsocket.demo.redis_server import RedisServer, redis_binary
from gsocket.demo.web import DemoWeb
from gsocket.errors import StartupError

log = logging.getLogger("gsocket.demo.runner")

DEMO_SITE = "demo.localhost"
DEMO_APP = "gsocket_demo"
APP_SOURCE = Path(__file__).resolve().parent / "app" / DEMO_APP
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

REDIS_MISSING = (
    "redis-server was not found on PATH. The demo needs a Redis: install it "
    "(Debian/Ubuntu: sudo apt-get install redis-server; Fedora: sudo dnf install redis; "
    "macOS: brew install redis), or run one yourself (for example "
    "docker run --rm -p 6379:6379 redis:7) and pass --redis-url redis://127.0.0.1:6379. "
    "The demo only publishes on the channel 'events' (and reads the key socketio_auth_secret): "
    "do not point it at a production bench's Redis."
)

# Settings a bench operator may export that would point gsocket away from the demo's parts.
BENCH_OVERRIDES = (
    "FRAPPE_REDIS_QUEUE",
    "FRAPPE_SOCKETIO_PORT",
    "FRAPPE_SOCKETIO_UDS",
    "FRAPPE_SITE",
    "GSOCKET_HOST",
    "GSOCKET_TRUSTED_PROXIES",
)


@dataclass(frozen=True)
class DemoOptions:
    """What ``gsocket demo`` can be told.

    :param web_port: port of the demo web process (the page); ``None``: 8000 like a
        development bench, or a free port when 8000 is taken.
    :param socketio_port: port of gsocket; ``None``: 9000, or a free port when it is taken.
    :param redis_url: use this running Redis instead of starting ``redis-server``.
    :param log_level: logging level of the demo and of gsocket.
    """

    web_port: int | None = None
    socketio_port: int | None = None
    redis_url: str | None = None
    log_level: str = "INFO"


def choose_port(asked: int | None, preferred: int, what: str, option: str) -> int:
    """The port for one part of the demo.

    A port the user asked for is used or the demo stops, saying so; otherwise the bench's
    usual port when it is free, else any free one: a machine that runs a bench has 8000 and
    9000 taken, and the demo should just work there.

    :param asked: the ``--web-port``/``--socketio-port`` value, if given.
    :param preferred: 8000 or 9000.
    :raises StartupError: when the asked port is taken.
    """
    if asked is not None:
        if not port_is_free(asked):
            raise StartupError(
                f"port {asked} for the {what} is in use (is a bench running?); "
                f"choose another with {option}, or leave it out to get a free one"
            )
        return asked
    if port_is_free(preferred):
        return preferred
    port = free_port()
    log.info("port %d for the %s is taken; using %d", preferred, what, port)
    return port


def write_demo_bench(
    root: Path,
    redis_url: str,
    web_port: int,
    socketio_port: int,
    site: str = DEMO_SITE,
    log_level: str = "INFO",
) -> Path:
    """Lay out a development-style bench under ``root`` with the demo app; return its path.

    :param root: an empty folder that becomes the bench.
    :param redis_url: the bench's ``redis_queue``.
    :param web_port: ``webserver_port``.
    :param socketio_port: ``socketio_port``.
    :param site: the one site, also ``default_site`` (the page is opened on ``127.0.0.1``).
    :param log_level: gsocket's logging level.
    """
    sites = root / "sites"
    (sites / site).mkdir(parents=True)
    (root / "logs").mkdir()
    conf: dict[str, Any] = {
        "redis_queue": redis_url,
        "socketio_port": socketio_port,
        "webserver_port": web_port,
        "default_site": site,
        "developer_mode": 1,
        "gsocket": {"host": "127.0.0.1", "log_level": log_level},
    }
    (sites / "common_site_config.json").write_text(json.dumps(conf, indent=1) + "\n")
    (sites / "apps.txt").write_text(f"frappe\n{DEMO_APP}\n")
    (sites / site / "site_config.json").write_text("{}\n")
    shutil.copytree(
        APP_SOURCE,
        root / "apps" / DEMO_APP / DEMO_APP,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return root


class Demo:
    """The running demo: Redis, the web process and gsocket on a temporary bench.

    :param options: ports and the optional external Redis.
    :param on_failure: called with a message when a child dies on its own.
    """

    def __init__(self, options: DemoOptions, on_failure: Callable[[str], None]) -> None:
        self.options = options
        self.on_failure = on_failure
        self.root = Path(tempfile.mkdtemp(prefix="gsocket-demo-"))
        self.redis_url = options.redis_url or ""
        self.web_port = 0
        self.socketio_port = 0
        self.redis: RedisServer | None = None
        self.gsocket: Child | None = None
        self.web: DemoWeb | None = None
        self._restarting = Semaphore()

    @property
    def url(self) -> str:
        """The page's URL."""
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def socketio_url(self) -> str:
        """gsocket's URL (the page connects there; ``/health`` and ``/metrics`` too)."""
        return f"http://127.0.0.1:{self.socketio_port}"

    def start(self) -> None:
        """Start every part; on failure, stop what was started and raise.

        :raises StartupError: with what to do about it.
        """
        try:
            self.web_port = choose_port(
                self.options.web_port, 8000, "demo web process", "--web-port"
            )
            self.socketio_port = choose_port(
                self.options.socketio_port, 9000, "realtime server", "--socketio-port"
            )
            self._start_redis()
            write_demo_bench(
                self.root,
                self.redis_url,
                self.web_port,
                self.socketio_port,
                log_level=self.options.log_level.upper(),
            )
            self.web = DemoWeb(
                DEMO_SITE,
                self.web_port,
                self.socketio_port,
                self.redis_url,
                self.root,
                restart_realtime=self.restart_gsocket,
            )
            self.web.start()
            self._start_gsocket()
        except BaseException:
            self.stop()
            raise

    def _start_redis(self) -> None:
        if self.options.redis_url:
            self._wait_for_external_redis()
            return
        if redis_binary() is None:
            raise StartupError(REDIS_MISSING)
        self.redis = RedisServer(self.root / "redis", tie_to_parent=True)
        try:
            self.redis.start(STARTUP_TIMEOUT)
        except RuntimeError as e:
            raise StartupError(str(e)) from None
        self.redis_url = self.redis.url
        assert self.redis.child is not None
        self._watch(self.redis.child)
        log.info("Redis ready at %s", self.redis_url)

    def _wait_for_external_redis(self) -> None:
        """Wait for the ``--redis-url`` Redis to answer: it may be starting with the demo."""
        client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_until(
                answers,
                STARTUP_TIMEOUT,
                f"Redis at {self.redis_url} did not become ready within {STARTUP_TIMEOUT:.0f} s",
                interval=0.05,
                error=StartupError,
            )
        finally:
            client.close()
        log.info("Redis ready at %s", self.redis_url)

    def _start_gsocket(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in BENCH_OVERRIDES}
        # The child must import this very gsocket, installed or not.
        package_parent = str(Path(gsocket.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p
        )
        child = Child(
            "gsocket",
            [sys.executable, "-m", "gsocket", "serve", "--bench", str(self.root)],
            env=env,
            tie_to_parent=True,
        )
        self.gsocket = child
        health = f"{self.socketio_url}/health"
        session = requests.Session()
        session.trust_env = False

        def healthy() -> bool:
            if not child.alive():
                raise StartupError(f"gsocket exited with status {child.proc.returncode}")
            try:
                return session.get(health, timeout=1).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_until(
                healthy,
                STARTUP_TIMEOUT,
                f"gsocket did not become ready within {STARTUP_TIMEOUT:.0f} s",
                interval=0.05,
                error=StartupError,
            )
        finally:
            session.close()
        self._watch(child)
        log.info("gsocket (pid %d) serving %s", child.pid, health.rsplit("/", 1)[0])

    def _watch(self, child: Child) -> None:
        """Report a child that dies when nobody asked it to."""

        def wait() -> None:
            status = child.proc.wait()
            if not child.stop_requested:
                self.on_failure(f"{child.name} exited unexpectedly with status {status}")

        gevent.spawn(wait)

    def restart_gsocket(self) -> None:
        """Stop gsocket and start it again, as ``supervisorctl restart`` would."""
        if self._restarting.locked():
            return
        with self._restarting:
            log.info("restarting gsocket")
            started = time.monotonic()
            if self.gsocket is not None:
                self.gsocket.stop(STOP_TIMEOUT)
            try:
                self._start_gsocket()
            except StartupError as e:
                self.on_failure(f"gsocket did not come back: {e}")
                return
            log.info("gsocket restarted in %.1f s", time.monotonic() - started)

    def stop(self) -> None:
        """Stop gsocket, the web process and Redis, in that order; remove the demo bench."""
        if self.gsocket is not None:
            self.gsocket.stop(STOP_TIMEOUT)
        if self.web is not None:
            self.web.stop()
        if self.redis is not None:
            self.redis.stop(STOP_TIMEOUT)
        shutil.rmtree(self.root, ignore_errors=True)


def run_demo(options: DemoOptions) -> int:
    """Run the demo until Ctrl-C; return the exit status (1 when a part died on its own)."""
    stopping = Event()
    failure: list[str] = []

    def fail(message: str) -> None:
        failure.append(message)
        stopping.set()

    def request_stop(signum: int) -> None:
        log.info("received %s, stopping the demo", signal.Signals(signum).name)
        stopping.set()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        gevent.signal_handler(signum, request_stop, signum)

    demo = Demo(options, on_failure=fail)
    demo.start()
    print(f"gsocket demo is running: open {demo.url} (Ctrl-C stops it)", flush=True)
    print(
        f"ports: web process {demo.web_port}, gsocket {demo.socketio_port} "
        f"({demo.socketio_url}/health)",
        flush=True,
    )
    print(f"demo bench: {demo.root}", flush=True)
    stopping.wait()
    demo.stop()
    if failure:
        log.error("%s", failure[0])
        return 1
    log.info("demo stopped")
    return 0
