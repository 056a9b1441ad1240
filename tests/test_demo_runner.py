"""``gsocket demo`` as a newcomer runs it: one command starts everything, Ctrl-C stops it all.

The demo runs as a real process (``python -m gsocket demo``) on free ports; its children (the
system's redis-server and ``python -m gsocket serve``) are found through ``/proc`` and checked
by pid: what runs, what answers, and that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from gsocket.demo.ports import free_port
from gsocket.demo.redis_server import RedisServer
from tests.support.bench import REPO, wait_until

DEMO_SITE = "demo.localhost"


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux ``/proc``)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def cmdline(pid: int) -> list[str]:
    """The command line of ``pid``, empty when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode() for part in raw.split(b"\0") if part]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has no command line, so it counts as gone)."""
    return bool(cmdline(pid))


class DemoProcess:
    """One ``python -m gsocket demo`` process on free ports, its output captured.

    :param tmp_path: where its stderr log goes.
    :param args: extra arguments.
    :param env: environment changes.
    """

    def __init__(
        self,
        tmp_path: Path,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        web_port: int | None = None,
        choose_ports: bool = False,
    ) -> None:
        self.web_port = web_port or free_port()
        self.socketio_port = free_port()
        self.args = ["--web-port", str(self.web_port), "--socketio-port", str(self.socketio_port)]
        if choose_ports:
            self.args = []  # the demo picks them: 8000/9000, or free ones when taken
        self.args += list(args)
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log_path = tmp_path / f"demo-{self.web_port}.log"
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None
        self.seen_children: set[int] = set()

    def start(self, wait: bool = True, timeout: float = 40.0) -> DemoProcess:
        """Start it; with ``wait``, return once it printed its URL."""
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gsocket", "demo", *self.args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if wait:
            self.wait_for_line(r"open (http://\S+)", timeout)
            self.children()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until a line of its standard output matches ``pattern``."""
        with self._cond:
            found: list[re.Match[str]] = []

            def matched() -> bool:
                found[:] = [m for line in self.lines if (m := re.search(pattern, line))][:1]
                assert self.proc is not None
                if not found and self.proc.poll() is not None:
                    raise AssertionError(
                        f"demo exited with {self.proc.returncode}; output {self.lines}; "
                        f"log:\n{self.log()}"
                    )
                return bool(found)

            if not self._cond.wait_for(matched, timeout=timeout):
                raise AssertionError(f"no line matched {pattern!r}; log:\n{self.log()}")
            return found[0]

    @property
    def url(self) -> str:
        """The URL the demo printed."""
        return self.wait_for_line(r"open (http://\S+)").group(1)

    @property
    def bench(self) -> Path:
        """The demo bench folder."""
        return Path(self.wait_for_line(r"demo bench: (\S+)").group(1))

    @property
    def gsocket_url(self) -> str:
        """Where gsocket listens."""
        return f"http://127.0.0.1:{self.socketio_port}"

    def children(self) -> list[int]:
        """The demo's live child processes (remembered for the final clean-up)."""
        assert self.proc is not None
        pids = child_pids(self.proc.pid)
        self.seen_children.update(pids)
        return pids

    def child(self, program: str) -> int:
        """The pid of the child whose command line mentions ``program``."""
        for pid in self.children():
            if any(program in part for part in cmdline(pid)):
                return pid
        raise AssertionError(f"no child running {program}: {self.children()}")

    def log(self) -> str:
        """Its standard error so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Send ``sig`` (Ctrl-C by default) and wait for the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"demo did not exit on {sig}; log:\n{self.log()}") from None

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for it to exit on its own; return the exit status."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"demo still runs after {timeout}s; log:\n{self.log()}") from None

    def close(self) -> None:
        """Stop it with Ctrl-C (so that it removes its bench); kill whatever is left, by pid."""
        if self.proc is not None and self.proc.poll() is None:
            self.children()
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.seen_children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if hasattr(self, "_log"):
            self._log.close()


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Callable[..., DemoProcess]]:
    """Factory of demo processes; every one is stopped (with its children) after the test."""
    started: list[DemoProcess] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        wait: bool = True,
        web_port: int | None = None,
        choose_ports: bool = False,
    ) -> DemoProcess:
        demo = DemoProcess(tmp_path, args, env, web_port, choose_ports)
        started.append(demo)
        return demo.start(wait=wait)

    yield start
    for demo in started:
        demo.close()


def test_one_command_starts_redis_the_web_process_and_gsocket(start_demo):
    demo = start_demo()

    assert demo.url == f"http://127.0.0.1:{demo.web_port}"
    assert sum("open http" in line for line in demo.lines) == 1
    page = requests.get(demo.url, timeout=5)
    assert page.ok and "socket.io.min.js" in page.text
    assert page.cookies.get("sid") == "Guest"
    assert requests.get(f"{demo.gsocket_url}/health", timeout=5).json()["status"] == "ok"

    gsocket_pid = demo.child("gsocket")
    assert cmdline(gsocket_pid)[1:] == ["-m", "gsocket", "serve", "--bench", str(demo.bench)]
    bench = demo.bench
    conf = json.loads((bench / "sites" / "common_site_config.json").read_text())
    redis_pid = demo.child("redis-server")
    # redis-server shows "<binary> <address>" as its process title
    assert conf["redis_queue"].removeprefix("redis://") in " ".join(cmdline(redis_pid))
    assert conf["default_site"] == DEMO_SITE
    assert conf["socketio_port"] == demo.socketio_port
    assert conf["webserver_port"] == demo.web_port
    assert conf["developer_mode"] == 1
    assert conf["gsocket"] == {"host": "127.0.0.1", "log_level": "INFO"}
    assert (bench / "sites" / "apps.txt").read_text().split() == ["frappe", "gsocket_demo"]
    handlers = bench / "apps" / "gsocket_demo" / "gsocket_demo" / "realtime" / "handlers.py"
    assert "from frappe.realtime import Socket, realtime" in handlers.read_text()
    assert re.search(r"loaded realtime handlers of app gsocket_demo", demo.log())


def test_ctrl_c_stops_everything_and_removes_the_demo_bench(start_demo):
    demo = start_demo()
    children = demo.children()
    bench = demo.bench
    assert len(children) == 2

    assert demo.stop(signal.SIGINT) == 0

    assert not any(alive(pid) for pid in children)
    assert not bench.exists()
    assert "demo stopped" in demo.log()
    assert "Traceback" not in demo.log()


def test_a_part_that_dies_stops_the_demo_with_an_error(start_demo):
    demo = start_demo()
    redis_pid = demo.child("redis-server")

    os.kill(demo.child("gsocket"), signal.SIGKILL)

    assert demo.wait_exit() == 1
    assert "gsocket exited unexpectedly" in demo.log()
    wait_until(lambda: not alive(redis_pid), 10, "redis-server outlived the demo")


def test_a_port_in_use_is_explained(start_demo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        demo = start_demo(web_port=port, wait=False)
        assert demo.wait_exit() == 2

    assert f"port {port} for the demo web process is in use" in demo.log()
    assert "--web-port" in demo.log()


def test_without_redis_server_the_demo_says_how_to_get_one(start_demo, tmp_path):
    empty = tmp_path / "empty-path"
    empty.mkdir()

    demo = start_demo(env={"PATH": str(empty)}, wait=False)

    assert demo.wait_exit() == 2
    log = demo.log()
    assert "redis-server was not found" in log
    assert "apt-get install redis-server" in log
    assert "--redis-url" in log


def test_an_existing_redis_can_be_used_instead(start_demo, tmp_path):
    redis_server = RedisServer(tmp_path / "own-redis").start()
    try:
        demo = start_demo("--redis-url", redis_server.url)
        conf = json.loads((demo.bench / "sites" / "common_site_config.json").read_text())
        assert conf["redis_queue"] == redis_server.url
        assert [pid for pid in demo.children() if "redis-server" in " ".join(cmdline(pid))] == []

        assert demo.stop() == 0
        assert redis_server.client().ping()
    finally:
        redis_server.stop()


def test_taken_default_ports_are_replaced_by_free_ones():
    from gsocket.demo.runner import choose_port
    from gsocket.errors import StartupError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        chosen = choose_port(None, busy, "demo web process", "--web-port")
        assert chosen != busy
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", chosen))  # it was free
        with pytest.raises(StartupError, match=f"port {busy} for the demo web process is in use"):
            choose_port(busy, 8000, "demo web process", "--web-port")
    free = free_port()
    assert choose_port(None, free, "realtime server", "--socketio-port") == free


def test_without_port_options_the_demo_prints_the_ports_it_chose(start_demo):
    demo = start_demo(choose_ports=True)
    ports = demo.wait_for_line(r"ports: web process (\d+), gsocket (\d+) ")
    web_port, socketio_port = int(ports.group(1)), int(ports.group(2))
    assert demo.url == f"http://127.0.0.1:{web_port}"
    assert requests.get(demo.url, timeout=5).ok
    health = requests.get(f"http://127.0.0.1:{socketio_port}/health", timeout=5)
    assert health.json()["status"] == "ok"
