"""Where gsocket's CPU goes in the desk mix, and at a low fixed fan-out rate.

    python benchmarks/deskmix_profile.py                        # 1000 clients, 3 rounds
    python benchmarks/deskmix_profile.py --pyspy /tmp/dm        # py-spy of each mix phase
    PYSPY_NATIVE=1 python benchmarks/deskmix_profile.py --pyspy /tmp/dm   # with C frames
    python benchmarks/deskmix_profile.py --cprofile /tmp/dm     # cProfile of each mix phase
    python benchmarks/deskmix_profile.py --loop /tmp/dm         # the event loop's busy stretches
    python benchmarks/deskmix_profile.py --strace /tmp/dm       # strace -c of each mix phase
    python benchmarks/deskmix_profile.py --compare /work/main   # that tree and this, interleaved

Per round, a fresh gsocket under ``probe_server.py`` (from this tree, or from each tree of
``--compare`` in turn) and the benchmark's load generator, driven by ``run.py``'s own
scenarios, so the load is the one the benchmark offers: the connect storm, the doc room,
``--idle`` seconds of nothing (the cost of holding the connections: pings, timers), the
fixed-rate fan-out to the doc room (``--rate`` deliveries/s), then the desk mix
(``--mix``, ``--mix-seconds``).  The server's CPU (utime and stime from /proc) is reported
per phase; a profile covers the mix phase only.  The machine is shared: compare medians of
the rounds of one invocation, with their spread.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402
from harness import processes  # noqa: E402
from harness.mix import Mix  # noqa: E402

from gsocket.demo.processes import Child, wait_until  # noqa: E402

log = logging.getLogger("gsocket.bench.deskmix")


def user_system(pid: int) -> tuple[float, float]:
    """utime and stime of process ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / processes.CLK_TCK, int(fields[12]) / processes.CLK_TCK


def on_cpu(pid: int) -> float:
    """Seconds the threads of process ``pid`` ran, from the scheduler's own clock
    (``/proc/<pid>/task/*/schedstat``): utime and stime are sampled at the tick, this is not."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError):
            continue
    return total / 1e9


class ProbedCase(bench.Case):
    """``run.py``'s gsocket case, with the server under ``probe_server.py`` from ``tree``."""

    def __init__(self, run: bench.Run, n: int, round_: int, tree: Path, opts: argparse.Namespace):
        super().__init__(run, "gsocket", n, round_)
        self.tree = tree
        self.opts = opts
        self.dump_dir = Path(tempfile.mkdtemp(prefix="gsocket-deskmix-dumps-"))
        self.profiles = 0
        self.phases: dict[str, dict[str, float]] = {}

    def launch(self, port: int, index: int) -> processes.Child:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.tree), env.get("PYTHONPATH")]))
        argv = [sys.executable, str(bench.BENCH_ROOT / "probe_server.py"), str(self.dump_dir)]
        argv += ["--loop"] if self.opts.loop else []
        argv += ["--", "--bench", str(self.run.bench), "--port", str(port)]
        name = f"gsocket-{self.tree.name}-r{self.result['round']}"
        return processes.start(name, argv, self.run.log_dir, cwd=self.run.bench / "sites", env=env)

    def server_pid(self) -> int:
        """The one gsocket process of this case (run.py measures a server as a group)."""
        assert self.proc is not None
        return self.proc.children[0].pid

    def measured(self, name: str, body: Any) -> None:
        """Server CPU (user, system) over ``body()``."""
        pid = self.server_pid()
        u0, s0 = user_system(pid)
        r0 = on_cpu(pid)
        t0 = time.monotonic()
        body()
        u1, s1 = user_system(pid)
        r1 = on_cpu(pid)
        wall = time.monotonic() - t0
        self.phases[name] = {
            "wall_s": wall,
            "user_cores": (u1 - u0) / wall,
            "system_cores": (s1 - s0) / wall,
            "cores": (u1 - u0 + s1 - s0) / wall,
            "sched_cores": (r1 - r0) / wall,
        }

    def scenarios(self) -> None:
        assert self.proc is not None and self.lg is not None
        time.sleep(self.st.settle_s)
        self.connect_storm()
        self.subscribe_doc()
        self.warm_up_fanout()
        time.sleep(self.st.settle_s)
        self.measured("idle", lambda: time.sleep(self.opts.idle))
        if self.opts.rate:
            self.measured("fanout", self.fanout_fixed)
        self.profile_publishing()
        self.measured("mix", self.desk_mix)
        self.lg.call("disconnect")

    def profile_publishing(self) -> None:
        """Profile the mix while its events are published (from the loadgen's
        ``phase_start`` of the mix to its ``churn_stop``), not while clients subscribe."""
        assert self.lg is not None
        call = self.lg.call
        spy: list[Child | None] = []

        def watched(cmd: str, **args: Any) -> dict[str, Any]:
            if cmd == "churn_stop" and spy:
                self.stop_profile(spy.pop())
            answer = call(cmd, **args)
            if cmd == "phase_start" and args.get("phase") == "mix":
                spy.append(self.start_profile())
            return answer

        self.lg.call = watched  # type: ignore[method-assign]

    def start_profile(self) -> Child | None:
        assert self.proc is not None
        if self.opts.cprofile:
            os.kill(self.server_pid(), bench.signal.SIGUSR2)
        if self.opts.loop:
            os.kill(self.server_pid(), bench.signal.SIGUSR1)  # loop-1: everything before
        if self.opts.strace:
            out = f"{self.opts.strace}.{self.tag()}"
            argv = ["strace", "-c", "-f", "-p", str(self.server_pid()), "-o", out]
            return Child("strace", argv, log_path=Path(f"{out}.log"))
        if not self.opts.pyspy:
            return None
        argv = [
            "py-spy",
            "record",
            "-p",
            str(self.server_pid()),
            "-r",
            os.environ.get("PYSPY_RATE", "200"),
            "-f",
            "raw",
        ]
        argv += ["--native"] if os.environ.get("PYSPY_NATIVE") else ["--nonblocking"]
        argv += ["-o", f"{self.opts.pyspy}.{self.tag()}"]
        return Child("py-spy", argv, log_path=Path(f"{self.opts.pyspy}.{self.tag()}.log"))

    def stop_profile(self, spy: Child | None) -> None:
        assert self.proc is not None
        if spy is not None:
            spy.send(bench.signal.SIGINT)
            spy.wait_stopped(30)
        if self.opts.cprofile:
            os.kill(self.server_pid(), bench.signal.SIGUSR2)
            done = self.dump_dir / "cprofile-1.done"
            wait_until(done.exists, 60, "no profile from the server")
            shutil.copy(self.dump_dir / "cprofile-1.pstats", f"{self.opts.cprofile}.{self.tag()}")
        if self.opts.loop:
            os.kill(self.server_pid(), bench.signal.SIGUSR1)
            done = self.dump_dir / "loop-2.done"
            wait_until(done.exists, 60, "no loop figures from the server")
            shutil.copy(self.dump_dir / "loop-2.json", f"{self.opts.loop}.{self.tag()}")

    def tag(self) -> str:
        return f"{self.tree.name}.{self.result['round']}"


def folded_top(paths: list[str], count: int = 25) -> list[str]:
    """The frames py-spy saw most, by own samples and by samples under them (inclusive),
    from its raw (folded) output: ``frame;frame;... N`` per line."""
    own: dict[str, int] = {}
    under: dict[str, int] = {}
    total = 0
    for path in paths:
        for line in Path(path).read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack:
                continue
            samples = int(n)
            total += samples
            frames = stack.split(";")
            own[frames[-1]] = own.get(frames[-1], 0) + samples
            for f in set(frames):
                under[f] = under.get(f, 0) + samples
    out = [f"  {total} samples"]
    for title, table in (("own", own), ("inclusive", under)):
        out.append(f"  by {title}:")
        for f, n in sorted(table.items(), key=lambda kv: -kv[1])[:count]:
            out.append(f"    {100 * n / max(1, total):5.1f} %  {f}")
    return out


def loop_summary(paths: list[str], count: int = 12) -> list[str]:
    """The event loop's busy stretches and longest greenlet runs over the mix phases of
    several rounds (``probe_server.py --loop``)."""
    got = [json.loads(Path(p).read_text()) for p in paths]
    seconds = sum(g["seconds"] for g in got)
    stretches = sum(g["stretches"] for g in got)
    busy = sum(g["busy_s"] for g in got)
    busy_cpu = sum(g["busy_cpu_s"] for g in got)
    buckets: dict[str, int] = {}
    runs: dict[str, list[float]] = {}
    for g in got:
        for edge, n in g["stretch_ms_buckets"].items():
            buckets[edge] = buckets.get(edge, 0) + n
        for name, r in g["greenlet_runs"].items():
            entry = runs.setdefault(name, [0, 0.0, 0.0, 0.0])
            entry[0] += r["count"]
            entry[1] += r["wall_ms"]
            entry[2] += r["cpu_ms"]
            entry[3] = max(entry[3], r["max_ms"])
    per_s = 1 / max(seconds, 1e-9)
    out = [
        f"  {seconds:.1f} s, {stretches} stretches ({stretches * per_s:.0f}/s), "
        f"busy {busy * per_s:.3f} of the time (on-CPU {busy_cpu * per_s:.3f})",
        "  stretches by length (ms): " + "  ".join(f"{k} {v}" for k, v in buckets.items()),
    ]
    longest = sorted((s for g in got for s in g["longest_stretches_ms"]), reverse=True)[:count]
    out.append(
        "  longest stretches (wall ms / cpu ms): "
        + ", ".join(f"{w:.2f}/{c:.2f}" for w, c, _ in longest)
    )
    out.append("  greenlet runs (count, wall ms, cpu ms, longest ms):")
    for name, (n, w, c, m) in sorted(runs.items(), key=lambda kv: -kv[1][1])[:count]:
        out.append(f"    {n:7d} {w:9.1f} {c:9.1f} {m:7.2f}  {name}")
    for g in got:
        b = g.get("bridge", {})
        lag, batch = b.get("read_lag_us", {}), b.get("batch_us", {})
        out.append(
            f"  bridge: {b.get('batches', 0)} reads, gathered after {b.get('gathered', 0)} of "
            f"{b.get('gather_decisions', 0)}; publish->read us p50 {lag.get('p50')} p90 "
            f"{lag.get('p90')} p99 {lag.get('p99')} max {lag.get('max')}; read->sent us p50 "
            f"{batch.get('p50')} p99 {batch.get('p99')} max {batch.get('max')}"
        )
    for g in got:
        out.append(
            "  cyclic collector by generation: "
            + (", ".join(f"gen{k} {v}" for k, v in g.get("gc", {}).items()) or "none")
        )
    out.append("  longest greenlet runs (wall ms / cpu ms, greenlet, where it switched away):")
    for w, c, name, where in sorted((r for g in got for r in g["long_runs"]), reverse=True)[:count]:
        out.append(f"    {w:6.2f}/{c:5.2f}  {name}  {where}")
    return out


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Median (min-max) of each figure over the rounds of one tree."""

    def cell(values: list[float], fmt: str) -> str:
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    out = []
    for phase in ("idle", "fanout", "mix"):
        got = [r["phases"][phase] for r in rows if phase in r.get("phases", {})]
        if not got:
            continue
        out.append(
            f"  {phase:7s} cores {cell([g['cores'] for g in got], '.3f')}"
            f"  user {cell([g['user_cores'] for g in got], '.3f')}"
            f"  system {cell([g['system_cores'] for g in got], '.3f')}"
            f"  on-cpu {cell([g['sched_cores'] for g in got], '.3f')}"
        )
    fixed = [r["fanout_fixed"] for r in rows if "fanout_fixed" in r]
    if fixed:
        us = [f["server_us_per_delivery"] for f in fixed]
        p99 = [f["latency"].get("p99_ms") or 0.0 for f in fixed]
        out.append(
            f"  fan-out at the fixed rate: us/delivery {cell(us, '.2f')}  p99 ms {cell(p99, '.2f')}"
        )
    mixes = [r["mix"] for r in rows if "mix" in r]
    for k, m in enumerate(mixes, 1):
        lat, rel = m["latency"], m.get("reconnect_latency") or {}
        out.append(
            f"  round {k}: mix cores {m['server_cores']:.3f}  p50 {lat.get('p50_ms')} ms"
            f"  p99 {lat.get('p99_ms')} ms  p99.9 {lat.get('p999_ms')} ms"
            f"  reconnects {m['reconnects']} (p99 {rel.get('p99_ms')} ms)"
        )
    if mixes:
        out.append(
            f"  mix: offered-load cores {cell([m['server_cores'] for m in mixes], '.3f')}"
            f"  p99 ms {cell([m['latency'].get('p99_ms') or 0.0 for m in mixes], '.2f')}"
            f"  reconnects {cell([float(m['reconnects']) for m in mixes], '.0f')}"
            f"  lost+dup {sum(m['lost'] + m['duplicates'] for m in mixes)}"
        )
    return out


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=1000, help="clients (default 1000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--idle", type=float, default=5.0, help="seconds of the idle phase")
    p.add_argument(
        "--rate", type=float, default=20_000.0, help="fixed fan-out deliveries/s (0: skip)"
    )
    p.add_argument("--seconds", type=float, default=10.0, help="length of the fixed fan-out phase")
    p.add_argument("--mix", default="", help="the desk mix (run.py --mix)")
    p.add_argument("--mix-seconds", type=float, default=10.0)
    p.add_argument("--compare", type=Path, help="another working tree, run interleaved first")
    p.add_argument("--pyspy", help="py-spy raw output prefix (one file per round and tree)")
    p.add_argument("--cprofile", help="cProfile pstats prefix (one file per round and tree)")
    p.add_argument("--strace", help="strace -c output prefix (one file per round and tree)")
    p.add_argument("--loop", help="loop-probe output prefix (one JSON file per round and tree)")
    opts = p.parse_args()
    st = bench.Settings(sizes=[opts.n], servers=["gsocket"], quick=False, results_dir=Path("/tmp"))
    st.mix = Mix.parse(opts.mix).text()
    st.mix_seconds = opts.mix_seconds
    st.rate = opts.rate
    st.fixed_seconds = opts.seconds
    processes.ensure_npm(bench.BENCH_ROOT / "loadgen")
    trees = ([opts.compare.resolve()] if opts.compare else []) + [bench.REPO]
    rows: dict[Path, list[dict[str, Any]]] = {t: [] for t in trees}
    tmp = Path(tempfile.mkdtemp(prefix="gsocket-deskmix-"))
    log_dir = tmp / "logs"
    log_dir.mkdir()
    run = bench.Run(st, log_dir, tmp, {})
    try:
        for round_ in range(1, opts.rounds + 1):
            for tree in trees:
                case = ProbedCase(run, opts.n, round_, tree, opts)
                result = case.execute()
                result["phases"] = case.phases
                rows[tree].append(result)
                if result.get("error"):
                    log.error("%s round %d: %s", tree, round_, result["error"])
                log.info("%s round %d: %s", tree, round_, case.phases)
    finally:
        run.close()
    print(f"{opts.n} clients, {opts.rounds} rounds, mix {st.mix}, fan-out {opts.rate:g}/s")
    for tree in trees:
        print(f"{tree}:")
        print("\n".join(summary([r for r in rows[tree] if not r.get("error")])))

    def cprofile_top(files: list[str]) -> list[str]:
        text = io.StringIO()
        pstats.Stats(*files, stream=text).sort_stats("tottime").print_stats(30)
        return text.getvalue().splitlines()

    for prefix, what, report in (
        (opts.pyspy, "py-spy", folded_top),
        (opts.loop, "event loop", loop_summary),
        (opts.cprofile, "cProfile", cprofile_top),
    ):
        for tree in trees if prefix else ():
            files = [f"{prefix}.{tree.name}.{r}" for r in range(1, opts.rounds + 1)]
            files = [f for f in files if Path(f).exists()]
            if files:
                print(f"{what} of the mix phase, {tree}:")
                print("\n".join(report(files)))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if any(r.get("error") for rs in rows.values() for r in rs) else 0


if __name__ == "__main__":
    sys.exit(main())
