"""``gsocket serve`` with probes a profiling script can trigger from outside.

Run as ``python benchmarks/probe_server.py DUMP_DIR [--trace FRAMES] -- <gsocket serve args>``.
It patches with gevent as ``python -m gsocket`` does, optionally starts tracemalloc, then
serves.  ``SIGUSR1`` writes ``DUMP_DIR/dump-<k>.json`` (RSS, live objects per type, greenlets
and their saved stacks, tracemalloc totals) and, when tracing, ``dump-<k>.snapshot``; the
file ``dump-<k>.done`` appears once both are complete.  ``SIGUSR2`` starts cProfile, the next
``SIGUSR2`` stops it and writes ``DUMP_DIR/cprofile-<k>.pstats``.

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
import signal  # noqa: E402
import sys  # noqa: E402
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
    gevent.signal_handler(signal.SIGUSR1, probes.dump)
    gevent.signal_handler(signal.SIGUSR2, probes.toggle_profile)
    from gsocket.cli import main as gsocket_main

    status = gsocket_main(["serve", *serve])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
