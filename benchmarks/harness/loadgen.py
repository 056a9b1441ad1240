"""Python side of the load generator: drives benchmarks/loadgen/coordinator.js.

The coordinator answers commands on its stdout and, while a phase runs, interleaves
progress lines (deliveries received so far). A reader thread sorts them: answers go to
the caller waiting for that id, progress updates a counter that publishers wait on, so
pacing and draining synchronise on what the clients actually received.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from . import processes

log = logging.getLogger("gsocket.bench.loadgen")


class LoadgenError(RuntimeError):
    """The load generator failed or answered a command with an error."""


class Loadgen:
    """A running coordinator with its workers."""

    def __init__(self, benchmarks_dir: Path, log_dir: Path, workers: int, name: str) -> None:
        self.child = processes.start(
            name,
            ["node", str(benchmarks_dir / "loadgen" / "coordinator.js"), "--workers", str(workers)],
            log_dir,
            stdin=subprocess.PIPE,
            stdout_pipe=True,
        )
        self._cond = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._progress: dict[str, tuple[int, int]] = {}
        self._fatal: str | None = None
        self._ready = False
        self._next_id = 1
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._reader.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready or self._fatal is not None, 30):
                raise LoadgenError("load generator did not start")
        self._check()

    def _read(self) -> None:
        stream = self.child.proc.stdout
        assert stream is not None
        for raw in stream:
            try:
                msg = json.loads(raw)
            except ValueError:
                log.warning("loadgen printed %r", raw[:200])
                continue
            with self._cond:
                kind = msg.get("type")
                if kind == "progress":
                    self._progress[msg["phase"]] = (msg["received"], msg["clients"])
                elif kind == "ready":
                    self._ready = True
                elif kind == "fatal":
                    self._fatal = msg.get("error", "fatal")
                else:
                    self._replies[msg.get("id")] = msg
                self._cond.notify_all()
        with self._cond:
            self._fatal = self._fatal or "load generator exited"
            self._cond.notify_all()

    def _check(self) -> None:
        if self._fatal is not None:
            raise LoadgenError(f"{self._fatal}\n{self.child.log_tail()}")

    def call(self, cmd: str, timeout: float = 120.0, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its answer."""
        with self._cond:
            cid = self._next_id
            self._next_id += 1
        stdin = self.child.proc.stdin
        assert stdin is not None
        stdin.write((json.dumps({"cmd": cmd, "id": cid, **args}) + "\n").encode())
        stdin.flush()
        with self._cond:
            done = self._cond.wait_for(
                lambda: cid in self._replies or self._fatal is not None, timeout
            )
            self._check()
            if not done:
                raise LoadgenError(f"no answer to {cmd} within {timeout:.0f}s")
            reply = self._replies.pop(cid)
        if not reply.get("ok"):
            raise LoadgenError(f"{cmd} failed: {reply.get('error')}")
        return reply

    def progress(self, phase: str) -> tuple[int, int]:
        """(messages received, clients that received at least one) in PHASE so far."""
        with self._cond:
            return self._progress.get(phase, (0, 0))

    def wait_progress(self, phase: str, seen: tuple[int, int], timeout: float) -> tuple[int, int]:
        """Wait until PHASE's progress differs from SEEN (or TIMEOUT); return the latest."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._progress.get(phase, (0, 0)) != seen or self._fatal is not None,
                timeout,
            )
            self._check()
            return self._progress.get(phase, (0, 0))

    def wait_received(
        self, phase: str, received: int, stall: float, limit: float
    ) -> tuple[int, int]:
        """Wait until RECEIVED messages arrived in PHASE, or nothing arrived for STALL seconds,
        or LIMIT seconds passed. Returns the final progress."""
        deadline = time.monotonic() + limit
        seen = self.progress(phase)
        last_change = time.monotonic()
        while seen[0] < received:
            now = time.monotonic()
            if now - last_change > stall or now > deadline:
                break
            latest = self.wait_progress(phase, seen, min(0.5, stall))
            if latest != seen:
                seen, last_change = latest, time.monotonic()
        return seen

    def close(self) -> None:
        """Ask the coordinator to quit (it ends its workers), then make sure it is gone."""
        if self.child.alive():
            try:
                self.call("quit", timeout=10)
            except (LoadgenError, OSError, ValueError):
                log.warning("loadgen did not quit cleanly")
            try:
                self.child.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.child.stop()
        self._reader.join(5)
