"""Parked websockets (gsocket/protocol/parked.py): an idle connection holds no greenlet and
little memory, and the reader that replaces the blocked greenlet still speaks RFC 6455 as
gevent-websocket did (control frames, fragments, several frames per read, the close)."""

from __future__ import annotations

import json

import websocket

from gsocket.protocol.workers import KEEP
from tests.conftest import SITE
from tests.support.bench import wait_until
from tests.support.hardening.kit import RawWebSocket, desk_headers, event_frame

NS = f"/{SITE}"
IDLE = 300
BOUND_KB = 16
"""RSS per idle websocket allowed: 31 KB with a blocked greenlet each, about 7 without."""


def _busy(probe: dict) -> int:
    """Greenlets other than the idle workers (gsocket/protocol/workers.py), which wait for the
    next request or read of any connection and are bounded by their ``KEEP``."""
    assert probe["idle_workers"] <= KEEP, probe
    return probe["greenlets"] - probe["idle_workers"]


def _frame(opcode: int, data: str | bytes, fin: int = 1) -> websocket.ABNF:
    return websocket.ABNF(fin, 0, 0, 0, opcode, 1, data)


def test_idle_websockets_hold_no_greenlet_and_little_memory(probed, redis_client):
    # python-engineio 4.11 sends each session's first PING from a greenlet of its own (gsocket
    # takes over from the second): a short interval ends those before the count, a long
    # timeout keeps the clients (which do not answer) connected meanwhile.
    server = probed(conf={"gsocket": {"ping_interval": 0.5, "ping_timeout": 60}})
    warm = [RawWebSocket(server.url, desk_headers()).open() for _ in range(20)]
    for ws in warm:
        ws.connect(NS)
    before = server.wait_quiet(20, reaped=False)
    idle = [RawWebSocket(server.url, desk_headers()).open() for _ in range(IDLE)]
    for ws in idle:
        assert ws.connect(NS).startswith(f"40{NS},")
    after = server.wait_quiet(20 + IDLE, reaped=False)

    def settled() -> bool:
        nonlocal after
        after = server.probe()
        return _busy(after) - _busy(before) < IDLE / 20

    wait_until(settled, 10, lambda: f"greenlets before {before}, after {after}")
    per_connection_kb = (after["rss"] - before["rss"]) / IDLE / 1024
    assert per_connection_kb < BOUND_KB, per_connection_kb
    # Parked, they still get what is published, and their session ends with their close.
    message = {"event": "hello", "message": {"n": 1}, "namespace": SITE}
    redis_client.publish("events", json.dumps(message))
    expected = f'42{NS},["hello",{{"n":1}}]'
    for ws in [*warm, *idle]:
        assert ws.recv_until(lambda f: f == expected) == expected
    for ws in [*warm, *idle]:
        ws.close()
    server.wait_quiet(0, reaped=False)


def test_parked_reader_answers_frames_as_gevent_websocket_did(probed):
    server = probed()
    client = RawWebSocket(server.url, desk_headers()).open()
    assert client.connect(NS).startswith(f"40{NS},")
    ws = client.ws
    assert ws is not None
    # A ping frame is answered with its payload.
    ws.ping("are you there")
    opcode, answer = ws.recv_data_frame(control_frame=True)
    assert (opcode, answer.data) == (websocket.ABNF.OPCODE_PONG, b"are you there")
    # A message in three fragments, a ping between them.
    text = event_frame(NS, "echo", "fragmented", ack=1)
    ws.send_frame(_frame(websocket.ABNF.OPCODE_TEXT, text[:5], fin=0))
    ws.send_frame(_frame(websocket.ABNF.OPCODE_CONT, text[5:12], fin=0))
    ws.ping("between")
    ws.send_frame(_frame(websocket.ABNF.OPCODE_CONT, text[12:]))
    opcode, answer = ws.recv_data_frame(control_frame=True)
    assert (opcode, answer.data) == (websocket.ABNF.OPCODE_PONG, b"between")
    assert client.recv_until(lambda f: f.startswith("43")) == f'43{NS},1["fragmented"]'
    # Two messages in one TCP segment: both handled, in order.
    two = _frame(websocket.ABNF.OPCODE_TEXT, event_frame(NS, "echo", "a", ack=2)).format()
    two += _frame(websocket.ABNF.OPCODE_TEXT, event_frame(NS, "echo", "b", ack=3)).format()
    ws.sock.sendall(two)
    assert client.recv_until(lambda f: f.startswith("43")) == f'43{NS},2["a"]'
    assert client.recv_until(lambda f: f.startswith("43")) == f'43{NS},3["b"]'
    # A close frame is answered with status 1000, and the session ends.
    ws.send_close(websocket.STATUS_NORMAL)
    opcode, answer = ws.recv_data_frame(control_frame=True)
    assert (opcode, answer.data[:2]) == (websocket.ABNF.OPCODE_CLOSE, b"\x03\xe8")
    server.wait_quiet(0, reaped=False)


def test_an_unmasked_frame_drops_the_connection(probed):
    server = probed()
    client = RawWebSocket(server.url, desk_headers()).open()
    assert client.connect(NS).startswith(f"40{NS},")
    assert client.ws is not None
    client.ws.sock.sendall(bytes((0x81, 2)) + b"3x")  # no mask: a protocol error
    assert client.recv_until(lambda f: f == "", timeout=3) == ""
    server.wait_quiet(0, reaped=False)
    server.wait_for_log(r"websocket from 127\.0\.0\.1 ended: reserved bits set or an unmasked")


def test_parked_connections_leave_no_descriptor_open_when_they_end(probed):
    """A parked connection keeps the socket gevent accepted (gevent's server is told not to
    close it when the request ends): whichever side ends it, its descriptor is closed."""
    server = probed()
    warm = RawWebSocket(server.url, desk_headers()).open()  # the web client's connection
    assert warm.connect(NS).startswith(f"40{NS},")
    before = server.wait_quiet(1, reaped=False)
    clients = [RawWebSocket(server.url, desk_headers()).open() for _ in range(20)]
    for ws in clients:
        assert ws.connect(NS).startswith(f"40{NS},")
    assert server.wait_quiet(21, reaped=False)["fds"] >= before["fds"] + 20
    for ws in clients[:10]:
        ws.close()  # the client ends it
    for ws in clients[10:]:
        assert ws.ws is not None
        ws.ws.sock.sendall(bytes((0x81, 2)) + b"3x")  # the server ends it: an unmasked frame
        assert ws.recv_until(lambda f: f == "", timeout=3) == ""
    after = server.wait_quiet(1, reaped=False)

    def closed() -> bool:
        nonlocal after
        after = server.probe()
        return after["fds"] <= before["fds"]

    wait_until(closed, 10, lambda: f"descriptors before {before['fds']}, after {after['fds']}")


def test_a_session_upgraded_from_polling_is_parked_too(probed, clients):
    """python-socketio's client starts on polling and upgrades: once on websocket its
    connection holds no greenlet either, and packets go both ways as before."""
    server = probed(conf={"gsocket": {"ping_interval": 0.5, "ping_timeout": 60}})
    warm = RawWebSocket(server.url, desk_headers()).open()  # starts the server-wide pinger
    assert warm.connect(NS).startswith(f"40{NS},")
    before = server.wait_quiet(1, reaped=False)
    upgraded = [clients().connect(server.url, NS, desk_headers(sid="sid-jane")) for _ in range(5)]
    wait_until(lambda: all(c.transport == "websocket" for c in upgraded), 10, "no upgrade")
    # The polling requests' keep-alive HTTP connections each hold a greenlet of gevent's
    # WSGI server until they close (an idle HTTP connection, not a websocket).
    for c in upgraded:
        c.client.eio.http.close()
    after = before

    def settled() -> bool:
        nonlocal after
        after = server.probe()
        return after["eio_open"] == 6 and _busy(after) <= _busy(before) + 1

    wait_until(settled, 10, lambda: f"greenlets before {before}, after {after}")
    assert [c.call("echo", i) for i, c in enumerate(upgraded)] == list(range(5))
