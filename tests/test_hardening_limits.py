"""Configured limits (connections per client address) and connect/disconnect churn: nothing
a departed client held stays behind.  The 50 000-cycle run is ``python -m scripts.churn``."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.support.hardening.churn import run_churn
from tests.support.hardening.kit import (
    EIO_PATH,
    SITE,
    ProbedGsocket,
    RawPolling,
    RawWebSocket,
    desk_headers,
)

NS = f"/{SITE}"
MIB = 1024 * 1024


@pytest.fixture
def probed(probed: Callable[..., ProbedGsocket]) -> Callable[..., ProbedGsocket]:
    """The shared factory, without the misbehaving ``hardapp``: limits need no handlers."""
    return functools.partial(probed, hardapp=False)


def handshake(server: ProbedGsocket, headers: dict[str, str]) -> requests.Response:
    return requests.get(server.url + EIO_PATH + "polling", headers=headers, timeout=5)


def test_connections_per_client_address_behind_the_proxy(probed):
    server = probed(limits={"connections_per_ip": 3})
    client_a = desk_headers(**{"X-Forwarded-For": "203.0.113.7"})
    held = [RawPolling(server.url, client_a).open() for _ in range(3)]
    refused = handshake(server, client_a)
    assert refused.status_code == 401
    # A spoofed left part of the header does not make a new address: nginx appends the peer.
    spoofed = desk_headers(**{"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    assert handshake(server, spoofed).status_code == 401
    # Other addresses are not affected, over either transport.
    other = desk_headers(**{"X-Forwarded-For": "203.0.113.8"})
    assert handshake(server, other).status_code == 200
    ws = RawWebSocket(server.url, other).open()
    assert ws.connect(NS).startswith(f"40{NS},")
    # A session that ends frees its place at once.
    held.pop().close()
    RawPolling(server.url, client_a).open()
    server.wait_for_log(r"refused a connection from 203\.0\.113\.7: it already holds 3")
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert 'gsocket_connect_refusals_total{reason="too_many_connections"} 2' in metrics


def test_connections_per_ip_uses_the_peer_when_it_is_not_a_trusted_proxy(probed):
    server = probed(
        limits={"connections_per_ip": 2}, conf={"gsocket": {"trusted_proxies": ["10.0.0.1"]}}
    )
    # 127.0.0.1 is a client here, not a proxy: its X-Forwarded-For is ignored.
    for n in range(2):
        RawPolling(server.url, {"X-Forwarded-For": f"192.0.2.{n}"}).open()
    assert handshake(server, {"X-Forwarded-For": "192.0.2.99"}).status_code == 401
    refused_ws = RawWebSocket(server.url, {"X-Forwarded-For": "192.0.2.98"})
    with pytest.raises(Exception):  # noqa: B017 - any refusal of the websocket handshake
        refused_ws.open()
    assert server.probe()["eio_open"] == 2


def test_churn_leaves_nothing_behind(probed):
    server = probed()
    # Closed Engine.IO sessions wait up to a ping timeout for python-engineio's reaper, so
    # memory is compared between two equal rounds rather than against an idle start.
    run_churn(server.url, 400, workers=4, abandon_polling=False)
    before = server.wait_quiet(0, reaped=False)
    report = run_churn(server.url, 400, workers=4, abandon_polling=False)
    assert report.errors == {}, report.errors
    assert report.outcomes["websocket_abandoned"] > 0
    after = server.wait_quiet(0, reaped=False)
    for key in ("sockets", "environ", "rooms", "eio_to_sid", "callbacks", "connecting"):
        assert after[key] == 0, (key, after)
    assert after["namespaces"] == []  # empty site namespaces are gone
    assert after["pending_connect"] == after["pending_disconnect"] == 0
    assert after["guard_addresses"] == after["guard_buckets"] == after["guard_websockets"] == 0
    assert after["rss"] - before["rss"] < 4 * MIB, (before["rss"], after["rss"])


REPO = Path(__file__).resolve().parent.parent
STALL_SCRIPT = """
from gevent import monkey
monkey.patch_all()
import socket, sys, time, gevent
from gsocket.protocol.stall import watch_event_loop
lines = []
watch_event_loop(0.2, report=lines.append)

def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass

def wait_for_lines(count):
    deadline = time.monotonic() + 5
    while len(lines) < count and time.monotonic() < deadline:
        gevent.sleep(0.01)

gevent.sleep(0.1)
busy(0.7)  # one greenlet holds the loop: a stall
wait_for_lines(1)
pairs = [socket.socketpair() for _ in range(200)]
readers = [gevent.spawn(lambda s: (s.recv(1), busy(0.006)), a) for a, _ in pairs]
gevent.sleep(0.1)  # every reader waiting
for _, b in pairs:
    b.send(b"x")  # all 200 ready at once: 1.2 s of work, nothing stuck; even the 64 sockets
    # libev may take from one poll make a 0.38 s turn
gevent.joinall(readers)
wait_for_lines(2)
print("\\n".join(lines))
"""


def test_stall_watch_tells_a_stuck_greenlet_from_a_saturated_loop():
    """A greenlet that never yields is an error naming it; a turn that is long because
    hundreds of sockets were ready at once (a disconnect storm) is a warning, not a stall."""
    out = subprocess.run(
        [sys.executable, "-c", STALL_SCRIPT],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert len(out) >= 2, out
    assert out[0].startswith("the event loop was blocked for more than 0.20 s"), out
    assert "in busy" in out[0]
    assert out[1].startswith("the event loop fell behind by more than 0.20 s: many greenlets"), out
