"""Bad Redis input and Redis outages: the bridge logs and skips what it cannot use, and comes
back after a restart; what an outage cost is counted from the publisher's side."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from gsocket.demo.redis_server import RedisServer
from tests.support.bench import wait_until
from tests.support.hardening.kit import SITE, desk_headers, start_gsocket
from tests.support.hardening.redisfaults import bad_message, good_message, run_outage

NS = f"/{SITE}"


def test_malformed_redis_messages_are_skipped_and_the_bridge_keeps_going(
    tmp_path: Path, redis_server: Any, redis_client: Any, web: Any, clients: Any
):
    server = start_gsocket(tmp_path, redis_server.url, web, hardapp=False)
    try:
        client = clients().connect(server.url, NS, desk_headers())
        rng = random.Random(5)
        good = 0
        for i in range(400):
            redis_client.publish("events", bad_message(rng))
            if i % 10 == 0:
                redis_client.publish("events", good_message(good, pad=rng.choice([0, 200_000])))
                good += 1
        # One huge message, alone: Redis itself drops a subscriber whose unread backlog passes
        # client-output-buffer-limit pubsub (32 MB by default), so bursts of them are not a
        # gsocket matter (see RELIABILITY.md).
        redis_client.publish("events", good_message(good, pad=8_000_000))
        good += 1
        wait_until(
            lambda: len(client.events("seq")) == good,
            30,
            lambda: (
                f"got {[a[0]['n'] for a in client.events('seq')]} of {good}; "
                f"log: {server.log()[-2000:]}"
            ),
        )
        assert [a[0]["n"] for a in client.events("seq")] == list(range(good))
        assert client.events("stray") == [] and client.events("x") == []
        assert "Traceback" not in server.log()
        assert "lost the Redis connection" not in server.log()
        metrics = server.probe()
        assert metrics["sockets"] == 1
        assert server.log().count("skipped a malformed message") >= 250
    finally:
        server.kill()


def test_redis_outage_is_counted_and_deliveries_resume(tmp_path: Path, web: Any, clients: Any):
    own = RedisServer(tmp_path / "own-redis").start()
    server = start_gsocket(tmp_path, own.url, web, hardapp=False)
    try:
        client = clients().connect(server.url, NS, desk_headers())

        def received() -> list[int]:
            return [a[0]["n"] for a in client.events("seq")]

        report = run_outage(own, server.url, received, down_seconds=1.0)
        print("redis outage:", report.summary())
        assert report.failed_redis_down > 0  # publishes attempted while Redis was down
        assert report.resubscribe_seconds < 2.0  # the desk gives up after about 3.5 s
        # Everything a subscriber took was delivered; only the outage window was lost.
        assert report.received_by_client == report.delivered_to_bridge
        assert report.lost_no_subscriber <= 400  # at most 2 s at one publish per 5 ms
        assert client.client.connected
        server.wait_for_log(r"lost the Redis connection .* resubscribing")
    finally:
        server.kill()
        own.kill()
