"""Connect/disconnect churn over both transports, and what the server holds afterwards.

Each cycle is one short-lived client: an Engine.IO session (long-polling or websocket, in
turn), a CONNECT to ``site1.local`` or ``site2.local`` (in turn), a ``task_subscribe`` to a
room of its own (a new room every cycle; half the cycles leave without waiting for it to be
handled), then a goodbye.  Every tenth cycle leaves without one: a websocket drops its TCP
connection, a polling client simply stops polling (its session then lasts until its ping
timeout).  The caller compares ``/_probe`` before and after.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import websocket

from tests.support.hardening.kit import (
    SITE,
    SITE2,
    RawPolling,
    RawWebSocket,
    desk_headers,
    event_frame,
)


@dataclass
class ChurnReport:
    """What a churn run did."""

    cycles: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)


def _polling_cycle(base: str, n: int, site: str, wait_ack: bool, abandon: bool) -> str:
    ns = f"/{site}"
    client = RawPolling(base, desk_headers(site), timeout=10).open()
    try:
        reply = client.connect(ns)
        if not reply.startswith(f"40{ns},"):
            return "refused"
        client.post(event_frame(ns, "task_subscribe", f"churn-{n}", ack=1 if wait_ack else None))
        if wait_ack:
            client.get()
        if abandon:
            client.http.close()
            client.sid = None  # no goodbye: the session ends at its ping timeout
            return "polling_abandoned"
        return "polling"
    finally:
        client.close()


def _websocket_cycle(base: str, n: int, site: str, wait_ack: bool, abandon: bool) -> str:
    ns = f"/{site}"
    client = RawWebSocket(base, desk_headers(site), timeout=10).open()
    try:
        if not client.connect(ns).startswith(f"40{ns},"):
            return "refused"
        client.send(event_frame(ns, "task_subscribe", f"churn-{n}", ack=1 if wait_ack else None))
        if wait_ack:
            client.recv_until(lambda f: isinstance(f, str) and f.startswith(f"43{ns},1"), 10)
        if abandon:
            assert client.ws is not None and client.ws.sock is not None
            client.ws.sock.shutdown(socket.SHUT_RDWR)  # vanish without a close frame
            client.ws.sock.close()
            return "websocket_abandoned"
        return "websocket"
    finally:
        client.close()


def run_churn(
    base: str,
    cycles: int,
    workers: int = 4,
    sample: Callable[[int], dict[str, Any]] | None = None,
    sample_every: int = 5000,
    progress: Callable[[int], None] | None = None,
    abandon_polling: bool = True,
) -> ChurnReport:
    """Run ``cycles`` connect/disconnect cycles from ``workers`` threads.

    :param sample: called with the cycle count every ``sample_every`` cycles (e.g. a probe).
    :param abandon_polling: let every tenth polling client vanish too (its session then
        lingers for the ping timeout, 45 s, before it is reaped).
    """
    report = ChurnReport()
    lock = threading.Lock()
    counter = iter(range(cycles))
    started = time.monotonic()

    def worker() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            transport = _websocket_cycle if n % 2 else _polling_cycle
            site = SITE if (n // 2) % 2 else SITE2
            try:
                abandon = (n // 2) % 10 == 4 and (abandon_polling or transport is _websocket_cycle)
                outcome = transport(base, n, site, wait_ack=n % 4 < 2, abandon=abandon)
            except (OSError, requests.RequestException, websocket.WebSocketException) as e:
                outcome = "error"
                with lock:
                    report.errors[type(e).__name__] += 1
            except AssertionError:
                outcome = "error"
                with lock:
                    report.errors["no answer"] += 1
            with lock:
                report.outcomes[outcome] += 1
                report.cycles += 1
                done = report.cycles
            if sample is not None and done % sample_every == 0:
                snapshot = sample(done)
                with lock:
                    report.samples.append(snapshot)
            if progress is not None and done % 1000 == 0:
                progress(done)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.seconds = time.monotonic() - started
    return report
