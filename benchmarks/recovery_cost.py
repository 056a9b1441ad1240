"""What connection state recovery costs per published event (``gsocket.recovery_seconds``).

Usage (from the repository root)::

    python benchmarks/recovery_cost.py [--events 100000]

Measures, on a private redis-server: the work the bridge adds per event (numbering, digest,
keeping it in memory, appending the offset to the encoded packet), the CPU this process
spends copying the log to Redis in batches, per event, and the Redis memory per logged
event (a typical Frappe ``list_update``); and the CPU of copying one event alone (a round
trip of its own, as on a quiet bench).  The numbers go in :mod:`gsocket.cluster.recovery`'s
docstring.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gsocket.cluster.recovery import EventLog  # noqa: E402
from gsocket.demo.redis_server import RedisServer  # noqa: E402

BODY = json.dumps(
    ["list_update", {"doctype": "ToDo", "name": "TD-00042", "user": "jane@example.com"}],
    separators=(",", ":"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    events = parser.parse_args().events
    with tempfile.TemporaryDirectory() as folder:
        server = RedisServer(Path(folder)).start()
        try:
            client = server.client()
            log = EventLog(client, "0.bench", "gsocket:recovery:", 120, events)
            started = time.perf_counter()
            for _ in range(events):
                offset = log.append("site1.local", "doctype:ToDo", BODY)
                f'{BODY[:-1]},"{offset}"]'
            added = time.perf_counter() - started
            cpu = time.process_time()
            wall = time.perf_counter()
            log.flush()
            flush_cpu = time.process_time() - cpu
            flush_wall = time.perf_counter() - wall
            memory = client.memory_usage(log.key(log.node), samples=0) or 0
            alone = min(events, 2000)
            cpu = time.process_time()
            for _ in range(alone):
                log.append("site1.local", "doctype:ToDo", BODY)
                log.flush()
            alone_cpu = time.process_time() - cpu
        finally:
            server.stop()
    print(f"events: {events}")
    print(f"bridge, added per event: {added / events * 1e6:.2f} µs")
    print(f"copy to Redis, this process's CPU per event: {flush_cpu / events * 1e6:.2f} µs")
    print(f"copy to Redis, wall time per event: {flush_wall / events * 1e6:.2f} µs")
    print(f"Redis memory per logged event: {memory / events:.0f} bytes")
    print(f"copy to Redis of an event alone (a quiet bench): {alone_cpu / alone * 1e6:.0f} µs CPU")


if __name__ == "__main__":
    main()
