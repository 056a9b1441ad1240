"""Redis faults against a real gsocket: malformed messages, then repeated outages.

    python -m scripts.redis_faults --bad 20000 --outages 5

Starts its own redis-server, Frappe web stand-in and gsocket in a temporary folder.  Phase 1
publishes ``--bad`` malformed messages (seeded) with a good one every tenth, and checks the
witness client received every good one, in order.  Phase 2 kills Redis ``--outages`` times
for ``--down`` seconds each under a steady stream of publishes (one per 5 ms) and counts, per
outage, what was delivered, what was lost because gsocket was not subscribed yet, and what
failed at the publisher because Redis was down.  Prints JSON; exit status 0 when it held.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from gsocket.demo.processes import wait_until
from tests.support.hardening.kit import SITE, Stack, desk_headers
from tests.support.hardening.redisfaults import bad_message, good_message, run_outage
from tests.support.pyclient import PyClient


def main(argv: list[str] | None = None) -> int:
    """Run both phases; print a JSON summary; non-zero exit when something did not hold."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bad", type=int, default=20_000)
    parser.add_argument("--outages", type=int, default=5)
    parser.add_argument("--down", type=float, default=2.0, help="seconds Redis stays down")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="gsocket-redis-") as tmp:
        stack = Stack.start(Path(tmp), hardapp=False, log_level="WARNING")
        client = PyClient(["websocket"])
        try:
            client.connect(stack.gsocket.url, f"/{SITE}", desk_headers())
            publisher = stack.redis.client()
            rng = random.Random(args.seed)
            good = 0
            started = time.monotonic()
            for i in range(args.bad):
                publisher.publish("events", bad_message(rng))
                if i % 10 == 0:
                    publisher.publish("events", good_message(good))
                    good += 1
                if i % 200 == 199:
                    # Paced: a publisher far ahead of the bridge is Redis's matter (it drops
                    # a subscriber whose backlog passes client-output-buffer-limit pubsub).
                    wait_until(lambda g=good: len(client.events("seq")) >= g, 60, "good lost")
            wait_until(lambda: len(client.events("seq")) >= good, 120, "good messages lost")
            bad_phase = {
                "malformed_published": args.bad,
                "good_published": good,
                "good_received_in_order": [a[0]["n"] for a in client.events("seq")]
                == list(range(good)),
                "seconds": round(time.monotonic() - started, 1),
            }
            publisher.close()
            outages = []
            for _ in range(args.outages):
                # Each outage numbers its messages from 0: look only at what came after.
                start = len(client.received)

                def received(start: int = start) -> list[int]:
                    return [a[0]["n"] for e, _, a in client.received[start:] if e == "seq"]

                report = run_outage(stack.redis, stack.gsocket.url, received, args.down)
                outages.append(report.summary())
            log = stack.gsocket.log()
        finally:
            client.disconnect()
            stack.stop()
    summary = {
        "malformed_messages": bad_phase,
        "outages": outages,
        "tracebacks_in_log": log.count("Traceback (most recent call last)"),
        "malformed_skipped_log_lines": log.count("skipped a malformed message"),
        "bridge_resubscribed_outside_outages": log.count("lost the Redis connection")
        - len(outages),
    }
    print(json.dumps(summary, indent=1))
    held = (
        bad_phase["good_received_in_order"]
        and summary["tracebacks_in_log"] == 0
        and all(o["received_by_client"] == o["delivered_to_bridge"] for o in outages)
    )
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
