"""The lane itself: gsocket installed into a real bench serves its desk's connection and the
bench's own ``frappe.publish_realtime``."""

from __future__ import annotations

from tests.support.bench import GsocketProcess
from tests.support.pyclient import PyClient
from tests.support.realbench import SITE, RealBench


def test_installed_gsocket_serves_a_real_session_and_publish_realtime(
    real_bench: RealBench, real_gsocket: GsocketProcess
) -> None:
    sid = real_bench.login()
    client = PyClient()
    client.connect(
        real_gsocket.url,
        f"/{SITE}",
        real_bench.desk_headers(SITE, sid),
    )
    try:
        real_bench.in_site(
            SITE,
            "frappe.publish_realtime('lane_probe', {'n': 1}, user='Administrator')",
        )
        assert client.wait_for("lane_probe", timeout=10) == ({"n": 1},)
    finally:
        client.disconnect()
