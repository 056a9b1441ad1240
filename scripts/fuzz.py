"""Fuzz gsocket's client side and print what held (figures for RELIABILITY.md).

    python -m scripts.fuzz --cases 3000 --seed 1

Starts its own redis-server, Frappe web stand-in and gsocket (with ``/_probe``) in a temporary
folder, runs :func:`tests.support.hardening.fuzz.run_fuzz`, then checks that the server is still up,
that its tables are back to the witness's, how much its memory grew, and that its log has no
traceback.  Exit status 0 when everything held.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tests.support.hardening.fuzz import run_fuzz, tracebacks_by_exception
from tests.support.hardening.kit import Stack

MIB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer; print a JSON summary; non-zero exit when something did not hold."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frames", type=int, default=6, help="frames per bad client, at most")
    parser.add_argument("--log", type=Path, help="write the server's log to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="gsocket-fuzz-") as tmp:
        stack = Stack.start(Path(tmp), limits={"events_per_second": 1000, "event_burst": 1000})
        try:
            before = stack.gsocket.wait_quiet(0)

            def progress(done: int, report: object) -> None:
                if done % 500 == 0:
                    print(f"{done} cases", file=sys.stderr, flush=True)

            report = run_fuzz(
                stack.gsocket.url,
                args.seed,
                args.cases,
                lambda e, m, r: stack.publish(e, m, r),
                frames_per_case=args.frames,
                progress=progress,
            )
            after = stack.gsocket.wait_quiet(0, timeout=60)
            log = stack.gsocket.log()
        finally:
            stack.stop()
    if args.log is not None:
        args.log.write_text(log)
    tracebacks = log.count("Traceback (most recent call last)")
    summary = {
        "seed": args.seed,
        **report.summary(),
        "http_5xx": sum(v for k, v in report.statuses.items() if k >= 500),
        "rss_before_mib": round(before["rss"] / MIB, 1),
        "rss_after_mib": round(after["rss"] / MIB, 1),
        "greenlets_before": before["greenlets"],
        "greenlets_after": after["greenlets"],
        "tables_after": {
            k: after[k] for k in ("eio_sessions", "sockets", "environ", "rooms", "namespaces")
        },
        "guard_dropped": after["dropped"],
        "tracebacks_in_log": tracebacks,
        "tracebacks_by_exception": dict(tracebacks_by_exception(log)),
    }
    print(json.dumps(summary, indent=1))
    held = (
        not report.hangs
        and not report.witness_misses
        and summary["http_5xx"] == 0
        and tracebacks == 0
        and after["rooms"] == 0
        and not after["namespaces"]
    )
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
