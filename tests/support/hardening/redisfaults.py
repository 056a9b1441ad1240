"""Redis-side hardening: malformed messages on the ``events`` channel, and Redis killed and
restarted under a steady stream of publishes.

Redis pub/sub keeps nothing for an absent subscriber.  What an outage costs is therefore
counted from the publisher's side, which is exact: ``PUBLISH`` returns the number of
subscribers that received the message, so every publish is either delivered to gsocket's
bridge (receivers >= 1), lost because gsocket was not subscribed at that moment
(receivers == 0), or failed because Redis itself was down (an error at the publisher: the web
process's ``publish_realtime`` failed too).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
import requests

from gsocket.demo.processes import wait_until
from tests.support.hardening.kit import SITE, SITE2

RESERVED = ("connect", "disconnect", "connect_error", "disconnecting", "newListener")


def bad_message(rng: random.Random) -> bytes:
    """One message that is not Frappe's realtime shape (or aims where no one is)."""
    kind = rng.randrange(14)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 200))
    if kind == 1:
        return rng.choice([b"", b"null", b"[]", b"42", b'"event"', b"{", b"{}", b"true"])
    if kind == 2:
        return json.dumps({"message": 1, "room": "all", "namespace": SITE}).encode()
    if kind == 3:
        field_name = rng.choice(["event", "room", "namespace"])
        payload: dict[str, Any] = {"event": "x", "message": 1, "room": "all", "namespace": SITE}
        payload[field_name] = rng.choice([42, ["all"], {"a": 1}, True, 1.5])
        return json.dumps(payload).encode()
    if kind == 4:
        return json.dumps({"event": "x", "room": "all"}).encode()
    if kind == 5:
        depth = rng.choice([2_000, 100_000])
        return ('{"event":"x","message":' + "[" * depth + "]" * depth + "}").encode()
    if kind == 6:
        return b'{"event":"x","message":NaN,"room":"all","namespace":"' + SITE.encode() + b'"}'
    if kind == 7:
        event = rng.choice(RESERVED)
        return json.dumps({"event": event, "message": 1, "room": None, "namespace": SITE}).encode()
    if kind == 8:
        ns = rng.choice(["nosuch.local", "", "/" + SITE, "../" + SITE, "a" * 5000])
        return json.dumps({"event": "stray", "message": 1, "room": "all", "namespace": ns}).encode()
    if kind == 9:
        return json.dumps({"event": "e" * 100_000, "room": "all", "namespace": SITE}).encode()
    if kind == 10:
        return b'{"event":"x","message":"\xff\xfe","room":"all","namespace":"site1.local"}'
    if kind == 11:
        return json.dumps({"event": "stray", "message": 1, "room": "nobody", "namespace": SITE2})[
            : rng.randrange(1, 60)
        ].encode()
    if kind == 12:
        digits = b"9" * 5000
        return b'{"event":"x","message":' + digits + b',"room":"all","namespace":"site1.local"}'
    return json.dumps(
        {"event": "stray", "message": {"x": 1}, "room": "nobody-here", "namespace": SITE}
    ).encode()


def good_message(seq: int, pad: int = 0) -> bytes:
    """A well-formed message for room ``all`` of site1, carrying its sequence number."""
    payload = {"event": "seq", "message": {"n": seq, "pad": "p" * pad}, "room": "all"}
    return json.dumps({**payload, "namespace": SITE}).encode()


@dataclass
class OutageReport:
    """Counts of one Redis outage, from the publisher's side and the receiver's."""

    published: int = 0
    delivered_to_bridge: int = 0
    lost_no_subscriber: int = 0
    failed_redis_down: int = 0
    received_by_client: int = 0
    down_seconds: float = 0.0
    resubscribe_seconds: float = 0.0
    lost_sequences: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        return {
            "published": self.published,
            "delivered_to_bridge": self.delivered_to_bridge,
            "lost_no_subscriber": self.lost_no_subscriber,
            "failed_redis_down": self.failed_redis_down,
            "received_by_client": self.received_by_client,
            "redis_down_seconds": round(self.down_seconds, 2),
            "resubscribe_seconds_after_restart": round(self.resubscribe_seconds, 3),
        }


class Publisher(threading.Thread):
    """Publishes numbered messages at a steady rate and classifies each outcome.

    :param url: Redis URL.
    :param interval: seconds between two publishes.
    """

    def __init__(self, url: str, interval: float = 0.005) -> None:
        super().__init__(daemon=True, name="outage-publisher")
        self.url = url
        self.interval = interval
        self.outcomes: dict[int, str] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2, socket_timeout=1)
        seq = 0
        while not self._stop_event.is_set():
            try:
                receivers = client.publish("events", good_message(seq))
                self.outcomes[seq] = "delivered" if receivers else "no_subscriber"
            except redis.RedisError:
                self.outcomes[seq] = "redis_down"
            seq += 1
            self._stop_event.wait(self.interval)
        client.close()

    def stop(self) -> None:
        """Stop after the current publish."""
        self._stop_event.set()
        self.join(timeout=5)


def run_outage(
    redis_server: Any,
    gsocket_url: str,
    received: Callable[[], list[int]],
    down_seconds: float = 1.0,
) -> OutageReport:
    """Kill Redis for ``down_seconds`` under steady publishing; restart it; count everything.

    :param redis_server: a :class:`gsocket.demo.redis_server.RedisServer` gsocket uses.
    :param received: sequence numbers the witness client received so far.
    """
    report = OutageReport()
    publisher = Publisher(redis_server.url)
    publisher.start()
    wait_until(lambda: len(received()) >= 20, 10, "no delivery before the outage")
    killed = time.monotonic()
    redis_server.kill()
    time.sleep(down_seconds)  # the outage itself: a duration, not a synchronisation
    redis_server.start()
    restarted = time.monotonic()
    report.down_seconds = restarted - killed

    def healthy() -> bool:
        try:
            return requests.get(f"{gsocket_url}/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, 10, "the bridge did not resubscribe")
    report.resubscribe_seconds = time.monotonic() - restarted
    first_after = max(publisher.outcomes) if publisher.outcomes else 0
    wait_until(
        lambda: any(
            s > first_after and o == "delivered" for s, o in list(publisher.outcomes.items())
        ),
        10,
        "no delivery after the restart",
    )
    publisher.stop()
    outcomes = dict(publisher.outcomes)
    delivered = {s for s, o in outcomes.items() if o == "delivered"}
    wait_until(lambda: delivered <= set(received()), 20, "the client missed delivered messages")
    report.published = len(outcomes)
    report.delivered_to_bridge = len(delivered)
    report.lost_no_subscriber = sum(1 for o in outcomes.values() if o == "no_subscriber")
    report.failed_redis_down = sum(1 for o in outcomes.values() if o == "redis_down")
    report.received_by_client = len(set(received()) & set(outcomes))
    report.lost_sequences = sorted(set(outcomes) - delivered)
    return report
