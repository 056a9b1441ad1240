"""Faults around gsocket: a web process down, slow or answering garbage; handlers that hang or
burn CPU; clients that stop reading.  Each costs the faulty party, not the other sockets."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.bench import wait_until
from tests.support.hardening.kit import (
    SITE,
    RawPolling,
    RawWebSocket,
    desk_headers,
)

NS = f"/{SITE}"
MIB = 1024 * 1024


def publish(redis_client: Any, event: str, message: Any, room: str) -> None:
    payload = {"event": event, "message": message, "room": room, "namespace": SITE}
    redis_client.publish("events", json.dumps(payload))


@pytest.mark.parametrize("mode", ["down", "slow", "garbage", "stopped"])
def test_broken_web_process_refuses_in_bounded_time_and_spares_sockets(
    probed, web, clients, redis_client, mode
):
    server = probed(conf={"gsocket": {"web_timeout": 1.0}})
    web.slow_seconds = 5.0
    web.permissions.add(("Administrator", "ToDo", None))
    old = clients().connect(server.url, NS, desk_headers(sid="sid-admin"))

    if mode == "stopped":
        web.stop()
    else:
        web.mode = mode
    started = time.monotonic()
    newcomer = RawWebSocket(server.url, desk_headers(sid="sid-jane"), timeout=8).open()
    answer = newcomer.connect(NS)
    assert time.monotonic() - started < 3.0  # web_timeout (1 s) plus the handshake
    assert answer.startswith(f"44{NS},") and "Unauthorized" in answer
    newcomer.close()

    # The old socket is untouched; its permission checks fail closed meanwhile.
    publish(redis_client, "still_here", 1, "all")
    assert old.wait_for("still_here") == (1,)
    old.emit("doc_subscribe", "ToDo", "TD-9")
    assert old.call("echo", "alive") == "alive"
    server.wait_for_log(r"permission check for ToDo on site1\.local failed|: web_unavailable: ")
    assert "Traceback" not in server.log()


def test_hanging_handler_is_ended_by_its_time_limit(probed, clients):
    server = probed(limits={"handler_timeout": 1.0})
    client = clients().connect(server.url, NS, desk_headers())
    other = clients().connect(server.url, NS, desk_headers(sid="sid-jane"))
    started = time.monotonic()
    client.emit("hang")
    assert other.call("echo", "meanwhile") == "meanwhile"  # the hub is free during the hang
    assert client.call("hang", timeout=5) is None  # ended, then acknowledged empty
    assert 0.9 < time.monotonic() - started < 4
    server.wait_for_log(r"handler \S+hang for event 'hang' \(app hardapp\) .* ended after its 1\.0")
    assert client.call("echo", 2) == 2


def test_cpu_burning_handler_is_detected_and_logged(probed, clients):
    server = probed()
    client = clients().connect(server.url, NS, desk_headers())
    # gevent cannot preempt it; the watch (1 s period) reports every stall of 2 s or more.
    assert client.call("burn", 2.5, timeout=10) == "burnt"
    line = server.wait_for_log(r"event loop was blocked for more than 1\.00 s .*", timeout=10)
    assert "handlers.py" in line.group(0) and "in burn" in line.group(0)
    assert client.call("echo", "after") == "after"


def test_websocket_client_that_never_reads_is_put_out(probed, clients, redis_client):
    server = probed(limits={"send_queue": 50})
    reader = clients(["websocket"]).connect(server.url, NS, desk_headers(sid="sid-jane"))
    stalled = RawWebSocket(server.url, desk_headers()).open()
    stalled.connect(NS)  # in room "all" as a System User, then never reads again
    base = server.probe()
    pad = "x" * 100_000
    sent = 0
    # Kernel buffers take a few MB first; then the server's queue for it fills and it goes.
    # Published in batches the reader keeps up with: only the stalled client falls behind.
    while server.health().json()["sockets"] == 2:
        assert sent < 1000, "the stalled client was never put out"
        for _ in range(20):
            publish(redis_client, "bulk", {"n": sent, "pad": pad}, "all")
            sent += 1
        wait_until(lambda n=sent: len(reader.events("bulk")) == n, 10, "the reader fell behind")
    server.wait_for_log(r"packets queued: the client does not read \(send_queue\)")
    wait_until(
        lambda: len(reader.events("bulk")) == sent,
        30,
        lambda: f"reader got {len(reader.events('bulk'))} of {sent}; log: {server.log()[-3000:]}",
    )
    state = server.wait_quiet(1, reaped=False)
    assert state["rss"] - base["rss"] < 60 * MIB, (base["rss"], state["rss"])
    stalled.close()


def test_polling_client_that_never_polls_is_put_out(probed, redis_client):
    server = probed(limits={"send_queue": 50})
    idle = RawPolling(server.url, desk_headers(), timeout=3).open()
    assert idle.connect(NS).startswith(f"40{NS},")
    for n in range(60):
        publish(redis_client, "bulk", n, "all")
    wait_until(lambda: server.probe()["sockets"] == 0, 5, "the idle client was not put out")
    server.wait_for_log(r"packets queued: the client does not read")
    assert idle.get().status_code in (200, 400)  # a CLOSE packet or an unknown session
