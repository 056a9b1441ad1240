"""Bad client input: malformed Engine.IO/Socket.IO over both transports ends only the bad
client's session, at once, with a log line and no traceback; other clients keep receiving.

The big run is ``python -m scripts.fuzz`` (figures in RELIABILITY.md); this is its fast version
plus one test per defect the fuzzer found.
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
import requests
import websocket

from tests.support.hardening.fuzz import run_fuzz
from tests.support.hardening.kit import (
    SITE,
    RawPolling,
    RawWebSocket,
    desk_headers,
    event_frame,
)

NS = f"/{SITE}"
FAST = {"events_per_second": 1000, "event_burst": 1000}


def tracebacks(log: str) -> list[str]:
    """The tracebacks in a server log, each with the line before it."""
    lines = log.splitlines()
    return [
        "\n".join(lines[max(0, i - 1) : i + 12])
        for i, line in enumerate(lines)
        if line.startswith("Traceback")
    ]


def test_fuzz_over_both_transports(probed, redis_client):
    server = probed(limits=FAST)
    base = server.wait_quiet(0)

    report = run_fuzz(
        server.url,
        seed=8,
        cases=150,
        publish=lambda e, m, r: redis_client.publish(
            "events", json.dumps({"event": e, "message": m, "room": r, "namespace": SITE})
        ),
    )

    summary = report.summary()
    assert report.hangs == [], summary
    assert report.witness_misses == [], summary
    assert not [s for s in report.statuses if s >= 500], summary
    assert report.outcomes["ws_closed_by_server"] > 10, summary
    assert report.outcomes["polling_refused"] > 10, summary
    # Engine.IO sessions opened by a bare handshake and abandoned live until their ping
    # timeout (45 s); everything a Socket.IO connection holds must be gone at once.
    after = server.probe()
    assert after["eio_open"] <= report.outcomes["handshake_abuse"], after
    assert after["sockets"] == 0 and after["rooms"] == 0 and after["namespaces"] == []
    assert after["guard_buckets"] <= after["eio_open"], after
    assert after["binary_packets"] == 0 and after["connecting"] == 0
    assert after["rss"] - base["rss"] < 80 * 1024 * 1024, (base["rss"], after["rss"])
    # the server's websocket handler screens gevent-websocket's own handshake refusals too
    assert tracebacks(server.log()) == []


def test_bad_websocket_frame_ends_the_session_at_once(probed):
    server = probed()
    client = RawWebSocket(server.url, desk_headers()).open()
    assert client.connect(NS).startswith(f"40{NS},")
    client.send("xgarbage")
    assert client.recv_until(lambda f: f == "", timeout=3) == ""
    state = server.wait_quiet(0, timeout=3, reaped=False)
    assert state["rooms"] == 0
    server.wait_for_log(r"closed a websocket from 127\.0\.0\.1: Engine\.IO packet type 'x'")
    assert tracebacks(server.log()) == []


@pytest.mark.parametrize(
    "body, status",
    [
        ("4" + "x" * 1_100_000, 413),
        (b"42\xff\xfe", 400),
        ("\x1e".join(['42/site1.local,["ping"]'] * 20), 400),
        ("5", 400),
        ("b!!notbase64", 400),
    ],
    ids=["oversized", "not-utf8", "too-many-packets", "upgrade-over-polling", "bad-base64"],
)
def test_bad_polling_post_is_answered_and_ends_the_session(probed, body, status):
    server = probed()
    client = RawPolling(server.url, desk_headers(), timeout=3).open()
    assert client.connect(NS).startswith(f"40{NS},")
    started = time.monotonic()
    response = client.post(body)
    assert response.status_code == status
    assert time.monotonic() - started < 2, "an oversized POST used to hang forever"
    assert client.get().status_code == 400  # the session is gone
    server.wait_quiet(0, timeout=3, reaped=False)
    assert tracebacks(server.log()) == []


@pytest.mark.parametrize(
    "packet",
    [
        "42" + NS + "," + "[" * 100_000 + "]" * 100_000,
        "42" + NS + ',["echo",' + "9" * 5000 + "]",
        "42" + NS + ",{not json",
        "49" + NS + ",[]",
        "45999999999-" + NS + ',["echo",{"_placeholder":true,"num":0}]',
        "44" + NS + ',{"message":"a client may not send CONNECT_ERROR"}',
    ],
    ids=["deep-json", "huge-int", "truncated", "unknown-type", "attachments", "connect-error"],
)
def test_undecodable_socketio_packet_ends_only_that_client(probed, clients, packet):
    server = probed()
    witness = clients().connect(server.url, NS, desk_headers(sid="sid-jane"))
    bad = RawWebSocket(server.url, desk_headers()).open()
    bad.connect(NS)
    bad.send(packet)
    assert bad.recv_until(lambda f: f == "", timeout=3) == ""
    server.wait_for_log(
        r"disconnected client \S+ \(127\.0\.0\.1\): (malformed Socket\.IO|binary) packet"
    )
    assert witness.call("echo", "still here") == "still here"
    assert tracebacks(server.log()) == []


def test_websocket_message_over_the_limit_is_not_read_into_memory(probed, clients):
    server = probed(limits={"max_message_bytes": 100_000})
    witness = clients().connect(server.url, NS, desk_headers(sid="sid-jane"))
    bad = RawWebSocket(server.url, desk_headers()).open()
    bad.connect(NS)
    assert bad.ws is not None
    # One frame announcing 2 GB: refused from its header, before any payload is buffered.
    bad.ws.sock.sendall(bytes([0x81, 0xFF]) + (2**31).to_bytes(8, "big") + b"\x00" * 4 + b"4")
    assert bad.recv_until(lambda f: f == "", timeout=3) == ""
    server.wait_for_log(r"closed a websocket from 127\.0\.0\.1: message over 100000 bytes")
    # The same through fragments: each small, together over the limit.
    frag = RawWebSocket(server.url, desk_headers()).open()
    frag.connect(NS)
    assert frag.ws is not None
    frag.ws.send_frame(websocket.ABNF(0, 0, 0, 0, websocket.ABNF.OPCODE_TEXT, 1, "4" * 60_000))
    frag.ws.send_frame(websocket.ABNF(0, 0, 0, 0, websocket.ABNF.OPCODE_CONT, 1, "4" * 60_000))
    assert frag.recv_until(lambda f: f == "", timeout=3) == ""
    assert witness.call("echo", "fine") == "fine"
    assert tracebacks(server.log()) == []


def test_binary_attachments_are_bounded_and_valid_ones_work(probed):
    server = probed()
    client = RawWebSocket(server.url, desk_headers()).open()
    client.connect(NS)
    client.send(f'451-{NS},7["echo",{{"_placeholder":true,"num":0}}]')
    client.send(b"\x00\x01binary")
    ack = client.recv_until(lambda f: isinstance(f, str) and f.startswith("461-"), 3)
    assert ack.startswith(f"461-{NS},7[")
    assert client.recv_until(lambda f: isinstance(f, bytes), 3) == b"\x00\x01binary"

    client.send(f'452-{NS},["echo",{{"_placeholder":true,"num":0}}]')
    client.send(b"a" * 700_000)
    client.send(b"b" * 700_000)  # 1.4 MB of attachments for one packet: over the 1 MB limit
    assert client.recv_until(lambda f: f == "", timeout=3) == ""
    server.wait_for_log(r"disconnected client \S+ \(127\.0\.0\.1\): binary attachments over max_")


def test_attachment_placeholder_out_of_range_is_malformed(probed):
    server = probed()
    client = RawWebSocket(server.url, desk_headers()).open()
    client.connect(NS)
    client.send(f'451-{NS},["echo",[[{{"_placeholder":true,"num":5}}]]]')
    client.send(b"only one")
    assert client.recv_until(lambda f: f == "", timeout=3) == ""
    server.wait_for_log(r"malformed Socket\.IO packet \(IndexError")
    assert tracebacks(server.log()) == []


def test_polling_base64_binary_attachment_is_accepted(probed):
    server = probed()
    client = RawPolling(server.url, desk_headers(), timeout=3).open()
    client.connect(NS)
    blob = base64.b64encode(b"\xffpayload").decode()
    response = client.post(f'451-{NS},3["echo",{{"_placeholder":true,"num":0}}]\x1eb{blob}')
    assert response.status_code == 200
    answer = client.get().text
    assert f"461-{NS},3" in answer and blob in answer


def test_huge_but_allowed_event_is_served(probed, clients):
    server = probed()
    client = clients(["websocket"]).connect(server.url, NS, desk_headers())
    big = "a" * 900_000
    assert client.call("echo", big, timeout=10) == big
    assert re.search(r"Traceback", server.log()) is None


def test_unknown_events_and_wrong_arguments_cost_a_log_line(probed, clients):
    server = probed()
    client = clients().connect(server.url, NS, desk_headers())
    client.emit("no_such_event", {"x": 1})
    client.emit("doc_subscribe", "ToDo")  # one argument short
    client.emit("doc_subscribe", ["ToDo"], {"name": 1})  # wrong types are passed on as-is
    client.emit("burn")  # one argument short (types are not checked, as in Frappe)
    server.wait_for_log(r"event 'burn' \(app hardapp\) .* wrong arguments, not run")
    server.wait_for_log(r"event 'doc_subscribe' \(app frappe\) .* wrong arguments, not run")
    assert client.call("echo", 1) == 1
    assert tracebacks(server.log()) == []


def test_flood_of_events_is_rate_limited_per_connection(probed, clients):
    server = probed(limits={"events_per_second": 5, "event_burst": 10})
    flooder = RawWebSocket(server.url, desk_headers()).open()
    flooder.connect(NS)
    for i in range(200):
        flooder.send(event_frame(NS, "echo", i, ack=i))
    acks = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            frame = flooder.recv_until(lambda f: isinstance(f, str) and f.startswith("43"), 0.5)
        except Exception:  # noqa: BLE001 - no more acks within the window
            break
        acks.append(frame)
    assert 9 <= len(acks) <= 25, len(acks)  # the burst, plus what the rate refilled meanwhile
    server.wait_for_log(r"sends more than 5 packets/s \(burst 10\): dropping the excess")
    other = clients().connect(server.url, NS, desk_headers(sid="sid-jane"))
    assert other.call("echo", "unaffected") == "unaffected"
    assert server.probe()["dropped"]["rate_limited"] >= 150
    drops = re.search(
        r'^gsocket_client_drops_total\{reason="rate_limited"\} (\d+)$',
        requests.get(server.url + "/metrics", timeout=5).text,
        re.MULTILINE,
    )
    assert drops and int(drops.group(1)) >= 150
