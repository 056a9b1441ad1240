"""Placing a dead process's offsets in a live process's log (:mod:`gsocket.cluster.recovery`).

Two processes' logs are the same published sequence numbered from different starts; these
feed two :class:`EventLog` the same events (repeated identical ones included) on the real
Redis and check which events a recovering client gets.
"""

from __future__ import annotations

import json
from typing import Any

from gsocket.cluster.recovery import PIPELINE, Claim, EventLog, Recovery


def _body(event: str, n: int | None = None) -> str:
    return json.dumps([event] if n is None else [event, {"n": n}], separators=(",", ":"))


def _recovery(client: Any, node: str) -> Recovery:
    return Recovery(client, node, "gsocket:recovery:", 60, 1000, 1000, lambda ns, sid: [])


def _missed(recovery: Recovery, node: str, seq: int, rooms: list[str]) -> list[Any]:
    placed = recovery.log.place(node, seq)
    assert placed is not None
    position, first = placed
    claim = Claim("sid", "pid", rooms, node, seq, first, position)
    packets = recovery.missed(claim, "/site1")
    assert packets is not None
    return [json.loads(p)[:-1] for p in packets]


def test_a_dead_process_offset_is_placed_by_its_log_tail_despite_repeated_events(redis_client):
    dead = _recovery(redis_client, "0.dead")
    live = _recovery(redis_client, "1.live")
    live.log.append("site1", "website", _body("before"))  # only the live one saw this
    live.log.keep_alive()
    dead.log.keep_alive()
    sequence = [("doctype:ToDo", _body("list_update")) for _ in range(5)]
    sequence += [("website", _body("tick", n)) for n in range(3)]
    for room, body in sequence:
        dead.log.append("site1", room, body)
        live.log.append("site1", room, body)
    dead.log.flush()
    # The dead process numbered two more events before it died, never written to Redis.
    for room, body in [("website", _body("tick", 3)), ("doctype:ToDo", _body("list_update"))]:
        dead.log.append("site1", room, body)
        live.log.append("site1", room, body)
    # Published after it died: only the live process has them.
    for room, body in [("website", _body("tick", 4)), ("user:x", _body("note", 1))]:
        live.log.append("site1", room, body)

    # The client had seen the dead process's 4th event (a list_update of five the same).
    assert _missed(live, "0.dead", 4, ["doctype:ToDo", "website"]) == [
        ["list_update"],
        ["tick", {"n": 0}],
        ["tick", {"n": 1}],
        ["tick", {"n": 2}],
        ["tick", {"n": 3}],
        ["list_update"],
        ["tick", {"n": 4}],
    ]
    # It had seen the unwritten tick 3: counted on from the written tail.
    assert _missed(live, "0.dead", 9, ["user:x", "website"]) == [
        ["tick", {"n": 4}],
        ["note", {"n": 1}],
    ]
    # Only the rooms the session had.
    assert _missed(live, "0.dead", 10, ["website"]) == [["tick", {"n": 4}]]


def test_a_process_started_after_the_dead_one_sends_its_unsent_events_then_its_own(
    redis_client,
):
    old = _recovery(redis_client, "0.old")
    old.log.keep_alive()
    for n in range(PIPELINE + 5):  # two stream entries
        old.log.append("site1", "website", _body("tick", n))
    old.log.flush()
    new = _recovery(redis_client, "0.new")
    new.log.started = old.log.ring[-1].at + 1
    new.log.append("site1", "website", _body("tick", 1000))
    got = _missed(new, "0.old", PIPELINE + 2, ["website"])
    assert got == [["tick", {"n": PIPELINE + 2}], ["tick", {"n": PIPELINE + 3}]] + [
        ["tick", {"n": PIPELINE + 4}],
        ["tick", {"n": 1000}],
    ]


def test_an_offset_whose_log_is_gone_is_not_placed(redis_client):
    live = _recovery(redis_client, "1.live")
    live.log.append("site1", "website", _body("tick", 0))
    assert live.log.place("0.gone", 3) is None


def test_events_dropped_from_memory_are_not_replayed_as_if_complete(redis_client):
    log = EventLog(redis_client, "1.small", "gsocket:recovery:", 60, 3)
    for n in range(6):
        log.append("site1", "website", _body("tick", n))
    assert log.since(1) is None
    assert [e.seq for e in log.since(3) or []] == [4, 5, 6]


def test_an_offset_of_an_earlier_process_falls_back_to_the_sessions_own_start(redis_client):
    live = Recovery(
        redis_client, "1.live", "gsocket:recovery:", 60, 1000, 1000, lambda ns, sid: ["website"]
    )
    live.log.append("site1", "website", _body("tick", 0))
    pid = live.connected("/site1", "0.old.sid", "jane", "cred", pid="p1")
    assert pid == "p1"
    live.log.append("site1", "website", _body("tick", 1))
    live.flush()
    live.disconnected("0.old.sid", recoverable=True)
    live.flush()
    # The client still holds the offset of a process whose log is gone: it got nothing since.
    claim = live.claim("p1", "0.gone:7", "/site1", "jane", "cred")
    assert claim is not None and claim.sid == "0.old.sid" and claim.rooms == ["website"]
    assert [json.loads(p)[:-1] for p in live.missed(claim, "/site1") or []] == [["tick", {"n": 1}]]
    # Taken once; and a string that is no offset at all gives a new session.
    assert live.claim("p1", "0.gone:7", "/site1", "jane", "cred") is None
    live.connected("/site1", "0.old.sid", "jane", "cred", pid="p2")
    live.flush()
    assert live.claim("p2", "hello", "/site1", "jane", "cred") is None
    assert live.claim("p2", None, "/site1", "jane", "other cred") is None
    assert live.claim("p2", None, "/site1", "jane", "cred") is not None
