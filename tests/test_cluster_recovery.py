"""Socket.IO connection state recovery: desks whose process dies keep their session.

The desks are the genuine socket.io-client 4 (the desk's), with default transports, through
Debian's nginx in front of three processes (``tests/test_cluster_nginx.py``'s cluster) with
``gsocket.recovery_seconds`` on; and a single process killed and started again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gsocket.demo.ports import free_port
from tests.support.bench import GsocketProcess, make_bench, wait_until
from tests.support.node_client import NodeClient
from tests.test_cluster_nginx import SITE, Cluster, running_cluster

USERS = {"sid-admin": "Administrator", "sid-jane": "jane@example.com"}
DOC_ROOM = "doc:ToDo/TD-1"
LIST_ROOM = "doctype:ToDo"
RECONNECT = {"reconnectionAttempts": 30, "reconnectionDelay": 200, "reconnectionDelayMax": 500}


@pytest.fixture
def recovering(tmp_path: Path, redis_server: Any, web: Any) -> Iterator[Cluster]:
    with running_cluster(tmp_path, redis_server, web, recovery_seconds=120) as made:
        yield made


def _publish(redis_client: Any, event: str, message: object, room: str) -> None:
    payload = {"event": event, "message": message, "room": room, "namespace": SITE}
    redis_client.publish("events", json.dumps(payload))


def _open(node: NodeClient, url: str, id: str, user_sid: str, **options: Any) -> dict[str, Any]:
    """Connect a desk (reconnecting, default transports) and return its connect line."""
    node.connect(
        id,
        f"{url}/{SITE}",
        # nginx sets the Origin in the cluster; a desk on the process itself sends its own
        headers={"Cookie": f"sid={user_sid}", "Origin": url},
        reconnection=True,
        options={**RECONNECT, **options},
    )
    return node.wait_connected(id, timeout=10)


def _subscribe(node: NodeClient, id: str) -> None:
    """Join the document's and the list's rooms, as a desk's form and list views do."""
    node.wait_ack(node.emit(id, "doc_subscribe", "ToDo", "TD-1", ack=True), timeout=10)
    node.wait_ack(node.emit(id, "doctype_subscribe", "ToDo", ack=True), timeout=10)


def _numbers(node: NodeClient, id: str, event: str) -> list[int]:
    """The ``n`` of every ``event`` socket ``id`` received, in order of arrival."""
    return [e["args"][0]["n"] for e in node.events(id, ["event"]) if e["event"] == event]


def _wait_number(node: NodeClient, id: str, event: str, n: int) -> None:
    """Wait until socket ``id`` received ``event`` with ``{"n": n}``."""
    node.wait_for(
        lambda e: (
            e.get("id") == id and e.get("event") == event and e.get("args", [None])[0] == {"n": n}
        ),
        timeout=10,
    )


def _connects(node: NodeClient, id: str) -> list[dict[str, Any]]:
    return node.events(id, ["connect"])


def _key(pid: str) -> str:
    return f"gsocket:recovery:session:{hashlib.sha256(pid.encode()).hexdigest()}"


def test_kill_9_desks_come_back_with_their_sid_rooms_and_missed_events(recovering, redis_client):
    cluster = recovering
    with NodeClient() as node:
        desks = {f"desk-{n}": "sid-admin" if n % 2 else "sid-jane" for n in range(9)}
        sids = {}
        for id, user_sid in desks.items():
            line = _open(node, cluster.url, id, user_sid)
            assert line["pid"], line
            sids[id] = line["sid"]
            node.wait_type(id, "upgrade", timeout=10)
            _subscribe(node, id)
        victims = [id for id, sid in sids.items() if sid.startswith("0.")]
        others = [id for id in desks if id not in victims]
        assert victims and others, sids
        for n in range(5):
            _publish(redis_client, "tick", {"n": n}, "website")
        for id in desks:
            _wait_number(node, id, "tick", 4)

        cluster.processes[0].kill()
        for n in range(5, 15):
            _publish(redis_client, "tick", {"n": n}, "website")
        for n in range(5):
            _publish(redis_client, "doc_update", {"n": n}, DOC_ROOM)
            _publish(redis_client, "list_update", {"n": n}, LIST_ROOM)
            _publish(redis_client, "jane_note", {"n": n}, "user:jane@example.com")

        for id in victims:
            wait_until(
                lambda id=id: len(_connects(node, id)) == 2,
                20,
                lambda id=id: f"{id} did not reconnect: {node.events(id)[-5:]}",
            )
            again = _connects(node, id)[1]
            assert again["recovered"] is True, again
            assert again["sid"] == sids[id]
        for n in range(15, 20):
            _publish(redis_client, "tick", {"n": n}, "website")
        for n in range(5, 8):
            _publish(redis_client, "doc_update", {"n": n}, DOC_ROOM)
        _publish(redis_client, "done", None, "website")
        for id in desks:
            node.wait_event(id, "done", timeout=10)
        for id, user_sid in desks.items():
            # every event once, in order: the missed ones first, then the live ones
            assert _numbers(node, id, "tick") == list(range(20)), (id, id in victims)
            assert _numbers(node, id, "doc_update") == list(range(8)), id
            assert _numbers(node, id, "list_update") == list(range(5)), id
            jane = user_sid == "sid-jane"
            assert _numbers(node, id, "jane_note") == (list(range(5)) if jane else []), id
        for id in others:
            assert len(_connects(node, id)) == 1, id

        # A pid is nothing without its credential: Jane presenting Administrator's gets a
        # new session of her own, in none of his rooms; a forged pid gets a new session.
        admin = next(id for id in victims if desks[id] == "sid-admin")
        stolen = node.events(admin, ["connect"])[-1]
        assert stolen["pid"]
        offset = node.events(admin, ["event"])[-1]["args"][-1]
        thief = _open(
            node, cluster.url, "thief", "sid-jane", auth={"pid": stolen["pid"], "offset": offset}
        )
        forged = _open(
            node, cluster.url, "forged", "sid-admin", auth={"pid": "0.abc", "offset": offset}
        )
        for line in (thief, forged):
            assert line["recovered"] is False and line["sid"] not in sids.values(), line
        assert redis_client.exists(_key(stolen["pid"]))
        _publish(redis_client, "doc_update", {"n": 99}, DOC_ROOM)
        _publish(redis_client, "admin_note", {"n": 1}, "user:Administrator")
        _publish(redis_client, "done", None, "website")
        for id in ("thief", "forged"):
            node.wait_event(id, "done", timeout=10)
        node.wait_event(admin, "admin_note", timeout=10)
        assert _numbers(node, "thief", "doc_update") == []
        assert _numbers(node, "thief", "admin_note") == []
        assert _numbers(node, "forged", "doc_update") == []
        assert _numbers(node, admin, "doc_update")[-1] == 99
    assert cluster.statuses()["400"] == 0, cluster.statuses()


@pytest.fixture
def single(tmp_path: Path, redis_server: Any, web: Any) -> Iterator[GsocketProcess]:
    """One gsocket process (no cluster) with a short recovery window."""
    web.sessions.update(USERS)
    web.permissions.update({("Administrator", "ToDo", None), ("jane@example.com", "ToDo", None)})
    port = free_port()
    conf = {
        "redis_queue": redis_server.url,
        "webserver_host": "127.0.0.1",
        "webserver_port": web.port,
        "socketio_port": port,
        "gsocket": {"recovery_seconds": 8},
    }
    bench = make_bench(tmp_path, conf, sites=(SITE,))
    web.installed_apps[SITE] = ["frappe"]
    process = GsocketProcess(bench, port=port).start()
    try:
        yield process
    finally:
        process.kill()


def test_a_restarted_process_recovers_its_desks_and_a_late_one_gets_a_new_session(
    single, redis_client
):
    url = f"http://{SITE}:{single.port}"
    with NodeClient() as node:
        first = _open(node, url, "desk", "sid-admin")
        _subscribe(node, "desk")
        late = _open(node, url, "late", "sid-jane", reconnection=False)
        _subscribe(node, "late")
        _publish(redis_client, "doc_update", {"n": 0}, DOC_ROOM)
        node.wait_event("desk", "doc_update", timeout=10)
        node.wait_event("late", "doc_update", timeout=10)
        late_offset = node.events("late", ["event"])[-1]["args"][-1]

        # The late desk loses its connection and stays away past the window.
        node.drop("late")
        node.wait_type("late", "disconnect", timeout=10)
        wait_until(lambda: not redis_client.exists(_key(late["pid"])), 20, "record kept")

        single.kill()
        single.start()
        _publish(redis_client, "doc_update", {"n": 1}, DOC_ROOM)
        wait_until(lambda: len(_connects(node, "desk")) == 2, 20, lambda: node.events("desk"))
        again = _connects(node, "desk")[1]
        assert again["recovered"] is True and again["sid"] == first["sid"], again
        _publish(redis_client, "doc_update", {"n": 2}, DOC_ROOM)
        _wait_number(node, "desk", "doc_update", 2)
        assert _numbers(node, "desk", "doc_update") == [0, 1, 2]

        # A graceful restart (the drain closes every client): recovered again.
        assert single.stop() == 0
        single.start()
        wait_until(lambda: len(_connects(node, "desk")) == 3, 20, lambda: node.events("desk"))
        third = _connects(node, "desk")[2]
        assert third["recovered"] is True and third["sid"] == first["sid"], third
        _publish(redis_client, "doc_update", {"n": 3}, DOC_ROOM)
        _wait_number(node, "desk", "doc_update", 3)
        assert _numbers(node, "desk", "doc_update") == [0, 1, 2, 3]

        back = _open(
            node, url, "back", "sid-jane", auth={"pid": late["pid"], "offset": late_offset}
        )
        assert back["recovered"] is False and back["sid"] != late["sid"], back
        _publish(redis_client, "doc_update", {"n": 4}, DOC_ROOM)
        _publish(redis_client, "done", None, "website")
        node.wait_event("back", "done", timeout=10)
        assert _numbers(node, "back", "doc_update") == []
