"""Where the memory of an idle websocket connection goes in gsocket.

    python benchmarks/memory_profile.py                    # N = 1000, RSS only, 3 rounds
    python benchmarks/memory_profile.py -n 2000 --trace 12 # tracemalloc, 12 frames a trace

Per round: a fresh gsocket (under ``probe_server.py``), 50 warm-up clients, then N idle
clients, a dump, N more, a dump.  Per connection = (dump at 2N - dump at N) / N: the server's
start-up, imports and pools cancel out.  Reported: RSS per connection, live objects per
connection by type, greenlets per connection, and with ``--trace`` the traced heap per
connection and its largest differences by line (``--group traceback`` for whole stacks).
tracemalloc slows every allocation and adds its own memory: take RSS from a run without it.
Memory figures do not depend on CPU load, so a shared machine does not distort them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.probing import Stand  # noqa: E402

WARM_UP = 50


def per_connection(a: dict[str, Any], b: dict[str, Any], n: int) -> dict[str, Any]:
    types = {
        name: (b["types"].get(name, 0) - a["types"].get(name, 0)) / n
        for name in set(a["types"]) | set(b["types"])
    }
    row = {
        "rss_bytes": (b["rss"] - a["rss"]) / n,
        "gc_objects": (b["gc_objects"] - a["gc_objects"]) / n,
        "greenlets": (b["greenlets"] - a["greenlets"]) / n,
        "greenlet_sizeof": (b["greenlet_sizeof_total"] - a["greenlet_sizeof_total"]) / n,
        "watchers": (b["watchers"] - a["watchers"]) / n if a.get("watchers") is not None else None,
        "types": {k: v for k, v in sorted(types.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.5},
    }
    if "traced" in a:
        row["traced_bytes"] = (b["traced"] - a["traced"]) / n
    return row


def top_allocations(first: Path, second: Path, n: int, group: str, limit: int) -> list[str]:
    """The largest growths of the traced heap between two snapshots, per connection."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    a = tracemalloc.Snapshot.load(str(first)).filter_traces(ignore)
    b = tracemalloc.Snapshot.load(str(second)).filter_traces(ignore)
    lines = []
    for stat in b.compare_to(a, group)[:limit]:
        where = stat.traceback.format(limit=6 if group == "traceback" else 1)
        head = f"{stat.size_diff / n:8.0f} B/conn {stat.count_diff / n:6.2f} blocks/conn"
        if group == "traceback":
            lines.append(head + "\n      " + "\n      ".join(where))
        else:
            lines.append(f"{head}  {where[0].strip()}")
    return lines


def one_round(n: int, trace: int, group: str, top: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gsocket-mem-") as tmp:
        stand = Stand(Path(tmp), trace_frames=trace)
        try:
            stand.open(WARM_UP)
            stand.settle()
            first, snap_a = stand.dump()
            stand.open(n)
            stand.settle()
            at_n, snap_n = stand.dump()
            stand.open(n)
            stand.settle()
            at_2n, snap_2n = stand.dump()
            row = per_connection(at_n, at_2n, n)
            row["rss_first_n"] = (at_n["rss"] - first["rss"]) / n
            if trace:
                row["top"] = top_allocations(snap_n, snap_2n, n, group, top)
            return row
        finally:
            stand.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=1000, help="clients per step (default 1000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--trace", type=int, default=0, help="tracemalloc frames (0: off)")
    p.add_argument("--group", default="lineno", choices=["lineno", "traceback", "filename"])
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--json", type=Path, help="write every round's figures here")
    args = p.parse_args()
    rows = [one_round(args.n, args.trace, args.group, args.top) for _ in range(args.rounds)]
    rss = [r["rss_bytes"] / 1024 for r in rows]
    print(f"N = {args.n} -> {2 * args.n} idle websocket clients, {args.rounds} rounds")
    print(
        f"RSS per connection: median {statistics.median(rss):.1f} KB "
        f"(min {min(rss):.1f}, max {max(rss):.1f}); first N: "
        + ", ".join(f"{r['rss_first_n'] / 1024:.1f}" for r in rows)
    )
    if args.trace:
        traced = [r["traced_bytes"] / 1024 for r in rows]
        print(f"traced heap per connection: median {statistics.median(traced):.1f} KB")
    last = rows[-1]
    print(
        f"per connection: {last['gc_objects']:.1f} gc-tracked objects, "
        f"{last['greenlets']:.2f} greenlets ({last['greenlet_sizeof']:.0f} B by getsizeof), "
        f"{last['watchers']} loop watchers"
    )
    print("live objects per connection by type (last round):")
    for name, count in last["types"].items():
        print(f"  {count:6.2f}  {name}")
    if args.trace:
        print(f"largest traced growths per connection ({args.group}, last round):")
        for line in last["top"]:
            print("  " + line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
