"""Each attack, tried: who may not connect, what a connected client may not reach, and what
never appears in logs or in the answers a client sees."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests
import socketio

from tests.support.bench import wait_until
from tests.support.hardening.kit import (
    SITE,
    SITE2,
    ProbedGsocket,
    RawWebSocket,
    desk_headers,
    event_frame,
)

NS = f"/{SITE}"
SECRET = "s3cr3t-socket-XYZ"


def publish(redis_client: Any, event: str, message: Any, room: str, site: str = SITE) -> None:
    payload = {"event": event, "message": message, "room": room, "namespace": site}
    redis_client.publish("events", json.dumps(payload))


def refusal(server: ProbedGsocket, namespace: str, headers: dict[str, str]) -> str:
    """Connect with a raw websocket and return the CONNECT_ERROR packet the server sent."""
    client = RawWebSocket(server.url, headers).open()
    try:
        answer = client.connect(namespace)
    finally:
        client.close()
    assert answer.startswith(f"44{namespace},"), answer
    return json.loads(answer.split(",", 1)[1])["message"]


def test_cross_origin_connect_is_refused(probed):
    server = probed()
    headers = desk_headers(Origin="https://evil.example")
    assert refusal(server, NS, headers) == "Invalid origin"
    headers = desk_headers(Origin="http://127.0.0.1.evil.example")
    assert refusal(server, NS, headers) == "Invalid origin"


def test_namespace_of_another_site_is_refused(probed, clients):
    server = probed()
    assert refusal(server, f"/{SITE2}", desk_headers(SITE)) == "Invalid namespace"
    # Nor can an established connection add the other site's namespace.
    client = RawWebSocket(server.url, desk_headers(SITE)).open()
    assert client.connect(NS).startswith(f"40{NS},")
    answer = client.connect(f"/{SITE2}")
    assert answer.startswith(f"44/{SITE2},") and "Invalid namespace" in answer
    client.close()


def test_spoofed_site_header_is_ignored_from_an_untrusted_peer(probed, web):
    # As when gsocket listens beyond loopback: only the configured proxy (not this client,
    # which connects from 127.0.0.1) may name the site with X-Frappe-Site-Name.
    server = probed(conf={"gsocket": {"trusted_proxies": ["10.9.9.9/32"]}})
    spoofed = desk_headers(SITE2)
    assert refusal(server, f"/{SITE2}", spoofed) == "Invalid namespace"
    assert web.calls_to("get_user_info") == []  # refused before any credential was used
    # The same client is served the site its Host/Origin name (127.0.0.1 here).
    answer = RawWebSocket(server.url, spoofed).open().connect("/127.0.0.1")
    assert answer.startswith("40/127.0.0.1,")
    assert web.calls_to("get_user_info")[-1]["headers"]["X-Frappe-Site-Name"] == "127.0.0.1"


def test_site_header_is_believed_from_a_trusted_proxy(probed):
    server = probed(conf={"gsocket": {"trusted_proxies": ["127.0.0.1"]}})
    client = RawWebSocket(server.url, desk_headers(SITE2)).open()
    assert client.connect(f"/{SITE2}").startswith(f"40/{SITE2},")
    client.close()


def answered(url: str, method: str) -> float:
    """Calls of ``method`` to the web process that gsocket has had an answer (or failure) for,
    from its ``/metrics``: the decision on a subscription is taken once the answer is in."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    found = re.findall(
        rf'^gsocket_web_call_duration_seconds_count{{[^}}]*method="{method}"[^}}]*}} (\S+)$',
        text,
        re.M,
    )
    return sum(map(float, found))


def test_guest_cannot_run_a_non_guest_handler_nor_subscribe_unless_the_web_says_so(
    probed, clients, web, redis_client
):
    server = probed()
    guest = clients().connect(server.url, NS, desk_headers(sid="Guest"))
    assert guest.call("echo", "x") is None  # acknowledged, but the handler did not run
    assert guest.call("guest_echo", "x") == "x"
    guest.emit("doc_subscribe", "ToDo", "TD-1")
    guest.emit("doctype_subscribe", "ToDo")
    guest.emit("doc_open", "ToDo", "TD-1")
    # each event runs in its own greenlet: wait until gsocket has the three answers in hand
    wait_until(lambda: answered(server.url, "has_permission") == 3, 10, "no three answers")
    for room in ("doc:ToDo/TD-1", "doctype:ToDo", "open_doc:ToDo/TD-1"):
        publish(redis_client, "secret_update", {"room": room}, room)
    publish(redis_client, "marker", 1, "website")
    guest.wait_for("marker")
    assert guest.events("secret_update") == []
    # as the Node server: the web process decides, with the Guest's own credential
    calls = web.calls_to("has_permission")
    assert len(calls) == 3 and {c["headers"].get("Cookie") for c in calls} == {"sid=Guest"}


def _calls_of(web: Any, sid: str) -> list[dict[str, Any]]:
    return [c for c in web.calls_to("has_permission") if c["headers"].get("Cookie") == f"sid={sid}"]


def test_rooms_need_permission(probed, clients, web, redis_client):
    server = probed()
    web.permissions.add(("Administrator", "ToDo", None))
    admin = clients().connect(server.url, NS, desk_headers(sid="sid-admin"))
    jane = clients().connect(server.url, NS, desk_headers(sid="sid-jane"))
    for client in (admin, jane):
        client.emit("doc_subscribe", "ToDo", "TD-1")
        client.emit("doctype_subscribe", "ToDo")
        client.emit("doc_open", "ToDo", "TD-1")
    # Jane was asked about (and refused) all three; publish until the admin, who was
    # allowed, is in all three rooms.
    web.wait_for_call(lambda c: len(_calls_of(web, "sid-jane")) == 3)
    rooms = ("doc:ToDo/TD-1", "doctype:ToDo", "open_doc:ToDo/TD-1")
    for room in rooms:
        for attempt in range(100):
            publish(redis_client, "secret_update", {"room": room, "n": attempt}, room)
            try:
                admin.wait_for("secret_update", lambda a, r=room: a[0]["room"] == r, 0.1)
                break
            except AssertionError:
                continue
    publish(redis_client, "marker", 1, "all")
    jane.wait_for("marker")
    assert {a[0]["room"] for a in admin.events("secret_update")} == set(rooms)
    assert jane.events("secret_update") == []
    assert jane.events("doc_viewers") == []
    assert server.probe()["sockets"] == 2


def test_a_client_cannot_emit_into_a_room_or_to_another_socket(probed, clients, redis_client):
    server = probed()
    victim = clients().connect(server.url, NS, desk_headers(sid="sid-jane"))
    attacker = RawWebSocket(server.url, desk_headers()).open()
    attacker.connect(NS)
    for frame in (
        event_frame(NS, "list_update", {"doctype": "ToDo"}),
        event_frame(NS, "msgprint", "pwned", "all"),
        event_frame(NS, "emit", {"event": "msgprint", "room": "all", "message": "x"}),
        event_frame(NS, "publish_realtime", "msgprint", "x", "user:jane@example.com"),
        event_frame(NS, victim.sid or "", "x"),
        f'42/{victim.sid},["msgprint","to the victim sid as a namespace"]',
        f'42{NS},["open_in_editor",{{"file":"/etc/passwd"}}]',
    ):
        attacker.send(frame)
    attacker.send(event_frame(NS, "echo", "sync", ack=1))
    attacker.recv_until(lambda f: isinstance(f, str) and f.startswith(f"43{NS},1"), 3)
    publish(redis_client, "marker", 1, "all")
    victim.wait_for("marker")
    assert [e for e, _, _ in victim.received] == ["marker"]
    attacker.close()


def test_credentials_and_secret_never_reach_logs_or_clients(probed, web, clients):
    web.set_secret(SECRET)
    web.tokens["token key1:tok-secret-1"] = "jane@example.com"
    server = probed(log_level="DEBUG")
    answers: list[str] = []

    ok = clients().connect(server.url, NS, desk_headers(sid="sid-admin"))
    ok.emit("doc_subscribe", "ToDo", "TD-1")  # a permission call carrying the cookie
    token = clients(["websocket"]).connect(
        server.url, NS, {**desk_headers(sid=None), "Authorization": "token key1:tok-secret-1"}
    )
    token.emit("doctype_subscribe", "Note")
    web.wait_for_call(lambda c: c["args"].get("doctype") == "Note")
    # An unknown cookie is a Guest (as Frappe answers); broken web processes are refusals.
    guest = clients().connect(server.url, NS, desk_headers(sid="sid-unknown-cookie-value"))
    assert guest.call("guest_echo", 1) == 1
    web.mode = "garbage"
    answers.append(refusal(server, NS, desk_headers(sid="sid-admin")))
    web.mode = "down"
    with pytest.raises(socketio.exceptions.ConnectionError) as refused:
        clients().connect(
            server.url, NS, {**desk_headers(sid=None), "Authorization": "token key1:tok-secret-1"}
        )
    answers.append(str(refused.value))
    web.mode = "ok"
    bad = RawWebSocket(server.url, desk_headers(sid="sid-jane")).open()
    bad.connect(NS)
    bad.send("42" + NS + ',["doc_subscribe","ToDo"')  # a parse error: logged, kicked
    bad.recv_until(lambda f: f == "", 3)
    server.wait_for_log("malformed Socket.IO packet")

    log = server.log()
    for secret in (SECRET, "sid-admin", "sid-jane", "sid-unknown-cookie-value", "tok-secret-1"):
        assert secret not in log, f"{secret!r} in the server log"
        assert not any(secret in a for a in answers), (secret, answers)
    assert answers[0] == "Unauthorized: the web process is unavailable"
    assert "connect site=site1.local user=Administrator" in log  # the log did record them
