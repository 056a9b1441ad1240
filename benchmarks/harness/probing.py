"""The stand of the profiling scripts: Redis, the web stand-in, gsocket under
``probe_server.py``, and processes of ``idle_clients.py``.

Used by ``memory_profile.py`` and ``userpath_profile.py``; ``run.py`` measures against Node,
these look inside gsocket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gsocket.demo.ports import free_port
from gsocket.demo.processes import Child, wait_until

from . import processes
from .benchdir import SITE, make_bench, write_config
from .publisher import Publisher

BENCH_ROOT = Path(__file__).resolve().parent.parent
REPO = BENCH_ROOT.parent
CLIENTS_PER_PROCESS = 5000


class ClientProcess:
    """One ``idle_clients.py`` process."""

    def __init__(self, port: int, web_port: int, log_dir: Path, name: str) -> None:
        self.child = processes.start(
            name,
            [
                sys.executable,
                str(BENCH_ROOT / "idle_clients.py"),
                f"http://127.0.0.1:{port}",
                f"http://127.0.0.1:{web_port}",
                SITE,
            ],
            log_dir,
            stdin=subprocess.PIPE,
            stdout_pipe=True,
        )
        self.proc = self.child.proc

    def call(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client process exited ({self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.call(cmd="close")
        except (OSError, RuntimeError):
            pass
        self.child.wait_stopped(10)


class Stand:
    """Redis, the develop web stand-in and gsocket under the probes, in a temporary folder."""

    def __init__(self, tmp: Path, trace_frames: int = 0) -> None:
        self.tmp = tmp
        self.log_dir = tmp / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.dump_dir = tmp / "dumps"
        processes.raise_fd_limit()
        self.children: list[Child] = []
        self.clients: list[ClientProcess] = []
        self.opened = 0
        self.redis = processes.start_redis(self.log_dir)
        self.redis_port = self.redis.port
        web, self.web_port = processes.start_webstub(BENCH_ROOT, self.log_dir, "develop")
        self.children.append(web)
        self.publisher = Publisher(self.redis_port, SITE)
        self.port = free_port()
        bench = make_bench(tmp)
        write_config(bench, self.port, self.redis_port, self.web_port)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        own = [str(self.dump_dir)] + (["--trace", str(trace_frames)] if trace_frames else [])
        argv = [sys.executable, str(BENCH_ROOT / "probe_server.py"), *own, "--"]
        level = os.environ.get("PROBE_LOG_LEVEL", "warning")
        argv += ["--bench", str(bench), "--port", str(self.port), "--log-level", level]
        self.server = processes.start("gsocket", argv, self.log_dir, cwd=bench / "sites", env=env)
        self.children.append(self.server)

        def ready() -> bool:
            if not self.server.alive():
                raise RuntimeError(f"gsocket exited:\n{self.server.log_tail()}")
            return processes.healthy(self.port) and self.publisher.subscribers() >= 1

        wait_until(ready, 60, "gsocket did not become ready in 60 s")
        self.dumps = 0
        self.profiles = 0

    def open(self, count: int) -> None:
        """Open ``count`` more clients (``u<i>`` numbered on from the last)."""
        while count:
            if not self.clients or self.opened % CLIENTS_PER_PROCESS == 0:
                self.clients.append(
                    ClientProcess(
                        self.port, self.web_port, self.log_dir, f"clients-{len(self.clients)}"
                    )
                )
            room = CLIENTS_PER_PROCESS - self.opened % CLIENTS_PER_PROCESS
            n = min(count, room)
            answer = self.clients[-1].call(cmd="open", first=self.opened, count=n)
            if answer["failed"]:
                raise RuntimeError(
                    f"{answer['failed']} clients failed: {answer['errors']}\n"
                    + self.server.log_tail(30)
                )
            self.opened += n
            count -= n

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for c in self.clients:
            for k, v in c.call(cmd="counts").items():
                total[k] = total.get(k, 0) + v
        return total

    def dump(self) -> tuple[dict[str, Any], Path]:
        """Ask the server for a dump; return its facts and the snapshot's path."""
        self.dumps += 1
        base = self.dump_dir / f"dump-{self.dumps}"
        os.kill(self.server.pid, signal.SIGUSR1)
        done = Path(str(base) + ".done")
        wait_until(done.exists, 300, "the server wrote no dump in 300 s")
        return json.loads(Path(str(base) + ".json").read_text()), Path(str(base) + ".snapshot")

    def profile(self) -> None:
        """Start cProfile in the server, or stop it (returning its pstats path)."""
        os.kill(self.server.pid, signal.SIGUSR2)

    def profile_done(self) -> Path:
        self.profiles += 1
        done = self.dump_dir / f"cprofile-{self.profiles}.done"
        wait_until(done.exists, 60, "the server wrote no profile in 60 s")
        return self.dump_dir / f"cprofile-{self.profiles}.pstats"

    def settle(self, seconds: float = 1.0) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.publisher.close()
        for child in reversed(self.children):
            child.stop()
        self.redis.stop()
