"""Markdown tables and the goals of issue 16 from the case results of one benchmark run.

A run holds K interleaved rounds of every server at every size (run.py ``--pairs``). Every
figure is reported as the median of the rounds with their spread (min–max), and the goals
are judged on the medians, against the faster of Frappe's two Node servers (``node-v15``,
``node-develop``) for that figure and size.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Case = dict[str, Any]

NODES = ("node-v15", "node-develop")
"""Frappe's own Node servers: the baseline the goals are judged against."""
GSOCKET = "gsocket"
ORDER = {
    "node-v15": 0,
    "node-develop": 1,
    "node-imitation": 2,
    "gsocket": 3,
    "gsocket2": 4,
    "gsocket-cluster2": 5,
    "gsocket-redisman": 6,
}
CLUSTER2 = "gsocket-cluster2"
REDISMAN = "gsocket-redisman"
PHASES = ("fanout_fixed", "fanout_max", "user_fixed", "user_max", "mix")
RELAY = "relay_fixed"
"""Per-user room emits through the Redis manager: only servers that have one run it."""


def _get(case: Case, *path: str) -> Any:
    node: Any = case
    for key in path:
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        node = node[key]
    return node


@dataclass(frozen=True)
class Metric:
    """One figure of a case, how to read it and which way is better."""

    title: str
    path: tuple[str, ...]
    digits: int = 1
    higher_is_better: bool = False
    scale: float = 1.0

    def value(self, case: Case) -> float | None:
        v = _get(case, *self.path)
        return None if v is None else v * self.scale


def _m(title: str, *path: str, digits: int = 1, higher: bool = False, scale: float = 1.0) -> Metric:
    return Metric(title, path, digits, higher, scale)


SECTIONS: list[tuple[str, list[Metric]]] = [
    (
        "Connect storm",
        [
            _m("connects/s", "connect", "connects_per_s", digits=0, higher=True),
            _m("p99 ms", "connect", "latency", "p99_ms"),
            _m("server CPU µs/connect", "connect", "server_us_per_connect", digits=0),
        ],
    ),
    (
        "Fan-out at the fixed rate (one doc: room)",
        [
            _m("p50 ms", "fanout_fixed", "latency", "p50_ms", digits=2),
            _m("p99 ms", "fanout_fixed", "latency", "p99_ms", digits=2),
            _m("server CPU µs/delivery", "fanout_fixed", "server_us_per_delivery", digits=2),
        ],
    ),
    (
        "Fan-out as fast as possible",
        [
            _m("deliveries/s", "fanout_max", "deliveries_per_s", digits=0, higher=True),
            _m("p99 ms", "fanout_max", "latency", "p99_ms"),
            _m("server CPU µs/delivery", "fanout_max", "server_us_per_delivery", digits=2),
        ],
    ),
    (
        "Per-user rooms at the fixed rate",
        [
            _m("p50 ms", "user_fixed", "latency", "p50_ms", digits=2),
            _m("p99 ms", "user_fixed", "latency", "p99_ms", digits=2),
            _m("server CPU µs/event", "user_fixed", "server_us_per_event"),
        ],
    ),
    (
        "Per-user rooms as fast as possible",
        [
            _m("events/s", "user_max", "deliveries_per_s", digits=0, higher=True),
            _m("p99 ms", "user_max", "latency", "p99_ms"),
            _m("server CPU µs/event", "user_max", "server_us_per_event"),
        ],
    ),
    (
        "Desk mix",
        [
            _m("server cores", "mix", "server_cores", digits=3),
            _m("server CPU µs/delivery", "mix", "server_us_per_delivery"),
            _m("p50 ms", "mix", "latency", "p50_ms", digits=2),
            _m("p99 ms", "mix", "latency", "p99_ms", digits=2),
            _m("reconnect p99 ms", "mix", "reconnect_latency", "p99_ms"),
        ],
    ),
    (
        "The server's kernel time (system CPU, part of the CPU above)",
        [
            _m("µs/connect", "connect", "server_system_us_per_connect", digits=0),
            _m(
                "µs/fixed fan-out delivery",
                "fanout_fixed",
                "server_system_us_per_delivery",
                digits=2,
            ),
            _m("µs/per-user event", "user_fixed", "server_system_us_per_event"),
            _m("desk mix cores", "mix", "server_system_cores", digits=3),
        ],
    ),
    (
        "Memory",
        [
            _m("bytes/connection", "memory", "bytes_per_connection", digits=0),
            _m("RSS idle MiB", "memory", "rss_idle", scale=2**-20),
            _m("RSS connected MiB", "memory", "rss_connected", scale=2**-20),
        ],
    ),
]


@dataclass(frozen=True)
class Ceiling(Metric):
    """Deliveries (or events) per second the server's processes could make if each had a core
    to itself: processes × 10⁶ ÷ server CPU µs per delivery in a flat-out phase.  A gsocket
    process is one thread, so one core is its limit; on a 2-core machine the load generator
    takes most of the cores, and this is what the measured rate cannot show."""

    def value(self, case: Case) -> float | None:
        us = _get(case, *self.path)
        procs = len(case.get("processes") or [None])
        return procs * 1e6 / us if us else None


CLUSTER_FIGURES = [
    _m("connects/s", "connect", "connects_per_s", digits=0, higher=True),
    _m("fan-out deliveries/s (flat out)", "fanout_max", "deliveries_per_s", digits=0, higher=True),
    _m("server cores, fan-out flat out", "fanout_max", "server_cores", digits=2),
    _m("load generator cores, fan-out flat out", "fanout_max", "loadgen_cores", digits=2),
    Ceiling(
        "fan-out ceiling deliveries/s (a core per process)",
        ("fanout_max", "server_us_per_delivery"),
        digits=0,
        higher_is_better=True,
    ),
    _m("room events/s (flat out)", "user_max", "deliveries_per_s", digits=0, higher=True),
    _m("server cores, room events flat out", "user_max", "server_cores", digits=2),
    Ceiling(
        "room events ceiling/s (a core per process)",
        ("user_max", "server_us_per_event"),
        digits=0,
        higher_is_better=True,
    ),
    _m("RSS connected MiB (all processes)", "memory", "rss_connected", scale=2**-20),
    _m("bytes/connection", "memory", "bytes_per_connection", digits=0),
    _m("server CPU µs/fan-out delivery", "fanout_fixed", "server_us_per_delivery", digits=2),
    _m("server CPU µs/room event", "user_fixed", "server_us_per_event"),
]
"""Issue 17: what two processes of one cluster do against one process."""

_USER_EVENT = _m("per-user room event from Frappe", "user_fixed", "server_us_per_event", digits=2)
MANAGER_FIGURES = [
    (_USER_EVENT, _USER_EVENT),
    (
        _USER_EVENT,
        _m("the same, emitted on another process", RELAY, "server_us_per_event", digits=2),
    ),
    (_m("fan-out event from Frappe", "fanout_fixed", "server_us_per_event"),) * 2,
    (_m("fan-out delivery", "fanout_fixed", "server_us_per_delivery", digits=2),) * 2,
    (_m("desk mix delivery (reloads, doc_viewers)", "mix", "server_us_per_delivery", digits=2),)
    * 2,
    (_m("connect", "connect", "server_us_per_connect", digits=0),) * 2,
]
"""Issue 17: server CPU per operation of one process with the Redis manager and presence on
(second metric) against plain ``gsocket`` (first): the difference is the manager's cost.  An
emit made on another process of a cluster reaches this one through the manager, not the
bridge: it is set against the same event from Frappe in plain gsocket."""


@dataclass(frozen=True)
class Goal:
    """One goal of issue 16: gsocket's median over the faster Node's median, within a bound.

    ``kernel`` is the system-CPU part of a CPU goal's figure: gsocket's kernel time alone
    over the same Node median is the ratio that no server making the same system calls (one
    ``send`` per delivery, a poll per wakeup) could go below on that machine, however little
    its own code cost.
    """

    key: str
    title: str
    metric: Metric
    bound: float
    kernel: Metric | None = None

    def ok(self, ratio: float) -> bool:
        return ratio >= self.bound if self.metric.higher_is_better else ratio <= self.bound

    @property
    def text(self) -> str:
        return f"{'>=' if self.metric.higher_is_better else '<='} {self.bound:g}x"


GOALS = [
    Goal(
        "cpu_per_user_event",
        "CPU per event to a per-user room",
        _m("", "user_fixed", "server_us_per_event"),
        0.5,
        _m("", "user_fixed", "server_system_us_per_event"),
    ),
    Goal(
        "memory_per_connection",
        "memory per idle websocket connection",
        _m("", "memory", "bytes_per_connection"),
        0.7,
    ),
    Goal(
        "cpu_per_fanout_delivery",
        "CPU per fan-out delivery",
        _m("", "fanout_fixed", "server_us_per_delivery"),
        0.4,
        _m("", "fanout_fixed", "server_system_us_per_delivery"),
    ),
    Goal(
        "cpu_per_connect",
        "CPU per connect",
        _m("", "connect", "server_us_per_connect"),
        0.5,
        _m("", "connect", "server_system_us_per_connect"),
    ),
    Goal(
        "p99_fanout_fixed",
        "p99 latency at the fixed fan-out rate",
        _m("", "fanout_fixed", "latency", "p99_ms"),
        0.8,
    ),
    Goal(
        "mix_cpu",
        "desk mix: server CPU at the same load",
        _m("", "mix", "server_cores", digits=3),
        0.5,
        _m("", "mix", "server_system_cores", digits=3),
    ),
    Goal("mix_p99", "desk mix: p99 latency", _m("", "mix", "latency", "p99_ms"), 0.8),
]


def held(case: Case) -> bool:
    """Every client connected and stayed connected, every reconnect of the desk mix
    succeeded, and no message was lost, duplicated or misrouted."""
    if case.get("error") or not case.get("connect"):
        return False
    hold = case.get("held", {})
    phases = [case.get(k) or {} for k in PHASES]
    phases += [case[RELAY]] if RELAY in case else []
    return (
        case["connect"]["failed"] == 0
        and hold.get("connected_at_end") == case["n"]
        and not hold.get("disconnects")
        and all(
            p.get("lost", 1) == 0 and p.get("duplicates", 1) == 0 and p.get("misrouted", 1) == 0
            for p in phases
        )
        # runs from before the desk mix existed have no "mix" to judge
        and ("mix" not in case or case["mix"].get("reconnect_failed") == 0)
    )


def _groups(cases: Iterable[Case]) -> dict[tuple[int, str], list[Case]]:
    out: dict[tuple[int, str], list[Case]] = {}
    for c in cases:
        out.setdefault((c["n_requested"], c["server"]), []).append(c)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0], ORDER.get(kv[0][1], 9), kv[0][1])))


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over the rounds that produced it."""

    median: float
    low: float
    high: float
    runs: int


def spread(cases: list[Case], metric: Metric) -> Spread | None:
    values = [v for v in (metric.value(c) for c in cases) if v is not None]
    if not values:
        return None
    return Spread(statistics.median(values), min(values), max(values), len(values))


def goals(cases: Iterable[Case]) -> list[dict[str, Any]]:
    """Every goal per size, on the medians: gsocket against the faster Node of the two."""
    groups = _groups(cases)
    out = []
    for n in sorted({n for n, _ in groups}):
        gs = groups.get((n, GSOCKET))
        if not gs:
            continue
        for goal in GOALS:
            mine = spread(gs, goal.metric)
            nodes = {
                name: s
                for name in NODES
                if (s := spread(groups.get((n, name), []), goal.metric)) is not None
            }
            best = None
            if nodes:
                pick = max if goal.metric.higher_is_better else min
                best = pick(nodes, key=lambda name: nodes[name].median)
            node = nodes.get(best) if best else None
            ratio = mine.median / node.median if mine and node and node.median else None
            kernel = spread(gs, goal.kernel) if goal.kernel else None
            out.append(
                {
                    "n": n,
                    "goal": goal.key,
                    "title": goal.title,
                    "node": best,
                    "node_median": node.median if node else None,
                    "gsocket_median": mine.median if mine else None,
                    "ratio": ratio,
                    "bound": goal.text,
                    "ok": goal.ok(ratio) if ratio is not None else None,
                    "kernel_ratio": (
                        kernel.median / node.median if kernel and node and node.median else None
                    ),
                    "runs": mine.runs if mine else 0,
                    "digits": goal.metric.digits,
                }
            )
        out.append(
            {
                "n": n,
                "goal": "clean",
                "title": "nothing lost, duplicated or misrouted; every client held",
                "node": None,
                "node_median": None,
                "gsocket_median": None,
                "ratio": None,
                "bound": "every run",
                "ok": all(held(c) for c in gs),
                "runs": len(gs),
            }
        )
    return out


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


def _cell(s: Spread | None, digits: int) -> str:
    if s is None:
        return "—"
    if s.runs == 1:
        return _fmt(s.median, digits)
    return f"{_fmt(s.median, digits)} ({_fmt(s.low, digits)}–{_fmt(s.high, digits)})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def _revision(machine: dict[str, Any]) -> str:
    if "gsocket_revision" not in machine:
        return ""
    dirty = " with uncommitted changes" if machine.get("gsocket_dirty") else ""
    return f" gsocket at {machine['gsocket_revision']}{dirty}."


def _join_pace(rate: float | None) -> str:
    """How the clients asked to join their rooms (runs before the setting joined all at once)."""
    if not rate:
        return "every client at once"
    return f"{rate:g} clients/s"


def _servers_text(machine: dict[str, Any]) -> list[str]:
    lines = []
    for version, facts in (machine.get("frappe_node") or {}).items():
        packages = ", ".join(f"{k} {v}" for k, v in facts.get("packages", {}).items())
        lines.append(
            f"- `node-{version}`: Frappe {facts.get('frappe_version')}'s own "
            f"`socketio.js` + `realtime/`, unmodified, from {facts.get('archive')} ({packages})."
        )
    return lines


def _cluster_servers_text(servers: set[str]) -> list[str]:
    lines = []
    if CLUSTER2 in servers:
        lines.append(
            f"- `{CLUSTER2}`: one cluster of two gsocket processes (`gsocket.processes` 2, "
            "`serve --process K` on `socketio_port + K`, Redis manager and presence on), the "
            "load generator's workers split between the two ports; CPU and RSS are the sums."
        )
    if REDISMAN in servers:
        lines.append(
            f"- `{REDISMAN}`: one gsocket process with the Redis manager and presence on "
            "(`gsocket.scale_out`)."
        )
    return lines


def goals_pivot(rows: list[dict[str, Any]]) -> list[str]:
    """The goals as one compact table (a row per goal, a column per size), for BENCHMARKS.md:
    the ratio on the medians, **bold** where the goal holds."""
    sizes = sorted({r["n"] for r in rows})
    titles = {r["goal"]: (r["title"], r["bound"]) for r in rows}
    cell = {(r["goal"], r["n"]): r for r in rows}
    body = []
    for key, (title, bound) in titles.items():
        cells = []
        for n in sizes:
            r = cell.get((key, n))
            if r is None or r["ok"] is None:
                cells.append("—")
            elif r["ratio"] is None:
                cells.append(f"**{_fmt(r['ok'])}**" if r["ok"] else _fmt(r["ok"]))
            else:
                text = f"{r['ratio']:.2f} ({r['node']})"
                cells.append(f"**{text}**" if r["ok"] else text)
        body.append([title, bound, *cells])
    return _table(["goal", "bound", *[f"{_fmt(n)} clients" for n in sizes]], body)


def _ratio(a: Spread | None, b: Spread | None) -> str:
    return _fmt(a.median / b.median, 2) if a and b and b.median else "—"


def cluster_tables(cases: Iterable[Case]) -> list[str]:
    """Issue 17's compact tables, for BENCHMARKS.md: per size, each figure of one process
    (``gsocket``) and of a two-process cluster (``gsocket-cluster2``) with their ratio on the
    medians; then server CPU per operation with and without the Redis manager
    (``gsocket-redisman`` against ``gsocket``) and the difference, the manager's cost."""
    groups = _groups(cases)
    sizes = sorted({n for n, server in groups if server in (CLUSTER2, REDISMAN)})
    out: list[str] = []
    rows = []
    for n in sizes:
        one, two = groups.get((n, GSOCKET), []), groups.get((n, CLUSTER2), [])
        if not two:
            continue
        clean = f"{sum(held(c) for c in one)}/{len(one)}, {sum(held(c) for c in two)}/{len(two)}"
        rows.append([_fmt(n), "clean runs (1, 2 processes)", clean, "", ""])
        for mt in CLUSTER_FIGURES:
            a, b = spread(one, mt), spread(two, mt)
            rows.append([_fmt(n), mt.title, _cell(a, mt.digits), _cell(b, mt.digits), _ratio(b, a)])
    if rows:
        out += ["## Cluster of two processes against one (issue 17)", ""]
        out += _table(["clients", "figure", "1 process", "2 processes", "2 ÷ 1"], rows)
    rows = []
    for n in sizes:
        plain, man = groups.get((n, GSOCKET), []), groups.get((n, REDISMAN), [])
        if not man:
            continue
        for base, mt in MANAGER_FIGURES:
            a, b = spread(plain, base), spread(man, mt)
            extra = _fmt(b.median - a.median, mt.digits) if a and b else "—"
            rows.append(
                [
                    _fmt(n),
                    mt.title,
                    _cell(a, mt.digits),
                    _cell(b, mt.digits),
                    extra,
                    _ratio(b, a),
                ]
            )
    if rows:
        out += ["## The Redis manager's CPU per operation (issue 17)", ""]
        out += _table(
            [
                "clients",
                "server CPU µs per",
                "gsocket",
                "with the Redis manager",
                "manager's cost µs",
                "ratio",
            ],
            rows,
        )
    if out:
        out += _other_load(cases)
    return out


def _other_load(cases: Iterable[Case]) -> list[str]:
    """The busiest moment of other work on the machine in the issue 17 servers' phases: the
    figures above are only worth reading when it stayed near zero."""
    worst: dict[str, float] = {}
    for c in cases:
        if c["server"] in (GSOCKET, CLUSTER2, REDISMAN):
            for key in (*PHASES, RELAY):
                cores = _get(c, key, "other_cores")
                if cores is not None:
                    worst[c["server"]] = max(worst.get(c["server"], 0.0), cores)
    text = ", ".join(f"`{server}` {_fmt(cores, 2)}" for server, cores in sorted(worst.items()))
    return [f"Other load, the most in any phase (cores): {text or '—'}.", ""]


def markdown(run: dict[str, Any], cases: list[Case], batches: Iterable[Case] = ()) -> str:
    """The latest.md report: settings, one table per scenario (medians and spread), the
    goals on the medians, and the frappe_context batches when run."""
    s = run["settings"]
    m = run["machine"]
    groups = _groups(cases)
    rounds = max((c.get("round", 1) for c in cases), default=1)
    out = [
        f"# gsocket benchmark run {run['started']}",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gib']:.1f} GiB, "
        f"Linux {m['kernel']}, Node {m['node']}, Python {m['python']}, "
        f"socket.io-client {m['socket_io_client']}, {m['redis']}. "
        f"Load average at start: {m['loadavg_start']}.{_revision(m)}",
        "",
        f"Command: `{run['command']}`",
        "",
        *_servers_text(m),
        f"- `gsocket`: against the web stand-in answering as Frappe {s.get('gsocket_web', 'v15')}.",
        *_cluster_servers_text({c["server"] for c in cases}),
        "",
        f"Settings: {rounds} interleaved round(s) of every server per size; fixed fan-out "
        f"rate {s['rate']:g} deliveries/s and per-user rate {s.get('user_rate', s['rate']):g} "
        f"events/s, each for {s['fixed_seconds']:g} s; flat out for {s['flat_seconds']:g} s "
        f"(window {s['window']} deliveries in flight); desk mix `{s.get('mix', '—')}` for "
        f"{s.get('mix_seconds', 0):g} s; {s['workers']} loadgen workers; connect concurrency "
        f"{s['connect_concurrency']}; rooms joined by "
        f"{_join_pace(s.get('subscribe_rate'))}.",
        "",
        "Each cell: median of the rounds (min–max).",
        "",
    ]
    for title, metrics in SECTIONS:
        rows = []
        for (n, server), group in groups.items():
            failed = [c for c in group if c.get("error")]
            row = [server, _fmt(n), f"{len(group) - len(failed)}/{len(group)}"]
            rows.append(row + [_cell(spread(group, mt), mt.digits) for mt in metrics])
        header = ["server", "clients", "runs ok", *[mt.title for mt in metrics]]
        out += [f"## {title}", "", *_table(header, rows)]
    rows = []
    for (n, server), group in groups.items():
        mixes = [c.get("mix") or {} for c in group]
        lost = sum(
            (c.get(k) or {}).get("lost", 0) + (c.get(k) or {}).get("duplicates", 0)
            for c in group
            for k in PHASES
        )
        rows.append(
            [
                server,
                _fmt(n),
                f"{sum(held(c) for c in group)}/{len(group)}",
                _fmt(lost),
                _fmt(sum(x.get("reconnects", 0) for x in mixes)),
                _fmt(sum(x.get("reconnect_failed", 0) for x in mixes)),
                _fmt(sum(x.get("doc_viewers", 0) for x in mixes)),
            ]
        )
    out += ["## Clean runs", ""] + _table(
        [
            "server",
            "clients",
            "clean runs",
            "lost + duplicated",
            "mix reconnects",
            "failed",
            "doc_viewers received",
        ],
        rows,
    )
    errors = [c for c in cases if c.get("error")]
    for c in errors:
        out.append(f"Error: {c['server']} n={c['n_requested']} round {c.get('round')}: ")
        out.append(f"`{str(c['error'])[:300]}`")
        out.append("")
    capped = [c for c in cases if c.get("n") and c["n"] < c["n_requested"]]
    for c in capped:
        out += [
            f"Note: {c['server']} size {c['n_requested']} ran with {c['n']} clients: "
            f"{c.get('n_note', '')}",
            "",
        ]
    rows_g = goals(cases)
    out += ["## Goals of issue 16 on the medians", ""]
    if not rows_g:
        out += ["No gsocket results in this run.", ""]
    else:
        out += _table(
            [
                "clients",
                "goal",
                "faster Node",
                "Node",
                "gsocket",
                "ratio",
                "bound",
                "holds",
                "gsocket's kernel time alone",
            ],
            [
                [
                    _fmt(r["n"]),
                    r["title"],
                    r["node"] or "—",
                    _fmt(r["node_median"], r.get("digits", 2)),
                    _fmt(r["gsocket_median"], r.get("digits", 2)),
                    _fmt(r["ratio"], 2),
                    r["bound"],
                    _fmt(r["ok"]),
                    _fmt(r.get("kernel_ratio"), 2),
                ]
                for r in rows_g
            ],
        )
        out += [
            "",
            "gsocket's kernel time alone: its system CPU for the same figure over the same "
            "Node median, the ratio that no server making the same system calls could go "
            "below on this machine.",
            "",
            "### For BENCHMARKS.md",
            "",
            *goals_pivot(rows_g),
        ]
    out += cluster_tables(cases)
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
