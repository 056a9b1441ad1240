"""``gsocket setup supervisor``/``procfile``, and gsocket run by a real supervisord.

The program must take the Node process's place in ``<bench>-web`` so that ``bench restart``
and ``supervisorctl`` treat it the same, and a restart through supervisord must end with a
clean exit (status 0, inside ``stopwaitsecs``) and every client reconnected.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import socketio

from gsocket.config import load_config
from gsocket.demo.ports import free_port
from gsocket.ops.supervisor_setup import Program, patch_procfile, procfile_line, setup_supervisor
from tests.conftest import SITE, bench_conf, desk_headers
from tests.support.bench import REPO, make_bench, wait_until
from tests.support.node_client import NodeClient

SUPERVISORD = shutil.which("supervisord") or "/usr/bin/supervisord"
SUPERVISORCTL = shutil.which("supervisorctl") or "/usr/bin/supervisorctl"

NODE_PROGRAMS = """\
; graceful timeout should always be lower than stopwaitsecs to avoid orphan gunicorn workers.
[program:bench-frappe-web]
command=/bin/sleep 600
priority=4
autostart=true
autorestart=true
stdout_logfile={bench}/logs/web.log
stderr_logfile={bench}/logs/web.error.log
directory={bench}/sites

[program:bench-node-socketio]
command=/usr/bin/node {bench}/apps/frappe/socketio.js
priority=4
autostart=true
autorestart=true
stdout_logfile={bench}/logs/node-socketio.log
stderr_logfile={bench}/logs/node-socketio.error.log
directory={bench}

[group:bench-web]
programs=bench-frappe-web,bench-node-socketio
"""


def _gsocket(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gsocket", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def _bench_with_node_program(tmp_path: Path, conf: dict) -> Path:
    bench = make_bench(tmp_path, conf, sites=(SITE,))
    (bench / "config").mkdir()
    (bench / "config" / "supervisor.conf").write_text(NODE_PROGRAMS.format(bench=bench))
    return bench


def test_example_in_the_repository_is_what_setup_writes():
    bench = Path("/home/frappe/frappe-bench")
    program = Program("frappe-bench", bench, str(bench / "env/bin/python"), 5.0, "frappe")
    assert (REPO / "supervisor" / "gsocket.conf.example").read_text() == program.render()
    line = procfile_line(bench, str(bench / "env/bin/python"))
    assert line in (REPO / "supervisor" / "Procfile.example").read_text()


def test_setup_supervisor_shows_the_change_then_applies_it_once(tmp_path):
    bench = _bench_with_node_program(tmp_path, {"gsocket": {"drain_timeout": 12}})
    conf = bench / "config" / "supervisor.conf"
    original = conf.read_text()

    shown = _gsocket("setup", "supervisor", "--bench", str(bench))
    assert shown.returncode == 0, shown.stderr
    assert conf.read_text() == original
    assert "-[program:bench-node-socketio]" in shown.stdout
    assert "+[program:bench-gsocket]" in shown.stdout
    assert "+programs=bench-frappe-web,bench-gsocket" in shown.stdout
    program = (bench / "config" / "gsocket.conf").read_text()
    assert "stopwaitsecs=17\n" in program  # drain 12 s plus the margin
    assert f"stdout_logfile={bench}/logs/gsocket.log\n" in program
    # What bench's Node program had: its own error log, and 10 start attempts (node has none
    # in this supervisor.conf, so gsocket keeps bench's value).
    assert f"stderr_logfile={bench}/logs/gsocket.error.log\n" in program
    assert "startretries=10\n" in program

    applied = _gsocket("setup", "supervisor", "--bench", str(bench), "--apply")
    assert applied.returncode == 0, applied.stderr
    patched = conf.read_text()
    assert "node-socketio]" not in patched
    assert "programs=bench-frappe-web,bench-gsocket\n" in patched
    assert program in patched
    assert "graceful timeout" in patched  # the web program keeps its comment
    assert (bench / "config" / "supervisor.conf.orig").read_text() == original

    again = _gsocket("setup", "supervisor", "--bench", str(bench), "--apply")
    assert "already runs gsocket" in again.stdout
    assert conf.read_text() == patched


def test_setup_supervisor_keeps_the_node_programs_user(tmp_path):
    bench = _bench_with_node_program(tmp_path, {})
    conf = bench / "config" / "supervisor.conf"
    node_dir = f"directory={bench}\n"
    conf.write_text(conf.read_text().replace(node_dir, f"user=frappe\n{node_dir}", 1))
    setup_supervisor(load_config(bench), apply=True, python="/env/bin/python", out=io.StringIO())
    section = conf.read_text().split("[program:bench-gsocket]")[1].split("[")[0]
    assert "user=frappe\n" in section
    assert "command=/env/bin/python -m gsocket serve --bench" in section


def test_setup_procfile_replaces_the_node_line(tmp_path):
    bench = make_bench(tmp_path, {})
    procfile = bench / "Procfile"
    procfile.write_text(
        "redis_cache: redis-server config/redis_cache.conf\n"
        "socketio: /usr/bin/node apps/frappe/socketio.js\n"
        "web: bench serve --port 8000\n"
    )
    python = bench / "env" / "bin" / "python"
    result = _gsocket(
        "setup", "procfile", "--bench", str(bench), "--apply", "--python", str(python)
    )
    assert result.returncode == 0, result.stderr
    lines = procfile.read_text().splitlines()
    assert lines == [
        "redis_cache: redis-server config/redis_cache.conf",
        "socketio: env/bin/python -m gsocket serve --bench .",
        "web: bench serve --port 8000",
    ]
    assert patch_procfile("web: x\n", lines[1]) == f"web: x\n{lines[1]}\n"


class Supervisord:
    """A private supervisord (from the system) whose configuration includes the bench's."""

    def __init__(self, root: Path, bench: Path) -> None:
        self.root = root
        self.conf = root / "supervisord.conf"
        self.log = root / "supervisord.log"
        self.conf.write_text(
            f"""\
[unix_http_server]
file={root}/supervisor.sock

[supervisord]
nodaemon=true
logfile={self.log}
pidfile={root}/supervisord.pid
childlogdir={root}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{root}/supervisor.sock

[include]
files = {bench}/config/supervisor.conf
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Supervisord:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [SUPERVISORD, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        wait_until(lambda: self.ctl("status").returncode in (0, 3), 20, self.tail)
        return self

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SUPERVISORCTL, "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def tail(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no supervisord log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def supervised_bench(tmp_path, redis_server, web) -> Iterator[tuple[Path, Supervisord, int]]:
    port = free_port()
    conf = bench_conf(redis_server.url, web, socketio_port=port, gsocket={"host": "127.0.0.1"})
    bench = _bench_with_node_program(tmp_path, conf)
    applied = _gsocket("setup", "supervisor", "--bench", str(bench), "--apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    supervisord = Supervisord(tmp_path, bench).start()
    try:
        yield bench, supervisord, port
    finally:
        supervisord.stop()


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
    except requests.RequestException:
        return False


TRANSPORTS = {"ws": ["websocket"], "poll": ["polling"], "desk": ["polling", "websocket"]}


def _connect_desks(nc: NodeClient, port: int) -> int:
    for id, names in TRANSPORTS.items():
        headers = desk_headers(SITE, "sid-admin")
        nc.connect(id, f"http://127.0.0.1:{port}/{SITE}", names, headers, reconnection=True)
    for id in TRANSPORTS:
        nc.wait_connected(id, timeout=10)
    return nc.mark()


def _wait_reconnected(nc: NodeClient, mark: int) -> None:
    for id in TRANSPORTS:
        closed = nc.wait_type(id, "disconnect", timeout=15, start=mark)
        # "transport close" makes socket.io-client reconnect; "io server disconnect" would not.
        assert closed["reason"] == "transport close", closed
    for id in TRANSPORTS:
        nc.wait_type(id, "reconnect", timeout=15, start=mark)
    assert not [e for e in nc.lines[mark:] if e.get("type") == "reconnect_failed"]


def test_restart_under_supervisord_exits_cleanly_and_clients_reconnect(supervised_bench):
    bench, supervisord, port = supervised_bench
    wait_until(lambda: _healthy(port), 20, supervisord.tail)
    # supervisord calls a program RUNNING only once it has lived startsecs (1 s)
    wait_until(
        lambda: "RUNNING" in supervisord.ctl("status", "bench-web:bench-gsocket").stdout,
        10,
        supervisord.tail,
    )
    with NodeClient() as nc:
        mark = _connect_desks(nc, port)
        started = time.monotonic()
        restart = subprocess.Popen(
            [SUPERVISORCTL, "-c", str(supervisord.conf), "restart", "bench-web:bench-gsocket"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            _wait_reconnected(nc, mark)
            reconnected_in = time.monotonic() - started
        finally:
            out, _ = restart.communicate(timeout=60)
        assert "bench-web:bench-gsocket: started" in out, out
        sys.stderr.write(f"supervisorctl restart: all clients back in {reconnected_in:.2f} s\n")

    wait_until(
        lambda: "stopped: bench-gsocket (exit status 0)" in supervisord.tail(), 10, supervisord.tail
    )
    log = (bench / "logs" / "gsocket.log").read_text()
    assert "received SIGTERM: draining" in log
    assert "drained 3 session(s)" in log

    stopped = supervisord.ctl("stop", "bench-web:")
    assert "bench-web:bench-gsocket: stopped" in stopped.stdout, stopped.stdout
    assert supervisord.tail().count("stopped: bench-gsocket (exit status 0)") == 2
    assert "SIGKILL" not in supervisord.tail()


def test_sighup_through_supervisorctl_hands_over_without_a_refused_attempt(supervised_bench):
    """The new server serves before the old one drains: the first reconnect attempt succeeds."""
    bench, supervisord, port = supervised_bench
    wait_until(lambda: _healthy(port), 20, supervisord.tail)
    pid_before = supervisord.ctl("pid", "bench-web:bench-gsocket").stdout.strip()
    with NodeClient() as nc:
        mark = _connect_desks(nc, port)
        signalled = supervisord.ctl("signal", "HUP", "bench-web:bench-gsocket")
        assert "signalled" in signalled.stdout, signalled.stdout
        _wait_reconnected(nc, mark)
        refused = [e for e in nc.lines[mark:] if e.get("type") == "reconnect_error"]
        assert not refused, refused
    assert supervisord.ctl("pid", "bench-web:bench-gsocket").stdout.strip() == pid_before
    log = (bench / "logs" / "gsocket.log").read_text()
    assert "drains" in log and "drained 3 session(s)" in log
    assert "RUNNING" in supervisord.ctl("status", "bench-web:bench-gsocket").stdout


def test_supervisor_conf_is_loaded_with_gsocket_in_the_web_group(supervised_bench):
    bench, supervisord, port = supervised_bench
    wait_until(lambda: _healthy(port), 20, supervisord.tail)
    status = supervisord.ctl("status")
    names = {line.split()[0] for line in status.stdout.splitlines() if line.strip()}
    assert names == {"bench-web:bench-frappe-web", "bench-web:bench-gsocket"}
    health = requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()
    assert health["status"] == "ok"


def test_the_node_programs_startretries_is_kept(tmp_path):
    bench = _bench_with_node_program(tmp_path, {})
    conf = bench / "config" / "supervisor.conf"
    conf.write_text(
        conf.read_text().replace(
            f"directory={bench}\n\n[group",
            f"directory={bench}\nstartretries=7\n\n[group",
        )
    )
    assert "startretries=7" in conf.read_text()
    shown = _gsocket("setup", "supervisor", "--bench", str(bench))
    assert shown.returncode == 0, shown.stderr
    assert "startretries=7\n" in (bench / "config" / "gsocket.conf").read_text()


def test_warnings_go_to_the_error_log_and_the_rest_to_the_log(supervised_bench, clients):
    bench, supervisord, port = supervised_bench
    wait_until(lambda: _healthy(port), 20, supervisord.tail)
    url = f"http://127.0.0.1:{port}"
    clients().connect(url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    with pytest.raises(socketio.exceptions.ConnectionError):
        clients().connect(
            url, f"/{SITE}", desk_headers(SITE, "sid-admin", origin="http://x.example")
        )
    errors, ordinary = bench / "logs" / "gsocket.error.log", bench / "logs" / "gsocket.log"
    wait_until(lambda: errors.exists() and "invalid_origin" in errors.read_text(), 10)
    wait_until(lambda: " INFO gsocket.app[" in ordinary.read_text(), 10)  # "listening on"
    assert " INFO " not in errors.read_text()
    assert "refused connection" not in ordinary.read_text()
