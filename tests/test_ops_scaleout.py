"""Scale-out: several gsocket processes sharing rooms through python-socketio's Redis manager.

Every process bridges Frappe's ``events`` channel to its own sockets only, so each published
event reaches each subscribed socket exactly once; emits made by handlers travel on the
manager's own channel, so they reach the room's members on every process.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest

from tests.conftest import SITE, desk_headers
from tests.support.bench import wait_until
from tests.support.node_client import NodeClient

OPS_APPS = {"apps": ("frappe", "opsapp"), "copy_apps": ("opsapp",), "sites": (SITE,)}
SCALE_OUT = {"gsocket": {"scale_out": True}}
CHANNEL = "gsocket"


@pytest.fixture
def two_processes(start_gsocket, web, redis_client):
    """Two scaled-out gsocket processes of one bench, both subscribed to the manager channel."""
    web.installed_apps[SITE] = ["frappe", "opsapp"]
    first = start_gsocket(conf=SCALE_OUT, **OPS_APPS)
    second = start_gsocket(conf=SCALE_OUT, **OPS_APPS)
    wait_until(
        lambda: dict(redis_client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode()) == 2,
        10,
        "both managers did not subscribe",
    )
    return first, second


def _publish(redis_client, event: str, message: object, room: str | None) -> None:
    payload = {"event": event, "message": message, "room": room, "namespace": SITE}
    redis_client.publish("events", json.dumps(payload))


def _barrier(shouter, listeners, tag: str) -> None:
    """Emit through the manager channel from ``shouter``'s process and wait for it everywhere.

    Whatever that process published on the channel before has then been delivered too.
    """
    assert shouter.call("ops_shout", "all", {"barrier": tag}) is True
    for client in listeners:
        client.wait_for("shout", lambda args: args[0] == {"barrier": tag}, timeout=10)


def test_each_published_event_reaches_each_socket_once(two_processes, clients, redis_client):
    first, second = two_processes
    # Python clients on websocket (python-engineio's client refuses a long-polling payload of
    # more than 16 packets, which a burst produces); the desk's long-polling via the Node client.
    # Fresh header dicts each time: the websocket client takes the Cookie out of the one given.
    a_admin = clients(["websocket"]).connect(first.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    a_jane = clients(["websocket"]).connect(first.url, f"/{SITE}", desk_headers(SITE, "sid-jane"))
    b_admin = clients(["websocket"]).connect(
        second.url, f"/{SITE}", desk_headers(SITE, "sid-admin")
    )
    b_jane = clients(["websocket"]).connect(second.url, f"/{SITE}", desk_headers(SITE, "sid-jane"))
    everyone = [a_admin, a_jane, b_admin, b_jane]
    with NodeClient() as nc:
        for id, proc in (("desk-a", first), ("desk-b", second)):
            nc.connect(id, f"{proc.url}/{SITE}", ["polling"], desk_headers(SITE, "sid-jane"))
            nc.wait_connected(id)

        for n in range(20):
            _publish(redis_client, "tick", {"n": n}, "all")
        for n in range(5):
            _publish(redis_client, "jane_tick", {"n": n}, "user:jane@example.com")
        for n in range(3):
            _publish(redis_client, "build", {"n": n}, None)  # no room: every site namespace
        _publish(redis_client, "done", None, "all")
        for client in everyone:
            client.wait_for("done", timeout=10)
        # Anything a process would have relayed to the other one is through after these.
        _barrier(a_admin, everyone, "from-first")
        _barrier(b_admin, everyone, "from-second")
        for id in ("desk-a", "desk-b"):
            nc.wait_for(
                lambda e, id=id: (
                    e.get("id") == id
                    and e.get("event") == "shout"
                    and e["args"] == [{"barrier": "from-second"}]
                ),
                timeout=10,
            )
            desk = [e for e in nc.events(id, ["event"])]
            assert Counter(e["args"][0]["n"] for e in desk if e["event"] == "tick") == Counter(
                range(20)
            )
            assert len([e for e in desk if e["event"] == "jane_tick"]) == 5
            assert len([e for e in desk if e["event"] == "build"]) == 3

    for client in everyone:
        ticks = Counter(args[0]["n"] for args in client.events("tick"))
        assert ticks == Counter(range(20)), ticks
        builds = Counter(args[0]["n"] for args in client.events("build"))
        assert builds == Counter(range(3)), builds
        assert len(client.events("done")) == 1
    for client in (a_jane, b_jane):
        assert Counter(a[0]["n"] for a in client.events("jane_tick")) == Counter(range(5))
    for client in (a_admin, b_admin):
        assert client.events("jane_tick") == []


def test_a_handler_emit_reaches_the_room_on_every_process_once(two_processes, clients):
    first, second = two_processes
    a_member = clients().connect(first.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    a_outsider = clients().connect(first.url, f"/{SITE}", desk_headers(SITE, "sid-jane"))
    b_member = clients().connect(second.url, f"/{SITE}", desk_headers(SITE, "sid-jane"))
    b_shouter = clients().connect(second.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    assert a_member.call("ops_join", "crew") == a_member.sid
    assert b_member.call("ops_join", "crew") == b_member.sid

    # a dict, nothing (an event without arguments), text, a list and a float Node writes
    # as JSON: delivered here and on the other process as python-socketio's own path did
    messages = [{"n": 1}, None, "text", [1, "two"], 2.5, {"n": 2}]
    for message in messages:
        assert b_shouter.call("ops_shout", "crew", message) is True
    expected = [() if m is None else (m,) for m in messages]
    for member in (a_member, b_member):
        member.wait_for("shout", lambda args: args == ({"n": 2},), timeout=10)
        assert member.events("shout") == expected
    assert a_outsider.events("shout") == []
    assert b_shouter.events("shout") == []


def test_an_answer_to_the_own_client_stays_off_redis(two_processes, clients, redis_client):
    first, _ = two_processes
    client = clients().connect(first.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    seen: list[dict] = []
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    pubsub.get_message(timeout=5)
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            if message:
                seen.append(json.loads(message["data"]))

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    try:
        client.emit("ping")
        client.wait_for("pong")
        assert client.call("ops_shout", "all", {"after": "pong"}) is True
        wait_until(lambda: any(m.get("event") == "shout" for m in seen), 10, lambda: seen)
    finally:
        stop.set()
        collector.join()
        pubsub.close()
    assert [m["event"] for m in seen if m.get("method") == "emit"] == ["shout"]
