"""A real stack to attack (redis-server, a Frappe web stand-in, gsocket with ``/_probe``) and
raw clients that speak Engine.IO by hand, so that they can say what no well-behaved client
library would.

The test suite and the scripts share these: the suite's runs are small, the scripts' big.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

from gsocket.demo.redis_server import RedisServer
from tests.support.bench import GsocketProcess, make_bench, wait_until
from tests.support.bench import desk_headers as bench_desk_headers
from tests.support.webstub import WebStub

SITE = "site1.local"
SITE2 = "site2.local"
EIO_PATH = "/socket.io/?EIO=4&transport="


def desk_headers(site: str = SITE, sid: str | None = "sid-admin", **extra: str) -> dict[str, str]:
    """Headers of a desk behind nginx on loopback (:func:`tests.support.bench.desk_headers`),
    with the hardening runs' defaults and ``extra`` headers."""
    return {**bench_desk_headers(site, sid), **extra}


class ProbedGsocket(GsocketProcess):
    """A gsocket process run through :mod:`tests.support.hardening.probe_server` (adds
    ``/_probe``)."""

    module = "tests.support.hardening.probe_server"

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def probe(self) -> dict[str, Any]:
        """The server's table sizes and memory (``GET /_probe``)."""
        return requests.get(f"{self.url}/_probe", timeout=10).json()

    def wait_quiet(
        self, sessions: int, timeout: float = 15.0, reaped: bool = True
    ) -> dict[str, Any]:
        """Wait until the server holds exactly ``sessions`` open sessions; return a probe.

        :param reaped: also wait until closed sessions are dropped from python-engineio's
            table, which its service task does only every ping timeout (20 s).
        """
        last: dict[str, Any] = {}
        key = "eio_sessions" if reaped else "eio_open"

        def settled() -> bool:
            nonlocal last
            last = self.probe()
            return last[key] == sessions and last["sockets"] <= sessions

        wait_until(settled, timeout, lambda: f"server did not settle to {sessions}: {last}")
        return last


HARDAPP_HANDLERS = '''
"""Handlers that misbehave on purpose (gsocket's hardening tests)."""
import time

import gevent
from frappe.realtime import realtime


@realtime.on("hang")
def hang(socket):
    gevent.sleep(3600)


@realtime.on("burn")
def burn(socket, seconds: float):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return "burnt"


@realtime.on("echo")
def echo(socket, value):
    return value


@realtime.on("guest_echo", allow_guest=True)
def guest_echo(socket, value):
    return value
'''


def add_hardapp(bench: Path) -> None:
    """Put the misbehaving fixture app ``hardapp`` on a bench (and in its apps.txt)."""
    package = bench / "apps" / "hardapp" / "hardapp"
    (package / "realtime").mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "realtime" / "__init__.py").write_text("")
    (package / "realtime" / "handlers.py").write_text(HARDAPP_HANDLERS)
    apps = bench / "sites" / "apps.txt"
    if "hardapp" not in apps.read_text().split():
        apps.write_text(apps.read_text() + "hardapp\n")


def new_web(redis_url: str) -> WebStub:
    """A v16 web stand-in with the users the hardening runs use."""
    web = WebStub("v16", redis_url=redis_url)
    web.sessions.update(
        {"sid-admin": "Administrator", "sid-jane": "jane@example.com", "sid-web": "web@x.com"}
    )
    web.users.update(
        {
            "Administrator": "System User",
            "jane@example.com": "System User",
            "web@x.com": "Website User",
        }
    )
    for site in (SITE, SITE2):
        web.installed_apps[site] = ["frappe", "hardapp"]
    return web


def start_gsocket(
    root: Path,
    redis_url: str,
    web: WebStub,
    conf: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    hardapp: bool = True,
    log_level: str = "INFO",
) -> ProbedGsocket:
    """Lay out a bench under ``root`` and start a probed gsocket on it.

    :param conf: extra keys of ``common_site_config.json`` (its ``gsocket`` key is merged).
    :param limits: ``gsocket.limits`` keys.
    :param hardapp: install the misbehaving fixture app.
    """
    conf = dict(conf or {})
    ours: dict[str, Any] = {"log_level": log_level, **conf.pop("gsocket", {})}
    if limits:
        ours["limits"] = limits
    common = {
        "redis_queue": redis_url,
        "webserver_host": "127.0.0.1",
        "webserver_port": web.port,
        "gsocket": ours,
        **conf,
    }
    bench = make_bench(root, common, sites=(SITE, SITE2))
    if hardapp:
        add_hardapp(bench)
    return ProbedGsocket(bench).start()


@dataclass
class Stack:
    """Redis, the web stand-in and gsocket, owned by a script (the suite uses fixtures)."""

    root: Path
    redis: RedisServer
    web: WebStub
    gsocket: ProbedGsocket
    _publisher: Any = field(default=None, repr=False)

    @classmethod
    def start(cls, root: Path, **kwargs: Any) -> Stack:
        """Start all three under ``root``; ``kwargs`` go to :func:`start_gsocket`."""
        redis_server = RedisServer(root / "redis").start()
        web = new_web(redis_server.url)
        web.start()
        proc = start_gsocket(root, redis_server.url, web, **kwargs)
        return cls(root, redis_server, web, proc)

    def publish(self, event: str, message: Any, room: str | None, site: str = SITE) -> int:
        """``frappe.publish_realtime`` as the web process does it; returns the receivers."""
        if self._publisher is None:
            self._publisher = self.redis.client()
        payload = {"event": event, "message": message, "room": room, "namespace": site}
        return int(self._publisher.publish("events", json.dumps(payload)))

    def stop(self) -> None:
        """Stop everything, gsocket first."""
        self.gsocket.kill()
        self.web.stop()
        if self._publisher is not None:
            self._publisher.close()
        self.redis.kill()


# ---- raw Engine.IO clients ----------------------------------------------------------------


class RawPolling:
    """An Engine.IO long-polling session driven by hand.

    :param base: ``http://127.0.0.1:PORT``.
    :param headers: request headers (cookie, origin, site name).
    :param timeout: seconds for one HTTP request.
    """

    def __init__(self, base: str, headers: dict[str, str], timeout: float = 5.0) -> None:
        self.base = base
        self.headers = headers
        self.timeout = timeout
        self.http = requests.Session()
        self.sid: str | None = None

    def open(self) -> RawPolling:
        """Engine.IO handshake."""
        response = self.http.get(
            self.base + EIO_PATH + "polling", headers=self.headers, timeout=self.timeout
        )
        response.raise_for_status()
        self.sid = json.loads(response.text[1:])["sid"]
        return self

    @property
    def url(self) -> str:
        """The session's polling URL."""
        return f"{self.base}{EIO_PATH}polling&sid={self.sid}"

    def post(self, body: str | bytes) -> requests.Response:
        """Send one POST (one or more ``\\x1e``-separated packets)."""
        return self.http.post(self.url, data=body, headers=self.headers, timeout=self.timeout)

    def get(self) -> requests.Response:
        """One long-poll."""
        return self.http.get(self.url, headers=self.headers, timeout=self.timeout)

    def connect(self, namespace: str) -> str:
        """Socket.IO CONNECT to ``namespace``; return the reply packet."""
        self.post(f"40{namespace},")
        return self.get().text

    def close(self) -> None:
        """Say goodbye (Engine.IO CLOSE) and drop the HTTP pool."""
        if self.sid is not None:
            try:
                self.post("1")
            except requests.RequestException:
                pass
        self.http.close()


class RawWebSocket:
    """An Engine.IO websocket-only session driven by hand (``websocket-client``).

    :param base: ``http://127.0.0.1:PORT``.
    :param headers: request headers.
    :param timeout: seconds for one receive.
    """

    def __init__(self, base: str, headers: dict[str, str], timeout: float = 5.0) -> None:
        self.url = base.replace("http://", "ws://") + EIO_PATH + "websocket"
        self.headers = headers
        self.timeout = timeout
        self.ws: websocket.WebSocket | None = None

    def open(self) -> RawWebSocket:
        """Open the websocket and read the Engine.IO OPEN packet."""
        # websocket-client adds an Origin of its own unless given one (or told not to).
        origin = self.headers.get("Origin")
        self.ws = websocket.create_connection(
            self.url,
            header=[f"{k}: {v}" for k, v in self.headers.items() if k != "Origin"],
            origin=origin,
            suppress_origin=origin is None,
            timeout=self.timeout,
            enable_multithread=True,
        )
        opened = self.ws.recv()
        assert isinstance(opened, str) and opened.startswith("0"), opened
        return self

    def send(self, frame: str | bytes) -> None:
        """Send one frame (text for ``str``, binary for ``bytes``)."""
        assert self.ws is not None
        if isinstance(frame, bytes):
            self.ws.send_binary(frame)
        else:
            self.ws.send(frame)

    def recv(self) -> str | bytes:
        """Receive one frame; ``""`` once the server closed."""
        assert self.ws is not None
        return self.ws.recv()

    def recv_until(self, predicate: Callable[[str | bytes], bool], timeout: float = 5.0) -> Any:
        """Receive frames (answering pings) until one matches ``predicate``; return it.

        A connection the server closed or dropped reads as the frame ``""``.
        """
        assert self.ws is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                frame = self.ws.recv()
                if frame == "2":
                    self.ws.send("3")
                    continue
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                frame = ""  # the server dropped the connection (reset, broken pipe)
            if predicate(frame):
                return frame
            if frame == "":
                break
        raise AssertionError("no matching frame")

    def connect(self, namespace: str) -> str:
        """Socket.IO CONNECT to ``namespace``; return the reply packet."""
        self.send(f"40{namespace},")
        return self.recv_until(lambda f: isinstance(f, str) and f.startswith("4"))

    @property
    def connected(self) -> bool:
        """Whether the websocket is still open on our side."""
        return self.ws is not None and self.ws.connected

    def close(self) -> None:
        """Close the websocket."""
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except (OSError, websocket.WebSocketException):
                pass


def event_frame(namespace: str, *data: Any, ack: int | None = None) -> str:
    """An Engine.IO MESSAGE carrying a Socket.IO EVENT."""
    return f"42{namespace},{'' if ack is None else ack}{json.dumps(list(data))}"


def sio_packets(frames: Iterable[str]) -> list[str]:
    """The Socket.IO packets inside Engine.IO MESSAGE frames."""
    return [f[1:] for f in frames if isinstance(f, str) and f.startswith("4")]
