"""The desk's events and their permission checks (contract sections 5-7 and 9)."""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.conftest import SITE, desk_headers
from tests.support.bench import wait_until


def publish(redis_client, event, message, room, site=SITE):
    redis_client.publish(
        "events", json.dumps({"event": event, "message": message, "room": room, "namespace": site})
    )


def connect(clients, gsocket, sid, transports=None):
    return clients(transports).connect(gsocket.url, f"/{SITE}", desk_headers(SITE, sid))


def sockets_connected(gsocket) -> float:
    """The server's count of this site's connected sockets, from ``/metrics``."""
    for line in requests.get(f"{gsocket.url}/metrics", timeout=5).text.splitlines():
        if line.startswith("gsocket_sockets_connected{") and f'site="{SITE}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def received_after_publish(redis_client, client, room, marker_room="website"):
    """Publish to ``room`` and then to a room the client is surely in; tell whether the first
    arrived. Redis pub/sub and the bridge keep order, so the marker bounds the wait."""
    nonce = f"{room}#{uuid.uuid4()}"
    publish(redis_client, "probe", nonce, room)
    publish(redis_client, "marker", nonce, marker_room)
    client.wait_for("marker", lambda args: args == (nonce,))
    return (nonce,) in client.events("probe")


@pytest.fixture(params=["v16", "v15-404", "v15-417"])
def shaped_web(request, web):
    """The web process in the newer shape and in the v15 shape (both missing-method codes)."""
    if request.param != "v16":
        web.shape = "v15"
        web.missing_method_status = int(request.param.split("-")[1])
    return web


class TestSubscriptions:
    def test_doc_subscribe_checked(self, gsocket, shaped_web, clients, redis_client):
        shaped_web.permissions.add(("Administrator", "ToDo", "TD-1"))
        client = connect(clients, gsocket, "sid-admin")
        client.call("doc_subscribe", "ToDo", "TD-1")
        client.call("doc_subscribe", "ToDo", "TD-2")
        assert received_after_publish(redis_client, client, "doc:ToDo/TD-1")
        assert not received_after_publish(redis_client, client, "doc:ToDo/TD-2")
        if shaped_web.shape == "v15":
            methods = [c["method"] for c in shaped_web.calls]
            assert "frappe.realtime.can_subscribe_doc" in methods
            # the missing endpoint is asked once, then remembered
            assert methods.count("frappe.realtime.has_permission") == 1

    def test_doctype_subscribe_checked(self, gsocket, shaped_web, clients, redis_client):
        shaped_web.permissions.add(("Administrator", "Note", None))
        client = connect(clients, gsocket, "sid-admin")
        client.call("doctype_subscribe", "Note")
        client.call("doctype_subscribe", "User")
        assert received_after_publish(redis_client, client, "doctype:Note")
        assert not received_after_publish(redis_client, client, "doctype:User")

    def test_permission_call_carries_the_clients_credential(self, gsocket, web, clients):
        client = connect(clients, gsocket, "sid-jane")
        client.call("doc_subscribe", "ToDo", "TD-9")
        call = web.calls_to("frappe.realtime.has_permission")[-1]
        assert call["headers"]["Cookie"] == "sid=sid-jane"
        assert call["args"] == {"doctype": "ToDo", "name": "TD-9"}

    def test_unsubscribe(self, gsocket, web, clients, redis_client):
        web.permissions.add(("Administrator", "ToDo", None))
        client = connect(clients, gsocket, "sid-admin")
        client.call("doctype_subscribe", "ToDo")
        client.call("doc_subscribe", "ToDo", "TD-1")
        assert received_after_publish(redis_client, client, "doctype:ToDo")
        client.call("doctype_unsubscribe", "ToDo")
        client.call("doc_unsubscribe", "ToDo", "TD-1")
        assert not received_after_publish(redis_client, client, "doctype:ToDo")
        assert not received_after_publish(redis_client, client, "doc:ToDo/TD-1")

    def test_task_rooms_need_no_check(self, gsocket, web, clients, redis_client):
        client = connect(clients, gsocket, "sid-jane")
        client.call("task_subscribe", "job-1")
        client.call("progress_subscribe", "job-2")
        assert received_after_publish(redis_client, client, "task_progress:job-1")
        assert received_after_publish(redis_client, client, "task_progress:job-2")
        client.call("task_unsubscribe", "job-1")
        assert not received_after_publish(redis_client, client, "task_progress:job-1")
        assert web.calls_to("frappe.realtime.has_permission") == []

    def test_guests_follow_tasks_and_subscribe_through_the_permission_check(
        self, gsocket, web, clients, redis_client
    ):
        # As the Node server: no Guest rule of its own. A website visitor follows the job it
        # started; doctype and document rooms are the web process's call, as for everyone.
        guest = connect(clients, gsocket, "Guest")
        guest.call("task_subscribe", "job-1")
        guest.call("progress_subscribe", "job-2")
        assert received_after_publish(redis_client, guest, "task_progress:job-1")
        assert received_after_publish(redis_client, guest, "task_progress:job-2")
        guest.call("task_unsubscribe", "job-1")
        assert not received_after_publish(redis_client, guest, "task_progress:job-1")

        guest.call("doctype_subscribe", "ToDo")
        guest.call("doc_subscribe", "Note", "N-1")
        assert not received_after_publish(redis_client, guest, "doctype:ToDo")
        assert not received_after_publish(redis_client, guest, "doc:Note/N-1")
        asked = [c["args"] for c in web.calls_to("frappe.realtime.has_permission")]
        assert [a["doctype"] for a in asked] == ["ToDo", "Note"] and asked[1]["name"] == "N-1"

        web.permissions.add(("Guest", "Web Page", None))
        guest.call("doctype_subscribe", "Web Page")
        assert received_after_publish(redis_client, guest, "doctype:Web Page")
        assert "Traceback" not in gsocket.log()

    def test_permission_check_failing_is_a_no(self, gsocket, web, clients, redis_client):
        web.permissions.add(("Administrator", "ToDo", None))
        client = connect(clients, gsocket, "sid-admin")
        web.mode = "garbage"
        client.call("doctype_subscribe", "ToDo")
        web.mode = "ok"
        assert not received_after_publish(redis_client, client, "doctype:ToDo")


def test_ping_pong(gsocket, clients):
    client = connect(clients, gsocket, "Guest")
    client.emit("ping")
    client.wait_for("pong")


class TestViewers:
    def viewers(self, client, count=1):
        def enough(args):
            return len(client.events("doc_viewers")) >= count

        client.wait_for("doc_viewers", enough)
        return client.events("doc_viewers")[count - 1][0]

    def test_doc_open_close_and_disconnect(self, gsocket, web, clients):
        web.permissions.update(
            {("Administrator", "ToDo", None), ("jane@example.com", "ToDo", None)}
        )
        admin = connect(clients, gsocket, "sid-admin")
        jane = connect(clients, gsocket, "sid-jane")
        admin.call("doc_open", "ToDo", "TD-1")
        # alone on the form: nothing is sent
        jane.call("doc_open", "ToDo", "TD-1")
        both = {
            "doctype": "ToDo",
            "docname": "TD-1",
            "users": ["Administrator", "jane@example.com"],
        }
        assert self.viewers(admin) == both
        assert self.viewers(jane) == both
        assert len(admin.events("doc_viewers")) == 1

        jane.call("doc_close", "ToDo", "TD-1")
        alone = {"doctype": "ToDo", "docname": "TD-1", "users": ["Administrator"]}
        assert self.viewers(admin, 2) == alone

        jane.call("doc_open", "ToDo", "TD-1")
        assert self.viewers(admin, 3) == both
        jane.disconnect()
        assert self.viewers(admin, 4) == alone

    def test_doc_close_forgets_only_that_document(self, gsocket, web, clients):
        web.permissions.update(
            {("Administrator", "ToDo", None), ("jane@example.com", "ToDo", None)}
        )
        admin = connect(clients, gsocket, "sid-admin")
        jane = connect(clients, gsocket, "sid-jane")
        admin.call("doc_open", "ToDo", "TD-2")
        jane.call("doc_open", "ToDo", "TD-1")
        jane.call("doc_open", "ToDo", "TD-2")
        self.viewers(admin)
        jane.call("doc_close", "ToDo", "TD-1")
        jane.disconnect()
        # the disconnect still reports TD-2, which doc_close of TD-1 must not have forgotten
        final = self.viewers(admin, 2)
        assert final == {"doctype": "ToDo", "docname": "TD-2", "users": ["Administrator"]}

    ALONE = {"doctype": "ToDo", "docname": "TD-1", "users": ["Administrator"]}
    BOTH = {**ALONE, "users": ["Administrator", "jane@example.com"]}

    def two_tabs_on_a_form(self, gsocket, web, clients):
        """Two tabs of Administrator open TD-1 (one socket, its own user: nothing; two
        sockets: both are told, one user); jane connected, not on the form."""
        web.permissions.update(
            {("Administrator", "ToDo", None), ("jane@example.com", "ToDo", None)}
        )
        tab_a = connect(clients, gsocket, "sid-admin")
        tab_b = connect(clients, gsocket, "sid-admin")
        jane = connect(clients, gsocket, "sid-jane")
        tab_a.call("doc_open", "ToDo", "TD-1")
        tab_b.call("doc_open", "ToDo", "TD-1")
        assert self.viewers(tab_a) == self.viewers(tab_b) == self.ALONE
        return tab_a, tab_b, jane

    def then_jane_opens_it(self, tab_a, jane):
        """Jane opens the form: what the tab left was told since, in order."""
        jane.call("doc_open", "ToDo", "TD-1")
        assert self.viewers(tab_a, 2) == self.BOTH
        return [args[0] for args in tab_a.events("doc_viewers")]

    def test_two_tabs_of_one_user_are_counted_by_socket_as_frappes_node_does(
        self, gsocket, web, clients
    ):
        tab_a, tab_b, jane = self.two_tabs_on_a_form(gsocket, web, clients)
        tab_b.call("doc_close", "ToDo", "TD-1")  # left: the other tab of the same user: nothing
        assert self.then_jane_opens_it(tab_a, jane) == [self.ALONE, self.BOTH]

    def test_the_tab_left_is_not_told_when_the_other_tab_of_its_user_disconnects(
        self, gsocket, web, clients
    ):
        tab_a, tab_b, jane = self.two_tabs_on_a_form(gsocket, web, clients)
        tab_b.disconnect()
        # the server forgot it (its disconnect handler was started then, and sends nothing)
        wait_until(lambda: sockets_connected(gsocket) == 2, 5, "the tab never disconnected")
        assert self.then_jane_opens_it(tab_a, jane) == [self.ALONE, self.BOTH]

    def test_doc_open_needs_permission(self, gsocket, web, clients):
        web.permissions.add(("Administrator", "ToDo", None))
        admin = connect(clients, gsocket, "sid-admin")
        jane = connect(clients, gsocket, "sid-jane")
        admin.call("doc_open", "ToDo", "TD-1")
        jane.call("doc_open", "ToDo", "TD-1")
        admin.call("doc_open", "ToDo", "TD-1")
        assert admin.events("doc_viewers") == []


class TestOpenInEditor:
    def test_developer_mode_publishes(self, start_gsocket, clients, redis_server):
        proc = start_gsocket(conf={"developer_mode": 1})
        pubsub = redis_server.client().pubsub()
        pubsub.subscribe("open_in_editor")
        pubsub.get_message(timeout=2)
        client = connect(clients, proc, "sid-admin")
        client.call("open_in_editor", {"filename": "a.py", "line": 3})
        message = pubsub.get_message(timeout=5)
        assert json.loads(message["data"]) == {"filename": "a.py", "line": 3}

    def test_not_served_outside_developer_mode(self, gsocket, clients, redis_server):
        pubsub = redis_server.client().pubsub()
        pubsub.subscribe("open_in_editor")
        pubsub.get_message(timeout=2)
        client = connect(clients, gsocket, "sid-admin")
        client.call("open_in_editor", {"filename": "a.py"})
        assert pubsub.get_message(timeout=0.5) is None
