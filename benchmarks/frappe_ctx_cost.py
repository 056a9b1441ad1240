"""What opening and closing a Frappe context costs per ``frappe_context=True`` event.

Usage (from the repository root)::

    python benchmarks/frappe_ctx_cost.py                 # fake Frappe, both frappe.local shapes
    python benchmarks/frappe_ctx_cost.py --shape werkzeug --events 1000
    PYTHONPATH=$PWD ~/frappe-bench/env/bin/python \\
        benchmarks/frappe_ctx_cost.py --bench ~/frappe-bench --site mysite.localhost

With the fake (tests/fake_frappe) a private MariaDB server is started on loopback; with
``--bench`` the bench's real Frappe, MariaDB and Redis are used (run it with the bench's
Python; nothing is written).  Reported per event, sequentially: the whole
``FrappeContext.run`` around the handler (``--handler``: nothing, or one ``SELECT 1``), each
step of it, and the same with PyMySQL's per-connection TLS context (what gsocket shares);
then a concurrent batch: events per second and the longest time the gevent hub went without
running other greenlets.  Each is measured twice, in turns: with a connection opened and
closed per event (no pool, ``gsocket.db_pool_size`` 0) and with connections borrowed from a
:class:`gsocket.contract.dbpool.DBPool` (``pooled``: the same figures plus the median of the
pool's reset, which runs between ``commit`` and ``destroy``).

What item 6 of issue 16 counts as a context's cost is gsocket's CPU (this process's CPU time)
per context *net of the handler's own work*: ``overhead_cpu_ms`` = CPU per context with the
handler, minus CPU per call of the same handler repeated inside one context that is already
open (``handler_cpu_ms``, measured in the same turn).  What the overhead holds is everything
a context adds around its handler: ``frappe.init`` and ``connect``, ``set_user``, borrowing
the connection and Frappe's first look-ups of a request (the first query), the commit, the
pool's reset, ``destroy``.  ``cpu_ms`` stays the whole figure.
"""

# ruff: noqa: E402 - gevent must patch the stdlib before anything else is imported
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import gevent.pool

REPO = Path(__file__).resolve().parent.parent
FAKE = REPO / "tests" / "fake_frappe"
STEPS = ("init", "connect", "set_user", "commit", "destroy")
POOL_SIZE = 64


def _timed_steps(frappe: Any, spent: dict[str, list[float]]) -> None:
    """Wrap Frappe's per-event calls (and the pool's reset) so each records its duration."""
    from gsocket.contract import dbpool

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name].append(time.perf_counter() - began)

        return timed

    for name in ("init", "connect", "set_user", "destroy"):
        setattr(frappe, name, wrap(name, getattr(frappe, name)))
    dbpool.reset = wrap("reset", dbpool.reset)
    original_connect = frappe.connect

    def connect_and_time_commit(*args: Any, **kwargs: Any) -> None:
        original_connect(*args, **kwargs)
        db = frappe.local.db
        db.commit = wrap("commit", db.commit)

    frappe.connect = connect_and_time_commit


def _noop() -> None:
    """The handler: nothing, so that only the context's own cost is measured."""


def _select_one() -> None:
    """The handler of a context that uses its database: one ``SELECT 1``."""
    import frappe

    frappe.db.sql("SELECT 1")


#: ``--handler`` (also ``FRAPPE_CTX_HANDLER`` for the fake's child process): ``noop`` sends no
#: query (gsocket then borrows no connection at all), ``select`` one ``SELECT 1``.
HANDLERS: dict[str, Callable[[], None]] = {"noop": _noop, "select": _select_one}
HANDLER = HANDLERS[os.environ.get("FRAPPE_CTX_HANDLER", "noop")]


def _per_event_ms(ctx: Any, site: str, events: int) -> float:
    for _ in range(20):
        ctx.run(site, "Guest", HANDLER)
    began = time.perf_counter()
    for _ in range(events):
        ctx.run(site, "Guest", HANDLER)
    return (time.perf_counter() - began) / events * 1000


def _handler_cpu_ms(ctx: Any, site: str, calls: int) -> float:
    """CPU per call of the handler inside one context that is already open: the handler's own
    work, which a context's cost is measured net of (``overhead_cpu_ms``).  Its first call
    (the context's first query: the connection, Frappe's first look-ups) is not counted."""

    def repeat() -> float:
        HANDLER()
        began = time.process_time()
        for _ in range(calls):
            HANDLER()
        return (time.process_time() - began) / calls * 1000

    return ctx.run(site, "Guest", repeat)


def _raw_connection_ms(ctx: Any, site: str, events: int) -> float:
    """The floor: PyMySQL connect, COMMIT, close with the site's settings, no Frappe."""
    import frappe
    import pymysql

    conf = dict(ctx.run(site, "Guest", lambda: dict(frappe.local.conf)))
    params = {"user": conf.get("db_user") or conf["db_name"], "password": conf["db_password"]}
    params["database"] = conf["db_name"]
    if conf.get("db_socket"):
        params["unix_socket"] = conf["db_socket"]
    else:
        params["host"] = conf.get("db_host") or "127.0.0.1"
        params["port"] = int(conf.get("db_port") or 3306)
    began = time.perf_counter()
    for _ in range(events):
        conn = pymysql.connect(**params)
        conn.commit()
        conn.close()
    return (time.perf_counter() - began) / events * 1000


def _concurrent(ctx: Any, site: str, events: int, width: int) -> dict[str, float]:
    """``events`` events, ``width`` at a time; a ticker measures the hub's longest stall."""
    stalls: list[float] = []
    running = True

    def ticker() -> None:
        while running:
            began = time.perf_counter()
            gevent.sleep(0.001)
            stalls.append(time.perf_counter() - began - 0.001)

    tick = gevent.spawn(ticker)
    pool = gevent.pool.Pool(width)
    began = time.perf_counter()
    pool.map(lambda _: ctx.run(site, "Guest", HANDLER), range(events))
    elapsed = time.perf_counter() - began
    running = False
    tick.join()
    return {"events_per_s": events / elapsed, "max_hub_stall_ms": max(stalls) * 1000}


def measure(sites_path: str, site: str, events: int) -> dict[str, Any]:
    import frappe
    import pymysql.connections

    from gsocket.contract.dbpool import DBPool
    from gsocket.frappe_ctx import FrappeContext

    unshared_tls = pymysql.connections.Connection._create_ssl_ctx
    ctx = FrappeContext(sites_path)
    pooled = FrappeContext(sites_path, pool=DBPool(POOL_SIZE))
    assert ctx.available() and pooled.available(), "Frappe is not importable"
    assert pooled.pool is not None, "this PyMySQL is not one the pool was verified with"
    spent: dict[str, list[float]] = defaultdict(list)

    began = time.perf_counter()
    for _ in range(events):
        _noop()
    bare_ms = (time.perf_counter() - began) / events * 1000

    shared_tls = pymysql.connections.Connection._create_ssl_ctx
    pymysql.connections.Connection._create_ssl_ctx = unshared_tls
    unshared_ms = _per_event_ms(ctx, site, max(events // 5, 50))
    pymysql.connections.Connection._create_ssl_ctx = shared_tls

    # In turns, so that a change of load on a shared machine hits both alike.
    run_ms, pooled_ms, run_cpu, pooled_cpu = [], [], [], []
    run_over, pooled_over, handler_cpu = [], [], []
    for _ in range(3):
        handler_cpu.append(_handler_cpu_ms(pooled, site, events))
        for times, cpu, over, context in (
            (run_ms, run_cpu, run_over, ctx),
            (pooled_ms, pooled_cpu, pooled_over, pooled),
        ):
            # Wall time includes waiting for MariaDB and Redis (on the other core); the
            # process's CPU time is what the gevent hub spent.
            began = time.process_time()
            times.append(_per_event_ms(context, site, events))
            cpu.append((time.process_time() - began) / (events + 20) * 1000)
            over.append(cpu[-1] - handler_cpu[-1])
    raw_ms = _raw_connection_ms(ctx, site, events)
    _timed_steps(frappe, spent)
    _per_event_ms(ctx, site, events)
    # A step a context skipped (no commit after a handler that sent no query) shows as 0.
    steps = {name: statistics.median(spent[name] or [0.0]) * 1000 for name in STEPS}
    spent.clear()
    _per_event_ms(pooled, site, events)
    pooled_steps = {
        name: statistics.median(spent[name] or [0.0]) * 1000 for name in (*STEPS, "reset")
    }
    concurrent = _concurrent(ctx, site, events, 50)
    pooled_concurrent = _concurrent(pooled, site, events, 50)
    return {
        "frappe": getattr(frappe, "__version__", "?"),
        "shape": os.environ.get("FAKE_FRAPPE_LOCAL", "real"),
        "handler": HANDLER.__name__.strip("_"),
        "events": events,
        "bare_call_ms": bare_ms,
        "run_ms": statistics.median(run_ms),
        "run_ms_all": run_ms,
        "cpu_ms": statistics.median(run_cpu),
        "handler_cpu_ms": statistics.median(handler_cpu),
        "handler_cpu_ms_all": handler_cpu,
        "overhead_cpu_ms": statistics.median(run_over),
        "raw_connection_ms": raw_ms,
        "run_ms_tls_per_conn": unshared_ms,
        "step_median_ms": steps,
        "concurrent": concurrent,
        "pooled": {
            "pool_size": POOL_SIZE,
            "run_ms": statistics.median(pooled_ms),
            "run_ms_all": pooled_ms,
            "cpu_ms": statistics.median(pooled_cpu),
            "cpu_ms_all": pooled_cpu,
            "overhead_cpu_ms": statistics.median(pooled_over),
            "overhead_cpu_ms_all": pooled_over,
            "step_median_ms": pooled_steps,
            "concurrent": pooled_concurrent,
            "pool_counts": dict(pooled.pool.counts),
        },
    }


def profile(sites_path: str, site: str, events: int, top: int = 35) -> str:
    """cProfile of ``events`` pooled contexts one after another (after a warm-up): where the
    hub's CPU goes inside one context, by own time and by cumulative time.  Timed by the
    process's CPU clock: with the default wall clock, a function that waits for MariaDB or
    Redis would be charged with the wait."""
    import cProfile
    import io
    import pstats

    from gsocket.contract.dbpool import DBPool
    from gsocket.frappe_ctx import FrappeContext

    pooled = FrappeContext(sites_path, pool=DBPool(POOL_SIZE))
    assert pooled.available() and pooled.pool is not None, "no Frappe, or no pool here"
    _per_event_ms(pooled, site, 50)
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(events):
        pooled.run(site, "Guest", HANDLER)
    profiler.disable()
    out = io.StringIO()
    for order in ("tottime", "cumulative"):
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(top)
    return out.getvalue()


def _with_fake(shape: str, events: int) -> dict[str, Any]:
    """Start MariaDB and a one-site bench, then measure in a child process of that shape."""
    sys.path[:0] = [str(REPO), str(FAKE)]
    from benchutil import make_bench

    from tests.support.mariadb import MariaDBServer

    with tempfile.TemporaryDirectory() as tmp:
        server = MariaDBServer(Path(tmp) / "mariadb").start()
        try:
            sites = make_bench(Path(tmp) / "bench", server, {"bench.test": ["frappe"]})
            env = dict(os.environ, FAKE_FRAPPE_LOCAL=shape)
            env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(FAKE)])
            child = [sys.executable, __file__, "--child", str(sites), "bench.test", str(events)]
            done = subprocess.run(child, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise RuntimeError(done.stderr)
            return json.loads(done.stdout.splitlines()[-1])
        finally:
            server.stop()


def _report(result: dict[str, Any]) -> str:
    steps = ", ".join(f"{k} {v:.3f}" for k, v in result["step_median_ms"].items())
    c = result["concurrent"]
    p = result["pooled"]
    pc = p["concurrent"]
    pooled_steps = ", ".join(f"{k} {v:.3f}" for k, v in p["step_median_ms"].items())
    return (
        f"frappe {result['frappe']} ({result['shape']}), {result['events']} events: "
        f"run {result['run_ms']:.3f} ms/event "
        f"(PyMySQL connect+commit+close alone {result['raw_connection_ms']:.3f}) "
        f"(with a TLS context per connection: {result['run_ms_tls_per_conn']:.3f}); "
        f"bare call {result['bare_call_ms'] * 1000:.2f} us; step medians ms: {steps}; "
        f"50 at a time: {c['events_per_s']:.0f} events/s, longest hub stall "
        f"{c['max_hub_stall_ms']:.1f} ms\n"
        f"  the handler alone in an open context: CPU {result['handler_cpu_ms']:.3f} ms/call\n"
        f"  pooled (size {p['pool_size']}): run {p['run_ms']:.3f} ms/event, CPU "
        f"{p['cpu_ms']:.3f} ms/event, of which the context (CPU minus the handler alone) "
        f"{p['overhead_cpu_ms']:.3f}; step medians ms: "
        f"{pooled_steps}; 50 at a time: {pc['events_per_s']:.0f} events/s, longest hub stall "
        f"{pc['max_hub_stall_ms']:.1f} ms; pool {p['pool_counts']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["werkzeug", "contextvar", "both"], default="both")
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--bench", help="a real Frappe bench (run with its env/bin/python)")
    parser.add_argument("--site", help="the site of --bench to open contexts on")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a summary")
    parser.add_argument(
        "--handler", choices=sorted(HANDLERS), default="noop", help="what each context runs"
    )
    parser.add_argument(
        "--profile", action="store_true", help="with --bench: cProfile pooled contexts instead"
    )
    args = parser.parse_args()
    global HANDLER
    HANDLER = HANDLERS[args.handler]
    os.environ["FRAPPE_CTX_HANDLER"] = args.handler  # for the fake's child process
    if args.child:
        sys.path.insert(0, str(REPO))
        sites_path, site, events = args.child
        print(json.dumps(measure(sites_path, site, int(events))))
        return
    if args.bench:
        if not args.site:
            parser.error("--bench needs --site")
        sites = Path(args.bench).resolve() / "sites"
        os.chdir(sites)  # Frappe opens its log files relative to the working directory
        sys.path.insert(0, str(REPO))
        import gsocket

        if not Path(gsocket.__file__).resolve().is_relative_to(REPO):
            # The bench's installed gsocket is imported at start-up by its .pth file.
            parser.error(f"gsocket comes from {gsocket.__file__}: run with PYTHONPATH={REPO}")
        if args.profile:
            print(profile(str(sites), args.site, args.events))
            return
        results = [measure(str(sites), args.site, args.events)]
    else:
        shapes = ["werkzeug", "contextvar"] if args.shape == "both" else [args.shape]
        results = [_with_fake(shape, args.events) for shape in shapes]
    for result in results:
        print(json.dumps(result) if args.json else _report(result))


if __name__ == "__main__":
    main()
