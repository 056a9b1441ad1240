"""Child processes of a benchmark run and what /proc says about them.

The children themselves, Redis and the ports are gsocket's own local-stack pieces
(:mod:`gsocket.demo.processes`, :mod:`gsocket.demo.redis_server`, :mod:`gsocket.demo.ports`),
shared with the demo and the test suite; what is here is the benchmarks' own: measuring, the
Node web stand-in, gsocket's ``/health``.

The servers under test are measured from the outside, through /proc, so that the Node
baseline and gsocket are charged the same way: CPU is utime+stime of the server's whole
process tree, memory is the tree's resident set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsocket.demo.processes import Child
from gsocket.demo.redis_server import RedisServer

log = logging.getLogger("gsocket.bench.processes")

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# File descriptors a server needs besides its client sockets: listener, Redis, and a pool of
# connections to the web process (the baseline's holds up to 128).
FD_RESERVE = 256


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """The pid and all its descendants (a server may fork helpers; they count too)."""
    children = _children()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_times(pids: Sequence[int]) -> tuple[float, float]:
    """(utime, stime) of the given processes, in seconds (exited ones count as 0).

    stime is the kernel's work on the process's behalf: for a socket server mostly its
    ``send``s (on loopback including the receiving client's TCP input, run in the sender's
    softirq) and its polls.  The kernel splits a process's exact run time between the two
    in proportion to the clock ticks that found it in each, so over a phase of seconds the
    split is good to a few per cent, not to the microsecond.
    """
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK


def whole_ticks(seconds: float) -> float:
    """``seconds`` of CPU read from /proc, rounded to whole clock ticks (what /proc counts in):
    a difference of two readings made in floats is off by a rounding otherwise."""
    return round(seconds * CLK_TCK) / CLK_TCK


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime of the given processes, in seconds (exited ones count as 0)."""
    return sum(cpu_times(pids))


def rss_bytes(pids: Sequence[int]) -> int:
    """Resident set size of the given processes, summed."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except OSError:
            continue
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(v) for v in f.read().split()[:3]]


def cpu(pid: int) -> float:
    """CPU seconds of PID's process tree (a server may fork helpers; they count too)."""
    return cpu_seconds(process_tree(pid))


def rss(pid: int) -> int:
    """Resident set of PID's process tree."""
    return rss_bytes(process_tree(pid))


@dataclass
class Group:
    """The children of one server under test, measured as one: CPU and RSS summed, alive
    while all are (a cluster is several processes; a single server is a group of one)."""

    children: list[Child]

    def alive(self) -> bool:
        return all(c.alive() for c in self.children)

    def cpu_times(self) -> tuple[float, float]:
        """(utime, stime) of every child's process tree, summed: one read of each."""
        times = [cpu_times(process_tree(c.pid)) for c in self.children]
        return sum(t[0] for t in times), sum(t[1] for t in times)

    def rss(self) -> int:
        return sum(rss(c.pid) for c in self.children)

    def log_tail(self, lines: int = 20) -> str:
        if len(self.children) == 1:
            return self.children[0].log_tail(lines)
        return "\n".join(f"[{c.name}]\n{c.log_tail(lines)}" for c in self.children)

    def stop(self, timeout: float = 10.0) -> None:
        for c in self.children:
            c.send(signal.SIGTERM)
        for c in self.children:
            c.wait_stopped(timeout)  # not stop() one by one: all drain at once


def start(name: str, argv: Sequence[str], log_dir: Path, **options: Any) -> Child:
    """A :class:`~gsocket.demo.processes.Child` whose output goes to LOG_DIR/NAME.log
    (OPTIONS as the Child takes them: cwd, env, stdin, stdout_pipe)."""
    return Child(name, argv, log_path=log_dir / f"{name}.log", **options)


def start_redis(log_dir: Path) -> RedisServer:
    """Debian's redis-server on a free port, without persistence, its log in LOG_DIR.

    The pub/sub output-buffer limit is lifted: a benchmark publishing as fast as it can must
    not get the server under test disconnected by Redis for being a slow subscriber.
    """
    server = RedisServer(log_dir, extra_args=["--client-output-buffer-limit", "pubsub 0 0 0"])
    return server.start(timeout=20)


def start_webstub(benchmarks_dir: Path, log_dir: Path, flavour: str) -> tuple[Child, int]:
    """The web process stand-in (benchmarks/webstub/server.js) answering as FLAVOUR (a
    Frappe version); returns it and its port."""
    child = start(
        f"webstub-{flavour}",
        [
            "node",
            str(benchmarks_dir / "webstub" / "server.js"),
            "--port",
            "0",
            "--flavour",
            flavour,
        ],
        log_dir,
        stdout_pipe=True,
    )
    line = child.proc.stdout.readline() if child.proc.stdout else b""
    if not line:
        child.stop()
        raise RuntimeError(f"web stand-in did not start:\n{child.log_tail()}")
    return child, int(json.loads(line)["port"])


def webstub_counts(port: int) -> dict[str, dict[str, int]]:
    """Requests the web stand-in has answered, per Frappe method: ``{"ok": {...}, "failed":
    {...}}`` (HTTP 200 and anything else)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__stats", timeout=10) as res:
        return json.loads(res.read())


def healthy(port: int) -> bool:
    with contextlib.suppress(OSError, urllib.error.URLError):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as res:
            return res.status == 200
    return False


def health(port: int) -> dict:
    """The body of gsocket's ``GET /health`` on 127.0.0.1:PORT (its sockets, its cluster node)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as res:
        return json.loads(res.read())


def ensure_npm(package_dir: Path) -> None:
    """Install a package folder's npm dependencies from its lockfile when missing."""
    if (package_dir / "node_modules").is_dir():
        return
    log.info("npm ci in %s", package_dir)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=package_dir,
        check=True,
    )
