"""Differential check: Frappe's own Node realtime server of each version and gsocket, side by
side on the same bench, given the same client script.

Every logical client has one socket on each server; each step is taken on both, and one
publish (Redis, the bench's Python, a REST save) reaches both.  Each server calls the web
process through its own :class:`WebTap`, so the tests know when each one's permission answers
came back, and the same fault can be put in front of both.  The events each socket receives
(names, arguments, order) and the refusals must be the same; where they differ on purpose the
difference is asserted explicitly:

- a client with only an ``Authorization`` header: Node refuses it (``No cookie
  transmitted.``), gsocket accepts it (the user documentation promises token clients);
- ``Unauthorized: ...``: Node appends a JavaScript error's text, gsocket its own reason;
- Node's ``doc_close`` forgets every form the socket had open (its filter returns nothing), so
  on disconnect the viewers of the other forms are not told; gsocket tells them;
- an empty ``message`` from ``get_user_info``: v15's Node connects a socket of user
  ``undefined`` and develop's Node process dies of it; gsocket refuses it;
- a web process that never answers: Node waits for ever (no timeout), gsocket refuses or
  denies after its ``web_timeout``; both end in "not connected" / "not joined".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.realbench.conftest import Lane
from tests.realbench.kit import (
    Call,
    Conn,
    Fault,
    PyConn,
    WebTap,
    made_for,
    names,
    wait_received,
)
from tests.support.bench import GsocketProcess
from tests.support.realbench import SITE, NodeRealtime, RealBench

SERVERS = ("node", "gsocket")


@pytest.fixture(scope="session")
def node_server(real_bench: RealBench) -> Iterator[NodeRealtime]:
    """Frappe's own Node realtime server of this version, on the same bench."""
    server = real_bench.node_realtime().start()
    yield server
    server.stop()


@pytest.fixture
def taps(real_bench: RealBench) -> Iterator[dict[str, WebTap]]:
    """A tap per server (fresh per test, so faults and records never leak between tests)."""
    made = {server: WebTap(real_bench, SITE) for server in SERVERS}
    yield made
    for tap in made.values():
        tap.close()


class Side:
    """One server of the pair, with its tap and the sockets of the script on it."""

    def __init__(self, name: str, url: str, tap: WebTap, lane: Lane) -> None:
        self.name, self.url, self.tap, self.lane = name, url, tap, lane

    def headers(self, user: str | None, **extra: str) -> dict[str, str]:
        sid = None if user is None else self.lane.sids.get(user, "Guest")
        headers = {"Origin": self.tap.url, "X-Frappe-Site-Name": SITE}
        if sid is not None:
            headers["Cookie"] = f"sid={sid}"
        headers.update(extra)
        return headers


@pytest.fixture
def sides(
    lane: Lane,
    node_server: NodeRealtime,
    real_gsocket: GsocketProcess,
    taps: dict[str, WebTap],
) -> dict[str, Side]:
    urls = {"node": node_server.url, "gsocket": real_gsocket.url}
    return {s: Side(s, urls[s], taps[s], lane) for s in SERVERS}


class Pair:
    """A logical client: one socket on each server."""

    def __init__(self, make: Callable[[], Conn], sides: dict[str, Side], user: str) -> None:
        self.user = user
        self.on = {s: make() for s in SERVERS}
        for s, side in sides.items():
            refusal = self.on[s].connect(side.url, SITE, side.headers(user))
            assert refusal is None, (s, refusal)

    def emit(self, event: str, *args: Any) -> None:
        for conn in self.on.values():
            conn.emit(event, *args)

    def wait(self, event: str, predicate: Callable[[tuple[Any, ...]], bool]) -> None:
        for conn in self.on.values():
            wait_received(conn, event, predicate)

    def transcript(self, server: str) -> list[tuple[str, tuple[Any, ...]]]:
        skip = ("probe", "marker")
        return [(n, a) for n, a in self.on[server].received() if n not in skip]


def denials(tap: WebTap, sid: str, start: int, count: int = 2) -> list[Call]:
    """Wait for ``count`` permission answers (not "no such method") to ``sid``'s socket."""
    methods = ("has_permission", "can_subscribe_doc", "can_subscribe_doctype")
    return tap.wait_matching(
        lambda c: c.method in methods and c.status != 417 and made_for(c, sid), count, start
    )


def permission_method(lane: Lane) -> str:
    return "has_permission" if lane.bench.version == "develop" else "can_subscribe_doctype"


def test_refusals_match_node(sides: dict[str, Side], lane: Lane, conns: Callable[[], Conn]) -> None:
    def refusals(side: Side) -> list[str | None]:
        admin = "Administrator"
        cases = [
            ("test2.localhost", side.headers(admin)),
            (SITE, {**side.headers(admin), "Origin": "http://evil.example"}),
            (SITE, side.headers(None)),
            (SITE, side.headers(None, Cookie="theme=dark")),
            (SITE, side.headers(None, Cookie="theme=dark", Authorization="token no:no")),
            (SITE, side.headers(None, Authorization=lane.token)),
            (SITE, side.headers(None, Cookie="sid=no-such-session")),  # Frappe: Guest
        ]
        return [conns().connect(side.url, site, headers) for site, headers in cases]

    node, ours = refusals(sides["node"]), refusals(sides["gsocket"])
    assert (
        ours[:4]
        == node[:4]
        == [
            "Invalid namespace",
            "Invalid origin",
            "No cookie transmitted.",
            "No authentication method used. Use cookie or authorization header.",
        ]
    )
    assert node[4] is not None and node[4].startswith("Unauthorized: ")
    assert ours[4] is not None and ours[4].startswith("Unauthorized: ")
    assert (node[5], ours[5]) == ("No cookie transmitted.", None)  # token clients: documented
    assert node[6] is ours[6] is None


def test_same_script_same_events(
    sides: dict[str, Side], lane: Lane, conns: Callable[[], Conn]
) -> None:
    publisher = lane.publisher
    desk = Pair(conns, sides, lane.desk)
    admin = Pair(conns, sides, "Administrator")
    plain = Pair(conns, sides, lane.plain)
    web = Pair(conns, sides, lane.web)
    guest = Pair(conns, sides, "Guest")
    everyone = (desk, admin, plain, web, guest)
    other = lane.bench.in_site(
        SITE, 'print(frappe.get_doc({"doctype": "ToDo", "description": "second"}).insert().name)'
    ).split()[-1]

    marks = {s: sides[s].tap.mark() for s in SERVERS}
    desk.emit("doctype_subscribe", "ToDo")
    desk.emit("doc_subscribe", "ToDo", lane.todo)
    desk.emit("doc_subscribe", "ToDo", "")  # v15's Node asks nothing; develop's asks name=""
    desk.emit("task_subscribe", "diff-1")
    desk.emit("progress_subscribe", "diff-2")
    plain.emit("doctype_subscribe", "Role")
    plain.emit("doc_subscribe", "ToDo", lane.todo)
    web.emit("doctype_subscribe", "ToDo")
    guest.emit("doctype_subscribe", "ToDo")
    guest.emit("task_subscribe", "diff-guest")
    for room, pairs in (
        ("doctype:ToDo", (desk, web)),
        (f"doc:ToDo/{lane.todo}", (desk,)),
        ("task_progress:diff-1", (desk,)),
        ("task_progress:diff-2", (desk,)),
    ):
        publisher.wait_in_room(SITE, room, *(p.on[s] for p in pairs for s in SERVERS))
    publisher.wait_in_room(SITE, "task_progress:diff-guest", *guest.on.values())
    develop = lane.bench.version == "develop"
    if develop:
        publisher.wait_in_room(SITE, "doc:ToDo/", *desk.on.values())
    for s in SERVERS:  # plain's two denials have been answered on both sides
        assert [c.status for c in denials(sides[s].tap, lane.sids[lane.plain], marks[s])] == [
            403,
            403,
        ]

    lane.bench.in_site(
        SITE,
        f"""
frappe.publish_realtime("ev_user", {{"n": 1}}, user={lane.desk!r})
frappe.publish_realtime("ev_doc", {{"n": 2}}, doctype="ToDo", docname={lane.todo!r})
frappe.publish_realtime("ev_empty_doc", {{"n": 0}}, room="doc:ToDo/")
frappe.publish_realtime("ev_website", {{"n": 3}}, room="website")
frappe.publish_realtime("ev_all", {{"n": 4}})
frappe.publish_realtime("ev_role", {{"n": 5}}, room="doctype:Role")
frappe.publish_progress(50, title="Diff", description="half", task_id="diff-1")
frappe.publish_realtime("task_progress", {{"progress": 2}}, task_id="diff-2")
frappe.publish_realtime("task_progress", {{"progress": 3}}, task_id="diff-guest")
frappe.publish_realtime("ev_after_commit", {{"n": 6}}, user={lane.desk!r}, after_commit=True)
""",
    )
    desk.wait("ev_after_commit", lambda a: True)
    cookies = {"sid": lane.sids["Administrator"]}
    response = lane.bench.web(
        "PUT", f"/api/resource/ToDo/{lane.todo}", SITE, cookies=cookies, json={"priority": "High"}
    )
    assert response.status_code == 200, response.text[:300]
    desk.wait("doc_update", lambda a: True)
    web.wait("list_update", lambda a: a[0]["name"] == lane.todo)

    desk.emit("ping")
    desk.wait("pong", lambda a: True)
    desk.emit("doc_open", "ToDo", lane.todo)
    desk.emit("doc_open", "ToDo", other)
    publisher.wait_in_room(SITE, f"open_doc:ToDo/{other}", *desk.on.values())
    publisher.wait_in_room(SITE, f"open_doc:ToDo/{lane.todo}", *desk.on.values())
    both = {"doctype": "ToDo", "docname": lane.todo, "users": [lane.desk, "Administrator"]}
    both_other = {**both, "docname": other}
    admin.emit("doc_open", "ToDo", lane.todo)
    admin.wait("doc_viewers", lambda a: a == (both,))
    admin.emit("doc_open", "ToDo", other)
    admin.wait("doc_viewers", lambda a: a == (both_other,))
    desk.wait("doc_viewers", lambda a: a == (both_other,))
    desk.emit("doc_close", "ToDo", lane.todo)
    admin_alone = {"doctype": "ToDo", "docname": lane.todo, "users": ["Administrator"]}
    admin.wait("doc_viewers", lambda a: a == (admin_alone,))
    for pair in everyone:
        publisher.settle(SITE, *((pair.on[s], pair.user) for s in SERVERS))

    for pair in everyone:
        node, ours = pair.transcript("node"), pair.transcript("gsocket")
        assert node == ours, (pair.user, node, ours)
    # a Guest follows a task as under Node (a website visitor's job progress)
    assert guest.transcript("gsocket") == [
        ("ev_website", ({"n": 3},)),
        ("task_progress", ({"progress": 3, "task_id": "diff-guest"},)),
    ]
    # what was compared is the whole contract's traffic, not two empty lists
    assert [n for n, _ in desk.transcript("gsocket")] == [
        "ev_user",
        "ev_doc",
        *(["ev_empty_doc"] if develop else []),
        "ev_website",
        "ev_all",
        "progress",
        "task_progress",
        "ev_after_commit",
        "doc_update",
        "list_update",
        "pong",
        "doc_viewers",
        "doc_viewers",
    ]
    assert plain.transcript("gsocket") == [("ev_website", ({"n": 3},)), ("ev_all", ({"n": 4},))]

    # Node's doc_close forgot the other form too: its viewers hear nothing when desk leaves
    for conn in desk.on.values():
        conn.close()
    admin_other_alone = {**admin_alone, "docname": other}
    wait_received(admin.on["gsocket"], "doc_viewers", lambda a: a == (admin_other_alone,))
    publisher.settle(SITE, *((admin.on[s], "Administrator") for s in SERVERS))
    assert admin.transcript("node")[-1] != ("doc_viewers", (admin_other_alone,))
    assert admin.transcript("gsocket")[-1] == ("doc_viewers", (admin_other_alone,))


FAULTS = {
    "html_502": Fault(502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "json_500": Fault(500, '{"exc_type": "Exception", "exception": "boom"}', "application/json"),
    "json_403": Fault(403, '{"exc_type": "PermissionError"}', "application/json"),
    "json_417": Fault(417, '{"exc_type": "ValidationError"}', "application/json"),
    "html_200": Fault(200, "<html><body>Login</body></html>"),
    "hang": Fault(None, hang=6.0),
}


def test_viewers_are_counted_by_socket_as_node_counts_them(
    sides: dict[str, Side], lane: Lane, conns: Callable[[], Conn]
) -> None:
    """Two tabs of one user on a form: Node tells both tabs that user when the second opens
    it, and tells the tab left nothing when the other closes it (its only socket is of the
    closing user); the distinct users decide neither."""
    publisher = lane.publisher
    todo = lane.bench.in_site(
        SITE, 'print(frappe.get_doc({"doctype": "ToDo", "description": "tabs"}).insert().name)'
    ).split()[-1]
    tab_a = Pair(conns, sides, lane.desk)
    tab_b = Pair(conns, sides, lane.desk)
    admin = Pair(conns, sides, "Administrator")
    tab_a.emit("doc_open", "ToDo", todo)
    publisher.wait_in_room(SITE, f"open_doc:ToDo/{todo}", *tab_a.on.values())
    tab_b.emit("doc_open", "ToDo", todo)
    alone = {"doctype": "ToDo", "docname": todo, "users": [lane.desk]}
    tab_a.wait("doc_viewers", lambda a: a == (alone,))
    tab_b.wait("doc_viewers", lambda a: a == (alone,))
    tab_b.emit("doc_close", "ToDo", todo)
    tab_b.emit("ping")  # answered after the doc_close was handled, on both servers
    tab_b.wait("pong", lambda a: True)
    admin.emit("doc_open", "ToDo", todo)
    both = {**alone, "users": [lane.desk, "Administrator"]}
    tab_a.wait("doc_viewers", lambda a: a == (both,))
    admin.wait("doc_viewers", lambda a: a == (both,))
    tabs = (tab_a, tab_b, admin)
    publisher.settle(SITE, *((pair.on[s], pair.user) for pair in tabs for s in SERVERS))
    for pair in tabs:
        assert pair.transcript("node") == pair.transcript("gsocket"), pair.user
    assert tab_a.transcript("gsocket") == [("doc_viewers", (alone,)), ("doc_viewers", (both,))]


def test_web_faults_end_in_node_decisions(sides: dict[str, Side], lane: Lane) -> None:
    """Each fault of the web process, in front of both servers at once: the same permission
    decision and the same connect decision (python-socketio clients)."""
    method = permission_method(lane)
    subscribed: dict[str, list[Conn]] = {s: [] for s in SERVERS}
    for fault in FAULTS.values():
        marks = {s: sides[s].tap.mark() for s in SERVERS}
        for s, side in sides.items():
            conn = PyConn()
            assert conn.connect(side.url, SITE, side.headers(lane.desk)) is None
            side.tap.faults[method] = fault
            conn.emit("doctype_subscribe", "ToDo")
            subscribed[s].append(conn)
        for s, side in sides.items():
            side.tap.wait_calls(method, start=marks[s])
            side.tap.faults.clear()
    lane.publisher.publish(SITE, "doctype:ToDo", "after_faults", {})
    lane.publisher.settle(SITE, *((c, lane.desk) for s in SERVERS for c in subscribed[s]))
    joined = {
        s: [
            name
            for name, c in zip(FAULTS, subscribed[s], strict=True)
            if "after_faults" in names(c)
        ]
        for s in SERVERS
    }
    expected = ["html_200"] if lane.bench.version == "v15" else []  # v15's Node: 200 is a yes
    assert joined == {"node": expected, "gsocket": expected}
    for conns in subscribed.values():
        for conn in conns:
            conn.close()

    def refusal(side: Side) -> str | None:
        conn = PyConn()
        try:
            return conn.connect(side.url, SITE, side.headers(lane.desk))
        finally:
            conn.close()

    with ThreadPoolExecutor(len(SERVERS)) as pool:
        for name, fault in FAULTS.items():
            for side in sides.values():
                side.tap.faults["get_user_info"] = fault
            answers = dict(zip(SERVERS, pool.map(refusal, sides.values()), strict=True))
            for side in sides.values():
                side.tap.faults.clear()
            assert all(
                a is not None and a.startswith("Unauthorized: ") for a in answers.values()
            ), (
                name,
                answers,
            )


def test_empty_user_info_is_refused_where_node_takes_it(
    real_bench: RealBench, lane: Lane, real_gsocket: GsocketProcess, taps: dict[str, WebTap]
) -> None:
    """``{"message": {}}`` from ``get_user_info``: v15's Node connects a socket of user
    ``undefined``, develop's Node dies of it (``installed_apps`` undefined); gsocket refuses.
    A Node server of its own, so the others of the session live on."""
    node = real_bench.node_realtime().start()
    try:
        empty = Fault(200, '{"message": {}}', "application/json")
        answers = {}
        for name, url in (("node", node.url), ("gsocket", real_gsocket.url)):
            side = Side(name, url, taps[name], lane)
            side.tap.faults["get_user_info"] = empty
            conn = PyConn()
            answers[name] = conn.connect(url, SITE, side.headers(lane.desk))
            if answers[name] is None and real_bench.version == "develop":
                assert node.child is not None and node.child.proc.wait(10) != 0
            conn.close()
        assert answers["node"] is None
        assert (answers["gsocket"] or "").startswith("Unauthorized: ")
    finally:
        node.stop()
