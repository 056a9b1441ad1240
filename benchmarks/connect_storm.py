"""Server CPU per connect of gsocket trees, interleaved, with run.py's connect storm only.

``run.py`` measures a connect storm and then every other scenario (a minute or more per case);
comparing two revisions of the connect path needs many short rounds instead.  This script runs
``run.py``'s own :meth:`Case.connect_storm` (same web stand-in, same loadgen, same warm-up and
concurrency) against a fresh ``gsocket serve`` of each given tree in turn, A B A B ...::

    python benchmarks/connect_storm.py --clients 2000 --rounds 3 --trees /tmp/base,.

and prints the CPU per connect of every case and each tree's median and range.  ``--pyspy
OUT`` samples the server of the first case with py-spy during the storm (``--native`` for the
C side), ``--strace OUT`` counts its system calls (``strace -c -f``); both slow the server,
so a profiled case's CPU is not comparable.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import run as bench
from harness import processes
from harness.loadgen import Loadgen

from gsocket.demo.processes import Child

log = logging.getLogger("gsocket.bench.connect")


def attach(tool: str, pid: int, out: Path, native: bool, log_dir: Path) -> Child:
    """Start sampling (py-spy) or counting system calls (strace) of ``pid``."""
    if tool == "pyspy":
        argv = ["py-spy", "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(out)]
        argv += ["--native"] if native else ["--nonblocking"]
    else:
        argv = ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)]
    child = processes.start(tool, argv, log_dir)
    time.sleep(1.0)  # attached before the storm starts
    return child


def storm(run: bench.Run, tree: Path, n: int, round_: int, probe: dict[str, Any] | None) -> dict:
    """One fresh server of ``tree``, one connect storm of ``n`` clients; its result."""
    bench.REPO = tree  # Case.launch puts REPO first on the server's PYTHONPATH
    case = bench.Case(run, "gsocket", n, round_)
    tool = None
    try:
        case.start_server()
        case.lg = Loadgen(bench.BENCH_ROOT, run.log_dir, run.settings.workers, f"lg-{round_}")
        time.sleep(run.settings.settle_s)
        if probe is not None:
            assert case.proc is not None
            pid = case.proc.children[0].pid
            tool = attach(probe["tool"], pid, probe["out"], probe["native"], run.log_dir)
        case.connect_storm()
    finally:
        if tool is not None:
            tool.send(signal.SIGINT)  # both write their output when interrupted
            tool.wait_stopped(60)
        if case.lg is not None:
            case.lg.close()
        if case.proc is not None:
            case.proc.stop(timeout=30)
    res = case.result["connect"]
    return {
        "tree": str(tree),
        "round": round_,
        "n": n,
        "connected": res["connected"],
        "failed": res["failed"],
        "us_per_connect": res["server_us_per_connect"],
        "connects_per_s": res["connects_per_s"],
        "other_cores": res["other_cores"],
        "loadavg": processes.loadavg(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--trees", default=str(bench.REPO), help="comma-separated gsocket trees")
    p.add_argument("--pyspy", type=Path, help="py-spy raw output of the first case's storm")
    p.add_argument("--strace", type=Path, help="strace -c output of the first case's storm")
    p.add_argument("--native", action="store_true", help="py-spy with --native")
    p.add_argument("--out", type=Path, help="append each case as a JSON line here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    processes.ensure_npm(bench.BENCH_ROOT / "loadgen")
    tmp = Path(tempfile.mkdtemp(prefix="gsocket-connect-"))
    st = bench.Settings(sizes=[args.clients], servers=["gsocket"], quick=False, results_dir=tmp)
    log_dir = tmp / "raw"
    log_dir.mkdir()
    probe = None
    if args.pyspy or args.strace:
        tool = "pyspy" if args.pyspy else "strace"
        probe = {"tool": tool, "out": args.pyspy or args.strace, "native": args.native}
    run = bench.Run(st, log_dir, tmp, {})
    cases = []
    try:
        for round_ in range(1, args.rounds + 1):
            for tree in trees:
                case = storm(run, tree, args.clients, round_, probe)
                probe = None
                cases.append(case)
                log.info("%s round %d: %.0f us/connect", tree, round_, case["us_per_connect"])
                if args.out:
                    with args.out.open("a") as f:
                        f.write(json.dumps(case) + "\n")
    finally:
        run.close()
        shutil.rmtree(tmp, ignore_errors=True)
    for tree in trees:
        values = [c["us_per_connect"] for c in cases if c["tree"] == str(tree)]
        print(
            f"{tree}: median {statistics.median(values):.0f} us/connect "
            f"({min(values):.0f}-{max(values):.0f}) over {len(values)} rounds: "
            + ", ".join(f"{v:.0f}" for v in values)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
