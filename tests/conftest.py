"""Shared fixtures: a real Redis, a web-process stand-in, bench folders and gsocket processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gsocket.demo.redis_server import RedisServer
from tests.support.bench import GsocketProcess, desk_headers, make_bench
from tests.support.hardening.kit import ProbedGsocket
from tests.support.hardening.kit import start_gsocket as start_probed_gsocket
from tests.support.pyclient import PyClient
from tests.support.webstub import WebStub

SITE = "site1.local"
SITE2 = "site2.local"

__all__ = ["SITE", "SITE2", "desk_headers"]  # what test modules import from here


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole session (tests that kill it get their own)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Any:
    """A redis-py client of the session's Redis, emptied before each test."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def web(redis_server: RedisServer, redis_client: Any) -> Iterator[WebStub]:
    """A v16-shaped web process with three users on two sites."""
    stub = WebStub("v16", redis_url=redis_server.url)
    stub.sessions.update({"sid-admin": "Administrator", "sid-jane": "jane@example.com"})
    stub.sessions["sid-web"] = "web@example.com"
    stub.users.update(
        {
            "Administrator": "System User",
            "jane@example.com": "System User",
            "web@example.com": "Website User",
        }
    )
    stub.tokens["token api-key:api-secret"] = "jane@example.com"
    stub.start()
    yield stub
    stub.stop()


def bench_conf(redis_url: str, web: WebStub, **extra: Any) -> dict[str, Any]:
    """A common_site_config.json pointing at the test Redis and web stand-in."""
    return {
        "redis_queue": redis_url,
        "webserver_host": "127.0.0.1",
        "webserver_port": web.port,
        **extra,
    }


@pytest.fixture
def start_gsocket(
    tmp_path: Path, redis_server: RedisServer, web: WebStub
) -> Iterator[Callable[..., GsocketProcess]]:
    """Factory: lay out a bench and start gsocket on it; every process is stopped after."""
    started: list[GsocketProcess] = []

    def start(
        conf: dict[str, Any] | None = None,
        sites: tuple[str, ...] = (SITE, SITE2),
        apps: tuple[str, ...] = ("frappe",),
        copy_apps: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        root: Path | None = None,
        wait: bool = True,
    ) -> GsocketProcess:
        bench = make_bench(
            root or tmp_path,
            {**bench_conf(redis_server.url, web), **(conf or {})},
            sites=sites,
            apps=apps,
            copy_apps=copy_apps,
        )
        proc = GsocketProcess(bench, env=env)
        started.append(proc)
        return proc.start(wait=wait)

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def gsocket(start_gsocket: Callable[..., GsocketProcess]) -> GsocketProcess:
    """A gsocket serving sites ``site1.local`` and ``site2.local`` of a plain bench."""
    return start_gsocket()


@pytest.fixture
def clients() -> Iterator[Callable[..., PyClient]]:
    """Factory of python-socketio clients, all disconnected after the test."""
    made: list[PyClient] = []

    def make(transports: list[str] | None = None) -> PyClient:
        client = PyClient(transports)
        made.append(client)
        return client

    yield make
    for client in made:
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


@pytest.fixture
def probed(
    tmp_path: Path, redis_server: RedisServer, web: WebStub
) -> Iterator[Callable[..., ProbedGsocket]]:
    """Factory of gsocket processes with ``/_probe`` (table sizes) and the misbehaving
    ``hardapp`` installed on both sites, for the hardening and security tests."""
    started: list[ProbedGsocket] = []
    for site in (SITE, SITE2):
        web.installed_apps[site] = ["frappe", "hardapp"]

    def start(**kwargs: Any) -> ProbedGsocket:
        proc = start_probed_gsocket(tmp_path / f"g{len(started)}", redis_server.url, web, **kwargs)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
