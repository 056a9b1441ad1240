"""CPU per event on the single-recipient path: ``publish_realtime(user=...)`` to ``user:<u>``.

    python benchmarks/userpath_profile.py              # 1000 clients, 5000 events/s, 3 rounds
    python benchmarks/userpath_profile.py --rate 0              # flat out
    python benchmarks/userpath_profile.py --pyspy /tmp/us.txt   # also sample the server with py-spy
    python benchmarks/userpath_profile.py --cprofile /tmp/us.pstats

Per round: a fresh gsocket (under ``probe_server.py``) with N idle clients (each in its own
``user:u<i>@example.com`` room), then ``--seconds`` of events published as Frappe does
(``{"event","message","room","namespace"}`` on ``events``), event k to client k mod N.  The
server's CPU (utime+stime from /proc) over the phase divided by the events is the figure;
every event must arrive exactly once and in order per client.  The machine is shared: compare
figures of one invocation (``--compare`` runs two working trees' gsocket interleaved).

``--steady 30`` waits that long after the clients connected before measuring, then measures
``--idle`` seconds without events first: each client is PINGed ``ping_interval`` (25 s) after
it connected, so a phase that starts sooner sees no pings at all, while run.py's per-user
phase (well after its connect storm) pays 10 000 clients' PING/PONG cycles, 400 a second,
on top of its events.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import processes  # noqa: E402
from harness.probing import Stand  # noqa: E402
from harness.publisher import Target  # noqa: E402

from gsocket.demo.processes import Child, wait_until  # noqa: E402


def user_system(pid: int) -> tuple[float, float]:
    """utime and stime of process ``pid`` in seconds (gsocket is one process)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / processes.CLK_TCK, int(fields[12]) / processes.CLK_TCK


NATIVE = ["--native"] if os.environ.get("PYSPY_NATIVE") else ["--nonblocking"]


def one_round(args: argparse.Namespace, round_: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="gsocket-user-") as tmp:
        stand = Stand(Path(tmp))
        try:
            stand.open(args.n)
            n = args.n
            route = lambda seq: Target(f"user:u{seq % n}@example.com")  # noqa: E731
            count = int(args.rate * args.seconds) if args.rate else args.flat_events
            stand.publisher.burst("warm", n, route)  # every client once: rooms and paths hot
            wait_until(
                lambda: stand.counts()["received"] >= n, 60, "warm-up events missing after 60 s"
            )
            idle_cores = None
            if args.steady:
                time.sleep(args.steady)
                cpu0, t0 = processes.cpu(stand.server.pid), time.monotonic()
                time.sleep(args.idle)
                idle_cores = (processes.cpu(stand.server.pid) - cpu0) / (time.monotonic() - t0)
            spy = None
            if args.pyspy:
                spy = Child(
                    "py-spy",
                    [
                        "py-spy",
                        "record",
                        "-p",
                        str(stand.server.pid),
                        "-r",
                        "250",
                        "-f",
                        "raw",
                        *NATIVE,
                        "-o",
                        f"{args.pyspy}.{round_}",
                        "-d",
                        str(int(args.seconds) + 1),
                    ],
                    log_path=Path(tmp) / "py-spy.log",
                )
                time.sleep(0.5)
            if args.cprofile:
                stand.profile()
            us0 = user_system(stand.server.pid)
            cpu0, t0 = processes.cpu(stand.server.pid), time.monotonic()
            machine0 = processes.machine_cpu()
            if args.rate:
                stand.publisher.fixed_rate("m", args.rate, count, lambda seq: route(seq + n))
            else:
                stand.publisher.burst("m", count, lambda seq: route(seq + n))
            wait_until(
                lambda: stand.counts()["received"] >= n + count, 120, "events missing after 120 s"
            )
            cpu1, t1 = processes.cpu(stand.server.pid), time.monotonic()
            us1 = user_system(stand.server.pid)
            machine1 = processes.machine_cpu()
            if args.cprofile:
                stand.profile()
                shutil.copy(stand.profile_done(), f"{args.cprofile}.{round_}")
            if spy is not None:
                spy.proc.wait(30)
            counts = stand.counts()
            busy = (machine1[0] - machine0[0]) / max(1e-9, machine1[1] - machine0[1])
            return {
                "us_per_event": (cpu1 - cpu0) / count * 1e6,
                "user_us": (us1[0] - us0[0]) / count * 1e6,
                "system_us": (us1[1] - us0[1]) / count * 1e6,
                "events": count,
                "seconds": t1 - t0,
                "received": counts["received"] - n,
                "duplicates": counts["duplicates"],
                "out_of_order": counts["out_of_order"],
                "machine_busy": busy,
                "idle_cores": idle_cores,
            }
        finally:
            stand.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=1000, help="clients (default 1000)")
    p.add_argument("--rate", type=float, default=5000, help="events/s; 0: flat out")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--flat-events", type=int, default=50_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--steady",
        type=float,
        default=0.0,
        help="seconds to wait after connecting, so that every client is in its ping cycle",
    )
    p.add_argument("--idle", type=float, default=5.0, help="idle seconds measured (--steady)")
    p.add_argument("--pyspy", help="py-spy raw output prefix, one per round (PYSPY_NATIVE=1: C)")
    p.add_argument("--cprofile", help="cProfile pstats prefix (one file per round)")
    args = p.parse_args()
    rows = [one_round(args, r) for r in range(args.rounds)]
    us = [r["us_per_event"] for r in rows]
    what = f"{args.rate:g} events/s" if args.rate else "flat out"
    print(f"{args.n} clients, {what}, {args.rounds} rounds")
    for r in rows:
        print(
            f"  {r['us_per_event']:6.1f} us/event (user {r['user_us']:.1f}, system "
            f"{r['system_us']:.1f})  {r['events']} events in {r['seconds']:.1f} s, "
            f"received {r['received']}, dup {r['duplicates']}, out of order {r['out_of_order']}, "
            f"machine {100 * r['machine_busy']:.0f} % busy"
            + (f", idle before {r['idle_cores']:.4f} cores" if r["idle_cores"] is not None else "")
        )
    print(f"median {statistics.median(us):.1f} us/event (min {min(us):.1f}, max {max(us):.1f})")
    if args.cprofile:
        stats = pstats.Stats(*(f"{args.cprofile}.{r}" for r in range(args.rounds)))
        stats.sort_stats("tottime").print_stats(25)
    bad = [r for r in rows if r["received"] != r["events"] or r["duplicates"] or r["out_of_order"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
