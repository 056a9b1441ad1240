"""Real Frappe benches for the real-bench lane: Frappe v15.44.2 and develop (16.0.0-dev).

Stand-ins of the web process are only as good as their agreement with Frappe, so every
behaviour that depends on what Frappe says or does is also tested against the real thing.
``../shared/frappe`` (beside the repository) holds both Frappe source archives and
``build-bench``, which turns one into a running bench: a private MariaDB, two Redis servers,
Frappe's web process (gunicorn here, so that the site is chosen by ``Host`` /
``X-Frappe-Site-Name`` and both sites ``test.localhost`` and ``test2.localhost`` answer), and
the npm dependencies of that version's own Node realtime server.

A bench is built once per archive into a cache folder (``GSOCKET_BENCH_CACHE``, default
``~/.cache/gsocket/benches``), keyed on the archive's hash, and reused: a warm start takes
about 20 s, a first build about a minute.  Each use picks free ports, so a left-over server of
an earlier run never answers in its place, and holds an exclusive lock on the folder, so two
test sessions never share one bench's database.  gsocket is installed into the bench's own
virtualenv with pip, as an operator would, and runs with that Python.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from gsocket.demo.ports import free_port, wait_for_port
from gsocket.demo.processes import Child

from .bench import REPO, GsocketProcess

SHARED_FRAPPE = Path(os.environ.get("GSOCKET_SHARED_FRAPPE", REPO.parent / "shared" / "frappe"))
CACHE = Path(os.environ.get("GSOCKET_BENCH_CACHE", Path.home() / ".cache" / "gsocket" / "benches"))
VERSIONS = {"v15": "frappe-15.44.2-*.tar.gz", "develop": "frappe-16.0.0-dev-*.tar.gz"}
SITE = "test.localhost"
SITE2 = "test2.localhost"
ADMIN_PASSWORD = "admin"
BUILD_TIMEOUT = 1200.0
LOCK_TIMEOUT = 1800.0


def unavailable() -> str | None:
    """Why the real-bench lane cannot run here, or ``None`` when it can.

    Only a clone without ``../shared/frappe`` beside it (a user's checkout) lacks the benches;
    CI and the developers' machines have them.
    """
    if not (SHARED_FRAPPE / "build-bench").exists():
        return f"no real Frappe here: {SHARED_FRAPPE}/build-bench does not exist"
    for version, pattern in VERSIONS.items():
        if not list(SHARED_FRAPPE.glob(pattern)):
            return f"no archive of Frappe {version} ({pattern}) in {SHARED_FRAPPE}"
    return None


def _archive(version: str) -> Path:
    return sorted(SHARED_FRAPPE.glob(VERSIONS[version]))[-1]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


class NodeRealtime:
    """Frappe's own Node realtime server of a bench (``apps/frappe/socketio.js``), unmodified.

    It is the reference the differential tests compare gsocket with.
    """

    def __init__(self, bench: RealBench, port: int) -> None:
        self.bench = bench
        self.port = port
        self.log_path = bench.path / "logs" / f"node-realtime-{port}.log"
        self.child: Child | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NodeRealtime:
        """Start the server and wait until it accepts connections."""
        env = {
            **os.environ,
            "NODE_PATH": str(self.bench.path / "realtime-node" / "node_modules"),
            "FRAPPE_BENCH_ROOT": str(self.bench.path),
            "FRAPPE_SOCKETIO_PORT": str(self.port),
        }
        self.child = Child(
            "node realtime",
            ["node", "-r", str(SHARED_FRAPPE / "bench" / "loopback.js"), "apps/frappe/socketio.js"],
            log_path=self.log_path,
            cwd=self.bench.path,
            env=env,
            own_session=True,
        )
        try:
            wait_for_port(self.port, timeout=30)
        except TimeoutError:
            raise AssertionError(f"Node realtime did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop the server."""
        if self.child is not None:
            self.child.stop(10)


class BenchGsocket(GsocketProcess):
    """gsocket as installed into a real bench: the bench's ``env/bin/python -m gsocket``."""

    def __init__(self, bench: RealBench, **kwargs: Any) -> None:
        super().__init__(bench.path, **kwargs)
        self.python = str(bench.python)
        self.pythonpath = False


class RealBench:
    """A running real Frappe bench of one version, held for one test session.

    :param version: ``"v15"`` or ``"develop"``.
    :param path: the bench folder.
    :param ports: the ports of this use: ``DB_PORT``, ``REDIS_CACHE_PORT``,
        ``REDIS_QUEUE_PORT``, ``WEB_PORT``, ``SOCKETIO_PORT``.
    """

    sites = (SITE, SITE2)

    def __init__(self, version: str, path: Path, ports: dict[str, int]) -> None:
        self.version = version
        self.path = path
        self.ports = ports
        self._lock: Any = None
        self._session = requests.Session()

    # ------------------------------------------------------------------ life cycle

    @classmethod
    def acquire(cls, version: str) -> RealBench:
        """Build (or reuse) the bench of ``version``, install gsocket, start it on free ports.

        gsocket is installed before the web process starts, as an operator installs it and
        then restarts the bench: a Python process reads the ``.pth`` file that gives
        ``frappe.realtime`` the publish helpers only when it starts.

        :raises AssertionError: the build or a start failed (with the end of its log).
        """
        archive = _archive(version)
        path = CACHE / f"{version}-{_digest(archive)}"
        path.parent.mkdir(parents=True, exist_ok=True)
        ports = {
            name: free_port()
            for name in (
                "DB_PORT",
                "REDIS_CACHE_PORT",
                "REDIS_QUEUE_PORT",
                "WEB_PORT",
                "SOCKETIO_PORT",
            )
        }
        bench = cls(version, path, ports)
        bench._take_lock()
        try:
            bench._stop_leftovers()
            bench._run(
                [str(SHARED_FRAPPE / "build-bench"), version, str(path)], "build", NO_START="1"
            )
            bench.install_gsocket()
            bench._run([str(SHARED_FRAPPE / "bench" / "start.sh"), "web"], "web")
        except BaseException:
            bench.release()
            raise
        return bench

    def _take_lock(self) -> None:
        lock = (self.path.parent / f"{self.path.name}.lock").open("w")
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise AssertionError(f"{self.path} stayed locked by another session") from None
                time.sleep(1)
        self._lock = lock

    @property
    def env(self) -> dict[str, str]:
        """The environment of ``build-bench`` and ``bench/start.sh`` for this use."""
        return {
            **os.environ,
            "FRAPPE_BENCH": str(self.path),
            "WEB_SERVER": "gunicorn",
            "SKIP_HOSTS": "1",
            "RESTART": "1",
            **{k: str(v) for k, v in self.ports.items()},
        }

    def _run(self, cmd: list[str], what: str, **env: str) -> None:
        log_path = self.path.parent / f"{self.path.name}-{what}.log"
        with log_path.open("w") as log:
            done = subprocess.run(
                cmd,
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT,
            )
        if done.returncode != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-40:]
            raise AssertionError(f"{' '.join(cmd)} failed ({log_path}):\n" + "\n".join(tail))

    def _stop_leftovers(self) -> None:
        """Stop what an earlier session that died left running in this folder (its ports)."""
        if (self.path / "run").exists():
            subprocess.run(
                [str(SHARED_FRAPPE / "bench" / "start.sh"), "stop"],
                env=self.env,
                capture_output=True,
                timeout=120,
            )

    def release(self) -> None:
        """Stop every server of the bench and let another session have it."""
        try:
            self._stop_leftovers()
        finally:
            self._session.close()
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def install_gsocket(self) -> None:
        """``pip install`` this checkout of gsocket into the bench's virtualenv.

        Dependencies come from the registry within the ranges gsocket declares, keeping what
        Frappe pinned; the package itself is reinstalled every time so the bench runs the code
        under test (uninstalling a name that is not installed only warns).
        """
        pip = str(self.path / "env" / "bin" / "pip")
        quiet = ["-q", "--disable-pip-version-check"]
        # An env that had gsocket under its former distribution name keeps that one's files
        # (an older .pth among them) beside the new one's: remove both names first.
        self._run([pip, "uninstall", "-q", "-y", "gsocket", "frappe-gsocket"], "pip-uninstall")
        self._run([pip, "install", *quiet, str(REPO)], "pip")
        self._run(
            [pip, "install", *quiet, "--no-deps", "--force-reinstall", "--no-cache-dir", str(REPO)],
            "pip",
        )

    # ------------------------------------------------------------------ facts of the bench

    @property
    def python(self) -> Path:
        """The bench's Python (Frappe and gsocket importable)."""
        return self.path / "env" / "bin" / "python"

    @property
    def web_url(self) -> str:
        """Base URL of the real web process."""
        return f"http://127.0.0.1:{self.ports['WEB_PORT']}"

    @property
    def redis_queue_url(self) -> str:
        """``redis_queue`` of the bench: where ``publish_realtime`` publishes."""
        return f"redis://127.0.0.1:{self.ports['REDIS_QUEUE_PORT']}"

    @property
    def common_site_config(self) -> dict[str, Any]:
        """The bench's ``sites/common_site_config.json``."""
        return json.loads((self.path / "sites" / "common_site_config.json").read_text())

    @contextmanager
    def common_site_config_changed(self, **changes: Any) -> Iterator[None]:
        """Change keys of ``common_site_config.json`` for a block (``None`` removes a key)."""
        path = self.path / "sites" / "common_site_config.json"
        before = path.read_text()
        conf = json.loads(before)
        for key, value in changes.items():
            if value is None:
                conf.pop(key, None)
            else:
                conf[key] = value
        path.write_text(json.dumps(conf, indent=1, sort_keys=True))
        try:
            yield
        finally:
            path.write_text(before)

    # ------------------------------------------------------------------ acting on it

    def run_python(self, code: str, timeout: float = 120.0) -> str:
        """Run ``code`` with the bench's Python in ``sites/`` (as bench commands run).

        :returns: what it printed.
        :raises AssertionError: it failed (with its output).
        """
        done = subprocess.run(
            [str(self.python), "-c", code],
            cwd=self.path / "sites",
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(f"bench python failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def in_site(self, site: str, body: str, timeout: float = 120.0) -> str:
        """Run ``body`` inside a Frappe context of ``site`` as Administrator, then commit.

        :returns: what it printed.
        """
        code = (
            "import frappe\n"
            f"frappe.init(site={site!r}, sites_path='.')\n"
            "frappe.connect()\n"
            "frappe.set_user('Administrator')\n"
            "try:\n"
            + "".join(f"    {line}\n" for line in body.splitlines())
            + "    frappe.db.commit()\n"
            "finally:\n"
            "    frappe.destroy()\n"
        )
        return self.run_python(code, timeout)

    def web(self, method: str, path: str, site: str = SITE, **kwargs: Any) -> requests.Response:
        """A request to the real web process for ``site`` (chosen by the ``Host`` header)."""
        headers = {"Host": site, **kwargs.pop("headers", {})}
        return self._session.request(
            method, self.web_url + path, headers=headers, timeout=60, **kwargs
        )

    def desk_headers(self, site: str = SITE, sid: str | None = None) -> dict[str, str]:
        """Headers of a desk page served by the real web process, as nginx forwards them.

        The Origin is the web process's own address, so gsocket calls that web process back
        (the contract's rule for a bench without ``webserver_host``); ``X-Frappe-Site-Name``
        names the site as nginx does.
        """
        headers = {"Origin": self.web_url, "X-Frappe-Site-Name": site}
        if sid is not None:
            headers["Cookie"] = f"sid={sid}"
        return headers

    def login(
        self, user: str = "Administrator", password: str = ADMIN_PASSWORD, site: str = SITE
    ) -> str:
        """Log ``user`` in on ``site`` and return the ``sid`` of the new session."""
        response = requests.post(
            self.web_url + "/api/method/login",
            data={"usr": user, "pwd": password},
            headers={"Host": site},
            timeout=60,
        )
        assert response.status_code == 200, response.text[:500]
        return response.cookies["sid"]

    def ensure_user(
        self,
        email: str,
        user_type: str = "System User",
        roles: tuple[str, ...] = (),
        password: str = ADMIN_PASSWORD,
        site: str = SITE,
    ) -> None:
        """Create ``email`` on ``site`` (or leave it as it is) with a password and roles."""
        self.in_site(
            site,
            f"""
if not frappe.db.exists("User", {email!r}):
    user = frappe.get_doc({{"doctype": "User", "email": {email!r},
        "first_name": {email.split("@")[0]!r}, "user_type": {user_type!r},
        "send_welcome_email": 0}})
    user.insert(ignore_permissions=True)
    user.add_roles(*{list(roles)!r})
from frappe.utils.password import update_password
update_password({email!r}, {password!r})
""",
        )

    def gsocket(
        self, port: int | None = None, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> BenchGsocket:
        """A gsocket process (not yet started) serving this bench with its own Python."""
        return BenchGsocket(self, port=port, env=env, args=args)

    def node_realtime(self, port: int | None = None) -> NodeRealtime:
        """Frappe's own Node realtime server of this version (not yet started)."""
        return NodeRealtime(self, port or free_port())


def node_available() -> str | None:
    """Why Frappe's Node realtime server cannot run, or ``None`` when it can."""
    if shutil.which("node") is None:
        return "no node on PATH"
    return None
