"""Checks of the test-support pieces themselves, so a failing gsocket test means gsocket."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import socketio
from werkzeug.serving import make_server

from gsocket.demo.ports import free_port, port_is_open
from gsocket.demo.redis_server import RedisServer
from tests.support.node_client import NodeClient
from tests.support.webstub import WebStub

USER_INFO = "/api/method/frappe.realtime.get_user_info"
HAS_PERMISSION = "/api/method/frappe.realtime.has_permission"
CAN_DOC = "/api/method/frappe.realtime.can_subscribe_doc"
CAN_DOCTYPE = "/api/method/frappe.realtime.can_subscribe_doctype"


# ---- ports -------------------------------------------------------------------------------


def test_free_port_is_bindable():
    port = free_port()
    assert 1024 < port < 65536
    assert not port_is_open(port)


# ---- RedisServer -------------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def test_redis_start_kill_restart_same_port(redis_server: RedisServer):
    client = redis_server.client()
    assert client.ping()
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}"
    client.set("k", "v")
    port = redis_server.port

    redis_server.kill()
    assert not redis_server.running
    with pytest.raises(redis.ConnectionError):
        redis_server.client().ping()

    redis_server.restart()
    assert redis_server.port == port
    assert client.ping()
    assert client.get("k") is None, "no persistence: a crash loses the data"
    client.close()


def test_redis_stop_and_context_manager(tmp_path: Path):
    server = RedisServer(tmp_path)
    with server:
        assert server.running
        server.stop()
        assert not server.running
        server.start()
        assert server.client().ping()
    assert not server.running
    assert not list(tmp_path.glob("*.rdb"))


# ---- WebStub -----------------------------------------------------------------------------


@pytest.fixture
def v16(redis_server: RedisServer) -> Iterator[WebStub]:
    with WebStub("v16", redis_url=redis_server.url) as stub:
        stub.sessions["sid-alice"] = "alice@example.com"
        stub.tokens["token k:s"] = "bob@example.com"
        stub.users["bob@example.com"] = "Website User"
        stub.installed_apps["site1"] = ["frappe", "erpnext"]
        yield stub


@pytest.fixture
def v15() -> Iterator[WebStub]:
    with WebStub("v15") as stub:
        stub.sessions["sid-alice"] = "alice@example.com"
        yield stub


def get(stub: WebStub, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(stub.url + path, timeout=5, **kwargs)


def test_v16_user_info_credentials_and_site(v16: WebStub):
    site1 = {"X-Frappe-Site-Name": "site1:8000"}
    by_cookie = get(v16, USER_INFO, headers={"Cookie": "sid=sid-alice", **site1}).json()
    assert by_cookie == {
        "message": {
            "user": "alice@example.com",
            "user_type": "System User",
            "installed_apps": ["frappe", "erpnext"],
        }
    }
    by_token = get(v16, USER_INFO, headers={"Authorization": "token k:s", "Host": "other"}).json()
    assert by_token["message"]["user"] == "bob@example.com"
    assert by_token["message"]["user_type"] is None  # a token login has no session data
    assert by_token["message"]["installed_apps"] == ["frappe"]
    by_arg = get(v16, USER_INFO, params={"sid": "sid-alice"}).json()
    assert by_arg["message"]["user"] == "alice@example.com"
    for headers in ({"Cookie": "sid=Guest"}, {"Cookie": "sid=unknown"}, {}):
        answer = get(v16, USER_INFO, headers=headers).json()
        guest = answer["message"]
        assert (guest["user"], guest["user_type"]) == ("Guest", None)
        assert answer.get("session_expired") == (1 if "unknown" in str(headers) else None)
    bad_token = get(v16, USER_INFO, headers={"Authorization": "token k:wrong"})
    assert (bad_token.status_code, bad_token.json()["exc_type"]) == (401, "AuthenticationError")

    call = v16.calls_to("get_user_info")[0]
    assert call["headers"]["Cookie"] == "sid=sid-alice"
    assert call["site"] == "site1"
    assert v16.calls_to("get_user_info")[1]["site"] == "other"


def test_v16_user_info_checks_secret(v16: WebStub):
    cookie = {"Cookie": "sid=sid-alice"}
    v16.set_secret("s3cret")
    assert get(v16, USER_INFO, headers=cookie).json() == {"message": {}}
    wrong = {**cookie, "X-Frappe-Socket-Secret": "nope"}
    assert get(v16, USER_INFO, headers=wrong).json() == {"message": {}}
    right = {**cookie, "X-Frappe-Socket-Secret": "s3cret"}
    assert get(v16, USER_INFO, headers=right).json()["message"]["user"] == "alice@example.com"
    assert v16.calls[-1]["headers"]["X-Frappe-Socket-Secret"] == "s3cret"
    v16.set_secret(None)
    assert get(v16, USER_INFO, headers=cookie).json()["message"]["user"] == "alice@example.com"


def test_v16_has_permission(v16: WebStub):
    cookie = {"Cookie": "sid=sid-alice"}
    v16.permissions.add(("alice@example.com", "ToDo", "T-1"))
    v16.permissions.add(("alice@example.com", "Note", None))
    allowed = get(v16, HAS_PERMISSION, params={"doctype": "ToDo", "name": "T-1"}, headers=cookie)
    assert (allowed.status_code, allowed.json()) == (200, {"message": True})
    denied = get(v16, HAS_PERMISSION, params={"doctype": "ToDo", "name": "T-2"}, headers=cookie)
    assert denied.status_code == 403
    assert denied.json()["exc_type"] == "PermissionError"
    doctype_wide = get(v16, HAS_PERMISSION, params={"doctype": "Note", "name": "N"}, headers=cookie)
    assert doctype_wide.status_code == 200
    guest = get(v16, HAS_PERMISSION, params={"doctype": "Note", "name": "N"})
    assert guest.status_code == 403
    no_name = get(v16, HAS_PERMISSION, params={"doctype": "Note"}, headers=cookie)
    assert (no_name.status_code, no_name.json()["exc_type"]) == (500, "TypeError")
    doctype_only = get(v16, HAS_PERMISSION, params={"doctype": "Note", "name": ""}, headers=cookie)
    assert doctype_only.status_code == 200
    old = get(v16, CAN_DOC, params={"doctype": "ToDo", "docname": "T-1"}, headers=cookie)
    assert old.status_code == 417
    assert get(v16, "/api/method/frappe.no_such_method").status_code == 417
    assert get(v16, "/nothing").status_code == 404


def test_v15_shape(v15: WebStub):
    cookie = {"Cookie": "sid=sid-alice", "X-Frappe-Socket-Secret": "ignored"}
    info = get(v15, USER_INFO, headers=cookie).json()
    assert info == {"message": {"user": "alice@example.com", "user_type": "System User"}}

    missing = get(v15, HAS_PERMISSION, params={"doctype": "ToDo", "name": "T-1"}, headers=cookie)
    assert missing.status_code == 417
    assert "has no attribute 'has_permission'" in missing.json()["exception"]
    v15.missing_method_status = 404
    assert get(v15, HAS_PERMISSION, params={"doctype": "ToDo"}).status_code == 404

    v15.permissions.add(("alice@example.com", "ToDo", "T-1"))
    v15.permissions.add(("alice@example.com", "Note", None))
    doc_ok = get(v15, CAN_DOC, params={"doctype": "ToDo", "docname": "T-1"}, headers=cookie)
    assert (doc_ok.status_code, doc_ok.json()) == (200, {"message": True})
    doc_no = get(v15, CAN_DOC, params={"doctype": "ToDo", "docname": "T-2"}, headers=cookie)
    assert doc_no.status_code == 403
    assert get(v15, CAN_DOCTYPE, params={"doctype": "Note"}, headers=cookie).status_code == 200
    assert get(v15, CAN_DOCTYPE, params={"doctype": "ToDo"}, headers=cookie).status_code == 403


def test_webstub_modes(v15: WebStub):
    v15.mode = "down"
    assert get(v15, USER_INFO).status_code == 502
    v15.mode = "garbage"
    garbage = get(v15, USER_INFO)
    assert garbage.status_code == 200
    with pytest.raises(ValueError):
        garbage.json()

    v15.mode = "slow"
    v15.slow_seconds = 30
    slow_result: list[requests.Response | BaseException] = []

    def slow_request() -> None:
        try:
            slow_result.append(get(v15, USER_INFO))
        except BaseException as exc:  # reported through the assertion below
            slow_result.append(exc)

    slow = threading.Thread(target=slow_request)
    slow.start()
    v15.wait_for_call(lambda c: c["method"] == "frappe.realtime.get_user_info")
    v15.mode = "ok"
    assert get(v15, USER_INFO).status_code == 200, "a slow request must not block others"
    v15.stop()  # releases the sleeping request at once
    slow.join(timeout=5)
    assert not slow.is_alive()
    assert len(slow_result) == 1


# ---- NodeClient against a real python-socketio server --------------------------------------


class EchoServer:
    """A catch-all python-socketio server (threading mode) that records what arrives."""

    def __init__(self) -> None:
        self.sio = socketio.Server(async_mode="threading", namespaces="*")
        self.connects: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.sio.on("connect", self._on_connect, namespace="*")
        self.sio.on("*", self._on_any, namespace="*")
        self.server = make_server("127.0.0.1", 0, socketio.WSGIApp(self.sio), threaded=True)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def _on_connect(self, namespace: str, sid: str, environ: dict[str, Any], auth: Any) -> None:
        record = {
            "namespace": namespace,
            "sid": sid,
            "cookie": environ.get("HTTP_COOKIE"),
            "origin": environ.get("HTTP_ORIGIN"),
            "transport": self.sio.transport(sid, namespace),
        }
        with self.cond:
            self.connects.append(record)
            self.cond.notify_all()
        self.sio.emit("welcome", {"namespace": namespace}, to=sid, namespace=namespace)

    def _on_any(self, event: str, namespace: str, sid: str, *args: Any) -> Any:
        self.sio.emit("echo", [event, *args], to=sid, namespace=namespace)
        return {"event": event, "args": list(args)}

    def __enter__(self) -> EchoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def node() -> Iterator[NodeClient]:
    with NodeClient() as client:
        yield client


def test_node_client_polling_upgrade(echo_server: EchoServer, node: NodeClient):
    origin = f"http://127.0.0.1:{echo_server.port}"
    headers = {"Cookie": "sid=sid-alice", "Origin": origin}
    node.connect("c1", f"{origin}/site1", headers=headers)
    node.wait_connected("c1")
    # the CONNECT answer and the upgrade race; an upgrade at all proves polling came first
    assert node.wait_type("c1", "upgrade")["transport"] == "websocket"
    assert node.wait_event("c1", "welcome")["args"] == [{"namespace": "/site1"}]

    connect = echo_server.connects[0]
    assert (connect["namespace"], connect["cookie"], connect["origin"]) == (
        "/site1",
        "sid=sid-alice",
        origin,
    )

    seq = node.emit("c1", "doc_subscribe", "ToDo", "T-1", ack=True)
    assert node.wait_ack(seq)["args"] == [{"event": "doc_subscribe", "args": ["ToDo", "T-1"]}]
    assert node.wait_event("c1", "echo")["args"] == [["doc_subscribe", "ToDo", "T-1"]]

    node.close("c1")
    assert node.wait_type("c1", "disconnect")["reason"] == "io client disconnect"


def test_node_client_websocket_only_headers(echo_server: EchoServer, node: NodeClient):
    origin = f"http://127.0.0.1:{echo_server.port}"
    headers = {"Cookie": "sid=Guest", "Origin": origin}
    node.connect("ws", f"{origin}/site2", transports=["websocket"], headers=headers)
    assert node.wait_connected("ws")["transport"] == "websocket"
    connect = echo_server.connects[0]
    assert connect["transport"] == "websocket"
    assert (connect["cookie"], connect["origin"]) == ("sid=Guest", origin)

    start = node.mark()
    node.emit("ws", "ping")
    assert node.wait_event("ws", "echo", start=start)["args"] == [["ping"]]
    assert [e["event"] for e in node.events("ws", types=["event"])] == ["welcome", "echo"]


def test_node_client_reports_refusal_and_exit(node: NodeClient):
    dead_port = free_port()
    node.connect("dead", f"http://127.0.0.1:{dead_port}/site1")
    assert node.wait_type("dead", "connect_error")["message"]
    with pytest.raises(TimeoutError):
        node.wait_for(lambda e: e.get("type") == "never", timeout=0.2)
    node.stop()
    with pytest.raises(RuntimeError):
        node.emit("dead", "ping")


def test_node_client_drop_reconnects_and_raw_packets(echo_server: EchoServer, node: NodeClient):
    origin = f"http://127.0.0.1:{echo_server.port}"
    node.connect("r", f"{origin}/site1", ["websocket"], {"Origin": origin}, reconnection=True)
    first = node.wait_connected("r")
    start = node.mark()
    node.drop("r")
    assert node.wait_type("r", "disconnect", start=start)["reason"] == "transport close"
    assert node.wait_type("r", "reconnect", start=start)["attempt"] == 1
    again = node.wait_connected("r", start=start)
    assert again["sid"] != first["sid"]

    start = node.mark()
    node.send_raw("r", '2/site1,["raw_event",1]')
    assert node.wait_event("r", "echo", start=start)["args"] == [["raw_event", 1]]
