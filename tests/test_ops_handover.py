"""``gsocket serve --handover``: the socket stays open across restarts; SIGHUP hands over.

The parent binds once; children serve it.  A SIGHUP must bring up a new child before the old
one drains (the clients' first reconnect attempt succeeds and the port never refuses), keep
the old child when the new one cannot start, and a child whose parent is killed must not be
left holding the port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from gsocket.demo.redis_server import RedisServer
from tests.conftest import SITE, bench_conf, desk_headers
from tests.support.bench import FIXTURE_APPS, GsocketProcess, make_bench, wait_until
from tests.support.node_client import NodeClient
from tests.support.webstub import WebStub

TRANSPORTS = {"ws": ["websocket"], "poll": ["polling"]}


@pytest.fixture
def handover_gsocket(
    tmp_path: Path, redis_server: RedisServer, web: WebStub
) -> Iterator[Callable[..., GsocketProcess]]:
    """Factory of ``gsocket serve --handover`` processes on a one-site bench."""
    started: list[GsocketProcess] = []

    def start(wait: bool = True) -> GsocketProcess:
        bench = make_bench(tmp_path, bench_conf(redis_server.url, web), sites=(SITE,))
        proc = GsocketProcess(bench, args=["--handover"])
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.stop(signal.SIGTERM)


def _children_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class RefusalWatch:
    """Opens a connection to the port every few milliseconds; counts the refused ones."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tries = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tries += 1
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
            except ConnectionRefusedError:
                self.refused += 1
            except OSError:
                pass
            self._stop.wait(0.005)

    def __enter__(self) -> RefusalWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_sighup_hands_over_to_a_new_server_without_refusing_anyone(handover_gsocket):
    proc = handover_gsocket()
    assert proc.proc is not None
    master = proc.proc.pid
    first_child = _children_of(master)
    assert len(first_child) == 1
    with NodeClient() as nc, RefusalWatch(proc.port) as watch:
        for id, transports in TRANSPORTS.items():
            headers = desk_headers(SITE, "sid-admin")
            nc.connect(id, f"{proc.url}/{SITE}", transports, headers, reconnection=True)
        for id in TRANSPORTS:
            nc.wait_connected(id)
        mark = nc.mark()
        proc.proc.send_signal(signal.SIGHUP)
        for id in TRANSPORTS:
            assert nc.wait_type(id, "disconnect", start=mark)["reason"] == "transport close"
            assert nc.wait_type(id, "reconnect", timeout=10, start=mark)["attempt"] == 1
        assert not [e for e in nc.lines[mark:] if e.get("type") == "reconnect_error"]
        wait_until(lambda: not _alive(first_child[0]), 10, "the old server did not exit")
    assert watch.tries > 10 and watch.refused == 0
    children = _children_of(master)
    assert len(children) == 1 and children != first_child
    log = proc.log()
    assert f"{first_child[0]} drains" in log
    assert proc.stop(signal.SIGTERM) == 0
    assert not _alive(children[0])


def test_a_new_server_that_cannot_start_leaves_the_old_one_serving(handover_gsocket):
    proc = handover_gsocket()
    assert proc.proc is not None
    serving = _children_of(proc.proc.pid)
    with NodeClient() as nc:
        headers = desk_headers(SITE, "sid-admin")
        nc.connect("ws", f"{proc.url}/{SITE}", ["websocket"], headers, reconnection=True)
        nc.wait_connected("ws")
        mark = nc.mark()
        # An app whose handlers fail to import: the next server refuses to start.
        shutil.copytree(FIXTURE_APPS / "broken", proc.bench / "apps" / "broken")
        with (proc.bench / "sites" / "apps.txt").open("a") as apps:
            apps.write("broken\n")
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_log(r"the new server process \d+ did not serve; \d+ goes on", timeout=30)
        nc.emit("ws", "ping")
        nc.wait_event("ws", "pong", start=mark)
        assert not [e for e in nc.lines[mark:] if e.get("type") == "disconnect"]
    assert _children_of(proc.proc.pid) == serving
    assert "failed to import" in proc.log()
    assert proc.stop(signal.SIGTERM) == 0


def test_a_server_whose_parent_is_killed_drains_and_frees_the_port(handover_gsocket):
    proc = handover_gsocket()
    assert proc.proc is not None
    child = _children_of(proc.proc.pid)[0]
    os.kill(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait()
    wait_until(lambda: not _alive(child), 10, lambda: f"orphan still running\n{proc.log()}")
    assert "is gone: stopping" in proc.log()
    assert proc.health() is None


def test_start_binds_before_the_server_is_ready(handover_gsocket):
    """Connections made while the child starts wait in the backlog: none is refused."""
    started = time.monotonic()
    proc = handover_gsocket(wait=False)
    wait_until(lambda: "the server process takes the connections" in proc.log(), 10, proc.log)
    bound_in = time.monotonic() - started
    # Answered once the child serves (503 until its bridge is subscribed); not refused before.
    response = requests.get(f"{proc.url}/health", timeout=20)
    assert response.status_code in (200, 503), proc.log()
    proc.wait_healthy()
    proc.wait_for_log(r"serving [0-9.]+ s after start")
    assert bound_in < 5.0
    assert proc.stop() == 0


def test_reuse_port_lets_a_new_server_listen_before_the_old_one_stops(start_gsocket):
    old = start_gsocket(sites=(SITE,), conf={"gsocket": {"reuse_port": True}})
    new = GsocketProcess(old.bench, port=old.port)
    try:
        # It binds next to the old one instead of failing with EADDRINUSE.  Its /health may
        # be answered by the old one, so wait for its own lines (both log to one file).
        new.start(wait=False)
        assert new.proc is not None
        new.wait_for_log(rf"bridge\[{new.proc.pid}\]: subscribed", timeout=20)
        assert old.stop(signal.SIGTERM) == 0
        response = requests.get(f"{new.url}/health", timeout=5)
        assert response.ok
    finally:
        new.kill()


def test_a_taken_port_is_a_clear_startup_error(start_gsocket):
    """The usual mistake when switching: the Node process still listens on socketio_port."""
    running = start_gsocket(sites=(SITE,))
    second = GsocketProcess(running.bench, port=running.port)
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(30) == 2
    assert "is the Node realtime process (or another gsocket) still running there?" in second.log()


def _uds_health(path: Path) -> int | None:
    """Status of ``GET /health`` over the Unix socket, ``None`` when nothing answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            head = sock.recv(64)
    except OSError:
        return None
    return int(head.split()[1]) if head.startswith(b"HTTP/") else None


def test_handover_on_a_unix_socket(redis_server, web, tmp_path):
    uds = tmp_path / "socketio.sock"
    conf = bench_conf(redis_server.url, web, socketio_uds=str(uds))
    bench = make_bench(tmp_path, conf, sites=(SITE,))
    proc = GsocketProcess(bench, args=["--handover"])
    try:
        proc.start(wait=False)
        wait_until(lambda: _uds_health(uds) == 200, 20, proc.log)
        assert oct(uds.stat().st_mode & 0o777) == oct(0o770)
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for_log(r"server process \d+ serves", timeout=30)
        proc.wait_for_log(r"drained \d+ session", timeout=30)
        assert _uds_health(uds) == 200  # the socket file is the same one, still served
        assert proc.stop(signal.SIGTERM) == 0
    finally:
        proc.kill()


def test_a_stop_during_a_hand_over_is_not_held_up_by_the_new_server(handover_gsocket):
    proc = handover_gsocket()
    assert proc.proc is not None
    serving = _children_of(proc.proc.pid)
    # An app whose handlers take long to import: the next server is slow to start.
    package = proc.bench / "apps" / "slowapp" / "slowapp"
    (package / "realtime").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "realtime" / "__init__.py").write_text("")
    (package / "realtime" / "handlers.py").write_text("import time\n\ntime.sleep(60)\n")
    with (proc.bench / "sites" / "apps.txt").open("a") as apps:
        apps.write("slowapp\n")
    proc.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(_children_of(proc.proc.pid)) == 2, 10, proc.log)
    started = time.monotonic()
    assert proc.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5.0
    assert not _alive(serving[0])
