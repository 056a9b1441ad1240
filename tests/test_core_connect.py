"""Connection checks, transports, namespaces and default rooms (contract sections 3-5)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest
import socketio

from tests.conftest import SITE, SITE2, desk_headers
from tests.support.bench import wait_until


def publish(redis_client, event, message, room, site=SITE):
    redis_client.publish(
        "events", json.dumps({"event": event, "message": message, "room": room, "namespace": site})
    )


def refused(client, gsocket, namespace, headers):
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(gsocket.url, namespace, headers)


def connect_error_message(client):
    """The message the server put in CONNECT_ERROR (python-socketio keeps it on the client)."""
    return client.wait_for("connect_error")[0]


class TestRefusals:
    def test_invalid_namespace(self, gsocket, clients):
        client = clients()
        refused(client, gsocket, f"/{SITE2}", desk_headers(SITE, "sid-admin"))
        assert connect_error_message(client) == {"message": "Invalid namespace"}
        gsocket.wait_for_log(
            r"refused connection to /site2.local from 127.0.0.1: invalid_namespace"
        )

    def test_invalid_origin(self, gsocket, clients):
        client = clients()
        headers = {**desk_headers(SITE, "sid-admin"), "Origin": "http://evil.example"}
        refused(client, gsocket, f"/{SITE}", headers)
        assert connect_error_message(client) == {"message": "Invalid origin"}
        gsocket.wait_for_log(r"invalid_origin")

    def test_missing_origin_is_refused(self, gsocket, clients):
        client = clients()
        headers = desk_headers(SITE, "sid-admin")
        del headers["Origin"]
        refused(client, gsocket, f"/{SITE}", headers)
        assert connect_error_message(client) == {"message": "Invalid origin"}

    def test_no_credentials(self, gsocket, clients):
        # Node's words: no Cookie header at all, then a Cookie header without sid
        client = clients()
        refused(client, gsocket, f"/{SITE}", desk_headers(SITE, None))
        assert connect_error_message(client) == {"message": "No cookie transmitted."}
        gsocket.wait_for_log(r"no_credentials")
        client = clients()
        refused(client, gsocket, f"/{SITE}", {**desk_headers(SITE, None), "Cookie": "theme=dark"})
        assert connect_error_message(client) == {
            "message": "No authentication method used. Use cookie or authorization header."
        }

    def test_socket_secret_is_sent_and_never_logged(self, gsocket, web, clients):
        web.set_secret("the-real-secret")
        client = clients()
        client.connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
        call = web.calls_to("frappe.realtime.get_user_info")[-1]
        assert call["headers"]["X-Frappe-Socket-Secret"] == "the-real-secret"
        assert "the-real-secret" not in gsocket.log()

    def test_rotated_secret_is_read_again(self, gsocket, web, clients):
        web.set_secret("first")
        clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
        web.set_secret("second")
        clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-jane"))
        sent = [c["headers"].get("X-Frappe-Socket-Secret") for c in web.calls]
        assert sent[0] == "first" and sent[-1] == "second"

    def test_empty_user_info_is_unauthorized(self, gsocket, web, clients, monkeypatch):
        # the stub answers an empty message when the secret does not match: simulate a web
        # process holding a secret gsocket cannot know (another Redis key value each call)
        original = web._get_user_info

        def reject(request):
            response = original(request)
            response.set_data(json.dumps({"message": {}}))
            return response

        monkeypatch.setattr(web, "_get_user_info", reject)
        client = clients()
        refused(client, gsocket, f"/{SITE}", desk_headers(SITE, "sid-admin"))
        assert connect_error_message(client)["message"].startswith("Unauthorized: ")
        gsocket.wait_for_log(r"unauthorized")

    def test_dead_web_process_refuses_in_bounded_time(self, start_gsocket, web, clients):
        proc = start_gsocket(conf={"gsocket": {"web_timeout": 1.0}})
        web.mode = "slow"
        web.slow_seconds = 5
        client = clients()
        attempt = threading.Thread(
            target=refused, args=(client, proc, f"/{SITE}", desk_headers(SITE, "sid-admin"))
        )
        attempt.start()
        # the refusal is decided by the server's own timeout, well before the web answers
        proc.wait_for_log(r"did not answer in time", timeout=4.0)
        proc.wait_for_log(r"refused connection to /site1\.local .*: web_unavailable", timeout=1)
        attempt.join(15)
        assert "web process is unavailable" in connect_error_message(client)["message"]

    def test_web_answering_garbage_refuses(self, gsocket, web, clients):
        web.mode = "garbage"
        client = clients()
        refused(client, gsocket, f"/{SITE}", desk_headers(SITE, "sid-admin"))
        assert "unavailable" in connect_error_message(client)["message"]


class TestAccepted:
    def test_polling_then_upgrade(self, gsocket, clients):
        client = clients(["polling", "websocket"])
        client.connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
        wait_until(lambda: client.transport == "websocket", 5, "no upgrade to websocket")
        client.emit("ping")
        client.wait_for("pong")

    def test_websocket_only_with_authorization_header(self, gsocket, web, clients):
        client = clients(["websocket"])
        headers = desk_headers(SITE, None)
        headers["Authorization"] = "token api-key:api-secret"
        client.connect(gsocket.url, f"/{SITE}", headers)
        assert client.transport == "websocket"
        call = web.calls_to("frappe.realtime.get_user_info")[-1]
        assert call["headers"]["Authorization"] == "token api-key:api-secret"
        assert "Cookie" not in call["headers"] or not call["headers"]["Cookie"]

    def test_credential_and_site_reach_the_web_process(self, gsocket, web, clients):
        clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
        call = web.calls_to("frappe.realtime.get_user_info")[-1]
        assert call["headers"]["Cookie"] == "sid=sid-admin"
        assert call["headers"]["X-Frappe-Site-Name"] == SITE
        assert (
            "X-Frappe-Socket-Secret" not in call["headers"]
            or not call["headers"]["X-Frappe-Socket-Secret"]
        )

    def test_unknown_session_is_a_guest_in_guest_rooms(self, gsocket, clients, redis_client):
        guest = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "Guest"))
        publish(redis_client, "to_all", 1, "all")
        publish(redis_client, "to_website", 2, "website")
        publish(redis_client, "to_guest", 3, "user:Guest")
        guest.wait_for("to_guest")
        assert guest.events("to_website") == [(2,)]
        assert guest.events("to_all") == []

    def test_default_rooms(self, gsocket, clients, redis_client):
        admin = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
        webuser = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-web"))
        publish(redis_client, "to_all", "a", "all")
        publish(redis_client, "to_admin", "b", "user:Administrator")
        publish(redis_client, "to_web", "c", "user:web@example.com")
        publish(redis_client, "to_website", "d", "website")
        admin.wait_for("to_website")
        webuser.wait_for("to_website")
        assert admin.events("to_all") == [("a",)] and webuser.events("to_all") == []
        assert admin.events("to_admin") == [("b",)] and webuser.events("to_admin") == []
        assert webuser.events("to_web") == [("c",)] and admin.events("to_web") == []

    def test_sites_are_separate_namespaces(self, gsocket, clients, redis_client):
        one = clients().connect(gsocket.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
        two = clients().connect(gsocket.url, f"/{SITE2}", desk_headers(SITE2, "sid-admin"))
        publish(redis_client, "only_two", 1, "all", site=SITE2)
        publish(redis_client, "marker", 1, "all", site=SITE)
        two.wait_for("only_two")
        one.wait_for("marker")
        assert one.events("only_two") == []

    def test_default_site_for_localhost(self, start_gsocket, clients):
        proc = start_gsocket(conf={"default_site": SITE2})
        headers = {"Origin": "http://localhost:8000", "Cookie": "sid=sid-admin"}
        client = clients()
        client.client.connect(
            proc.url.replace("127.0.0.1", "localhost"),
            headers=headers,
            namespaces=[f"/{SITE2}"],
            transports=["websocket"],
            wait_timeout=5,
        )
        assert client.client.get_sid(f"/{SITE2}")

    def test_site_from_origin_when_no_site_header(self, gsocket, clients):
        # a development bench: the browser is on http://127.0.0.1:8000, gsocket on :port
        client = clients()
        headers = {"Origin": "http://127.0.0.1:8000", "Cookie": "sid=sid-admin"}
        client.connect(gsocket.url, "/127.0.0.1", headers)
        assert client.sid


def test_second_connect_on_the_same_namespace_gets_the_same_sid(gsocket):
    from tests.support.node_client import NodeClient

    with NodeClient().start() as node:
        node.connect(
            "c1",
            f"{gsocket.url}/{SITE}",
            transports=["websocket"],
            headers=desk_headers(SITE, "sid-admin"),
        )
        first = node.wait_connected("c1")
        mark = node.mark()
        node.send_raw("c1", f"0/{SITE},")
        again = node.wait_type("c1", "connect", start=mark)
        assert again["sid"] == first["sid"]
        node.emit("c1", "ping")
        node.wait_event("c1", "pong")


def test_listens_on_a_unix_socket_with_sites_as_working_directory(start_gsocket, tmp_path):
    path = Path(f"/tmp/gsocket-test-{os.getpid()}.sock")
    proc = start_gsocket(conf={"socketio_uds": str(path)}, wait=False)
    wait_until(path.exists, 20, lambda: f"no unix socket; log:\n{proc.log()}")

    def health() -> bytes:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)

    wait_until(lambda: health().startswith(b"HTTP/1.1 200"), 10, "no healthy answer on the UDS")
    assert os.readlink(f"/proc/{proc.proc.pid}/cwd") == str(proc.bench / "sites")
    path.unlink(missing_ok=True)
