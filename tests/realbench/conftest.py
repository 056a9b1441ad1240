"""The real-bench lane: every test here runs against real Frappe v15 and develop benches.

The ``real_bench`` fixture is parametrized over both versions and session-scoped: pytest
groups the lane's tests by version, so one bench runs at a time (each is a MariaDB, two Redis
servers and gunicorn; two at once would crowd this 2-core machine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.realbench.kit import Conn, NodeConn, Publisher, PyConn, WebTap
from tests.support.bench import GsocketProcess
from tests.support.node_client import NodeClient
from tests.support.realbench import SITE, SITE2, RealBench, unavailable

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


@dataclass
class Lane:
    """What the contract lane shares per version: users, their sessions, a document, taps.

    :param desk: a System User with System Manager (reads every ToDo).
    :param plain: a System User without it (may not read Administrator's ToDo nor Role).
    :param web: a Website User.
    :param sids: ``sid`` of each user (and Administrator) on ``test.localhost``.
    :param admin2: Administrator's ``sid`` on ``test2.localhost``.
    :param todo: a ToDo of Administrator's, closed to ``plain`` and ``web``.
    :param token: ``desk``'s ``Authorization`` header (API key and secret).
    :param taps: a :class:`WebTap` per site; clients use its URL as their Origin.
    """

    bench: RealBench
    desk: str
    plain: str
    web: str
    sids: dict[str, str]
    admin2: str
    todo: str
    token: str
    taps: dict[str, WebTap]
    publisher: Publisher

    def headers(self, site: str = SITE, sid: str | None = None, **extra: str) -> dict[str, str]:
        """A desk page's handshake headers: Origin (the site's tap), site name, ``sid``."""
        headers = {"Origin": self.taps[site].url, "X-Frappe-Site-Name": site}
        if sid is not None:
            headers["Cookie"] = f"sid={sid}"
        headers.update(extra)
        return headers

    def user_headers(self, user: str) -> dict[str, str]:
        """Handshake headers of ``user`` (or ``"Guest"``) on ``test.localhost``."""
        return self.headers(SITE, "Guest" if user == "Guest" else self.sids[user])


@pytest.fixture(scope="session")
def lane(real_bench: RealBench) -> Iterator[Lane]:
    """Users, sessions, a ToDo and web taps of one version's bench, made once."""
    desk, plain, web = "rt-desk@example.com", "rt-plain@example.com", "rt-web@example.com"
    out = real_bench.in_site(
        SITE,
        f"""
from frappe.utils.password import update_password
for email, user_type, roles in (({desk!r}, "System User", ["System Manager"]),
        ({plain!r}, "System User", ["Blogger"]), ({web!r}, "Website User", [])):
    if not frappe.db.exists("User", email):
        user = frappe.get_doc({{"doctype": "User", "email": email, "user_type": user_type,
            "first_name": email.split("@")[0], "send_welcome_email": 0}})
        user.insert(ignore_permissions=True)
        user.add_roles(*roles)
    update_password(email, "admin")
user = frappe.get_doc("User", {desk!r})
user.api_key = "rtdeskkey"
user.api_secret = "rtdesksecret"
user.save(ignore_permissions=True)
print(frappe.get_doc({{"doctype": "ToDo", "description": "closed to others"}}).insert().name)
""",
    )
    sids = {u: real_bench.login(u) for u in (desk, plain, web, "Administrator")}
    taps = {site: WebTap(real_bench, site) for site in (SITE, SITE2)}
    yield Lane(
        bench=real_bench,
        desk=desk,
        plain=plain,
        web=web,
        sids=sids,
        admin2=real_bench.login(site=SITE2),
        todo=out.split()[-1],
        token="token rtdeskkey:rtdesksecret",
        taps=taps,
        publisher=Publisher(real_bench),
    )
    for tap in taps.values():
        tap.close()


@pytest.fixture(scope="session")
def node_driver() -> Iterator[NodeClient]:
    """One npm socket.io-client@4 driver process for the lane's Node-client sockets."""
    driver = NodeClient().start()
    yield driver
    driver.stop()


@pytest.fixture(params=["node", "python"])
def conns(request: pytest.FixtureRequest, node_driver: NodeClient) -> Iterator[Callable[[], Conn]]:
    """Factory of sockets of one client library (each test runs with both), closed after."""
    made: list[Conn] = []

    def make() -> Conn:
        conn: Conn = NodeConn(node_driver) if request.param == "node" else PyConn()
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()
