"""``gsocket serve`` with probes a profiling script can trigger from outside.

Run as ``python benchmarks/probe_server.py DUMP_DIR [--trace FRAMES] [--loop] -- <gsocket
serve args>``.  It patches with gevent as ``python -m gsocket`` does, optionally starts
tracemalloc, then serves.  ``SIGUSR1`` writes ``DUMP_DIR/dump-<k>.json`` (RSS, live objects
per type, greenlets and their saved stacks, tracemalloc totals) and, when tracing,
``dump-<k>.snapshot``; the file ``dump-<k>.done`` appears once both are complete.  ``SIGUSR2``
starts cProfile, the next ``SIGUSR2`` stops it and writes ``DUMP_DIR/cprofile-<k>.pstats``.

With ``--loop``, :class:`LoopProbe` watches the event loop from the start and ``SIGUSR1``
writes ``DUMP_DIR/loop-<k>.json`` instead (then ``loop-<k>.done``): what the loop did since
the previous ``SIGUSR1``, without the heap walk of a dump (which would itself be the longest
stretch of the loop), and where the Redis bridge's share of a delivery's latency goes.

It measures without changing gsocket: every probe runs only when asked, and the process is
otherwise ``gsocket serve``.
"""

from gevent import monkey

monkey.patch_all()

import collections  # noqa: E402
import cProfile  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import greenlet  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident bytes of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Probes:
    """What SIGUSR1 and SIGUSR2 do."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dumps = 0
        self.profiles = 0
        self.profile: cProfile.Profile | None = None

    def dump(self) -> None:
        self.dumps += 1
        k = self.dumps
        base = self.out / f"dump-{k}"
        gc.collect()
        types: collections.Counter[str] = collections.Counter()
        greenlets = stack_saved = greenlet_bytes = 0
        for obj in gc.get_objects():
            cls = type(obj)
            types[f"{cls.__module__}.{cls.__qualname__}"] += 1
            if isinstance(obj, greenlet.greenlet):
                greenlets += 1
                size = sys.getsizeof(obj)
                greenlet_bytes += size
                stack_saved += size - object.__sizeof__(obj)
        facts: dict[str, Any] = {
            "rss": rss(),
            "greenlets": greenlets,
            "greenlet_sizeof_total": greenlet_bytes,
            "greenlet_stack_saved_approx": stack_saved,
            "gc_objects": sum(types.values()),
            "types": dict(types.most_common(80)),
            "watchers": _watchers(),
        }
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            facts["traced"] = current
            tracemalloc.take_snapshot().dump(str(base) + ".snapshot")
        Path(str(base) + ".json").write_text(json.dumps(facts))
        Path(str(base) + ".done").write_text("")

    def toggle_profile(self) -> None:
        if self.profile is None:
            self.profile = cProfile.Profile()
            self.profile.enable()
            return
        self.profile.disable()
        self.profiles += 1
        self.profile.dump_stats(str(self.out / f"cprofile-{self.profiles}.pstats"))
        self.profile = None
        Path(self.out / f"cprofile-{self.profiles}.done").write_text("")


class LoopProbe:
    """How long the event loop stays away from its poll, and which greenlets keep it away.

    An event that arrives while the loop runs waits until the loop polls again, so the busy
    stretches between two polls are what a delivery can be delayed by inside the server.  A
    ``check`` watcher of the highest priority runs first after each poll and a ``prepare``
    watcher of the lowest runs last before the next one (after gevent's own callbacks), so
    the time between them is one stretch: wall time, and the thread's CPU time (less than the
    wall when the kernel ran something else on the core meanwhile).  ``greenlet.settrace``
    times every run of a greenlet between two switches, by the function the greenlet runs;
    the longest runs keep the innermost frames of the place they switched away from.
    """

    BUCKETS_MS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
    LONG_RUN_S = 0.0005
    KEEP = 25

    def __init__(self) -> None:
        loop = gevent.get_hub().loop
        self.hub = gevent.get_hub()
        self.bridge = BridgeProbe()
        self._check = loop.check(ref=False, priority=loop.MAXPRI)
        self._prepare = loop.prepare(ref=False, priority=loop.MINPRI)
        self._polled_at = self._polled_cpu = 0.0
        self._run_at = time.perf_counter()
        self._run_cpu = time.thread_time()
        self._running = "main"
        self.reset()
        self._check.start(self._polled)
        self._prepare.start(self._polling)
        greenlet.settrace(self._switched)
        self._collecting = 0.0
        gc.callbacks.append(self._collected)

    def reset(self) -> None:
        self.since = time.time()
        self.stretches = 0
        self.busy_s = self.busy_cpu_s = 0.0
        self.buckets = [0] * (len(self.BUCKETS_MS) + 1)
        self.longest: list[tuple[float, float, float]] = []
        self.runs: dict[str, list[float]] = {}
        self.long_runs: list[tuple[float, float, str, str]] = []
        self.collections: dict[int, list[float]] = {}

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        """Time each run of the cyclic collector: it holds the loop like any long run."""
        if phase == "start":
            self._collecting = time.perf_counter()
            return
        took = time.perf_counter() - self._collecting
        entry = self.collections.setdefault(info["generation"], [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += took
        entry[2] = max(entry[2], took)

    def _polled(self) -> None:
        self._polled_at = time.perf_counter()
        self._polled_cpu = time.thread_time()

    def _polling(self) -> None:
        if not self._polled_at:
            return
        wall = time.perf_counter() - self._polled_at
        cpu = time.thread_time() - self._polled_cpu
        self._polled_at = 0.0
        self.stretches += 1
        self.busy_s += wall
        self.busy_cpu_s += cpu
        ms = wall * 1000
        k = 0
        while k < len(self.BUCKETS_MS) and ms >= self.BUCKETS_MS[k]:
            k += 1
        self.buckets[k] += 1
        if len(self.longest) < self.KEEP or wall > self.longest[-1][0]:
            self.longest.append((wall, cpu, time.time()))
            self.longest.sort(reverse=True)
            del self.longest[self.KEEP :]

    def _switched(self, event: str, args: Any) -> None:
        if event not in ("switch", "throw"):
            return
        origin, target = args
        now = time.perf_counter()
        cpu = time.thread_time()
        wall, used = now - self._run_at, cpu - self._run_cpu
        self._run_at, self._run_cpu = now, cpu
        # named when it starts to run: a finished greenlet has lost its function
        name, self._running = self._running, _greenlet_name(target)
        if origin is self.hub:
            return  # the hub's runs include its poll: the stretches above measure it
        entry = self.runs.get(name)
        if entry is None:
            entry = self.runs[name] = [0, 0.0, 0.0, 0.0]
        entry[0] += 1
        entry[1] += wall
        entry[2] += used
        entry[3] = max(entry[3], wall)
        if wall >= self.LONG_RUN_S and (
            len(self.long_runs) < self.KEEP or wall > self.long_runs[-1][0]
        ):
            frames = []
            frame = origin.gr_frame  # where it switched away (the trace runs on the target's side)
            while frame is not None and len(frames) < 6:
                code = frame.f_code
                frames.append(f"{Path(code.co_filename).name}:{frame.f_lineno} {code.co_name}")
                frame = frame.f_back
            self.long_runs.append((wall, used, name, " < ".join(frames)))
            self.long_runs.sort(reverse=True)
            del self.long_runs[self.KEEP :]

    def take(self) -> dict[str, Any]:
        """What the loop did since the last :meth:`take`, then start over."""
        seconds = time.time() - self.since
        edges = [f"<{b:g}" for b in self.BUCKETS_MS] + [f">={self.BUCKETS_MS[-1]:g}"]
        facts = {
            "seconds": seconds,
            "stretches": self.stretches,
            "busy_s": self.busy_s,
            "busy_cpu_s": self.busy_cpu_s,
            "stretch_ms_buckets": dict(zip(edges, self.buckets, strict=True)),
            "longest_stretches_ms": [
                [round(w * 1000, 3), round(c * 1000, 3), t] for w, c, t in self.longest
            ],
            "greenlet_runs": {
                name: {
                    "count": n,
                    "wall_ms": round(w * 1000, 3),
                    "cpu_ms": round(c * 1000, 3),
                    "max_ms": round(m * 1000, 3),
                }
                for name, (n, w, c, m) in sorted(self.runs.items(), key=lambda kv: -kv[1][1])
            },
            "long_runs": [
                [round(w * 1000, 3), round(c * 1000, 3), name, where]
                for w, c, name, where in self.long_runs
            ],
        }
        facts["bridge"] = self.bridge.take()
        facts["gc"] = {
            str(gen): {"count": n, "total_ms": round(t * 1000, 3), "max_ms": round(m * 1000, 3)}
            for gen, (n, t, m) in sorted(self.collections.items())
        }
        self.reset()
        return facts


PUBLISHED_AT = re.compile(rb'"t": ?(\d+)')
"""The load generator's publish time in a benchmark message (``time.monotonic_ns() // 1000``
of the publishing process: the same clock as this one's)."""


class BridgeProbe:
    """Where a published event's time goes before and in the bridge: from its publication
    (the benchmark's ``t``) to the bridge's read of it, and from that read to the end of its
    batch's delivery (frames handed to the kernel); and how often the bridge let messages
    gather (``Bridge.gathers``).  Wraps the methods of :class:`gsocket.contract.bridge.Bridge`
    of the tree being served."""

    def __init__(self) -> None:
        from gsocket.contract import bridge

        self.reset()
        deliver_batch = bridge.Bridge.deliver_batch

        def timed_batch(this: Any, payloads: list[bytes]) -> None:
            now = time.monotonic_ns() // 1000
            for data in payloads:
                m = PUBLISHED_AT.search(data)
                if m is not None:
                    self.read_lag_us.append(now - int(m[1]))
            deliver_batch(this, payloads)
            self.batches += 1
            self.batch_us.append(time.monotonic_ns() // 1000 - now)

        bridge.Bridge.deliver_batch = timed_batch  # type: ignore[method-assign]
        declared = bridge.Bridge.__dict__.get("gathers")
        if declared is None:
            return
        static = isinstance(declared, staticmethod)
        decide = declared.__func__ if static else declared

        def counted(*args: Any) -> bool:
            answer = decide(*args)
            self.decisions += 1
            self.gathered += bool(answer)
            return answer

        bridge.Bridge.gathers = staticmethod(counted) if static else counted  # type: ignore[assignment]

    def reset(self) -> None:
        self.read_lag_us: list[int] = []
        self.batch_us: list[int] = []
        self.batches = self.decisions = self.gathered = 0

    def take(self) -> dict[str, Any]:
        facts = {
            "batches": self.batches,
            "gather_decisions": self.decisions,
            "gathered": self.gathered,
            "read_lag_us": _percentiles(self.read_lag_us),
            "batch_us": _percentiles(self.batch_us),
        }
        self.reset()
        return facts


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    values = sorted(values)
    n = len(values)
    out: dict[str, float] = {"n": n, "mean": sum(values) / n}
    for q in (50, 90, 99, 99.9):
        out[f"p{q:g}"] = values[min(n - 1, int(n * q / 100))]
    out["max"] = values[-1]
    return out


def _greenlet_name(g: Any) -> str:
    """What a greenlet runs: its function's qualified name (a spawned greenlet's ``_run``),
    and for a client event's or a socket's end the event's name (``Sessions._run_event``
    and ``Dispatcher.dispatch`` are given it among their arguments), so that a page
    reload's steps are told apart."""
    fn = getattr(g, "_run", None) or getattr(g, "run", None)
    fn = getattr(fn, "__func__", fn)
    name = getattr(fn, "__qualname__", None) or type(g).__name__
    for arg in getattr(g, "args", None) or ():
        if isinstance(arg, str) and arg in EVENTS:
            return f"{name}({arg})"
    return name


EVENTS = frozenset(
    {
        "connect",
        "disconnect",
        "doctype_subscribe",
        "doc_subscribe",
        "doc_open",
        "doc_close",
        "ping",
        "task_subscribe",
    }
)
"""Event names :func:`_greenlet_name` looks for among a greenlet's arguments."""


def _watchers() -> int | None:
    """Active libev/libuv watchers of the hub's loop (a reader per blocked socket)."""
    loop = gevent.get_hub().loop
    return getattr(loop, "activecnt", None)


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--")
    own, serve = argv[:split], argv[split + 1 :]
    out = Path(own[0])
    out.mkdir(parents=True, exist_ok=True)
    if "--trace" in own:
        tracemalloc.start(int(own[own.index("--trace") + 1]))
    probes = Probes(out)
    if "--loop" in own:
        loop = LoopProbe()

        def loop_dump() -> None:
            probes.dumps += 1
            base = out / f"loop-{probes.dumps}"
            Path(f"{base}.json").write_text(json.dumps(loop.take()))
            Path(f"{base}.done").write_text("")

        gevent.signal_handler(signal.SIGUSR1, loop_dump)
    else:
        gevent.signal_handler(signal.SIGUSR1, probes.dump)
    gevent.signal_handler(signal.SIGUSR2, probes.toggle_profile)
    from gsocket.cli import main as gsocket_main

    status = gsocket_main(["serve", *serve])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
