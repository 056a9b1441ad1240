"""How a batch of concurrent ``frappe_context=True`` events compares with one DB query.

Usage (from the repository root)::

    python benchmarks/frappe_ctx_concurrency.py                      # sizes 200 and 1000
    python benchmarks/frappe_ctx_concurrency.py --sizes 200 --out results.jsonl
    python benchmarks/frappe_ctx_concurrency.py --sizes 1000 --db-pool-size 0 --batches 2
    python benchmarks/frappe_ctx_concurrency.py --sizes 1000 --db-pool-size 1000 --batches 2

For each batch size N, everything is started fresh: a private MariaDB (``max_connections``
well above N), Redis, the web stand-in of the tests, a bench with one site that has the
``ctxapp`` fixture app installed, Frappe-shaped by tests/fake_frappe, and a real
``python -m gsocket serve`` process.  Python Socket.IO clients (websocket) then emit N
``db_sleep(0.2)`` events at once.  Each event opens a Frappe context, runs
``SELECT SLEEP(0.2)`` on the site's database, closes the context and acknowledges.

If the events run concurrently, the batch takes a little more than 0.2 s.  Whatever it takes
beyond that, divided by N, is the overhead per event of running it in a context (plus the
Socket.IO round trip).  The sequential cost of opening and closing one context is measured
next to it on the same database by ``benchmarks/frappe_ctx_cost.py``'s ``measure``.

``--db-pool-size`` sets ``gsocket.db_pool_size`` (0: one connection opened and closed per
event, as before the pool); ``--batches`` fires that many batches on the same server, so a
pool that the first batch filled serves the next.

benchmarks/run.py can call :func:`run`.
"""

# ruff: noqa: E402 - the repository must be on sys.path before its modules are imported
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

BENCH_ROOT = Path(__file__).resolve().parent
REPO = BENCH_ROOT.parent
FAKE = REPO / "tests" / "fake_frappe"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import processes
from gsocket.config import Limits
from gsocket.demo.processes import Child
from gsocket.demo.redis_server import RedisServer
from tests.support.bench import GsocketProcess, desk_headers, make_bench
from tests.support.mariadb import MariaDBServer
from tests.support.pyclient import PyClient
from tests.support.webstub import WebStub

SITE = "ctxbench.local"
APPS = ["frappe", "ctxapp"]
SID, USER = "sid-admin", "Administrator"
EVENT = "db_sleep"
QUERY_S = 0.2
DEFAULT_SIZES = [200, 1000]
# Events one client sends in the batch: well inside gsocket's default per-socket burst, so
# the token bucket (events_per_second / event_burst) never drops one, and no limit needs
# raising in the bench configuration.
EVENTS_PER_CLIENT = min(20, Limits().event_burst // 2)
CONNECT_WORKERS = 8
ACK_TIMEOUT_S = 120.0
COST_EVENTS = 200

_SEQUENTIAL_CHILD = """
import json, sys
import frappe_ctx_cost
print(json.dumps(frappe_ctx_cost.measure(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
"""


def _append(out: Path | None, result: dict[str, Any]) -> None:
    """Add one result line to the JSONL file ``out`` (``None``: nothing is written)."""
    if out is not None:
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")


def _benchutil() -> ModuleType:
    """tests/fake_frappe/benchutil.py, loaded by path.

    Putting tests/fake_frappe on ``sys.path`` would make its ``frappe`` importable in
    whatever process imports this module (benchmarks/run.py), so only this file is loaded.
    """
    spec = importlib.util.spec_from_file_location("benchutil", FAKE / "benchutil.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Rig:
    """The processes of one batch size, all already started."""

    mariadb: MariaDBServer
    gsocket: GsocketProcess
    sites_path: Path


def _start_rig(
    stack: contextlib.ExitStack,
    root: Path,
    size: int,
    shape: str,
    db_pool_size: int | None,
    db_max_connections: int | None = None,
) -> Rig:
    """Start MariaDB, Redis, the web stand-in and gsocket; ``stack`` stops each of them.

    ``db_pool_size`` is written as ``gsocket.db_pool_size``; None leaves gsocket's default.
    """
    mariadb = MariaDBServer(root / "mariadb", max_connections=size + max(100, size // 2))
    stack.callback(mariadb.stop)
    mariadb.start()
    redis = RedisServer(root / "redis")
    (root / "redis").mkdir()
    stack.callback(redis.stop)
    redis.start()
    web = WebStub("v16", redis_url=redis.url)
    web.sessions[SID] = USER
    web.users[USER] = "System User"
    web.installed_apps[SITE] = APPS
    stack.callback(web.stop)
    web.start()
    # The fake's helper creates the site's database and site_config.json; the test helper
    # then adds what gsocket reads (Redis, web process) and copies the fixture app in.
    sites_path = _benchutil().make_bench(root / "bench", mariadb, {SITE: APPS})
    common = json.loads((sites_path / "common_site_config.json").read_text())
    common.update(
        {"redis_queue": redis.url, "webserver_host": "127.0.0.1", "webserver_port": web.port}
    )
    if db_pool_size is not None:
        common["gsocket"] = {"db_pool_size": db_pool_size}
    if db_max_connections is not None:
        common.setdefault("gsocket", {})["db_max_connections"] = db_max_connections
    bench = make_bench(root, common, sites=(SITE,), apps=APPS, copy_apps=("ctxapp",))
    env = {"PYTHONPATH": str(FAKE), "FAKE_FRAPPE_LOCAL": shape}
    proc = GsocketProcess(bench, env=env)
    stack.callback(_stop_gsocket, proc)
    proc.start()
    return Rig(mariadb, proc, sites_path)


def _stop_gsocket(proc: GsocketProcess) -> None:
    """SIGTERM (which also closes its log file), SIGKILL if it does not exit in time."""
    with contextlib.suppress(AssertionError):  # stop() has killed it and reports that
        proc.stop()


def _connect(url: str, count: int, stack: contextlib.ExitStack) -> list[PyClient]:
    """``count`` websocket clients of the site, connected a few at a time in threads.

    One after another, a thousand-event batch's clients would take seconds to connect.
    """
    clients = [PyClient(["websocket"]) for _ in range(count)]
    stack.callback(_disconnect, clients)
    headers = desk_headers(SITE, SID)
    with ThreadPoolExecutor(CONNECT_WORKERS) as pool:
        list(pool.map(lambda c: c.connect(url, f"/{SITE}", headers, timeout=30), clients))
    return clients


def _disconnect(clients: list[PyClient]) -> None:
    def close(client: PyClient) -> None:
        with contextlib.suppress(Exception):  # a client that never connected has nothing
            client.disconnect()

    with ThreadPoolExecutor(CONNECT_WORKERS) as pool:
        list(pool.map(close, clients))


class Batch:
    """N events emitted round-robin over the clients; every ack is timed as it arrives.

    Emitting happens in one thread, as fast as python-socketio queues packets, so "at once"
    means within the emit span that is reported next to the wall time.
    """

    def __init__(self, size: int, event: str = EVENT) -> None:
        self.size = size
        self.event = event
        self.emitted = [0.0] * size
        self.acked: list[float | None] = [None] * size
        self.answers: list[tuple[Any, ...] | None] = [None] * size
        self._lock = threading.Lock()
        self._count = 0
        self._all_in = threading.Event()

    def _on_ack(self, index: int) -> Callable[..., None]:
        def done(*answer: Any) -> None:
            now = time.perf_counter()
            with self._lock:
                self.acked[index], self.answers[index] = now, answer
                self._count += 1
                if self._count == self.size:
                    self._all_in.set()

        return done

    def fire(self, clients: list[PyClient]) -> None:
        """Emit every event; returns once the last one is queued."""
        for i in range(self.size):
            client = clients[i % len(clients)]
            self.emitted[i] = time.perf_counter()
            client.client.emit(
                self.event, QUERY_S, namespace=client.namespace, callback=self._on_ack(i)
            )

    def wait(self, timeout: float) -> bool:
        """Wait for every ack; ``False`` if some did not come within ``timeout``."""
        return self._all_in.wait(timeout)


def _warm_up(clients: list[PyClient]) -> None:
    """One quick context event per client before the timed batch.

    The first ``frappe_context`` event of a process imports Frappe and builds PyMySQL's
    shared TLS context; that one-time cost is not what the batch is meant to show.
    """
    with ThreadPoolExecutor(CONNECT_WORKERS) as pool:
        answers = list(pool.map(lambda c: c.call(EVENT, 0, timeout=60), clients))
    if any(a != {"site": SITE, "user": USER} for a in answers):
        raise RuntimeError(f"warm-up events failed: {answers!r}")


def _max_used_connections(mariadb: MariaDBServer) -> int:
    """MariaDB's own high-water mark of open connections since the last ``FLUSH STATUS``."""
    rows = mariadb.admin_sql("SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
    return int(rows[0][1])


def sequential_cost(sites_path: Path, shape: str, events: int) -> dict[str, Any]:
    """frappe_ctx_cost's ``measure`` on this bench's site, one context after another.

    It runs in a child process because frappe_ctx_cost monkey-patches with gevent when it is
    imported, which must not happen to this process (its clients use real threads).
    """
    env = dict(os.environ, FAKE_FRAPPE_LOCAL=shape)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(FAKE), str(BENCH_ROOT)])
    argv = [sys.executable, "-c", _SEQUENTIAL_CHILD, str(sites_path), SITE, str(events)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"frappe_ctx_cost.measure failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def _percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1000

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": ordered[-1] * 1000}


def _log_problems(proc: GsocketProcess) -> int:
    """Lines of the server log that report a failure (errors, warnings, tracebacks)."""
    markers = (" CRITICAL ", " ERROR ", " WARNING ", "Traceback")
    return sum(1 for line in proc.log().splitlines() if any(m in line for m in markers))


def _one_batch(rig: Rig, clients: list[PyClient], size: int) -> dict[str, Any]:
    """Emit ``size`` events at once over ``clients`` and return the batch's figures."""
    rig.mariadb.admin_sql("FLUSH STATUS")
    assert rig.gsocket.proc is not None
    pid = rig.gsocket.proc.pid
    batch = Batch(size)
    cpu_before, own_before = processes.cpu_seconds([pid]), time.process_time()
    batch.fire(clients)
    complete = batch.wait(ACK_TIMEOUT_S)
    cpu_after, own_after = processes.cpu_seconds([pid]), time.process_time()

    first_emit = batch.emitted[0]
    acked = [t for t in batch.acked if t is not None]
    if not acked:
        raise RuntimeError(f"no event was acknowledged; gsocket log:\n{rig.gsocket.log()}")
    wall = max(acked) - first_emit
    ok = sum(1 for a in batch.answers if a == ({"site": SITE, "user": USER},))
    latencies = [a - e for a, e in zip(batch.acked, batch.emitted, strict=True) if a is not None]
    return {
        "complete": complete,
        "acks_ok": ok,
        "acks_failed": len(acked) - ok,
        "acks_missing": size - len(acked),
        "wall_s": wall,
        "wall_over_query": wall / QUERY_S,
        "excess_s": wall - QUERY_S,
        "overhead_per_event_ms": (wall - QUERY_S) / size * 1000,
        "emit_span_s": batch.emitted[-1] - first_emit,
        "latency_ms": _percentiles_ms(latencies),
        "server_cpu_s": cpu_after - cpu_before,
        "server_cpu_per_event_ms": (cpu_after - cpu_before) / size * 1000,
        "client_cpu_s": own_after - own_before,
        "db_max_used_connections": _max_used_connections(rig.mariadb),
        "db_connections_after": rig.mariadb.count_connections(),
    }


def measure_size(
    size: int,
    shape: str = "werkzeug",
    cost_events: int = COST_EVENTS,
    *,
    db_pool_size: int | None = None,
    batches: int = 1,
    db_max_connections: int | None = None,
) -> dict[str, Any]:
    """Start a fresh rig, run ``batches`` batches of ``size`` events, return their figures.

    The top-level figures are the last batch's; ``batches`` lists each one.  With a pool the
    first batch finds only the warm-up's connections in it (a cold pool); later batches
    find the connections the earlier ones gave back, up to ``db_pool_size``.
    ``db_connections_left`` is counted after gsocket's graceful stop, which closes the pool.
    """
    clients_needed = math.ceil(size / EVENTS_PER_CLIENT)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gs-ctxconc-")))
        rig = _start_rig(stack, root, size, shape, db_pool_size, db_max_connections)
        clients = _connect(rig.gsocket.url, clients_needed, stack)
        _warm_up(clients)
        if db_pool_size == 0:
            rig.mariadb.wait_for_connections(0)
        figures = [_one_batch(rig, clients, size) for _ in range(batches)]
        problems = _log_problems(rig.gsocket)
        _stop_gsocket(rig.gsocket)
        left_open = rig.mariadb.wait_for_connections(0)
        sequential = sequential_cost(rig.sites_path, shape, cost_events)
        return {
            "type": "frappe_ctx_concurrency",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "size": size,
            "shape": shape,
            "db_pool_size": db_pool_size,
            "db_max_connections": db_max_connections,
            "clients": clients_needed,
            "events_per_client": EVENTS_PER_CLIENT,
            "query_s": QUERY_S,
            **figures[-1],
            "batches": figures,
            "db_connections_left": left_open,
            "server_log_problems": problems,
            "sequential": sequential,
            "loadavg": processes.loadavg(),
        }


def run(
    sizes: list[int],
    out: Path | None,
    *,
    shape: str = "werkzeug",
    cost_events: int = COST_EVENTS,
    db_pool_size: int | None = None,
    batches: int = 1,
    db_max_connections: int | None = None,
) -> list[dict[str, Any]]:
    """Measure every batch size in turn; append one JSON line per size to ``out``.

    Each line is written as soon as its size is done, so an interrupted run keeps what it
    measured.  Lines carry ``"type": "frappe_ctx_concurrency"``, so they can go into the
    results file of benchmarks/run.py next to its ``run``/``case``/``ratio`` lines.
    """
    results = []
    for size in sizes:
        result = measure_size(
            size,
            shape,
            cost_events,
            db_pool_size=db_pool_size,
            batches=batches,
            db_max_connections=db_max_connections,
        )
        results.append(result)
        _append(out, result)
    return results


def summary(result: dict[str, Any]) -> str:
    """One size's figures in a few lines a person can read."""
    seq = result["sequential"]
    steps = ", ".join(f"{k} {v:.3f}" for k, v in seq["step_median_ms"].items())
    pool = result.get("db_pool_size")
    lines = [
        f"{result['size']} concurrent frappe_context events "
        f"({result['clients']} clients x {result['events_per_client']}, "
        f"SELECT SLEEP({result['query_s']}), frappe.local {result['shape']}, "
        f"db_pool_size {'default' if pool is None else pool}):",
    ]
    for number, batch in enumerate(result.get("batches", [result]), 1):
        lat = batch["latency_ms"] or dict.fromkeys(("p50", "p90", "p99", "max"), math.nan)
        lines += [
            f" batch {number}: acks ok {batch['acks_ok']}, failed {batch['acks_failed']}, "
            f"missing {batch['acks_missing']}",
            f"  wall {batch['wall_s']:.3f} s = {batch['wall_over_query']:.2f} x the query "
            f"(+{batch['excess_s'] * 1000:.0f} ms); emit span {batch['emit_span_s'] * 1000:.0f}"
            f" ms; overhead {batch['overhead_per_event_ms']:.3f} ms/event",
            f"  per-event latency ms: p50 {lat['p50']:.0f}, p90 {lat['p90']:.0f}, "
            f"p99 {lat['p99']:.0f}, max {lat['max']:.0f}",
            f"  server CPU {batch['server_cpu_s']:.2f} s "
            f"({batch['server_cpu_per_event_ms']:.2f} ms/event); client CPU "
            f"{batch['client_cpu_s']:.2f} s; DB max used connections "
            f"{batch['db_max_used_connections']}, open after the batch "
            f"{batch.get('db_connections_after', '?')}",
        ]
    return "\n".join(
        [
            *lines,
            f"  server log problems {result['server_log_problems']}; DB connections left "
            f"after gsocket stopped {result['db_connections_left']}",
            f"  sequential open+close ({seq['events']} events): run {seq['run_ms']:.3f} ms/event"
            f" (PyMySQL connect+commit+close alone {seq['raw_connection_ms']:.3f}); "
            f"steps ms: {steps}; pooled run {seq['pooled']['run_ms']:.3f} ms/event",
            f"  load average {' '.join(f'{v:.2f}' for v in result['loadavg'])}",
        ]
    )


# ---------------------------------------------------------------- the real Frappe of a version

REAL_EVENT = "rtscope_sleep"
REAL_MAX_CONNECTIONS = 1500


class _TreeGsocket(GsocketProcess):
    """gsocket of the source ``tree`` (a checkout), run by a real bench's own Python.

    The tree goes on ``PYTHONPATH``, which comes before site-packages when the installed
    gsocket's ``.pth`` file imports gsocket at start-up, so the gsocket imported is the
    tree's whatever the bench's env has installed: one bench serves the before and after
    trees in turns.
    """

    pythonpath = False

    def __init__(self, bench: Any, tree: Path, **kwargs: Any) -> None:
        super().__init__(bench.path, **kwargs)
        self.python = str(bench.python)
        self.tree = tree

    def start(self, wait: bool = True, timeout: float = 60.0) -> _TreeGsocket:
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        argv = [self.python, "-m", "gsocket", "serve", "--bench", str(self.bench)]
        argv += ["--port", str(self.port), "--host", "127.0.0.1"]
        self.child = Child(
            "gsocket",
            argv,
            log_path=self.log_path,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=self.tree,
        )
        if wait:
            self.wait_healthy(timeout)
        return self


def _root_sql(bench: Any, sql: str) -> list[list[str]]:
    """``sql`` as the bench's private MariaDB's root (build-bench's ``DB_ROOT_PASSWORD``)."""
    sock = bench.path / "mariadb" / "mysqld.sock"
    password = os.environ.get("DB_ROOT_PASSWORD", "root")
    done = subprocess.run(
        ["mariadb", f"--socket={sock}", "-uroot", f"-p{password}", "-N", "-B", "-e", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line.split("\t") for line in done.stdout.splitlines()]


def _real_batch(
    bench: Any, proc: GsocketProcess, clients: list[PyClient], size: int
) -> dict[str, Any]:
    """``size`` ``rtscope_sleep(0.2)`` events at once; the figures of _one_batch's shape."""
    from tests.support.realbench import SITE as REAL_SITE

    _root_sql(bench, "FLUSH STATUS")
    assert proc.proc is not None
    pid = proc.proc.pid
    batch = Batch(size, REAL_EVENT)
    cpu_before = processes.cpu_seconds([pid])
    batch.fire(clients)
    complete = batch.wait(ACK_TIMEOUT_S)
    cpu_after = processes.cpu_seconds([pid])
    acked = [t for t in batch.acked if t is not None]
    if not acked:
        raise RuntimeError(f"no event was acknowledged; gsocket log:\n{proc.log()}")
    wall = max(acked) - batch.emitted[0]
    answers = [a[0] for a in batch.answers if a and isinstance(a[0], dict)]
    good = (REAL_SITE, USER, True)
    ok = [a for a in answers if (a.get("site"), a.get("user"), a.get("same_conn")) == good]
    latencies = [a - e for a, e in zip(batch.acked, batch.emitted, strict=True) if a is not None]
    used = _root_sql(bench, "SHOW GLOBAL STATUS LIKE 'Max_used_connections'")
    return {
        "complete": complete,
        "acks_ok": len(ok),
        "acks_failed": len(acked) - len(ok),
        "acks_missing": size - len(acked),
        "wall_s": wall,
        "wall_over_query": wall / QUERY_S,
        "excess_s": wall - QUERY_S,
        "overhead_per_event_ms": (wall - QUERY_S) / size * 1000,
        "emit_span_s": batch.emitted[-1] - batch.emitted[0],
        "latency_ms": _percentiles_ms(latencies),
        "server_cpu_s": cpu_after - cpu_before,
        "server_cpu_per_event_ms": (cpu_after - cpu_before) / size * 1000,
        "client_cpu_s": 0.0,
        "distinct_connections": len({a["conn"] for a in ok}),
        "db_max_used_connections": int(used[0][1]),
    }


def measure_real(
    version: str,
    size: int,
    trees: list[Path],
    rounds: int,
    *,
    db_pool_size: int,
    db_max_connections: int,
    batches: int,
    out: Path | None,
) -> list[dict[str, Any]]:
    """Batches through gsocket serving a real bench of ``version``, the ``trees`` in turns.

    The bench is the real-bench lane's (tests/support/realbench.py, ``GSOCKET_BENCH_CACHE``),
    with the ``rtscope`` app installed on test.localhost and MariaDB's ``max_connections``
    raised to :data:`REAL_MAX_CONNECTIONS` for the run (the bench's own is 300).  Each round
    starts gsocket of each tree afresh (A, B, A, B, ...) with ``db_pool_size`` and
    ``db_max_connections``, warms it up with one event per client and fires ``batches``
    batches; the first finds the pool holding only the warm-up's connections.
    """
    from tests.support.realbench import SITE as REAL_SITE
    from tests.support.realbench import RealBench
    from tests.support.realbench_apps import RTSCOPE, install_app

    bench = RealBench.acquire(version)
    results = []
    try:
        install_app(bench, RTSCOPE, sites=(REAL_SITE,))
        before = _root_sql(bench, "SELECT @@global.max_connections")[0][0]
        _root_sql(bench, f"SET GLOBAL max_connections = {REAL_MAX_CONNECTIONS}")
        sid = bench.login()
        headers = bench.desk_headers(REAL_SITE, sid)
        ours = {"db_pool_size": db_pool_size, "db_max_connections": db_max_connections}
        try:
            with bench.common_site_config_changed(gsocket=ours):
                for number in range(rounds):
                    for tree in trees:
                        result = _real_round(bench, tree, size, batches, headers)
                        result.update(
                            version=version,
                            round=number,
                            db_pool_size=db_pool_size,
                            db_max_connections=db_max_connections,
                        )
                        results.append(result)
                        _append(out, result)
                        print(_real_summary(result), flush=True)
        finally:
            _root_sql(bench, f"SET GLOBAL max_connections = {before}")
    finally:
        bench.release()
    return results


def _real_round(
    bench: Any, tree: Path, size: int, batches: int, headers: dict[str, str]
) -> dict[str, Any]:
    from tests.support.realbench import SITE as REAL_SITE

    with contextlib.ExitStack() as stack:
        proc = _TreeGsocket(bench, tree)
        stack.callback(_stop_gsocket, proc)
        proc.start()
        count = math.ceil(size / EVENTS_PER_CLIENT)
        # Default transports (polling, then the upgrade): a websocket-only python-socketio
        # client sends two Origin headers, which the real web process's origin check refuses.
        clients = [PyClient() for _ in range(count)]
        stack.callback(_disconnect, clients)
        with ThreadPoolExecutor(CONNECT_WORKERS) as pool:
            # A copy each: the client takes the Cookie header out of the dict it is given.
            namespace = f"/{REAL_SITE}"
            list(pool.map(lambda c: c.connect(proc.url, namespace, dict(headers), 30), clients))
            warm = list(pool.map(lambda c: c.call(REAL_EVENT, 0, timeout=60), clients))
        if not all(isinstance(a, dict) and a.get("site") == REAL_SITE for a in warm):
            raise RuntimeError(f"warm-up events failed: {warm[:3]!r}\n{proc.log()[-3000:]}")
        figures = [_real_batch(bench, proc, clients, size) for _ in range(batches)]
        return {
            "type": "frappe_ctx_concurrency_real",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "tree": str(tree),
            "size": size,
            "clients": count,
            **figures[-1],
            "batches": figures,
            "server_log_problems": _log_problems(proc),
            "loadavg": processes.loadavg(),
        }


def _real_summary(result: dict[str, Any]) -> str:
    parts = [
        f"{result['version']} round {result['round']} {result['tree']}: {result['size']} events"
    ]
    for number, batch in enumerate(result["batches"], 1):
        lat = batch["latency_ms"]
        parts.append(
            f" batch {number}: ok {batch['acks_ok']} failed {batch['acks_failed']} missing "
            f"{batch['acks_missing']}; wall {batch['wall_s']:.3f} s; CPU "
            f"{batch['server_cpu_per_event_ms']:.3f} ms/event; p50/p99 {lat['p50']:.0f}/"
            f"{lat['p99']:.0f} ms; connections {batch['distinct_connections']} (max used "
            f"{batch['db_max_used_connections']})"
        )
    parts.append(f" log problems {result['server_log_problems']}; load {result['loadavg'][0]:.2f}")
    return "\n".join(parts)


def _stop_on_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every process started is stopped on the way out."""
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, DEFAULT_SIZES)),
        help="comma-separated batch sizes (default 200,1000)",
    )
    parser.add_argument("--out", type=Path, help="append one JSON line per size to this file")
    parser.add_argument("--shape", choices=["werkzeug", "contextvar"], default="werkzeug")
    parser.add_argument(
        "--cost-events",
        type=int,
        default=COST_EVENTS,
        help="events of the sequential open/close measurement (default 200)",
    )
    parser.add_argument(
        "--db-pool-size",
        type=int,
        help="gsocket.db_pool_size for the run (0: a connection per event; default: gsocket's)",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=1,
        help="batches per size on the same server (a pool is cold in the first only)",
    )
    parser.add_argument(
        "--real",
        choices=["v15", "develop"],
        help="the real Frappe of this version (the real-bench lane's bench) instead of the fake",
    )
    parser.add_argument(
        "--trees",
        default=str(REPO),
        help="with --real: comma-separated gsocket checkouts served in turns (default: this one)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="with --real: rounds of --trees")
    parser.add_argument(
        "--db-max-connections",
        type=int,
        help="gsocket.db_max_connections (0: no cap; default: gsocket's, or 0 with --real)",
    )
    args = parser.parse_args()
    sizes = [int(v) for v in args.sizes.split(",") if v.strip()]
    if args.real:
        trees = [Path(t).resolve() for t in args.trees.split(",") if t.strip()]
        with _signals_unwind():
            for size in sizes:
                measure_real(
                    args.real,
                    size,
                    trees,
                    args.rounds,
                    db_pool_size=args.db_pool_size if args.db_pool_size is not None else size,
                    db_max_connections=args.db_max_connections or 0,
                    batches=args.batches,
                    out=args.out,
                )
        return
    try:
        with _signals_unwind():
            for size in sizes:
                (result,) = run(
                    [size],
                    args.out,
                    shape=args.shape,
                    cost_events=args.cost_events,
                    db_pool_size=args.db_pool_size,
                    batches=args.batches,
                    db_max_connections=args.db_max_connections,
                )
                print(summary(result), flush=True)
                if any(batch["acks_ok"] != size for batch in result["batches"]):
                    sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; every process this run started has been stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
