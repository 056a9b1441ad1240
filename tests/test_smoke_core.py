"""First end-to-end check: connect to a site and receive an event published on Redis."""

from __future__ import annotations

import json

from tests.conftest import SITE, desk_headers


def test_connect_and_receive_published_event(gsocket, web, clients, redis_client):
    client = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    redis_client.publish(
        "events",
        json.dumps({"event": "hello", "message": {"x": 1}, "room": "all", "namespace": SITE}),
    )
    assert client.wait_for("hello") == ({"x": 1},)
