"""The bridge's lone-event path: the event's JSON spliced from the published text, and the
RESP reader that waits for its socket before each ``recv``.

A spliced body may differ from the decoded-and-encoded one in spelling (indentation, escapes,
``1.0``), never in what a client's ``JSON.parse`` makes of it: every test compares the values
the two frames decode to, against the path the bridge took before (:func:`parse_message` and
the manager's encoder)."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import gevent
import gevent.server
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gsocket.contract.bridge import BadMessage, Bridge, parse_message, splice_message
from gsocket.metrics import Metrics
from gsocket.protocol import resp
from gsocket.protocol.codec import TEXT, encode_acyclic, frame
from tests.conftest import SITE


def frappe_text(payload: dict[str, Any], ensure_ascii: bool = True) -> str:
    """What ``frappe.realtime.emit_via_redis`` publishes (``frappe.as_json``, v15 and develop)."""
    return json.dumps(
        payload, indent=1, sort_keys=True, separators=(",", ": "), ensure_ascii=ensure_ascii
    )


def compact_text(payload: dict[str, Any]) -> str:
    """The benchmark publisher's layout: compact, ``room`` before ``namespace``."""
    return (
        '{"event":' + json.dumps(payload["event"]) + ',"message":'
        + json.dumps(payload["message"], separators=(",", ":"))
        + ',"room":' + json.dumps(payload["room"])
        + ',"namespace":' + json.dumps(payload["namespace"]) + "}"
    )  # fmt: skip


LAYOUTS = {
    "frappe": frappe_text,
    "frappe-utf8": lambda p: frappe_text(p, ensure_ascii=False),
    "compact": compact_text,
    "dumps": json.dumps,  # json.dumps' own separators, the keys in the order given
}


def encoded_path(text: str) -> tuple[Any, str | None, str | None]:
    """What the bridge sent before splicing: the decoded event re-encoded by the manager."""
    event, message, room, namespace = parse_message(text)
    body = encode_acyclic([event] if message is None else [event, message])
    return json.loads(body), room, namespace


def spliced_path(text: str) -> tuple[Any, str | None, str | None] | None:
    spliced = splice_message(text)
    if spliced is None:
        return None
    body, room, namespace = spliced
    return json.loads(body), room, namespace


def same_values(a: Any, b: Any) -> bool:
    """Equal as a browser would see them (``-0`` and ``0`` alike, no NaN on either side)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=json_values,
    event=st.from_regex(r"[a-z_]{1,12}", fullmatch=True) | st.text(max_size=12),
    room=st.none() | st.text(max_size=12),
    namespace=st.none() | st.text(max_size=12),
    layout=st.sampled_from(sorted(LAYOUTS)),
)
def test_a_spliced_event_reads_as_the_encoded_one(message, event, room, namespace, layout):
    """Unicode, escapes, nesting, big integers, floats, empty and reserved names, rooms
    without a namespace: whatever the fast path takes, it sends what the slow path sent, and
    what the slow path refuses, the fast path leaves to it."""
    text = LAYOUTS[layout](
        {"event": event, "message": message, "room": room, "namespace": namespace}
    )
    try:
        expected = encoded_path(text)
    except BadMessage:
        assert splice_message(text) is None
        return
    got = spliced_path(text)
    if re.fullmatch("[a-z_]+", event):  # the usual event names are always spliced
        assert got is not None, text
    if got is not None:
        assert got[1:] == expected[1:]
        assert same_values(got[0], expected[0]), (got, expected)


DEEP = "[" * 100_000 + "]" * 100_000
"""Nesting past the recursion limit."""


@pytest.mark.parametrize(
    "text",
    [
        '{"event": "e", "message": NaN, "room": "r", "namespace": "s"}',
        '{"event": "e", "message": [1, -Infinity], "room": "r", "namespace": "s"}',
        '{"event": "e", "message": {"a": "\x01"}, "room": "r", "namespace": "s"}',
        '{"event": "e", "message": [1,], "room": "r", "namespace": "s"}',
        '{"event": "e", "message": 01, "room": "r", "namespace": "s"}',
        '{"event": "connect", "message": 1, "room": "r", "namespace": "s"}',
        '{"event": "", "message": 1, "room": "r", "namespace": "s"}',
        '{"event": "e", "message": 1, "room": "r", "namespace": ""}',
        '{"event": "e", "message": 1, "room": 5, "namespace": "s"}',
        '{"event": "e", "message": ' + DEEP + ', "room": "r", "namespace": "s"}',
    ],
)  # fmt: skip
def test_what_parse_message_refuses_is_never_spliced(text):
    with pytest.raises(BadMessage):
        parse_message(text)
    assert splice_message(text) is None


def test_numbers_that_overflow_a_float_go_out_as_null():
    """``1e400`` is valid JSON that Python reads as inf and a browser as Infinity: spliced
    as text it would not become null as Node's JSON.stringify makes it."""
    text = '{"event": "e", "message": [1e400, -1E999, 2.5], "room": "r", "namespace": "s"}'
    assert splice_message(text) is None
    assert encoded_path(text)[0] == ["e", [None, None, 2.5]]


@pytest.mark.parametrize(
    "text",
    [
        # a key twice: the decoder keeps the last one, the text has both
        '{"event": "e", "message": 1, "message": 2, "room": "r", "namespace": "s"}',
        '{"event": "e", "message": 1, "room": "r", "namespace": "s", "event": "f"}',
        # other keys, other orders, escaped key names, no message
        '{"event": "e", "message": 1, "room": "r", "namespace": "s", "x": 1}',
        '{"message": 1, "event": "e", "room": "r", "namespace": "s"}',
        '{"ev\\u0065nt": "e", "message": 1, "room": "r", "namespace": "s"}',
        '{"event": "e", "room": "r", "namespace": "s"}',
    ],
)
def test_unusual_layouts_take_the_decoding_path_and_arrive_as_before(text):
    assert splice_message(text) is None
    parse_message(text)  # accepted as before


def test_a_room_given_twice_is_the_last_one_either_way():
    """As JSON.parse and Python's decoder do, and as the bridge did before splicing."""
    text = '{"event": "e", "message": 1, "room": "r", "room": "q", "namespace": "s"}'
    assert spliced_path(text) == encoded_path(text) == (["e", 1], "q", "s")


def test_frappes_own_text_is_spliced_with_its_indentation():
    message = {"doctype": "ToDo", "name": "TD-0001", "modified": "2026-12-03 12:00:00.1", "n": 1.0}
    text = frappe_text(
        {"event": "list_update", "message": message, "room": "doctype:ToDo", "namespace": SITE}
    )
    body, room, namespace = splice_message(text)  # type: ignore[misc]
    assert (room, namespace) == ("doctype:ToDo", SITE)
    assert body.startswith('["list_update",{\n  "doctype": "ToDo",')
    assert json.loads(body) == ["list_update", message]
    null = frappe_text({"event": "refetch", "message": None, "room": None, "namespace": SITE})
    assert splice_message(null) == ('["refetch"]', None, SITE)


def test_escapes_and_surrogates_pass_through_as_the_same_strings():
    text = (
        '{"event": "e", "message": {"k\\/": "\\ud83d\\ude00 \\u2028 \\\\ \\n",'
        ' "\\u00e9": "\u00e9"}, "room": "user:\\u00e9@example.com", "namespace": "s\\u00e9"}'
    )
    body, room, namespace = splice_message(text)  # type: ignore[misc]
    assert json.loads(body) == ["e", {"k/": "😀 \u2028 \\ \n", "é": "é"}]
    assert (room, namespace) == ("user:é@example.com", "sé")
    escaped_event = '{"event": "a\\"b", "message": 1, "room": "r", "namespace": "s"}'
    assert splice_message(escaped_event) is None  # decoded instead, and sent
    assert encoded_path(escaped_event)[0] == ['a"b', 1]


def _fake_server() -> tuple[SimpleNamespace, list[tuple[Any, ...]]]:
    """A manager that records what each of its two entries was given."""
    calls: list[tuple[Any, ...]] = []
    manager = SimpleNamespace(
        deliver=lambda site, room, event, message: calls.append(("decoded", site, room)) or 1,
        deliver_body=lambda site, room, body: calls.append(("spliced", site, room, body)) or 1,
    )
    return SimpleNamespace(manager=manager, transport=SimpleNamespace(flush_in_steps=list)), calls


def test_bridge_splices_the_usual_layout_and_decodes_the_rest():
    server, calls = _fake_server()
    bridge = Bridge(server, "redis://127.0.0.1:1", Metrics())  # type: ignore[arg-type]
    usual = frappe_text({"event": "e", "message": {"a": 1}, "room": "r", "namespace": SITE})
    other = json.dumps({"room": "r", "namespace": SITE, "event": "e", "message": {"a": 1}})
    bridge.deliver_batch([usual.encode(), other.encode(), b"\xff{", b'{"event": NaN}'])
    assert calls == [
        ("spliced", SITE, "r", '["e",{\n  "a": 1\n }]'),
        ("decoded", SITE, "r"),
    ]
    assert bridge.metrics.bridged.value("delivered") == 2
    assert bridge.metrics.bridged.value("malformed") == 2


def test_manager_frames_a_spliced_body_for_its_room():
    from tests.test_hotpath import _manager

    manager = _manager()
    sid = manager.connect("e1", f"/{SITE}")
    manager.enter_room(sid, f"/{SITE}", "doc:A/1")
    assert manager.deliver_body(SITE, "doc:A/1", '["e",{\n "x": 1\n}]') == 1
    payload = f'42/{SITE},["e",{{\n "x": 1\n}}]'.encode()
    assert manager.server.transport.frames == [(["e1"], frame(payload, TEXT))]


# ---- the reader: wait for the socket, then one recv ------------------------------------------


@pytest.fixture
def subscriber(redis_server: Any) -> Iterator[resp.Subscriber]:
    sub = resp.Subscriber(redis_server.url)
    sub.connect()
    sub.subscribe("splice")
    yield sub
    sub.close()


def test_a_waiting_read_gets_split_messages_whole_and_in_order(
    redis_server: Any, redis_client: Any, monkeypatch: pytest.MonkeyPatch
):
    """The reader waits without a timeout (the bridge's way); each wakeup is one recv of at
    most READ_SIZE bytes, so a message arrives over many wakeups."""
    monkeypatch.setattr(resp, "READ_SIZE", 7)
    subscriber = resp.Subscriber(redis_server.url)
    subscriber.connect()
    subscriber.subscribe("splice")
    payloads = [b"first", "é".encode() * 300, b"", b"*3\r\n$7\r\nmessage\r\n"]
    received: list[bytes] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while len(received) < len(payloads):
            received.extend(subscriber.read() or [])
            reads += 1

    greenlet = gevent.spawn(reader)
    gevent.sleep(0.05)
    assert not greenlet.dead and reads == 0  # waiting: no busy loop on an empty socket
    for payload in payloads:
        redis_client.publish("splice", payload)
    greenlet.join(10)
    subscriber.close()
    assert received == payloads
    assert reads >= sum(len(p) for p in payloads) // 7


def test_a_read_expecting_data_waits_when_there_is_none(
    subscriber: resp.Subscriber, redis_client: Any
):
    greenlet = gevent.spawn(subscriber.read, ready=True)
    gevent.sleep(0.05)
    assert not greenlet.dead
    redis_client.publish("splice", b"late")
    assert greenlet.get(timeout=10) == [b"late"]


def test_abort_wakes_a_waiting_read_with_an_error(subscriber: resp.Subscriber):
    greenlet = gevent.spawn(subscriber.read)
    gevent.sleep(0.05)
    subscriber.abort()
    with pytest.raises(OSError):
        greenlet.get(timeout=10)


def test_a_killed_reader_leaves_no_watcher_behind(subscriber: resp.Subscriber, redis_client: Any):
    """Bridge.stop kills the reading greenlet in its wait; the next reader waits anew."""
    first = gevent.spawn(subscriber.read)
    gevent.sleep(0.05)
    first.kill(block=True, timeout=5)
    assert first.dead
    redis_client.publish("splice", b"after")
    assert gevent.spawn(subscriber.read).get(timeout=10) == [b"after"]


def test_messages_sent_with_the_subscribe_answer_are_read_without_waiting():
    """A server may write the SUBSCRIBE confirmation and the first messages in one segment:
    they are in the reader's buffer already, and the socket will not wake it for them."""
    answer = b"*3\r\n$9\r\nsubscribe\r\n$6\r\nevents\r\n:1\r\n" + resp.command(
        "message", "events", "early"
    )

    def serve(conn: socket.socket, _address: Any) -> None:
        conn.recv(1024)
        conn.sendall(answer)
        gevent.sleep(5)
        conn.close()

    server = gevent.server.StreamServer(("127.0.0.1", 0), serve)
    server.start()
    try:
        sub = resp.Subscriber(f"redis://127.0.0.1:{server.server_port}")
        sub.connect()
        sub.subscribe("events")
        started = time.monotonic()
        assert gevent.spawn(sub.read).get(timeout=10) == [b"early"]
        assert time.monotonic() - started < 1
        sub.close()
    finally:
        server.stop()


def test_the_bridge_survives_a_redis_that_closes_and_comes_back(redis_server: Any):
    """The reader's connection closed by Redis (CLIENT KILL): the bridge resubscribes and
    the next published events arrive, spliced."""
    server, calls = _fake_server()
    bridge = Bridge(server, redis_server.url, Metrics())  # type: ignore[arg-type]
    client = redis_server.client()
    bridge.start()
    try:

        def published_and_seen(n: int) -> bool:
            client.publish("events", frappe_text({"event": "e", "message": n, "room": "r",
                                                  "namespace": SITE}))  # fmt: skip
            gevent.sleep(0.05)
            return any(c[-1] == f'["e",{n}]' for c in calls)

        deadline = time.monotonic() + 10
        while not published_and_seen(1) and time.monotonic() < deadline:
            pass
        client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        deadline = time.monotonic() + 10
        while not published_and_seen(2) and time.monotonic() < deadline:
            pass
        assert any(c[-1] == '["e",2]' for c in calls), calls
        assert bridge.metrics.bridge_reconnects.value() >= 1
    finally:
        bridge.stop()
        client.close()


REDIS_PY_READER = """
from gevent import monkey

monkey.patch_all()

import json, sys, time
from types import SimpleNamespace

import gevent, redis

from gsocket.contract import bridge as bridge_module
from gsocket.metrics import Metrics

bridge_module.resp.supported = lambda url: False  # take the redis-py reader (TLS URLs')
calls, ticks = [], []
manager = SimpleNamespace(
    deliver=lambda *args: 1, deliver_body=lambda site, room, body: calls.append(body) or 1
)
server = SimpleNamespace(manager=manager, transport=SimpleNamespace(flush_in_steps=list))
bridge = bridge_module.Bridge(server, sys.argv[1], Metrics())
bridge.start()
deadline = time.monotonic() + 10
while not bridge.subscribed and time.monotonic() < deadline:
    gevent.sleep(0.01)
ticker = gevent.spawn(lambda: [ticks.append(1) or gevent.sleep(0.001) for _ in range(50)])
client = redis.Redis.from_url(sys.argv[1])
for n in range(2000):
    client.publish("events", '{"event":"e","message":%d,"room":"r","namespace":"s"}' % n)
deadline = time.monotonic() + 10
while len(calls) < 2000 and time.monotonic() < deadline:
    gevent.sleep(0.01)
ticker.join(10)
bridge.stop()
print(json.dumps({"in_order": calls == ['["e",%d]' % n for n in range(2000)], "ticks": len(ticks)}))
"""


def test_the_redis_py_reader_delivers_in_order_and_lets_the_loop_run(redis_server: Any):
    """The reader kept for the URLs resp.py does not speak (TLS), over plain TCP in a
    gevent-patched process as the server is: every message delivered, spliced, in order,
    and a greenlet ticking meanwhile is not starved."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", REDIS_PY_READER, redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"in_order": True, "ticks": 50}
