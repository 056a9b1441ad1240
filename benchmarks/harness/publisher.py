"""Publishes benchmark events on Redis channel `events`, as frappe.publish_realtime does.

Each event has Frappe's message shape {"event", "message", "room", "namespace"}; the
message is {"p": phase, "s": seq, "t": CLOCK_MONOTONIC µs at publish} (and "x", the target's
index, for the desk mix), which the load generator turns into lost/duplicate counts and
end-to-end latency. Publishing goes through
a non-transactional pipeline so that Python is not the limit at tens of thousands of
events per second.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from .loadgen import Loadgen

CHANNEL = "events"
RELAY_CHANNEL = "gsocket"
"""The Redis manager's channel (gsocket.scale_out_channel's default): what a cluster's process
publishes there, when a handler emits to a room, every other process delivers to its own
sockets."""
RELAY_HOST = "gsocket-bench"
"""The host_id of the relayed emits: no server process has it, so every one delivers them."""
EVENT = "bench"
# Largest pipeline sent at once; bounds the timestamp skew inside one batch.
BATCH = 256
# Pacing granularity of the fixed-rate publisher.
TICK_S = 0.002


@dataclass(frozen=True)
class Target:
    """Where one event goes: its room, its event name, and the desk mix's target index."""

    room: str
    event: str = EVENT
    x: int | None = None
    relayed: bool = False
    """Published as another cluster process's emit on the manager's channel, in
    python-socketio's message shape, instead of Frappe's on ``events``."""


Route = Callable[[int], Target]
"""The target of the event with a given sequence number."""


@dataclass
class Published:
    """What a publishing run did: count and the monotonic span it took."""

    messages: int
    start_us: int
    end_us: int

    @property
    def seconds(self) -> float:
        return max(1e-9, (self.end_us - self.start_us) / 1e6)


class Publisher:
    """Publishes one site's benchmark events."""

    def __init__(self, port: int, site: str) -> None:
        self.client = redis.Redis(port=port)
        self._namespace = json.dumps(site)
        self._sio_namespace = json.dumps("/" + site)

    def close(self) -> None:
        self.client.close()

    def subscribers(self, channel: str = CHANNEL) -> int:
        """How many clients (servers under test) listen on CHANNEL (Frappe's ``events``)."""
        return int(dict(self.client.pubsub_numsub(channel)).get(channel.encode(), 0))

    def _send(self, phase: str, first: int, last: int, route: Route) -> None:
        pipe = self.client.pipeline(transaction=False)
        t_us = time.monotonic_ns() // 1000
        for seq in range(first, last):
            to = route(seq)
            x = "" if to.x is None else f',"x":{to.x}'
            message = f'{{"p":"{phase}","s":{seq},"t":{t_us}{x}}}'
            if to.relayed:
                # the one argument as ``data`` itself: python-socketio 5.14.0 emits ``data`` as
                # given; 5.18.1 writes a list of arguments (and ``binary``) but passes anything
                # else through, so one object reads the same at both ends of the tested range
                pipe.publish(
                    RELAY_CHANNEL,
                    f'{{"method":"emit","event":"{to.event}","data":{message},'
                    f'"namespace":{self._sio_namespace},'
                    f'"room":{json.dumps(to.room)},"skip_sid":null,"callback":null,'
                    f'"host_id":"{RELAY_HOST}"}}',
                )
                continue
            pipe.publish(
                CHANNEL,
                f'{{"event":"{to.event}","message":{message},'
                f'"room":{json.dumps(to.room)},"namespace":{self._namespace}}}',
            )
        pipe.execute()

    def burst(self, phase: str, count: int, room: Route, first: int = 0) -> None:
        """Publish COUNT events (seq FIRST..) at once: for probes, not for measurements."""
        for start in range(first, first + count, BATCH):
            self._send(phase, start, min(first + count, start + BATCH), room)

    def fixed_rate(self, phase: str, rate: float, count: int, room: Route) -> Published:
        """COUNT events at RATE per second on an absolute schedule (no drift)."""
        t0 = time.monotonic()
        start_us = time.monotonic_ns() // 1000
        sent = 0
        while sent < count:
            due = min(count, int((time.monotonic() - t0) * rate) + 1, sent + BATCH)
            if due > sent:
                self._send(phase, sent, due, room)
                sent = due
                continue
            wait = t0 + sent / rate - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, TICK_S))
        return Published(sent, start_us, time.monotonic_ns() // 1000)

    def flat_out(
        self,
        phase: str,
        loadgen: Loadgen,
        deliveries_per_event: int,
        window: int,
        seconds: float,
        max_events: int,
        room: Route,
    ) -> Published:
        """Publish as fast as the server delivers, for SECONDS or MAX_EVENTS.

        At most WINDOW deliveries are in flight (published but not yet received), so the
        run measures sustained throughput instead of filling the server's buffers.
        """
        per_event = max(1, deliveries_per_event)
        window = max(window, per_event)
        start_us = time.monotonic_ns() // 1000
        deadline = time.monotonic() + seconds
        sent = 0
        seen = loadgen.progress(phase)
        while sent < max_events and time.monotonic() < deadline:
            room_left = window - (sent * per_event - seen[0])
            allowed = min(room_left // per_event, BATCH, max_events - sent)
            if allowed <= 0:
                seen = loadgen.wait_progress(phase, seen, 0.5)
                continue
            self._send(phase, sent, sent + allowed, room)
            sent += allowed
            seen = loadgen.progress(phase)
        return Published(sent, start_us, time.monotonic_ns() // 1000)


def events_for(rate: float, seconds: float, deliveries_per_event: int) -> int:
    """Events needed for RATE deliveries/s during SECONDS (at least one)."""
    return max(1, math.ceil(rate * seconds / max(1, deliveries_per_event)))
