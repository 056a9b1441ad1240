"""The whole contract, against the real web process of each Frappe version, with the npm
socket.io-client@4 and python-socketio clients (every test runs with both: ``conns``).

Clients take the site's :class:`~tests.realbench.kit.WebTap` as their Origin, so gsocket calls
the real web process through it and the tests can wait until a permission answer was given.
A check that something did *not* arrive publishes a marker last and waits for it: one Redis
channel and one socket keep their order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.realbench.conftest import Lane
from tests.realbench.kit import Call, Conn, made_for, names, wait_received
from tests.support.bench import GsocketProcess
from tests.support.realbench import SITE, SITE2

Conns = Callable[[], Conn]


def connected(conns: Conns, gsocket: GsocketProcess, headers: dict[str, str]) -> Conn:
    """A socket connected with ``headers`` to ``X-Frappe-Site-Name``'s namespace."""
    conn = conns()
    refusal = conn.connect(gsocket.url, headers["X-Frappe-Site-Name"], headers)
    assert refusal is None, refusal
    return conn


def permission_calls(lane: Lane, user: str, start: int, count: int) -> list[Call]:
    """Wait for ``count`` permission answers to ``user``'s socket since tap index ``start``."""
    sid = lane.sids.get(user, "Guest")
    method = "has_permission" if lane.bench.version == "develop" else "can_subscribe"
    return lane.taps[SITE].wait_matching(
        lambda c: c.method.startswith(method) and made_for(c, sid), count, start
    )


def test_refusals_carry_node_words(lane: Lane, real_gsocket: GsocketProcess, conns: Conns) -> None:
    admin = lane.sids["Administrator"]
    cases: list[tuple[str, dict[str, str], str]] = [
        (SITE2, lane.headers(SITE, admin), "Invalid namespace"),
        (SITE, {**lane.headers(SITE, admin), "Origin": "http://evil.example"}, "Invalid origin"),
        (SITE, lane.headers(SITE), "No cookie transmitted."),
        (
            SITE,
            lane.headers(SITE, Cookie="theme=dark"),
            "No authentication method used. Use cookie or authorization header.",
        ),
    ]
    for site, headers, message in cases:
        assert conns().connect(real_gsocket.url, site, headers) == message
    bad_token = lane.headers(SITE, Cookie="theme=dark", Authorization="token nokey:nosecret")
    refusal = conns().connect(real_gsocket.url, SITE, bad_token)
    assert refusal is not None and refusal.startswith("Unauthorized: "), refusal


def test_token_client_without_cookie_is_accepted(
    lane: Lane, real_gsocket: GsocketProcess, conns: Conns
) -> None:
    """The seed documents token clients; v15's Node refuses them (``No cookie transmitted.``)."""
    conn = connected(conns, real_gsocket, lane.headers(SITE, Authorization=lane.token))
    lane.publisher.settle(SITE, (conn, lane.desk))  # it is in the token owner's room
    asked = [c for c in lane.taps[SITE].calls if c.authorization == lane.token]
    assert asked and asked[-1].method == "get_user_info" and asked[-1].cookie is None


def test_default_rooms_and_ping(lane: Lane, real_gsocket: GsocketProcess, conns: Conns) -> None:
    users = [lane.desk, lane.web, "Guest"]
    sockets = {u: connected(conns, real_gsocket, lane.user_headers(u)) for u in users}
    publish = lane.publisher.publish
    publish(SITE, "all", "to_all", {"n": 1})
    publish(SITE, "website", "to_website", {"n": 2})
    for user in users:
        publish(SITE, f"user:{user}", "to_user", {"user": user})
        sockets[user].emit("ping")
    lane.publisher.settle(SITE, *((sockets[u], u) for u in users))
    for user in users:
        wait_received(sockets[user], "pong")
    got = {u: [n for n in names(sockets[u]) if n != "pong"] for u in users}
    assert got[lane.desk] == ["to_all", "to_website", "to_user"]
    assert got[lane.web] == ["to_website", "to_user"]
    assert got["Guest"] == ["to_website", "to_user"]
    assert all(dict(sockets[u].received())["to_user"] == ({"user": u},) for u in users)


def rest(lane: Lane, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """A REST call of Administrator's desk session to the real web process."""
    cookies = {"sid": lane.sids["Administrator"]}
    response = lane.bench.web(method, path, SITE, cookies=cookies, **kwargs)
    assert response.status_code == 200, response.text[:500]
    return response.json()["data"]


def test_saves_reach_doctype_and_doc_rooms(
    lane: Lane, real_gsocket: GsocketProcess, conns: Conns
) -> None:
    desk = connected(conns, real_gsocket, lane.user_headers(lane.desk))
    desk.emit("doctype_subscribe", "ToDo")
    lane.publisher.wait_in_room(SITE, "doctype:ToDo", desk)

    doc = rest(lane, "POST", "/api/resource/ToDo", json={"description": "lane insert"})
    wait_received(desk, "list_update", lambda a: a[0].get("name") == doc["name"])

    desk.emit("doc_subscribe", "ToDo", doc["name"])
    lane.publisher.wait_in_room(SITE, f"doc:ToDo/{doc['name']}", desk)
    rest(lane, "PUT", f"/api/resource/ToDo/{doc['name']}", json={"description": "lane save"})
    update = wait_received(desk, "doc_update", lambda a: a[0].get("name") == doc["name"])
    assert update[0]["doctype"] == "ToDo"

    def updates() -> int:
        return sum(1 for n, a in desk.received() if n == "list_update" and a[0] == doc_ref)

    doc_ref = {"doctype": "ToDo", "name": doc["name"], "user": "Administrator"}
    wait_received(desk, "list_update", lambda a: updates() == 2)

    desk.emit("doc_unsubscribe", "ToDo", doc["name"])
    desk.emit("doctype_unsubscribe", "ToDo")
    desk.emit("task_subscribe", "after-unsubscribe")  # handled after both: no web call
    lane.publisher.wait_in_room(SITE, "task_progress:after-unsubscribe", desk)
    before = len(desk.received())
    rest(lane, "PUT", f"/api/resource/ToDo/{doc['name']}", json={"description": "unheard"})
    lane.publisher.settle(SITE, (desk, lane.desk))  # published after the save's events
    assert names(desk)[before:] == [], desk.received()[before:]


def test_open_in_editor_only_in_developer_mode(
    lane: Lane,
    real_gsocket: GsocketProcess,
    bench_gsocket: Callable[..., GsocketProcess],
    conns: Conns,
) -> None:
    """``open_in_editor`` reaches the bench's Redis channel in developer mode only (Node's
    server forwards it always)."""
    listener = lane.publisher.redis.pubsub()
    listener.subscribe("open_in_editor")
    assert listener.get_message(timeout=5)["type"] == "subscribe"
    with lane.bench.common_site_config_changed(developer_mode=1):
        developer = bench_gsocket()
    for server, expected in ((real_gsocket, None), (developer, {"file": "x.js", "line": 3})):
        conn = connected(conns, server, lane.user_headers(lane.desk))
        conn.emit("open_in_editor", {"file": "x.js", "line": 3})
        conn.emit("ping")  # handled after it
        wait_received(conn, "pong")
        lane.publisher.redis.publish("open_in_editor", json.dumps(None))  # the end marker
        message = listener.get_message(timeout=10)
        while message is not None and message["type"] != "message":
            message = listener.get_message(timeout=10)
        assert message is not None and json.loads(message["data"]) == expected
    listener.close()


def test_denied_subscriptions_do_not_join(
    lane: Lane, real_gsocket: GsocketProcess, conns: Conns
) -> None:
    """A 403 from the real web process (doctype and document) leaves the socket out, and a
    document that does not exist (develop answers 404) is a no for that one check only: the
    next check of the site still asks ``has_permission``."""
    start = lane.taps[SITE].mark()
    plain = connected(conns, real_gsocket, lane.user_headers(lane.plain))
    plain.emit("doctype_subscribe", "Role")
    plain.emit("doc_subscribe", "ToDo", lane.todo)
    plain.emit("doc_open", "ToDo", lane.todo)
    answers = permission_calls(lane, lane.plain, start, 3)
    assert [c.status for c in answers] == [403, 403, 403], answers
    plain.emit("doc_subscribe", "ToDo", "no-such-todo")
    missing = permission_calls(lane, lane.plain, start, 4)[-1]
    assert missing.status == 404, missing
    plain.emit("doctype_subscribe", "ToDo")  # allowed: the control
    lane.publisher.wait_in_room(SITE, "doctype:ToDo", plain)
    rooms = ("doctype:Role", f"doc:ToDo/{lane.todo}", f"open_doc:ToDo/{lane.todo}")
    for room in (*rooms, "doc:ToDo/no-such-todo"):
        lane.publisher.publish(SITE, room, "leak", {"room": room})
    lane.publisher.settle(SITE, (plain, lane.plain))
    assert "leak" not in names(plain)
    if lane.bench.version == "develop":  # no check of the site went to v15's endpoints
        asked = [c.method for c in lane.taps[SITE].calls[start:]]
        assert not [m for m in asked if m.startswith("can_subscribe")], asked


def test_guest_and_website_user_limits(
    lane: Lane, real_gsocket: GsocketProcess, conns: Conns
) -> None:
    """A Guest follows tasks and, as under Node, gets doctype and document rooms only where the
    web process allows them (it refuses a Guest here); a Website User gets what Frappe allows."""
    start = lane.taps[SITE].mark()
    guest = connected(conns, real_gsocket, lane.user_headers("Guest"))
    web = connected(conns, real_gsocket, lane.user_headers(lane.web))
    for conn in (guest, web):
        conn.emit("doctype_subscribe", "Role")
        conn.emit("doc_subscribe", "ToDo", lane.todo)
        conn.emit("task_subscribe", "guest-task")
    guest.emit("doctype_subscribe", "ToDo")
    web.emit("doctype_subscribe", "ToDo")
    assert [c.status for c in permission_calls(lane, lane.web, start, 3)].count(403) == 2
    guest_answers = [c.status for c in permission_calls(lane, "Guest", start, 3)]
    assert guest_answers == [403, 403, 403], guest_answers
    lane.publisher.wait_in_room(SITE, "doctype:ToDo", web)
    lane.publisher.wait_in_room(SITE, "task_progress:guest-task", web, guest)
    rooms = (
        "doctype:Role",
        f"doc:ToDo/{lane.todo}",
        "doctype:ToDo",
        "all",
        "task_progress:guest-task",
    )
    for room in rooms:
        lane.publisher.publish(SITE, room, "leak", {"room": room})
    lane.publisher.settle(SITE, (guest, "Guest"), (web, lane.web))
    assert [a[0]["room"] for n, a in guest.received() if n == "leak"] == [
        "task_progress:guest-task"
    ]
    assert [a[0]["room"] for n, a in web.received() if n == "leak"] == [
        "doctype:ToDo",
        "task_progress:guest-task",
    ]


def test_doc_viewers_with_two_users(lane: Lane, real_gsocket: GsocketProcess, conns: Conns) -> None:
    name = lane.todo
    desk = connected(conns, real_gsocket, lane.user_headers(lane.desk))
    admin = connected(conns, real_gsocket, lane.user_headers("Administrator"))
    room = f"open_doc:ToDo/{name}"
    desk.emit("doc_open", "ToDo", name)
    lane.publisher.wait_in_room(SITE, room, desk)
    admin.emit("doc_open", "ToDo", name)
    both = {"doctype": "ToDo", "docname": name, "users": [lane.desk, "Administrator"]}
    for conn in (desk, admin):
        wait_received(conn, "doc_viewers", lambda a: a == (both,))
    admin.emit("doc_close", "ToDo", name)
    alone = {"doctype": "ToDo", "docname": name, "users": [lane.desk]}
    wait_received(desk, "doc_viewers", lambda a: a == (alone,))
    admin.emit("doc_open", "ToDo", name)
    wait_received(
        desk, "doc_viewers", lambda a: a == (both,) and names(desk).count("doc_viewers") == 3
    )
    admin.close()
    wait_received(desk, "doc_viewers", lambda a: names(desk).count("doc_viewers") == 4)
    assert desk.received()[-1] == ("doc_viewers", (alone,))


def test_task_progress_from_the_bench(
    lane: Lane, real_gsocket: GsocketProcess, conns: Conns
) -> None:
    conn = connected(conns, real_gsocket, lane.user_headers(lane.desk))
    conn.emit("task_subscribe", "lane-task-1")
    conn.emit("progress_subscribe", "lane-task-2")
    conn.emit("task_subscribe", "lane-task-3")
    lane.publisher.wait_in_room(SITE, "task_progress:lane-task-1", conn)
    lane.publisher.wait_in_room(SITE, "task_progress:lane-task-2", conn)
    lane.publisher.wait_in_room(SITE, "task_progress:lane-task-3", conn)
    conn.emit("task_unsubscribe", "lane-task-3")
    conn.emit("task_subscribe", "lane-task-4")  # handled after the unsubscribe
    lane.publisher.wait_in_room(SITE, "task_progress:lane-task-4", conn)
    lane.bench.in_site(
        SITE,
        """
frappe.publish_progress(40, title="Lane", description="one", task_id="lane-task-1")
frappe.publish_progress(80, title="Lane", description="two", task_id="lane-task-2")
frappe.publish_realtime("task_progress", {"progress": 3}, task_id="lane-task-3")
frappe.publish_realtime("marker", {"n": "task"}, user="rt-desk@example.com")
""",
    )
    wait_received(conn, "marker", lambda a: a == ({"n": "task"},))
    progress = [a[0] for n, a in conn.received() if n == "progress"]
    assert progress == [
        {"percent": 40, "title": "Lane", "description": "one", "task_id": "lane-task-1"},
        {"percent": 80, "title": "Lane", "description": "two", "task_id": "lane-task-2"},
    ]
    assert "task_progress" not in names(conn)


def test_publish_realtime_from_the_bench_on_both_sites(
    lane: Lane, real_gsocket: GsocketProcess, conns: Conns
) -> None:
    desk = connected(conns, real_gsocket, lane.user_headers(lane.desk))
    other = connected(conns, real_gsocket, lane.headers(SITE2, lane.admin2))
    desk.emit("doctype_subscribe", "ToDo")
    desk.emit("doc_subscribe", "ToDo", lane.todo)
    other.emit("doctype_subscribe", "ToDo")
    lane.publisher.wait_in_room(SITE, "doctype:ToDo", desk)
    lane.publisher.wait_in_room(SITE, f"doc:ToDo/{lane.todo}", desk)
    lane.publisher.wait_in_room(SITE2, "doctype:ToDo", other)
    lane.bench.in_site(
        SITE,
        f"""
frappe.publish_realtime("ev_user", {{"n": 1}}, user={lane.desk!r})
frappe.publish_realtime("ev_doc", {{"n": 2}}, doctype="ToDo", docname={lane.todo!r})
frappe.publish_realtime("ev_room", {{"n": 3}}, room="website")
frappe.publish_realtime("list_update", {{"doctype": "ToDo", "name": "lane-x"}})
frappe.publish_realtime("ev_all", {{"n": 5}})
frappe.publish_realtime("ev_rolled_back", {{"n": 6}}, user={lane.desk!r}, after_commit=True)
frappe.db.rollback()
frappe.publish_realtime("ev_after_commit", {{"n": 7}}, user={lane.desk!r}, after_commit=True)
frappe.publish_realtime("ev_before_commit", {{"n": 8}}, user={lane.desk!r})
""",
    )
    wait_received(desk, "ev_after_commit")
    assert [(n, a) for n, a in desk.received() if n.startswith("ev_") or n == "list_update"] == [
        ("ev_user", ({"n": 1},)),
        ("ev_doc", ({"n": 2},)),
        ("ev_room", ({"n": 3},)),
        ("list_update", ({"doctype": "ToDo", "name": "lane-x"},)),
        ("ev_all", ({"n": 5},)),
        ("ev_before_commit", ({"n": 8},)),
        ("ev_after_commit", ({"n": 7},)),
    ]
    lane.bench.in_site(SITE2, 'frappe.publish_realtime("ev_site2", {"n": 9}, room="all")')
    wait_received(other, "ev_site2")
    lane.publisher.settle(SITE, (desk, lane.desk))
    assert "ev_site2" not in names(desk)
    assert [n for n in names(other) if n.startswith("ev_") or n == "list_update"] == ["ev_site2"]
