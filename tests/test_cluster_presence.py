"""The cluster's presence index against a real Redis: what a process records of its own rooms
stays as large as the rooms it holds now, not every room it ever held."""

from __future__ import annotations

import json
from typing import Any

from gsocket.cluster.presence import Presence

NS = "/site1.local"


def presence(client: Any) -> Presence:
    return Presence(client, "0.boot", "t:presence:", 15.0, lambda node, sids: None, lambda: ())


def index(client: Any) -> set[str]:
    return {m.decode() for m in client.smembers("t:presence:keys:0.boot")}


def test_a_room_left_by_its_last_local_socket_leaves_the_index(redis_client: Any) -> None:
    p = presence(redis_client)
    for task in range(50):
        room = f"task_progress:{task}"
        p.joined(NS, "s1", room)
        p.joined(NS, "s2", room)
        p.left(NS, "s1", room)
        p.left(NS, "s2", room, emptied=True)
    p.joined(NS, "s1", "doc:ToDo/A")
    p.flush()
    kept = json.dumps([NS, "doc:ToDo/A"])
    assert index(redis_client) == {kept}
    assert p._indexed == {kept}
    assert redis_client.hgetall("t:presence:room:/site1.local:task_progress:3") == {}


def test_a_room_emptied_and_joined_again_in_one_batch_stays_indexed(redis_client: Any) -> None:
    p = presence(redis_client)
    p.joined(NS, "s1", "doc:ToDo/A")
    p.flush()
    p.left(NS, "s1", "doc:ToDo/A", emptied=True)
    p.joined(NS, "s2", "doc:ToDo/A")
    p.flush()
    kept = json.dumps([NS, "doc:ToDo/A"])
    assert index(redis_client) == {kept} and p._indexed == {kept}
    assert redis_client.hgetall("t:presence:room:/site1.local:doc:ToDo/A") == {b"s2": b"0.boot"}
