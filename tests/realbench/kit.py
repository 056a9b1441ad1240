"""Instruments of the contract lane: a tap on the web process, one client interface over the
npm and python-socketio clients, and Redis probes that tell when a socket is in a room.

The realtime server (gsocket or Frappe's own Node server) calls the web process at the
client's Origin, so a client whose Origin is a :class:`WebTap` makes the server call through
the tap: it forwards every call to the real web process of the bench (naming the site, which
Node does not), records what was asked and answered, and can answer a fault instead (an HTML
error page, a hang).  The tests wait on those records instead of sleeping, and the same fault
reaches Node and gsocket alike.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import redis
import requests
import socketio

from tests.support.node_client import NodeClient
from tests.support.pyclient import PyClient
from tests.support.realbench import RealBench

FORWARDED = ("cookie", "authorization", "accept", "x-frappe-socket-secret", "content-type")


@dataclass
class Call:
    """One call a realtime server made to the web process through the tap."""

    method: str
    args: dict[str, str]
    cookie: str | None
    authorization: str | None
    status: int = 0
    body: str = ""


@dataclass
class Fault:
    """An answer the tap gives instead of the web process's.

    :param status: HTTP status; ``None`` hangs for ``hang`` seconds and then closes the
        connection without an answer (a web process that never answers).
    """

    status: int | None
    body: str = ""
    content_type: str = "text/html"
    hang: float = 0.0


@dataclass
class WebTap:
    """A forwarding proxy in front of the bench's web process for one site.

    :param bench: the real bench whose web process answers.
    :param site: the site every forwarded call names (``X-Frappe-Site-Name``).
    """

    bench: RealBench
    site: str
    calls: list[Call] = field(default_factory=list)
    faults: dict[str, Fault] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._session = requests.Session()
        tap = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                tap._serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        """The tap's base URL: the Origin of the clients whose server must call through it."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._session.close()

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        method = parts.path.rsplit(".", 1)[-1]
        args = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        call = Call(
            method,
            args,
            handler.headers.get("Cookie"),
            handler.headers.get("Authorization"),
        )
        fault = self.faults.get(method)
        if fault is not None and fault.status is None:
            time.sleep(fault.hang)
            self._record(call, 0, "")
            handler.close_connection = True
            return
        if fault is not None:
            status, body, content_type = fault.status, fault.body, fault.content_type
        else:
            headers = {k: v for k, v in handler.headers.items() if k.lower() in FORWARDED}
            headers["X-Frappe-Site-Name"] = self.site
            answer = self._session.get(self.bench.web_url + handler.path, headers=headers)
            status, body = answer.status_code, answer.text
            content_type = answer.headers.get("Content-Type", "application/json")
        data = body.encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()
        self._record(call, status, body)

    def _record(self, call: Call, status: int, body: str) -> None:
        call.status, call.body = status, body
        with self._cond:
            self.calls.append(call)
            self._cond.notify_all()

    def mark(self) -> int:
        """Index of the next call to be recorded."""
        with self._cond:
            return len(self.calls)

    def wait_matching(
        self, predicate: Callable[[Call], bool], count: int = 1, start: int = 0
    ) -> list[Call]:
        """Wait until ``count`` answered calls since index ``start`` match ``predicate``."""

        def found() -> list[Call]:
            return [c for c in self.calls[start:] if predicate(c)]

        with self._cond:
            if not self._cond.wait_for(lambda: len(found()) >= count, timeout=20.0):
                raise AssertionError(f"{count} call(s) not made; calls: {self.calls[start:]}")
            return found()

    def wait_calls(self, method: str, count: int = 1, start: int = 0) -> list[Call]:
        """Wait until ``count`` calls of ``method`` were answered since index ``start``."""
        return self.wait_matching(lambda c: c.method == method, count, start)


def made_for(call: Call, sid: str) -> bool:
    """Whether ``call`` carried ``sid`` (as a cookie, or as v15's Node does, in the query)."""
    return sid in f"{call.cookie} {call.args.get('sid')}"


class Conn(Protocol):
    """One socket of a client library, seen the same way whichever library it is."""

    kind: str

    def connect(self, url: str, site: str, headers: dict[str, str]) -> str | None:
        """Connect to ``/<site>``; ``None`` when connected, else the refusal's message."""

    def emit(self, event: str, *args: Any) -> None:
        """Send ``event`` with positional arguments."""

    def received(self) -> list[tuple[str, tuple[Any, ...]]]:
        """Every event received so far, in order: ``(name, args)``."""

    def close(self) -> None:
        """Disconnect."""

    def wait_more(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for anything more to arrive."""


def wait_received(
    conn: Conn,
    event: str,
    predicate: Callable[[tuple[Any, ...]], bool] | None = None,
    timeout: float = 15.0,
) -> tuple[Any, ...]:
    """Wait until ``conn`` received ``event`` (matching ``predicate``) and return its args."""
    deadline = time.monotonic() + timeout
    while True:
        for name, args in conn.received():
            if name == event and (predicate is None or predicate(args)):
                return args
        if time.monotonic() > deadline:
            raise AssertionError(f"{conn.kind}: no {event!r} in {timeout}s: {conn.received()}")
        conn.wait_more(0.2)


class PyConn:
    """A python-socketio client socket."""

    kind = "python"

    def __init__(self) -> None:
        self.client = PyClient()

    def connect(self, url: str, site: str, headers: dict[str, str]) -> str | None:
        try:
            self.client.connect(url, f"/{site}", headers, timeout=30)
        except socketio.exceptions.ConnectionError:
            found = self.client.events("connect_error")
            data = found[0][0] if found and found[0] else None
            # a refusal carries {"message": ...}; a failure below Socket.IO, a plain string
            return data["message"] if isinstance(data, dict) else f"(not refused: {data})"
        return None

    def emit(self, event: str, *args: Any) -> None:
        self.client.emit(event, *args)

    def received(self) -> list[tuple[str, tuple[Any, ...]]]:
        with self.client._cond:
            return [(e, a) for e, _, a in self.client.received if e != "connect_error"]

    def wait_more(self, timeout: float) -> None:
        with self.client._cond:
            self.client._cond.wait(timeout)

    def close(self) -> None:
        self.client.disconnect()


class NodeConn:
    """A socket of the npm socket.io-client@4, in a driver process shared by the test."""

    kind = "node"
    _ids = itertools.count(1)

    def __init__(self, driver: NodeClient) -> None:
        self.driver = driver
        self.id = f"s{next(self._ids)}"

    def connect(self, url: str, site: str, headers: dict[str, str]) -> str | None:
        self.driver.connect(self.id, f"{url}/{site}", headers=headers)
        line = self.driver.wait_for(
            lambda e: e.get("id") == self.id and e.get("type") in ("connect", "connect_error"),
            timeout=30,
        )
        return None if line["type"] == "connect" else line["message"]

    def emit(self, event: str, *args: Any) -> None:
        self.driver.emit(self.id, event, *args)

    def received(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [(e["event"], tuple(e["args"])) for e in self.driver.events(self.id, ["event"])]

    def wait_more(self, timeout: float) -> None:
        mark = self.driver.mark()
        try:
            self.driver.wait_for(lambda e: e.get("id") == self.id, timeout=timeout, start=mark)
        except TimeoutError:
            pass

    def close(self) -> None:
        self.driver.close(self.id)


class Publisher:
    """Publishes on the bench's ``events`` channel as ``frappe.publish_realtime`` does.

    Used for probes (is this socket in that room yet?) and for markers that end a check:
    one Redis channel and one socket keep their order, so what a socket received before a
    marker published last is everything it was going to receive of the earlier messages.
    """

    def __init__(self, bench: RealBench) -> None:
        self.redis = redis.Redis.from_url(bench.redis_queue_url)
        self._n = itertools.count(1)

    def publish(self, site: str, room: str | None, event: str, message: Any) -> None:
        """``PUBLISH events`` one message."""
        payload = {"event": event, "message": message, "room": room, "namespace": site}
        self.redis.publish("events", json.dumps(payload))

    def wait_in_room(self, site: str, room: str, *conns: Conn, timeout: float = 20.0) -> None:
        """Probe ``room`` until every one of ``conns`` receives the probe."""
        deadline = time.monotonic() + timeout
        while True:
            n = next(self._n)
            self.publish(site, room, "probe", {"n": n})
            step = time.monotonic() + 0.5
            while time.monotonic() < step:
                if all(("probe", ({"n": n},)) in c.received() for c in conns):
                    return
                conns[0].wait_more(0.05)
            if time.monotonic() > deadline:
                raise AssertionError(f"not all in {room} after {timeout}s")

    def settle(self, site: str, *conns: tuple[Conn, str]) -> None:
        """Publish a marker to each socket's own room and wait until each received it.

        :param conns: ``(socket, user)`` pairs.
        """
        n = next(self._n)
        for _, user in conns:
            self.publish(site, f"user:{user}", "marker", {"n": n})
        for conn, _ in conns:
            wait_received(conn, "marker", lambda a: a == ({"n": n},))


def names(conn: Conn, skip: tuple[str, ...] = ("probe", "marker")) -> list[str]:
    """Names of the events ``conn`` received, without the lane's own probes and markers."""
    return [n for n, _ in conn.received() if n not in skip]
