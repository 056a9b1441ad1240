"""Redis -> bridge -> emit (contract section 8), and faults of Redis and the web process."""

from __future__ import annotations

import json
import subprocess

import pytest
import socketio

from gsocket.demo.redis_server import RedisServer
from tests.conftest import SITE, SITE2, desk_headers
from tests.support.bench import wait_until


def message(event, payload, room, site=SITE):
    return json.dumps({"event": event, "message": payload, "room": room, "namespace": site})


def redis_cli_publish(port, data):
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "PUBLISH", "events", data],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return int(out.stdout.strip())


def test_redis_cli_publish_reaches_the_room_and_only_it(gsocket, web, clients, redis_server):
    web.permissions.add(("Administrator", "ToDo", "TD-1"))
    inside = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    outside = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-jane"))
    other_site = clients().connect(gsocket.url, f"/{SITE2}", desk_headers(SITE2, "sid-admin"))
    inside.call("doc_subscribe", "ToDo", "TD-1")
    outside.call("doc_subscribe", "ToDo", "TD-1")
    other_site.call("doc_subscribe", "ToDo", "TD-1")

    update = {"name": "TD-1", "modified": "2026-11-28 10:00:00"}
    assert redis_cli_publish(redis_server.port, message("doc_update", update, "doc:ToDo/TD-1")) == 1
    assert inside.wait_for("doc_update") == (update,)
    redis_cli_publish(redis_server.port, message("marker", 1, "website"))
    redis_cli_publish(redis_server.port, message("marker", 1, "website", site=SITE2))
    outside.wait_for("marker")
    other_site.wait_for("marker")
    assert outside.events("doc_update") == [] and other_site.events("doc_update") == []


def test_roomless_message_reaches_every_site(gsocket, clients, redis_client):
    one = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    two = clients().connect(gsocket.url, f"/{SITE2}", desk_headers(SITE2, "Guest"))
    redis_client.publish("events", json.dumps({"event": "build", "message": {"ok": 1}}))
    assert one.wait_for("build") == ({"ok": 1},)
    assert two.wait_for("build") == ({"ok": 1},)


@pytest.mark.parametrize(
    "bad",
    [
        b"not json at all",
        b"\xff\xfe binary",
        b"[1, 2, 3]",
        b'{"message": 1, "room": "all", "namespace": "site1.local"}',
        b'{"event": 42, "room": "all", "namespace": "site1.local"}',
        b'{"event": "x", "room": ["all"], "namespace": "site1.local"}',
        b'{"event": "x", "room": "all"}',
        b'{"event": "x", "room": "all", "namespace": {"a": 1}}',
    ],
)
def test_malformed_messages_are_logged_and_skipped(gsocket, clients, redis_client, bad):
    client = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    redis_client.publish("events", bad)
    redis_client.publish("events", message("after", 1, "all"))
    client.wait_for("after")
    gsocket.wait_for_log(r"skipped a malformed message on Redis channel 'events'")
    assert "Traceback" not in gsocket.log()


def test_unknown_namespace_is_skipped_quietly(gsocket, clients, redis_client):
    client = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    redis_client.publish("events", message("lost", 1, "all", site="nosuchsite"))
    redis_client.publish("events", message("after", 1, "all"))
    client.wait_for("after")
    assert client.events("lost") == []


def test_redis_killed_and_restarted(start_gsocket, web, clients, tmp_path):
    own = RedisServer(tmp_path / "own-redis").start()
    try:
        proc = start_gsocket(conf={"redis_queue": own.url})
        client = clients().connect(proc.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
        own.client().publish("events", message("before", 1, "all"))
        client.wait_for("before")

        own.kill()
        wait_until(lambda: proc.health().status_code == 503, 5, "health stayed 200")
        assert "unreachable" in proc.health().json()["reason"]

        own.restart()
        # the desk gives up after ~3.5 s: the bridge must be back well within that
        wait_until(lambda: proc.health().status_code == 200, 3, "bridge did not resubscribe")
        own.client().publish("events", message("after", 2, "all"))
        assert client.wait_for("after") == (2,)
        assert client.client.connected
        proc.wait_for_log(r"lost the Redis connection .* resubscribing")
    finally:
        own.stop()


def test_dead_web_process_refuses_new_sockets_and_keeps_old_ones(
    gsocket, web, clients, redis_client
):
    old = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    web.stop()
    with pytest.raises(socketio.exceptions.ConnectionError):
        clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-jane"))
    gsocket.wait_for_log(r"unreachable")
    redis_client.publish("events", message("still_here", 1, "all"))
    assert old.wait_for("still_here") == (1,)
    old.emit("ping")
    old.wait_for("pong")


def test_health_reports_the_bridge(gsocket):
    body = gsocket.health().json()
    assert body["status"] == "ok" and body["bridge"] == "subscribed"


def test_a_polling_client_gets_a_burst_in_order_and_stays_connected(gsocket, clients, redis_client):
    """python-socketio's own client drops a session whose poll answer holds more than 16
    packets; gsocket answers a poll with at most 16 and keeps the rest for the next one."""
    polling = clients(["polling"]).connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "Guest"))
    pipe = redis_client.pipeline()
    for i in range(100):
        pipe.publish("events", message("burst", i, "website"))
    pipe.execute()
    polling.wait_for("burst", lambda args: args == (99,), timeout=15)
    assert [args for (args,) in polling.events("burst")] == list(range(100))
    redis_client.publish("events", message("after", 1, "website"))
    assert polling.wait_for("after") == (1,)
    assert polling.client.connected and polling.transport == "polling"
