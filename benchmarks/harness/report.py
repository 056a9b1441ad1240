"""Markdown tables and target ratios from the case results of one benchmark run."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

Case = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """One target of issue #6: gsocket's value divided by Node's, compared to a bound."""

    key: str
    title: str
    value: Callable[[Case], float | None]
    bound: float
    higher_is_better: bool

    def ok(self, ratio: float) -> bool:
        return ratio >= self.bound if self.higher_is_better else ratio <= self.bound

    @property
    def text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.bound:g}x"


def _get(case: Case, *path: str) -> Any:
    node: Any = case
    for key in path:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return node


TARGETS = [
    Target(
        "cpu_per_fanout_delivery",
        "server CPU per fan-out delivery",
        lambda c: _get(c, "fanout_max", "server_us_per_delivery"),
        0.5,
        False,
    ),
    Target(
        "cpu_per_room_event",
        "server CPU per room event",
        lambda c: _get(c, "user_max", "server_us_per_event"),
        0.7,
        False,
    ),
    Target(
        "memory_per_client",
        "memory per connected client",
        lambda c: _get(c, "memory", "bytes_per_connection"),
        1.0,
        False,
    ),
    Target(
        "connects_per_s", "connects/s", lambda c: _get(c, "connect", "connects_per_s"), 1.5, True
    ),
    Target(
        "p99_fanout_fixed",
        "p99 latency at the fixed fan-out rate",
        lambda c: _get(c, "fanout_fixed", "latency", "p99_ms"),
        1.0,
        False,
    ),
]


def ratios(cases: Iterable[Case]) -> list[dict[str, Any]]:
    """gsocket/node ratio of every target, per size where both servers have a value."""
    by_key = {(c["server"], c["n_requested"]): c for c in cases}
    sizes = sorted({n for _, n in by_key})
    out = []
    for n in sizes:
        node, gs = by_key.get(("node", n)), by_key.get(("gsocket", n))
        for t in TARGETS:
            a = t.value(node) if node else None
            b = t.value(gs) if gs else None
            ratio = b / a if a and b is not None else None
            out.append(
                {
                    "n": n,
                    "target": t.key,
                    "title": t.title,
                    "node": a,
                    "gsocket": b,
                    "ratio": ratio,
                    "bound": t.text,
                    "ok": t.ok(ratio) if ratio is not None else None,
                }
            )
        if gs:
            out.append(
                {
                    "n": n,
                    "target": "held_without_errors",
                    "title": f"{gs.get('n', n)} websocket clients held without errors",
                    "node": held(node) if node else None,
                    "gsocket": held(gs),
                    "ratio": None,
                    "bound": "yes",
                    "ok": held(gs),
                }
            )
        pair = by_key.get(("gsocket2", n))
        if pair:
            out.append(
                {
                    "n": n,
                    "target": "held_without_errors_two_processes",
                    "title": f"{pair.get('n', n)} websocket clients held without errors "
                    "by two gsocket processes",
                    "node": None,
                    "gsocket": held(pair),
                    "ratio": None,
                    "bound": "yes",
                    "ok": held(pair),
                }
            )
    return out


def held(case: Case) -> bool:
    """Every client connected, stayed connected, and no message was lost or duplicated."""
    if case.get("error") or not case.get("connect"):
        return False
    hold = case.get("held", {})
    phases = [case.get(k) or {} for k in ("fanout_fixed", "fanout_max", "user_fixed", "user_max")]
    return (
        case["connect"]["failed"] == 0
        and hold.get("connected_at_end") == case["n"]
        and not hold.get("disconnects")
        and all(p.get("lost", 1) == 0 and p.get("duplicates", 1) == 0 for p in phases)
    )


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}".replace(",", " ")
        return f"{value:.{digits}f}"
    return str(value)


def _mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def _phase_rows(cases: list[Case], key: str, unit: str) -> list[list[str]]:
    rows = []
    for c in cases:
        p = c.get(key)
        if not p:
            rows.append([c["server"], _fmt(c.get("n")), "failed: " + str(c.get("error", "?"))[:60]])
            continue
        lat = p.get("latency", {})
        rows.append(
            [
                c["server"],
                _fmt(c["n"]),
                _fmt(p.get("events")),
                _fmt(p.get("deliveries_per_s"), 0),
                _fmt(lat.get("p50_ms"), 2),
                _fmt(lat.get("p95_ms"), 2),
                _fmt(lat.get("p99_ms"), 2),
                _fmt(lat.get("max_ms"), 2),
                _fmt(p.get("lost")),
                _fmt(p.get("duplicates")),
                _fmt(p.get(f"server_us_per_{unit}"), 2),
                _fmt(p.get("server_cores"), 2),
                _fmt(p.get("loadgen_cores"), 2),
                _fmt(p.get("other_cores"), 2),
            ]
        )
    return rows


PHASE_HEADER = [
    "server",
    "clients",
    "events",
    "deliveries/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "lost",
    "dup",
    "server CPU µs/{unit}",
    "server cores",
    "loadgen cores",
    "other load (cores)",
]


def _revision(machine: dict[str, Any]) -> str:
    if "gsocket_revision" not in machine:
        return ""
    dirty = " with uncommitted changes" if machine.get("gsocket_dirty") else ""
    return f" gsocket at {machine['gsocket_revision']}{dirty}."


def markdown(run: dict[str, Any], cases: list[Case], batches: Iterable[Case] = ()) -> str:
    """The latest.md report: settings, one table per scenario, ratios against targets, and
    the frappe_context batches (``benchmarks/frappe_ctx_concurrency.py``) when run."""
    order = {"node": 0, "gsocket": 1, "gsocket2": 2}
    cases = sorted(cases, key=lambda c: (c["n_requested"], order.get(c["server"], 3)))
    s = run["settings"]
    m = run["machine"]
    out = [
        f"# gsocket benchmark run {run['started']}",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']:.1f} GiB, "
        f"Linux {m['kernel']}, Node {m['node']}, Python {m['python']}, "
        f"socket.io {m['socket_io']}, socket.io-client {m['socket_io_client']}, "
        f"{m['redis']}. Load average at start: {m['loadavg_start']}.{_revision(m)}",
        "",
        f"Command: `{run['command']}`",
        "",
        f"Settings: fixed fan-out rate {s['rate']:g} deliveries/s and per-user rate "
        f"{s.get('user_rate', s['rate']):g} events/s, each for {s['fixed_seconds']:g} s; "
        f"flat out for {s['flat_seconds']:g} s (at most {s['flat_max_deliveries']} deliveries, "
        f"window {s['window']} deliveries in flight); {s['workers']} loadgen workers; "
        f"connect concurrency {s['connect_concurrency']}.",
        "",
        "## Connect storm",
        "",
    ]
    rows = []
    for c in cases:
        k = c.get("connect")
        if not k:
            failure = "failed: " + str(c.get("error"))[:60]
            rows.append([c["server"], _fmt(c["n_requested"]), failure])
            continue
        lat = k["latency"]
        rows.append(
            [
                c["server"],
                _fmt(c["n"]),
                _fmt(k["connected"]),
                _fmt(k["failed"]),
                _fmt(k["connects_per_s"], 0),
                _fmt(lat.get("p50_ms"), 2),
                _fmt(lat.get("p95_ms"), 2),
                _fmt(lat.get("p99_ms"), 2),
                _fmt(lat.get("max_ms"), 2),
                _fmt(k.get("server_us_per_connect"), 0),
                _fmt(k.get("loadgen_cores"), 2),
                _fmt(k.get("other_cores"), 2),
            ]
        )
    out += _table(
        [
            "server",
            "clients",
            "connected",
            "failed",
            "connects/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "server CPU µs/connect",
            "loadgen cores",
            "other load (cores)",
        ],
        rows,
    )
    sections = [
        ("fanout_fixed", f"Fan-out at {s['rate']:g} deliveries/s (one doc: room)", "delivery"),
        ("fanout_max", "Fan-out as fast as possible", "delivery"),
        ("user_fixed", f"Per-user rooms at {s.get('user_rate', s['rate']):g} events/s", "event"),
        ("user_max", "Per-user rooms as fast as possible", "event"),
    ]
    for key, title, unit in sections:
        header = [h.replace("{unit}", unit) for h in PHASE_HEADER]
        out += [f"## {title}", ""] + _table(header, _phase_rows(cases, key, unit))
    rows = []
    for c in cases:
        mem = c.get("memory") or {}
        hold = c.get("held") or {}
        rows.append(
            [
                c["server"],
                _fmt(c.get("n")),
                _mib(mem.get("rss_idle")),
                _mib(mem.get("rss_connected")),
                _mib(mem.get("rss_after")),
                _fmt(mem.get("bytes_per_connection"), 0),
                _fmt(hold.get("connected_at_end")),
                _fmt(hold.get("disconnects") or "none"),
                _fmt(held(c)),
            ]
        )
    out += ["## Memory and holding", ""] + _table(
        [
            "server",
            "clients",
            "RSS idle MiB",
            "RSS connected MiB",
            "RSS after run MiB",
            "bytes/connection",
            "connected at end",
            "disconnects",
            "clean",
        ],
        rows,
    )
    capped = [c for c in cases if c.get("n") and c["n"] < c["n_requested"]]
    for c in capped:
        out.append(
            f"Note: {c['server']} size {c['n_requested']} ran with {c['n']} clients: "
            f"{c.get('n_note', '')}"
        )
    if any(c["server"] == "gsocket2" for c in cases):
        out.append(
            "Note: gsocket2 is two gsocket processes on two ports, the load generator's "
            "workers split between them as an nginx upstream would split clients; its CPU "
            "and RSS are the two processes' sums."
        )
    if capped or any(c["server"] == "gsocket2" for c in cases):
        out.append("")
    rat = ratios(cases)
    out += ["## gsocket / node against the targets", ""]
    if not any(r["gsocket"] is not None for r in rat):
        out += ["No gsocket results in this run.", ""]
    out += _table(
        ["clients", "target", "node", "gsocket", "ratio", "bound", "met"],
        [
            [
                _fmt(r["n"]),
                r["title"],
                _fmt(r["node"], 2),
                _fmt(r["gsocket"], 2),
                _fmt(r["ratio"], 2),
                r["bound"],
                _fmt(r["ok"]),
            ]
            for r in rat
        ],
    )
    out += _frappe_ctx(list(batches))
    return "\n".join(out)


def _frappe_ctx(batches: list[Case]) -> list[str]:
    """Concurrent ``frappe_context=True`` events, each holding ``SELECT SLEEP(0.2)``."""
    if not batches:
        return []
    rows = []
    for b in batches:
        if b.get("error"):
            rows.append([_fmt(b["size"]), "failed: " + str(b["error"])[:80]])
            continue
        lat = b.get("latency_ms") or {}
        rows.append(
            [
                _fmt(b["size"]),
                f"{b['acks_ok']} / {b['acks_failed']} / {b['acks_missing']}",
                _fmt(b["wall_s"], 3),
                _fmt(b["wall_over_query"], 2),
                _fmt(b["overhead_per_event_ms"], 2),
                _fmt(b["server_cpu_per_event_ms"], 2),
                _fmt((b.get("sequential") or {}).get("run_ms"), 2),
                f"{_fmt(lat.get('p50'), 0)} / {_fmt(lat.get('p99'), 0)}",
                _fmt(b["db_max_used_connections"]),
                _fmt(b["db_connections_left"]),
            ]
        )
    return [
        "",
        "## frappe_context concurrency",
        "",
        "N events at once from python-socketio clients, each a `frappe_context=True` handler "
        "running `SELECT SLEEP(0.2)` on a private MariaDB (Frappe-shaped fake, "
        "tests/fake_frappe); see benchmarks/FRAPPE_CTX.md.",
        "",
        *_table(
            [
                "events",
                "acks ok / failed / missing",
                "wall s",
                "wall / 0.2 s",
                "overhead ms/event",
                "server CPU ms/event",
                "sequential open+close ms",
                "latency p50 / p99 ms",
                "max DB connections",
                "DB connections left",
            ],
            rows,
        ),
    ]
