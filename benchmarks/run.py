"""Run the gsocket benchmarks: Frappe's own Node realtime server (v15 and develop) and gsocket.

    python benchmarks/run.py [--sizes 1000,5000,10000] [--pairs 3] [--quick]
        [--servers node-v15,node-develop,gsocket]

For every size, the servers run in turn, K times over (node-v15, node-develop, gsocket, then
again: interleaved, so that a machine's drift hits every server alike), each as a fresh
process on a temporary bench-shaped folder, with a real redis-server and a fast web
stand-in answering as that Frappe version's web process does; the load generator
(benchmarks/loadgen, socket.io-client@4 in several Node workers) then runs the scenarios:
connect storm, fan-out to one doc: room, per-user rooms, each at a fixed rate and as fast as
possible, and the desk mix. Server CPU and memory come from /proc. Results go to
RESULTS_DIR/<timestamp>.jsonl and RESULTS_DIR/latest.md, with medians and spread per server
(see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import frappe_node, processes, report
from harness.benchdir import SITE, make_bench, write_config
from harness.loadgen import Loadgen
from harness.mix import Mix, Schedule, schedule
from harness.publisher import Published, Publisher, Route, Target, events_for

from gsocket.demo.ports import free_port, free_port_run, port_is_open
from gsocket.demo.processes import Child, wait_until
from gsocket.demo.redis_server import RedisServer

BENCH_ROOT = Path(__file__).resolve().parent
REPO = BENCH_ROOT.parent
DOCTYPE, DOCNAME = "ToDo", "bench-doc"
DOC_ROOM = f"doc:{DOCTYPE}/{DOCNAME}"
TO_DOC = Target(DOC_ROOM)
FLAVOURS = ("v15", "develop", "any")
"""How the web stand-in answers (benchmarks/webstub/server.js): as Frappe v15's web process,
as develop's, or everything allowed (for the imitation baseline)."""


@dataclass(frozen=True)
class Server:
    """A server under test: how it is started and which web process it talks to."""

    name: str
    kind: str  # "frappe-node", "imitation" or "gsocket"
    flavour: str
    frappe_version: str | None = None  # "v15" / "develop" for Frappe's own Node
    processes: int = 1
    gsocket_conf: dict[str, Any] = field(default_factory=dict)
    """The ``gsocket`` key of common_site_config.json for this server."""

    @property
    def cluster(self) -> bool:
        """One bench's ``gsocket.processes``: each process started with ``--process K``."""
        return self.gsocket_conf.get("processes", 1) > 1

    @property
    def scale_out(self) -> bool:
        """The processes share rooms through the Redis manager (and presence)."""
        return self.cluster or bool(self.gsocket_conf.get("scale_out"))


def server_spec(name: str, gsocket_web: str) -> Server:
    """``node-v15``/``node-develop``: Frappe's own Node server of that archive, unmodified;
    ``node-imitation``: benchmarks/baseline_node/server.js, our imitation of it (a labelled
    third row, for continuity with earlier runs); ``gsocket``; ``gsocket2``: two independent
    gsocket processes, the clients split between them as an nginx upstream would, run by
    itself for the sizes one process cannot hold under this machine's descriptor limit
    (:func:`servers_for`); ``gsocket-cluster2``: one cluster of two processes
    (``gsocket.processes = 2``, ``serve --process K`` on ``socketio_port + K``, the Redis
    manager and presence on), the clients split between them; ``gsocket-redisman``: one
    process with the Redis manager and presence on (``gsocket.scale_out``), whose difference
    to ``gsocket`` is what the manager costs per event."""
    if name in ("node-v15", "node-develop"):
        version = name.removeprefix("node-")
        return Server(name, "frappe-node", version, frappe_version=version)
    if name == "node-imitation":
        return Server(name, "imitation", "any")
    if name in ("gsocket", "gsocket2"):
        return Server(name, "gsocket", gsocket_web, processes=2 if name == "gsocket2" else 1)
    if name == "gsocket-cluster2":
        return Server(name, "gsocket", gsocket_web, processes=2, gsocket_conf={"processes": 2})
    if name == "gsocket-redisman":
        return Server(name, "gsocket", gsocket_web, gsocket_conf={"scale_out": True})
    raise ValueError(name)


SERVERS = (
    "node-v15",
    "node-develop",
    "node-imitation",
    "gsocket",
    "gsocket2",
    "gsocket-cluster2",
    "gsocket-redisman",
)
DEFAULT_SERVERS = "node-v15,node-develop,gsocket"
SOURCE_ADDRESSES = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
# Throwaway clients per loadgen worker connected before the timed connect storm.
WARMUP_CLIENTS = 20
# Fan-out events delivered, unmeasured, before the measured phases (JIT, buffers).
WARMUP_EVENTS = 50
AUTH_CALLS = "frappe.realtime.get_user_info"
CLUSTER_CHANNEL = "gsocket"
"""gsocket.scale_out_channel's default: the Redis manager's channel and its keys' prefix."""
# v15 answers the can_subscribe_* pair, develop has_permission
PERMISSION_CALLS = (
    "frappe.realtime.has_permission",
    "frappe.realtime.can_subscribe_doc",
    "frappe.realtime.can_subscribe_doctype",
)

log = logging.getLogger("gsocket.bench")


@dataclass
class Settings:
    """Everything that shapes a run; written into the results so numbers stay comparable."""

    sizes: list[int]
    servers: list[str]
    quick: bool
    results_dir: Path
    workers: int = 4
    rate: float = 20_000.0
    user_rate: float = 5_000.0
    fixed_seconds: float = 10.0
    flat_seconds: float = 10.0
    flat_max_deliveries: int = 2_000_000
    window: int = 20_000
    connect_concurrency: int = 500
    connect_timeout_s: float = 30.0
    drain_stall_s: float = 10.0
    settle_s: float = 1.0
    source_addresses: list[str] = field(default_factory=lambda: list(SOURCE_ADDRESSES))
    frappe_ctx_sizes: list[int] = field(default_factory=lambda: [200, 1000])
    report_from: Path | None = None
    pairs: int = 3
    gsocket_web: str = "develop"
    mix: str = Mix().text()
    mix_seconds: float = 10.0
    subscribe_rate: float = 500.0
    """Clients a second that ask to join their rooms (the doc room, the desk mix's rooms): all
    at once, Frappe's Node server opened a web call per request and ran out of descriptors
    (EMFILE) at 5 000 and 10 000 clients, so most of its clients never joined; at 2 000/s
    (8 000 web calls a second, more than the web stand-in answers) it still did at 10 000."""


def parse_args(argv: list[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", help="connected clients per case (default 1000,5000,10000)")
    p.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help=f"comma-separated, run in this order (default {DEFAULT_SERVERS}; also "
        "node-imitation, gsocket2, gsocket-cluster2, gsocket-redisman)",
    )
    p.add_argument(
        "--pairs",
        type=int,
        help="rounds of the servers per size, interleaved (default 3; 1 with --quick)",
    )
    p.add_argument(
        "--gsocket-web",
        choices=FLAVOURS[:2],
        default="develop",
        help="which Frappe version's web process gsocket talks to (default develop: the "
        "same calls as node-develop, installed apps named by get_user_info)",
    )
    p.add_argument(
        "--mix",
        default="",
        help="desk mix, per second per 1000 users (default "
        f"{Mix().text()}; give only the keys to change)",
    )
    p.add_argument("--mix-seconds", type=float, help="length of the desk mix phase (default 10)")
    p.add_argument(
        "--subscribe-rate",
        type=float,
        help="clients a second that join their rooms (default 500; 0: all at once)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: N=200, short phases")
    p.add_argument("--results-dir", type=Path, default=BENCH_ROOT / "results")
    p.add_argument("--workers", type=int, help="load generator worker processes (default 4)")
    p.add_argument("--rate", type=float, help="fixed fan-out rate, deliveries/s (default 20000)")
    p.add_argument("--user-rate", type=float, help="fixed per-user-room rate, events/s (5000)")
    p.add_argument("--seconds", type=float, help="length of each fixed and flat-out phase")
    p.add_argument(
        "--frappe-ctx",
        metavar="SIZES",
        help="concurrent frappe_context batches after the gsocket cases (default 200,1000; "
        "20 with --quick; 0 for none)",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="JSONL",
        help="only rewrite RESULTS_DIR/latest.md from an earlier run's results file",
    )
    a = p.parse_args(argv)
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    for s in servers:
        if s not in SERVERS:
            p.error(f"unknown server {s!r} (choose from {', '.join(SERVERS)})")
    default_sizes = "200" if a.quick else "1000,5000,10000"
    sizes = [int(v) for v in (a.sizes or default_sizes).split(",")]
    st = Settings(sizes=sizes, servers=servers, quick=a.quick, results_dir=a.results_dir)
    st.report_from = a.report
    st.gsocket_web = a.gsocket_web
    try:
        st.mix = Mix.parse(a.mix).text()
    except ValueError as e:
        p.error(str(e))
    if a.quick:
        st.rate, st.fixed_seconds, st.flat_seconds = 5_000.0, 2.0, 2.0
        st.flat_max_deliveries, st.drain_stall_s, st.settle_s = 100_000, 10.0, 0.2
        st.pairs, st.mix_seconds = 1, 3.0
    if a.pairs:
        st.pairs = a.pairs
    if a.mix_seconds:
        st.mix_seconds = a.mix_seconds
    if a.subscribe_rate is not None:
        st.subscribe_rate = a.subscribe_rate
    if a.workers:
        st.workers = a.workers
    if a.rate:
        st.rate = a.rate
    if a.user_rate:
        st.user_rate = a.user_rate
    if a.seconds:
        st.fixed_seconds = st.flat_seconds = a.seconds
    if a.quick:
        st.frappe_ctx_sizes = [20]
    if a.frappe_ctx is not None:
        st.frappe_ctx_sizes = [int(v) for v in a.frappe_ctx.split(",") if int(v or 0) > 0]
    return st


def _command_output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True).stdout.strip()


def machine_facts(frappe_nodes: dict[str, frappe_node.FrappeNode]) -> dict[str, Any]:
    """What the numbers were measured on; other helpers may load the machine too."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])

    def pkg_version(path: Path) -> str:
        try:
            return json.loads(path.read_text())["version"]
        except (OSError, ValueError, KeyError):
            return "?"

    redis_version = _command_output(["redis-server", "--version"]).split(" sha=")[0]
    return {
        "frappe_node": {
            fn.version: {
                "archive": fn.archive.name,
                "frappe_version": fn.frappe_version,
                "packages": fn.packages,
            }
            for fn in frappe_nodes.values()
        },
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": mem_kib / 2**20,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": _command_output(["node", "--version"]),
        "socket_io": pkg_version(BENCH_ROOT / "baseline_node/node_modules/socket.io/package.json"),
        "socket_io_client": pkg_version(
            BENCH_ROOT / "loadgen/node_modules/socket.io-client/package.json"
        ),
        "redis": redis_version,
        "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "gsocket_revision": _command_output(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]
        ),
        # gsocket is measured from the working tree: say when it differs from the commit.
        "gsocket_dirty": bool(
            _command_output(["git", "-C", str(REPO), "status", "--porcelain", "--", "gsocket"])
        ),
        "loadavg_start": processes.loadavg(),
    }


def servers_for(st: Settings, n: int, fd_hard: int) -> list[str]:
    """The servers of one size: those asked for, plus ``gsocket2`` when one process cannot
    hold ``n`` sockets here (the only way to hold 20 000 clients under a 20 000 limit)."""
    servers = list(st.servers)
    if "gsocket" in servers and "gsocket2" not in servers and n > fd_hard - processes.FD_RESERVE:
        servers.append("gsocket2")
    return servers


def user_room(index: int) -> str:
    return f"user:u{index}@example.com"


class Run:
    """Shared parts of one invocation: Redis, the web stand-ins, the bench folder, the
    extracted Frappe Node servers."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        tmp: Path,
        frappe_nodes: dict[str, frappe_node.FrappeNode],
    ) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.bench = make_bench(tmp)
        self.frappe_nodes = frappe_nodes
        self.fd_hard = processes.raise_fd_limit()
        self._children: list[Child | RedisServer] = []
        self._webs: dict[str, tuple[Child, int]] = {}
        try:
            self.redis = processes.start_redis(log_dir)
            self.redis_port = self.redis.port
            assert self.redis.pid is not None
            self.redis_pid = self.redis.pid
            self._children.append(self.redis)
            self.publisher = Publisher(self.redis_port, SITE)
        except BaseException:
            self._stop_children()
            raise

    def web(self, flavour: str) -> tuple[Child, int]:
        """The web stand-in answering as FLAVOUR (started on first use, shared after)."""
        if flavour not in self._webs:
            child, port = processes.start_webstub(BENCH_ROOT, self.log_dir, flavour)
            self._children.append(child)
            self._webs[flavour] = (child, port)
        return self._webs[flavour]

    def clear_cluster_keys(self) -> int:
        """Delete what a stopped cluster left in Redis (presence, recovery: the default
        ``gsocket:`` prefix) so that the next case starts from nothing; return how many keys
        there were (none after a clean stop: each process removes its own presence)."""
        client = self.publisher.client
        keys = list(client.scan_iter(match=f"{CLUSTER_CHANNEL}:*"))
        if keys:
            client.delete(*keys)
        return len(keys)

    def _stop_children(self) -> None:
        for child in reversed(self._children):
            child.stop()

    def close(self) -> None:
        self.publisher.close()
        self._stop_children()


TICKED = ("server_cpu", "server_system_cpu", "loadgen_cpu", "web_cpu", "redis_cpu")
"""Snapshot figures read from /proc in clock ticks: a difference of two is whole ticks (so
the kernel's part of a phase's CPU is never above the whole of it by a rounding)."""


class Case:
    """One server at one size: a fresh server and load generator, every scenario."""

    def __init__(self, run: Run, server: str, n_requested: int, round_: int = 1) -> None:
        self.run = run
        self.st = run.settings
        self.server = server
        self.spec = server_spec(server, self.st.gsocket_web)
        self.n_requested = n_requested
        self.count = self.spec.processes
        self.n = min(n_requested, self.count * (run.fd_hard - processes.FD_RESERVE))
        self.web, self.web_port = run.web(self.spec.flavour)
        self.result: dict[str, Any] = {
            "type": "case",
            "server": server,
            "round": round_,
            "web_flavour": self.spec.flavour,
            "n_requested": n_requested,
            "n": self.n,
        }
        if self.n < n_requested:
            self.result["n_note"] = (
                f"the hard RLIMIT_NOFILE of this machine is {run.fd_hard} and cannot be "
                f"raised here, so one server process cannot hold {n_requested} sockets"
            )
        self.proc: processes.Group | None = None
        self.ports: list[int] = []
        self.lg: Loadgen | None = None
        self.probe_seq = 0
        self.connected = 0

    # -- measurement helpers -------------------------------------------------------------

    def snapshot(self) -> dict[str, float]:
        assert self.proc is not None and self.lg is not None
        busy, _ = processes.machine_cpu()
        own = resource.getrusage(resource.RUSAGE_SELF)
        server_user, server_system = self.proc.cpu_times()
        return {
            "wall": time.monotonic(),
            "server_cpu": server_user + server_system,
            "server_system_cpu": server_system,
            "server_rss": self.proc.rss(),
            "loadgen_cpu": processes.cpu(self.lg.child.pid),
            "web_cpu": processes.cpu(self.web.pid),
            "redis_cpu": processes.cpu(self.run.redis_pid),
            "harness_cpu": own.ru_utime + own.ru_stime,
            "machine_busy": busy,
        }

    @staticmethod
    def usage(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU of each party between two snapshots, and the machine's load from others."""
        d = {k: after[k] - before[k] for k in before}
        for k in TICKED:  # whole clock ticks, without the float noise of the subtraction
            d[k] = processes.whole_ticks(d[k])
        wall = max(d["wall"], 1e-9)
        ours = d["server_cpu"] + d["loadgen_cpu"] + d["web_cpu"] + d["redis_cpu"]
        ours += d["harness_cpu"]
        return {
            "wall_s": d["wall"],
            "server_cpu_s": d["server_cpu"],
            "server_cores": d["server_cpu"] / wall,
            "server_system_cpu_s": d["server_system_cpu"],
            "server_system_cores": d["server_system_cpu"] / wall,
            "loadgen_cpu_s": d["loadgen_cpu"],
            "loadgen_cores": d["loadgen_cpu"] / wall,
            "web_cpu_s": d["web_cpu"],
            "redis_cpu_s": d["redis_cpu"],
            "harness_cpu_s": d["harness_cpu"],
            "other_cores": max(0.0, d["machine_busy"] - ours) / wall,
        }

    # -- lifecycle -----------------------------------------------------------------------

    def launch(self, port: int, index: int) -> Child:
        """Start one process of the server on PORT, the way a bench starts it."""
        name = f"{self.server}-{self.n_requested}-r{self.result['round']}"
        name += f"-{index}" if self.count > 1 else ""
        bench = self.run.bench
        if self.spec.kind == "frappe-node":
            assert self.spec.frappe_version is not None
            fn = self.run.frappe_nodes[self.spec.frappe_version]
            return processes.start(
                name, fn.argv(), self.run.log_dir, cwd=fn.root, env=fn.env(bench, port)
            )
        if self.spec.kind == "imitation":
            argv = ["node", str(BENCH_ROOT / "baseline_node" / "server.js"), "--bench", str(bench)]
            return processes.start(name, argv, self.run.log_dir, cwd=bench / "sites")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "gsocket", "serve", "--bench", str(bench)]
        # A cluster's process K finds its own port (socketio_port + K), as under supervisor.
        argv += ["--process", str(index)] if self.spec.cluster else ["--port", str(port)]
        return processes.start(name, argv, self.run.log_dir, cwd=bench / "sites", env=env)

    def start_server(self) -> None:
        if self.spec.cluster:
            base = free_port_run(self.count)
            self.ports = list(range(base, base + self.count))
        else:
            self.ports = [free_port() for _ in range(self.count)]
        write_config(
            self.run.bench,
            self.ports[0],
            self.run.redis_port,
            self.web_port,
            self.spec.gsocket_conf,
        )
        children = [self.launch(port, i) for i, port in enumerate(self.ports)]
        self.proc = processes.Group(children)
        # Frappe's Node servers have no /health: listening is what a bench checks for them.
        up = processes.healthy if self.spec.kind == "gsocket" else port_is_open

        def ready() -> bool:
            assert self.proc is not None
            if not self.proc.alive():
                raise RuntimeError(f"{self.server} exited at start:\n{self.proc.log_tail()}")
            return all(up(port) for port in self.ports) and (
                self.run.publisher.subscribers() >= self.count
            )

        wait_until(ready, 60, f"no {self.server} listening with its Redis subscription in 60 s")

    def execute(self) -> dict[str, Any]:
        log.info("%s with %d clients", self.server, self.n)
        try:
            self.start_server()
            self.lg = Loadgen(
                BENCH_ROOT, self.run.log_dir, self.st.workers, f"loadgen-{self.server}-{self.n}"
            )
            self.scenarios()
        except Exception as exc:  # one broken case must not lose the others' numbers
            log.exception("%s n=%d failed", self.server, self.n)
            self.result["error"] = f"{type(exc).__name__}: {exc}"
            if self.proc is not None:
                self.result["server_log_tail"] = self.proc.log_tail()
        finally:
            if self.lg is not None:
                self.lg.close()
            if self.proc is not None:
                # Generous: a server may still be processing the clients' disconnects.
                self.proc.stop(timeout=30)
            if self.spec.scale_out:
                self.result["cluster_keys_left"] = self.run.clear_cluster_keys()
        return self.result

    def process_view(self) -> list[dict[str, Any]]:
        """Per gsocket process: its port, the sockets it holds and its cluster node name (only
        with the Redis manager on), from ``/health``; proves how the clients were spread."""
        view = []
        for port in self.ports:
            body = processes.health(port)
            view.append({"port": port, "sockets": body.get("sockets"), "node": body.get("node")})
        return view

    def fanout_fixed(self) -> None:
        """Fan-out to the doc room of every connected client at the fixed delivery rate."""
        n, rate = self.connected, self.st.rate
        self.result["fanout_fixed"] = self.phase(
            "fanout-fixed",
            "fanout",
            n,
            lambda: self.run.publisher.fixed_rate(
                "fanout-fixed",
                rate / max(1, n),
                events_for(rate, self.st.fixed_seconds, n),
                lambda _: TO_DOC,
            ),
        )

    def scenarios(self) -> None:
        assert self.proc is not None and self.lg is not None
        # Let start-up allocations finish before the idle figure (a measurement settle).
        time.sleep(self.st.settle_s)
        rss_idle = self.proc.rss()
        self.connect_storm()
        self.subscribe_doc()
        self.check_user_rooms()
        self.warm_up_fanout()
        time.sleep(self.st.settle_s)
        rss_connected = self.proc.rss()
        if self.spec.kind == "gsocket":
            self.result["processes"] = self.process_view()
            self.result["manager_subscribers"] = self.run.publisher.subscribers(CLUSTER_CHANNEL)
        n = self.connected
        self.fanout_fixed()
        self.result["fanout_max"] = self.phase(
            "fanout-max",
            "fanout",
            n,
            lambda: self.run.publisher.flat_out(
                "fanout-max",
                self.lg,
                n,
                max(self.st.window, 4 * n),
                self.st.flat_seconds,
                max(1, self.st.flat_max_deliveries // max(1, n)),
                lambda _: TO_DOC,
            ),
        )
        self.result["user_fixed"] = self.phase(
            "user-fixed",
            "user",
            1,
            lambda: self.run.publisher.fixed_rate(
                "user-fixed",
                self.st.user_rate,
                events_for(self.st.user_rate, self.st.fixed_seconds, 1),
                lambda seq: Target(user_room(seq % self.n)),
            ),
        )
        self.result["user_max"] = self.phase(
            "user-max",
            "user",
            1,
            lambda: self.run.publisher.flat_out(
                "user-max",
                self.lg,
                1,
                self.st.window,
                self.st.flat_seconds,
                self.st.flat_max_deliveries,
                lambda seq: Target(user_room(seq % self.n)),
            ),
        )
        if self.spec.scale_out:
            # what a handler's emit on another process costs: through the Redis manager
            self.result["relay_fixed"] = self.phase(
                "relay-fixed",
                "user",
                1,
                lambda: self.run.publisher.fixed_rate(
                    "relay-fixed",
                    self.st.user_rate,
                    events_for(self.st.user_rate, self.st.fixed_seconds, 1),
                    lambda seq: Target(user_room(seq % self.n), relayed=True),
                ),
            )
        rss_after = self.proc.rss()
        self.desk_mix()
        stats = self.lg.call("stats")
        self.result["held"] = {
            "connected_at_end": stats["connected"],
            "disconnects": stats["disconnects"],
        }
        self.result["memory"] = {
            "rss_idle": rss_idle,
            "rss_connected": rss_connected,
            "rss_after": rss_after,
            "bytes_per_connection": (rss_connected - rss_idle) / n if n else None,
        }
        self.result["loadgen_rss"] = stats["rss_bytes"]
        self.lg.call("disconnect")

    def desk_mix(self) -> None:
        """The desk mix (harness/mix.py): every client takes its desk rooms, then events of
        every kind are published at the mix's fixed rate while a share of the clients
        reconnect; server CPU at that offered load, latency, and loss judged for the
        clients that stayed."""
        assert self.lg is not None and self.proc is not None
        mix = Mix.parse(self.st.mix)
        layout = mix.layout(self.n)
        web_before = processes.webstub_counts(self.web_port)
        sub_before = self.snapshot()
        self.lg.call("mix_subscribe", layout=layout, per_s=self.st.subscribe_rate)
        doctypes, docs = int(layout["doctypes"]), int(layout["docs"])
        # one list_update to every doctype room and one doc_update to every document room
        probe = Schedule("l" * doctypes + "d" * docs, [*range(doctypes), *range(docs)])
        ready = self.probe("probe-mix", doctypes + docs, probe.target, 120, mode="mixready")
        sub_after = self.snapshot()
        web_after = processes.webstub_counts(self.web_port)
        sub_use = self.usage(sub_before, sub_after)
        log.info("  desk mix: %d clients in all their rooms", ready["clients_ready"])
        if ready["clients_ready"] < self.connected:
            # measured anyway: what the missing joins cost shows up as lost deliveries
            log.warning(
                "  desk mix: %d clients never got into all their rooms",
                self.connected - ready["clients_ready"],
            )
        plan = schedule(mix, self.n, self.st.mix_seconds)
        rate = len(plan.kinds) / self.st.mix_seconds
        churn = mix.reconnect_pct / 100 * self.n
        self.lg.call("phase_start", phase="mix", mode="mix", n=self.n, churn_per_s=churn)
        before = self.snapshot()
        pub = self.run.publisher.fixed_rate("mix", rate, len(plan.kinds), plan.target)
        published = self.snapshot()
        reconnects = self.lg.call("churn_stop", timeout_ms=int(self.st.connect_timeout_s * 1000))
        self.lg.call("mix_expect", kinds=plan.kinds, targets=plan.targets)
        missing, last_change = None, time.monotonic()
        while True:
            now = self.lg.call("mix_pending")["missing"]
            if now == 0 or time.monotonic() - last_change > self.st.drain_stall_s:
                break
            if now != missing:
                missing, last_change = now, time.monotonic()
            time.sleep(0.05)
        after = self.snapshot()
        res = self.lg.call("phase_end", phase="mix", published=pub.messages, timeout=300)
        use = self.usage(before, after)
        offered = self.usage(before, published)
        self.result["mix"] = {
            "mix": self.st.mix,
            "layout": {"doctypes": doctypes, "docs": docs},
            "subscribe": {
                **ready,
                "permission_calls": _delta(web_before, web_after, *PERMISSION_CALLS),
                "server_cpu_s": sub_use["server_cpu_s"],
            },
            "events": pub.messages,
            "events_by_kind": {k: plan.kinds.count(k) for k in "ldug"},
            "publish_rate": pub.messages / pub.seconds,
            "expected": res["expected"],
            "delivered": res["delivered"],
            "lost": res["lost"],
            "duplicates": res["duplicates"],
            "misrouted": res["misrouted"] + res["unexpected"],
            "stray": res["stray"],
            "received": res["received"],
            "doc_viewers": res["doc_viewers"],
            "churned_clients": res["churned_clients"],
            "churned_delivered": res["churned_delivered"],
            "reconnects": reconnects["reconnects"],
            "reconnect_failed": reconnects["failed"] + reconnects["pending"],
            "reconnect_errors": reconnects["errors"],
            "reconnect_latency": reconnects["latency"],
            "latency": res["latency"],
            # CPU while the load was offered: the publishing window, churn included
            "server_cores": offered["server_cores"],
            "server_system_cores": offered["server_system_cores"],
            "server_us_per_delivery": 1e6 * use["server_cpu_s"] / max(1, res["received"]),
            **{k: v for k, v in use.items() if k not in ("server_cores", "server_system_cores")},
        }
        log.info(
            "  desk mix: %d events, %d/%d delivered, p99 %s ms, lost %d, dup %d, "
            "%d reconnects (%d failed), server %.2f cores",
            pub.messages,
            res["delivered"],
            res["expected"],
            res["latency"].get("p99_ms"),
            res["lost"],
            res["duplicates"],
            reconnects["reconnects"],
            reconnects["failed"],
            offered["server_cores"],
        )

    def connection_args(self) -> dict[str, Any]:
        urls = [f"http://127.0.0.1:{port}" for port in self.ports]
        return {
            "url": urls[0],
            "urls": urls,
            "site": SITE,
            # The web stand-in's URL: the servers take the web process from the Origin.
            "origin": f"http://127.0.0.1:{self.web_port}",
            "timeout_ms": int(self.st.connect_timeout_s * 1000),
            "local_addresses": self.st.source_addresses,
        }

    def connect_storm(self) -> None:
        assert self.lg is not None
        warm = self.lg.call("warmup", count=WARMUP_CLIENTS, **self.connection_args())
        if warm["connected"] == 0:
            raise RuntimeError(f"no warm-up client could connect to {self.server}")
        web_before = processes.webstub_counts(self.web_port)
        before = self.snapshot()
        res = self.lg.call(
            "connect",
            timeout=max(180.0, self.n / 50),
            event="bench",
            n=self.n,
            concurrency=self.st.connect_concurrency,
            **self.connection_args(),
        )
        after = self.snapshot()
        web_after = processes.webstub_counts(self.web_port)
        self.connected = res["connected"]
        span = max(1e-9, (res["end_us"] - res["start_us"]) / 1e6) if res["end_us"] else None
        use = self.usage(before, after)
        self.result["connect"] = {
            "connected": res["connected"],
            "failed": res["failed"],
            "errors": res["errors"],
            "seconds": span,
            "connects_per_s": res["connected"] / span if span else None,
            "latency": res["latency"],
            "auth_calls": _delta(web_before, web_after, AUTH_CALLS),
            "server_us_per_connect": 1e6 * use["server_cpu_s"] / max(1, res["connected"]),
            "server_system_us_per_connect": (
                1e6 * use["server_system_cpu_s"] / max(1, res["connected"])
            ),
            "loadgen_cpu_self_s": res["cpu_s"],
            **use,
        }
        log.info(
            "  connect: %d/%d in %.2fs, p99 %s ms, errors %s",
            res["connected"],
            self.n,
            span or 0,
            res["latency"].get("p99_ms"),
            res["errors"] or "none",
        )

    def probe(self, phase: str, count: int, room: Route, limit: float, mode: str = "probe") -> dict:
        """Publish COUNT probe events (to ROOM(i)) until every connected client got one.

        Joining rooms may finish after the client's own emit returns (the permission call
        is asynchronous), so readiness is observed, not assumed. Probes are sent again
        only when a round brought no new client (a join that raced the previous round),
        with the round doubling each time, so a slow server is not flooded.
        """
        assert self.lg is not None
        self.lg.call("phase_start", phase=phase, mode=mode, n=self.n)
        started = time.monotonic()
        seen = (0, 0)
        round_s = 1.0
        rounds = 0
        while seen[1] < self.connected and time.monotonic() - started < limit:
            base = self.probe_seq
            self.run.publisher.burst(phase, count, lambda seq, b=base: room(seq - b), first=base)
            self.probe_seq += count
            rounds += 1
            before = seen[1]
            last_change = time.monotonic()
            while seen[1] < self.connected and time.monotonic() - last_change < round_s:
                latest = self.lg.wait_progress(phase, seen, 0.2)
                if latest[1] != seen[1]:
                    last_change = time.monotonic()
                seen = latest
            if seen[1] == before:
                round_s = min(2 * round_s, 8.0)
        end = self.lg.call("phase_end", phase=phase, published=0)
        return {
            "clients_ready": end["clients_with_any"],
            "rounds": rounds,
            "seconds": time.monotonic() - started,
        }

    def subscribe_doc(self) -> None:
        assert self.lg is not None
        web_before = processes.webstub_counts(self.web_port)
        before = self.snapshot()
        self.lg.call(
            "emit", event="doc_subscribe", args=[DOCTYPE, DOCNAME], per_s=self.st.subscribe_rate
        )
        res = self.probe("probe-doc", 1, lambda _: TO_DOC, 120)
        after = self.snapshot()
        web_after = processes.webstub_counts(self.web_port)
        use = self.usage(before, after)
        res["permission_calls"] = _delta(web_before, web_after, *PERMISSION_CALLS)
        res["web_refusals"] = _delta(web_before, web_after, *PERMISSION_CALLS, key="failed")
        res["server_us_per_subscribe"] = 1e6 * use["server_cpu_s"] / max(1, self.connected)
        self.result["doc_subscribe"] = {**res, **use}
        log.info("  doc_subscribe: %d clients in the room", res["clients_ready"])

    def check_user_rooms(self) -> None:
        res = self.probe("probe-user", self.n, lambda seq: Target(user_room(seq)), 60)
        self.result["user_rooms"] = res
        log.info("  user rooms: %d clients reached", res["clients_ready"])

    def warm_up_fanout(self) -> None:
        """Deliver a few unmeasured fan-out events so both sides' broadcast paths are warm."""
        assert self.lg is not None
        self.lg.call("phase_start", phase="warmup", mode="fanout", n=self.n)
        self.run.publisher.burst("warmup", WARMUP_EVENTS, lambda _: TO_DOC)
        self.lg.wait_received(
            "warmup", WARMUP_EVENTS * self.connected, self.st.drain_stall_s, limit=120
        )
        self.lg.call("phase_end", phase="warmup", published=WARMUP_EVENTS)

    def phase(
        self, name: str, mode: str, per_event: int, publish: Callable[[], Published]
    ) -> dict[str, Any]:
        """One measured phase: publish, wait for the deliveries to drain, collect receipt."""
        assert self.lg is not None
        self.lg.call("phase_start", phase=name, mode=mode, n=self.n)
        before = self.snapshot()
        pub = publish()
        self.lg.wait_received(name, pub.messages * per_event, self.st.drain_stall_s, limit=600)
        after = self.snapshot()
        res = self.lg.call("phase_end", phase=name, published=pub.messages, timeout=300)
        use = self.usage(before, after)
        span = (res["last_us"] - pub.start_us) / 1e6 if res["last_us"] else None
        out = {
            "events": pub.messages,
            "publish_seconds": pub.seconds,
            "publish_rate": pub.messages / pub.seconds,
            "expected": res["expected"],
            "delivered": res["delivered"],
            "lost": res["lost"],
            "duplicates": res["duplicates"],
            "misrouted": res["misrouted"] + res["unexpected"],
            "stray": res["stray"],
            "deliveries_per_s": res["delivered"] / span if span else None,
            "latency": res["latency"],
            "server_us_per_delivery": 1e6 * use["server_cpu_s"] / max(1, res["delivered"]),
            "server_us_per_event": 1e6 * use["server_cpu_s"] / max(1, pub.messages),
            "server_system_us_per_delivery": (
                1e6 * use["server_system_cpu_s"] / max(1, res["delivered"])
            ),
            "server_system_us_per_event": 1e6 * use["server_system_cpu_s"] / max(1, pub.messages),
            **use,
        }
        log.info(
            "  %s: %d events, %d/%d delivered (%.0f/s), p99 %s ms, lost %d, dup %d",
            name,
            pub.messages,
            res["delivered"],
            res["expected"],
            out["deliveries_per_s"] or 0,
            res["latency"].get("p99_ms"),
            res["lost"],
            res["duplicates"],
        )
        return out


def _delta(
    before: dict[str, dict[str, int]],
    after: dict[str, dict[str, int]],
    *methods: str,
    key: str = "ok",
) -> int:
    """Calls of METHODS the web stand-in answered 200 (``ok``), or otherwise (``failed``),
    between two of its counts."""
    return sum(after[key].get(m, 0) - before[key].get(m, 0) for m in methods)


def rewrite_report(jsonl: Path, results_dir: Path) -> int:
    """Rebuild latest.md from a results file (after a change to the report's layout)."""
    lines = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    run_info = next(line for line in lines if line["type"] == "run")
    cases = [line for line in lines if line["type"] == "case"]
    batches = [line for line in lines if line["type"] == "frappe_ctx_concurrency"]
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "latest.md").write_text(report.markdown(run_info, cases, batches) + "\n")
    log.info("rewrote %s from %s", results_dir / "latest.md", jsonl)
    return 0


def _stop_on_signal(signum: int, frame: object) -> None:
    """Turn SIGTERM/SIGINT into an exception so every child is stopped on the way out
    (a run started in the background inherits an ignored SIGINT otherwise)."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    st = parse_args(argv)
    if st.report_from is not None:
        return rewrite_report(st.report_from, st.results_dir)
    processes.ensure_npm(BENCH_ROOT / "loadgen")
    if "node-imitation" in st.servers:
        processes.ensure_npm(BENCH_ROOT / "baseline_node")
    frappe_nodes = {
        spec.frappe_version: frappe_node.prepare(spec.frappe_version, REPO)
        for spec in (server_spec(name, st.gsocket_web) for name in st.servers)
        if spec.frappe_version is not None
    }
    stamp = time.strftime("%Y%m%d-%H%M%S")
    st.results_dir.mkdir(parents=True, exist_ok=True)
    log_dir = st.results_dir / "raw" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    run_info = {
        "type": "run",
        "started": stamp,
        "command": shlex.join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "machine": machine_facts(frappe_nodes),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(st).items()},
    }
    jsonl = st.results_dir / f"{stamp}.jsonl"
    cases: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="gsocket-bench-"))
    run = None
    try:
        run = Run(st, log_dir, tmp, frappe_nodes)
        with jsonl.open("w") as f:
            f.write(json.dumps(run_info) + "\n")
            for n in st.sizes:
                # interleaved: every server once, then again, so drift hits all alike
                for round_ in range(1, st.pairs + 1):
                    for server in servers_for(st, n, run.fd_hard):
                        case = Case(run, server, n, round_).execute()
                        case["loadavg_after"] = processes.loadavg()
                        cases.append(case)
                        f.write(json.dumps(case) + "\n")
                        f.flush()
            for r in report.goals(cases):
                f.write(json.dumps({"type": "goal", **r}) + "\n")
    finally:
        if run is not None:
            run.close()
        shutil.rmtree(tmp, ignore_errors=True)
    batches = concurrent_frappe_contexts(st, jsonl) if "gsocket" in st.servers else []
    md = report.markdown(run_info, cases, batches)
    (st.results_dir / "latest.md").write_text(md + "\n")
    log.info("results: %s and %s", jsonl, st.results_dir / "latest.md")
    return 1 if any(c.get("error") for c in [*cases, *batches]) else 0


def concurrent_frappe_contexts(st: Settings, jsonl: Path) -> list[dict[str, Any]]:
    """The frappe_context scenario (benchmarks/frappe_ctx_concurrency.py), appended to the
    results; it starts its own MariaDB, so a failure there is recorded, not raised, and the
    socket cases' report is still written."""
    from frappe_ctx_concurrency import run as run_batches

    batches: list[dict[str, Any]] = []
    for size in st.frappe_ctx_sizes:
        log.info("frappe_context concurrency: %d events", size)
        try:
            (batch,) = run_batches([size], jsonl)
        except Exception as e:  # noqa: BLE001 - recorded in the results instead
            log.exception("frappe_context concurrency with %d events failed", size)
            batch = {"type": "frappe_ctx_concurrency", "size": size, "error": repr(e)}
            with jsonl.open("a") as f:
                f.write(json.dumps(batch) + "\n")
        batches.append(batch)
    return batches


if __name__ == "__main__":
    sys.exit(main())
