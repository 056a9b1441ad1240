"""The bridge's Redis reader: it waits for its socket through the event loop (a libev
watcher) and then reads once into a buffer made once, instead of gevent's read-first socket
that paid a ``recv`` returning EAGAIN after each lone event."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import gevent
import gevent.server
import pytest

from gsocket.contract.bridge import Bridge
from gsocket.metrics import Metrics
from gsocket.protocol import resp
from tests.conftest import SITE


@pytest.fixture
def subscriber(redis_server: Any) -> Iterator[resp.Subscriber]:
    sub = resp.Subscriber(redis_server.url)
    sub.connect()
    sub.subscribe("reader")
    yield sub
    sub.close()


def test_a_waiting_read_gets_split_messages_whole_and_in_order(
    redis_server: Any, redis_client: Any, monkeypatch: pytest.MonkeyPatch
):
    """The reader waits without a timeout (the bridge's way); each wakeup is one recv of at
    most READ_SIZE bytes, so a message arrives over many wakeups."""
    monkeypatch.setattr(resp, "READ_SIZE", 7)
    subscriber = resp.Subscriber(redis_server.url)
    subscriber.connect()
    subscriber.subscribe("reader")
    payloads = [b"first", "é".encode() * 300, b"", b"*3\r\n$7\r\nmessage\r\n"]
    received: list[bytes] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while len(received) < len(payloads):
            received.extend(subscriber.read() or [])
            reads += 1

    greenlet = gevent.spawn(reader)
    gevent.sleep(0.05)
    assert not greenlet.dead and reads == 0  # waiting: no busy loop on an empty socket
    for payload in payloads:
        redis_client.publish("reader", payload)
    greenlet.join(10)
    subscriber.close()
    assert received == payloads
    assert reads >= sum(len(p) for p in payloads) // 7


def test_a_read_expecting_data_waits_when_there_is_none(
    subscriber: resp.Subscriber, redis_client: Any
):
    greenlet = gevent.spawn(subscriber.read, ready=True)
    gevent.sleep(0.05)
    assert not greenlet.dead
    redis_client.publish("reader", b"late")
    assert greenlet.get(timeout=10) == [b"late"]


def test_abort_wakes_a_waiting_read_with_an_error(subscriber: resp.Subscriber):
    greenlet = gevent.spawn(subscriber.read)
    gevent.sleep(0.05)
    subscriber.abort()
    with pytest.raises(OSError):
        greenlet.get(timeout=10)


def test_a_killed_reader_leaves_no_watcher_behind(subscriber: resp.Subscriber, redis_client: Any):
    """Bridge.stop kills the reading greenlet in its wait; the next reader waits anew."""
    first = gevent.spawn(subscriber.read)
    gevent.sleep(0.05)
    first.kill(block=True, timeout=5)
    assert first.dead
    redis_client.publish("reader", b"after")
    assert gevent.spawn(subscriber.read).get(timeout=10) == [b"after"]


def test_events_are_read_before_client_sockets_readable_in_the_same_poll(
    subscriber: resp.Subscriber, redis_client: Any
):
    """When one poll finds Redis and many client connections readable (a busy moment: page
    reloads, web calls answered), the reader runs first, so the events are not queued
    behind the clients' work of that loop turn."""
    order: list[str] = []
    loop = gevent.get_hub().loop
    pairs = [socket.socketpair() for _ in range(20)]
    watchers = []
    for ours, _theirs in pairs:
        watcher = loop.io(ours.fileno(), 1)
        watcher.start(lambda w=watcher: (order.append("client"), w.stop()))
        watchers.append(watcher)

    def reader() -> None:
        assert subscriber.read() == [b"event"]
        order.append("redis")

    greenlet = gevent.spawn(reader)
    gevent.sleep(0.05)  # waiting on its watcher
    try:
        # Make every socket readable while the loop cannot poll (a plain blocking wait).
        for _ours, theirs in pairs[:10]:
            theirs.send(b"x")
        redis_client.publish("reader", b"event")
        for _ours, theirs in pairs[10:]:
            theirs.send(b"x")
        readable, _, _ = select.select([subscriber._raw], [], [], 10)
        assert readable
        greenlet.join(10)
        deadline = time.monotonic() + 10
        while len(order) < 21 and time.monotonic() < deadline:
            gevent.sleep(0.01)
    finally:
        for watcher in watchers:
            watcher.stop()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
    assert order[0] == "redis" and order.count("client") == 20


def test_messages_sent_with_the_subscribe_answer_are_read_without_waiting():
    """A server may write the SUBSCRIBE confirmation and the first messages in one segment:
    they are in the reader's buffer already, and the socket will not wake it for them."""
    answer = b"*3\r\n$9\r\nsubscribe\r\n$6\r\nevents\r\n:1\r\n" + resp.command(
        "message", "events", "early"
    )

    def serve(conn: socket.socket, _address: Any) -> None:
        conn.recv(1024)
        conn.sendall(answer)
        gevent.sleep(5)
        conn.close()

    server = gevent.server.StreamServer(("127.0.0.1", 0), serve)
    server.start()
    try:
        sub = resp.Subscriber(f"redis://127.0.0.1:{server.server_port}")
        sub.connect()
        sub.subscribe("events")
        started = time.monotonic()
        assert gevent.spawn(sub.read).get(timeout=10) == [b"early"]
        assert time.monotonic() - started < 1
        sub.close()
    finally:
        server.stop()


def test_the_bridge_survives_a_redis_that_closes_and_comes_back(redis_server: Any):
    """The reader's connection closed by Redis (CLIENT KILL): the bridge resubscribes and
    the next published events arrive."""
    seen: list[tuple[str | None, str | None, str, Any]] = []
    manager = SimpleNamespace(deliver=lambda *args: seen.append(args) or 1)
    server = SimpleNamespace(manager=manager, transport=SimpleNamespace(flush_in_steps=list))
    bridge = Bridge(server, redis_server.url, Metrics())  # type: ignore[arg-type]
    client = redis_server.client()
    bridge.start()
    try:

        def published_and_seen(n: int) -> bool:
            payload = {"event": "e", "message": n, "room": "r", "namespace": SITE}
            client.publish("events", json.dumps(payload, indent=1, sort_keys=True))
            gevent.sleep(0.05)
            return (SITE, "r", "e", n) in seen

        deadline = time.monotonic() + 10
        while not published_and_seen(1) and time.monotonic() < deadline:
            pass
        client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        deadline = time.monotonic() + 10
        while not published_and_seen(2) and time.monotonic() < deadline:
            pass
        assert (SITE, "r", "e", 2) in seen, seen
        assert bridge.metrics.bridge_reconnects.value() >= 1
    finally:
        bridge.stop()
        client.close()


REDIS_PY_READER = """
from gevent import monkey

monkey.patch_all()

import json, sys, time
from types import SimpleNamespace

import gevent, redis

from gsocket.contract import bridge as bridge_module
from gsocket.metrics import Metrics

bridge_module.resp.supported = lambda url: False  # take the redis-py reader (TLS URLs')
calls, ticks = [], []
manager = SimpleNamespace(deliver=lambda site, room, event, message: calls.append(message) or 1)
server = SimpleNamespace(manager=manager, transport=SimpleNamespace(flush_in_steps=list))
bridge = bridge_module.Bridge(server, sys.argv[1], Metrics())
bridge.start()
deadline = time.monotonic() + 10
while not bridge.subscribed and time.monotonic() < deadline:
    gevent.sleep(0.01)
ticker = gevent.spawn(lambda: [ticks.append(1) or gevent.sleep(0.001) for _ in range(50)])
client = redis.Redis.from_url(sys.argv[1])
for n in range(2000):
    client.publish("events", '{"event":"e","message":%d,"room":"r","namespace":"s"}' % n)
deadline = time.monotonic() + 10
while len(calls) < 2000 and time.monotonic() < deadline:
    gevent.sleep(0.01)
ticker.join(10)
bridge.stop()
print(json.dumps({"in_order": calls == list(range(2000)), "ticks": len(ticks)}))
"""


def test_the_redis_py_reader_delivers_in_order_and_lets_the_loop_run(redis_server: Any):
    """The reader kept for the URLs resp.py does not speak (TLS), over plain TCP in a
    gevent-patched process as the server is: every message delivered in order,
    and a greenlet ticking meanwhile is not starved."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", REDIS_PY_READER, redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"in_order": True, "ticks": 50}
