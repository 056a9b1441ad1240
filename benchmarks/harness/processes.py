"""Child processes of a benchmark run and what /proc says about them.

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
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def consecutive_free_ports(count: int, attempts: int = 50) -> list[int]:
    """COUNT consecutive TCP ports on 127.0.0.1 that nothing listens on right now: a cluster of
    ``gsocket.processes`` serves process K on ``socketio_port + K``."""
    for _ in range(attempts):
        base = free_port()
        if base + count <= 65536 and all(_bindable(base + k) for k in range(1, count)):
            return list(range(base, base + count))
    raise RuntimeError(f"no {count} consecutive free ports found in {attempts} attempts")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


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


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime+stime of the given processes, in seconds (exited ones count as 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


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


@dataclass
class Child:
    """A started child process with its log file; stop() ends it and only it."""

    name: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(process_tree(self.pid))

    def rss(self) -> int:
        return rss_bytes(process_tree(self.pid))

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        self.wait_stopped(timeout)

    def wait_stopped(self, timeout: float) -> None:
        """Wait for the exit a SIGTERM asked for; kill the child if it does not come."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop on SIGTERM, killing it", self.name)
            self.proc.kill()
            self.proc.wait(timeout)


@dataclass
class Group:
    """Several children measured as one server: CPU and RSS summed, alive while all are."""

    children: list[Child]

    def alive(self) -> bool:
        return all(c.alive() for c in self.children)

    def cpu(self) -> float:
        return sum(c.cpu() for c in self.children)

    def rss(self) -> int:
        return sum(c.rss() for c in self.children)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(f"[{c.name}]\n{c.log_tail(lines)}" for c in self.children)

    def stop(self, timeout: float = 10.0) -> None:
        for c in self.children:
            if c.alive():
                c.proc.send_signal(signal.SIGTERM)
        for c in self.children:
            c.wait_stopped(timeout)  # not stop(): a second SIGTERM cuts gsocket's drain short


def start(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout_pipe: bool = False,
) -> Child:
    """Start a child whose stderr (and stdout unless piped) goes to LOG_DIR/NAME.log."""
    log_path = log_dir / f"{name}.log"
    log_file = open(log_path, "ab")
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=subprocess.PIPE if stdout_pipe else log_file,
            stderr=log_file,
        )
    finally:
        log_file.close()
    return Child(name, proc, log_path)


def wait_until(condition, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    """Poll CONDITION until it is true; raise TimeoutError naming WHAT after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def start_redis(log_dir: Path) -> tuple[Child, int]:
    """Debian's redis-server on a free port, without persistence.

    The pub/sub output-buffer limit is lifted: a benchmark publishing as fast as it can must
    not get the server under test disconnected by Redis for being a slow subscriber.
    """
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("redis-server not found (apt-get install redis-server)")
    port = free_port()
    child = start(
        "redis",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--client-output-buffer-limit",
            "pubsub 0 0 0",
        ],
        log_dir,
    )
    client = redis.Redis(port=port)

    def answers() -> bool:
        if not child.alive():
            raise RuntimeError(f"redis-server exited:\n{child.log_tail()}")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(answers, 20, what="redis-server")
    except BaseException:
        child.stop()
        raise
    finally:
        client.close()
    return child, port


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


def listening(port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:PORT."""
    with contextlib.suppress(OSError):
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    return False


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
