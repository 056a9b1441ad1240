"""Connect/disconnect churn against a real gsocket, and what it holds afterwards.

    python -m scripts.churn --cycles 50000 --workers 8

Starts its own redis-server, Frappe web stand-in and gsocket (with ``/_probe``) in a temporary
folder, runs :func:`tests.support.hardening.churn.run_churn` (both transports, both sites, a new
room
per cycle, one client in ten vanishing without a goodbye), samples the server every
``--sample-every`` cycles, then waits for python-engineio to reap the closed sessions and
prints before/after tables as JSON.  Exit status 0 when nothing stayed behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.support.hardening.churn import run_churn
from tests.support.hardening.fuzz import tracebacks_by_exception
from tests.support.hardening.kit import Stack

MIB = 1024 * 1024
KEYS = (
    "eio_sessions",
    "sockets",
    "environ",
    "rooms",
    "namespaces",
    "eio_to_sid",
    "callbacks",
    "guard_addresses",
    "guard_buckets",
    "guard_websockets",
    "greenlets",
)


def _row(probe: dict[str, Any]) -> dict[str, Any]:
    return {**{k: probe[k] for k in KEYS}, "rss_mib": round(probe["rss"] / MIB, 1)}


def main(argv: list[str] | None = None) -> int:
    """Run the churn; print a JSON summary; non-zero exit when something stayed behind."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--sample-every", type=int, default=5000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="gsocket-churn-") as tmp:
        stack = Stack.start(Path(tmp), hardapp=False, log_level="ERROR")
        try:
            server = stack.gsocket
            run_churn(server.url, args.warmup, workers=args.workers)
            warm = server.wait_quiet(0, timeout=120)

            def sample(done: int) -> dict[str, Any]:
                return {"cycles": done, **_row(server.probe())}

            def progress(done: int) -> None:
                if done % 5000 == 0:
                    print(f"{done} cycles", file=sys.stderr, flush=True)

            report = run_churn(
                server.url,
                args.cycles,
                workers=args.workers,
                sample=sample,
                sample_every=args.sample_every,
                progress=progress,
            )
            settled = server.wait_quiet(0, timeout=120)
            tracebacks = tracebacks_by_exception(server.log())
        finally:
            stack.stop()
    summary = {
        "cycles": report.cycles,
        "seconds": round(report.seconds, 1),
        "cycles_per_second": round(report.cycles / report.seconds, 1),
        "outcomes": dict(report.outcomes),
        "errors": dict(report.errors),
        "after_warmup": _row(warm),
        "during": report.samples,
        "after_reaping": _row(settled),
        "manager_tables_after_warmup": warm["manager_tables"],
        "manager_tables_after_reaping": settled["manager_tables"],
        "tracebacks_by_exception": dict(tracebacks),
    }
    print(json.dumps(summary, indent=1))
    held = (
        all(settled[k] == warm[k] == 0 for k in KEYS if k not in ("namespaces", "greenlets"))
        and settled["namespaces"] == []
        and settled["rss"] - warm["rss"] < 16 * MIB
    )
    return 0 if held and not report.errors and not tracebacks else 1


if __name__ == "__main__":
    sys.exit(main())
