"""Bench-shaped folders and real gsocket server processes for tests.

``wait_until`` is :func:`gsocket.demo.processes.wait_until`, the one bounded poll, imported
here for the suite's convenience.

Tests run gsocket exactly as supervisord does, ``python -m gsocket serve --bench PATH``, in a
process of its own (monkey-patched by gevent, unlike the pytest process), against a folder laid
out like a bench: ``sites/common_site_config.json``, ``sites/apps.txt``, ``sites/<site>/``,
``apps/<app>/<app>/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import requests

from gsocket.demo.ports import free_port
from gsocket.demo.processes import Child, wait_until

REPO = Path(__file__).resolve().parents[2]
FIXTURE_APPS = REPO / "tests" / "fixture_apps"


def desk_headers(site: str, sid: str | None, origin: str = "http://127.0.0.1") -> dict[str, str]:
    """Headers of a desk behind nginx: the site name, an Origin on the Host's host, the cookie.

    The client connects to ``127.0.0.1``, so an Origin on ``127.0.0.1`` (any port) matches
    the Host, and ``X-Frappe-Site-Name`` (trusted from loopback, as from nginx) names the site.
    """
    headers = {"Origin": origin, "X-Frappe-Site-Name": site}
    if sid is not None:
        headers["Cookie"] = f"sid={sid}"
    return headers


def make_bench(
    root: Path,
    conf: dict[str, Any],
    sites: Iterable[str] = ("site1.local",),
    apps: Iterable[str] = ("frappe",),
    copy_apps: Iterable[str] = (),
) -> Path:
    """Lay out a bench folder under ``root`` and return its path.

    :param conf: the content of ``sites/common_site_config.json``.
    :param sites: site folders to create (with an empty ``site_config.json``).
    :param apps: lines of ``sites/apps.txt``.
    :param copy_apps: fixture apps (folders of ``tests/fixture_apps``) to copy into ``apps/``.
    """
    bench = root / "bench"
    (bench / "sites").mkdir(parents=True, exist_ok=True)
    (bench / "apps").mkdir(exist_ok=True)
    (bench / "logs").mkdir(exist_ok=True)
    (bench / "sites" / "common_site_config.json").write_text(json.dumps(conf, indent=1))
    (bench / "sites" / "apps.txt").write_text("\n".join(apps) + "\n")
    for site in sites:
        (bench / "sites" / site).mkdir(exist_ok=True)
        config = bench / "sites" / site / "site_config.json"
        if not config.exists():
            config.write_text("{}")
    for app in copy_apps:
        shutil.copytree(FIXTURE_APPS / app, bench / "apps" / app, dirs_exist_ok=True)
    return bench


class GsocketProcess:
    """One ``python -m gsocket serve`` process, with its log captured to a file.

    :param bench: the bench folder.
    :param port: the port it listens on (must match ``socketio_port`` unless passed here).
    :param env: extra environment variables.
    :param args: extra command-line arguments.
    """

    def __init__(
        self,
        bench: Path,
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: Iterable[str] = (),
    ) -> None:
        self.bench = bench
        self.port = port or free_port()
        self.env = env or {}
        self.args = list(args)
        self.log_path = bench / "logs" / f"gsocket-{self.port}.log"
        self.child: Child | None = None

    module = "gsocket"
    """The module run with ``python -m``; a subclass may run a wrapper of the same CLI."""
    python = sys.executable
    """The interpreter; a real bench's subclass runs the bench's own, with gsocket installed."""
    pythonpath = True
    """Whether this checkout goes first on ``PYTHONPATH`` (not for an installed gsocket)."""

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        """The running process (``None`` before ``start()``)."""
        return self.child.proc if self.child is not None else None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 20.0) -> GsocketProcess:
        """Start the process; with ``wait``, return once ``/health`` answers 200."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
            )
        else:
            env.pop("PYTHONPATH", None)
        cmd = [
            self.python,
            "-m",
            self.module,
            "serve",
            "--bench",
            str(self.bench),
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            *self.args,
        ]
        self.child = Child("gsocket", cmd, log_path=self.log_path, env=env, cwd=REPO)
        if wait:
            self.wait_healthy(timeout)
        return self

    def health(self) -> requests.Response | None:
        """``GET /health``, or ``None`` when nothing answers."""
        try:
            return requests.get(f"{self.url}/health", timeout=1)
        except requests.RequestException:
            return None

    def wait_healthy(self, timeout: float = 20.0) -> None:
        """Wait until ``/health`` answers 200; fail with the log when the process dies."""
        wait_until(
            lambda: self._check_alive() and (r := self.health()) is not None and r.ok,
            timeout,
            lambda: f"gsocket did not become healthy; log:\n{self.log()}",
        )

    def _check_alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gsocket exited with {self.proc.returncode}; log:\n{self.log()}")
        return True

    def log(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until a log line matches ``pattern`` (a regular expression)."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            m = re.search(pattern, self.log())
            if m:
                found.append(m)
            return m is not None

        wait_until(seen, timeout, lambda: f"no log line matched {pattern!r}; log:\n{self.log()}")
        return found[0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit status; fail when it does not come in time."""
        if self.child is None:
            return 0
        if not self.child.stop(timeout, sig):
            raise AssertionError(f"gsocket did not exit on {sig}; log:\n{self.log()}")
        return self.child.proc.returncode

    def kill(self) -> None:
        """Kill the process at once (no drain)."""
        if self.child is not None:
            self.child.kill()
