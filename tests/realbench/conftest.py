"""The real-bench lane: every test here runs against real Frappe v15 and develop benches.

The ``real_bench`` fixture is parametrized over both versions and session-scoped: pytest
groups the lane's tests by version, so one bench runs at a time (each is a MariaDB, two Redis
servers and gunicorn; two at once would crowd this 2-core machine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.support.bench import GsocketProcess
from tests.support.realbench import RealBench, unavailable

REASON = unavailable()
LANE_TIMEOUT = 900
"""Seconds a test of the lane may take, with its share of the bench's build or teardown:
pytest-timeout counts session fixtures in the test that sets them up or tears them down,
and a first build (about a minute per version, more on a fresh machine) or a MariaDB shutdown
after it do not fit the suite's 120 s."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give every test of the lane :data:`LANE_TIMEOUT` unless it sets its own."""
    for item in items:
        if "realbench" in item.path.parts and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(LANE_TIMEOUT))


@pytest.fixture(scope="session", params=["v15", "develop"])
def real_bench(request: pytest.FixtureRequest) -> Iterator[RealBench]:
    """A running real bench of one Frappe version, with gsocket installed into its env.

    Skips only where ``../shared/frappe`` is absent (a user's clone), and says so.
    """
    if REASON:
        pytest.skip(f"real-bench lane not run: {REASON}")
    bench = RealBench.acquire(request.param)
    yield bench
    bench.release()


@pytest.fixture(scope="session")
def real_gsocket(real_bench: RealBench) -> Iterator[GsocketProcess]:
    """gsocket serving the real bench (its own Python, its own config), one per version."""
    proc = real_bench.gsocket().start(timeout=60)
    yield proc
    proc.kill()


@pytest.fixture
def bench_gsocket(real_bench: RealBench) -> Iterator[Callable[..., GsocketProcess]]:
    """Factory of further gsocket processes on the real bench, killed after the test."""
    started: list[GsocketProcess] = []

    def start(**kwargs: object) -> GsocketProcess:
        proc = real_bench.gsocket(**kwargs).start(timeout=60)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
