"""The desk's own client library, socket.io-client 4 on Node, against gsocket.

This is the issue's definition of done: a Node ``socket.io-client@4`` connects to ``/<site>``
of a gsocket started from a bench-shaped folder, subscribes to a document it may read,
receives an event published on Redis, and a client with a bad Origin gets "Invalid origin".
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import SITE, desk_headers
from tests.support.node_client import NodeClient


@pytest.fixture
def node():
    with NodeClient().start() as client:
        yield client


def publish_doc_update(redis_client, name):
    redis_client.publish(
        "events",
        json.dumps(
            {
                "event": "doc_update",
                "message": {"doctype": "ToDo", "name": name},
                "room": f"doc:ToDo/{name}",
                "namespace": SITE,
            }
        ),
    )


def test_desk_connects_by_polling_upgrades_and_receives(gsocket, web, node, redis_client):
    web.permissions.add(("Administrator", "ToDo", "TD-1"))
    node.connect("desk", f"{gsocket.url}/{SITE}", headers=desk_headers(SITE, "sid-admin"))
    node.wait_connected("desk")
    node.wait_type("desk", "upgrade")
    seq = node.emit("desk", "doc_subscribe", "ToDo", "TD-1", ack=True)
    node.wait_ack(seq)
    publish_doc_update(redis_client, "TD-1")
    event = node.wait_event("desk", "doc_update")
    assert event["args"] == [{"doctype": "ToDo", "name": "TD-1"}]


def test_mobile_client_websocket_only_with_token(gsocket, web, node, redis_client):
    web.permissions.add(("jane@example.com", "ToDo", "TD-2"))
    headers = desk_headers(SITE, None)
    headers["Authorization"] = "token api-key:api-secret"
    node.connect("app", f"{gsocket.url}/{SITE}", transports=["websocket"], headers=headers)
    assert node.wait_connected("app")["transport"] == "websocket"
    node.wait_ack(node.emit("app", "doc_subscribe", "ToDo", "TD-2", ack=True))
    publish_doc_update(redis_client, "TD-2")
    node.wait_event("app", "doc_update")


def test_bad_origin_gets_invalid_origin(gsocket, node):
    headers = {**desk_headers(SITE, "sid-admin"), "Origin": "https://attacker.example"}
    node.connect("evil", f"{gsocket.url}/{SITE}", headers=headers)
    error = node.wait_type("evil", "connect_error")
    assert error["message"] == "Invalid origin"


def test_denied_document_is_not_delivered(gsocket, web, node, redis_client):
    node.connect("desk", f"{gsocket.url}/{SITE}", headers=desk_headers(SITE, "sid-jane"))
    node.wait_connected("desk")
    node.wait_ack(node.emit("desk", "doc_subscribe", "ToDo", "SECRET", ack=True))
    publish_doc_update(redis_client, "SECRET")
    redis_client.publish(
        "events",
        json.dumps({"event": "marker", "message": 1, "room": "website", "namespace": SITE}),
    )
    node.wait_event("desk", "marker")
    assert not [e for e in node.events("desk", ["event"]) if e["event"] == "doc_update"]
