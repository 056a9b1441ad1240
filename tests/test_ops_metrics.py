"""``GET /metrics`` as Prometheus reads it: parsed by ``prometheus_client``, counters moving.

Operators scrape gsocket like the rest of the bench; a family that does not parse, has the wrong
type, or does not move when the thing it counts happens is worse than none.
"""

from __future__ import annotations

import json

import requests
from prometheus_client.parser import text_string_to_metric_families

from gsocket.demo.redis_server import RedisServer
from tests.conftest import SITE, desk_headers
from tests.support.bench import GsocketProcess, wait_until

OPS_APPS = {"apps": ("frappe", "opsapp"), "copy_apps": ("opsapp",), "sites": (SITE,)}

#: Every family the operations issue names, with its Prometheus type.  The parser drops a
#: counter's ``_total`` suffix from the family name (its samples keep it).
FAMILIES = {
    "gsocket_sockets_connected": "gauge",
    "gsocket_connects": "counter",
    "gsocket_connect_refusals": "counter",
    "gsocket_events_received": "counter",
    "gsocket_handler_duration_seconds": "histogram",
    "gsocket_handler_errors": "counter",
    "gsocket_redis_messages": "counter",
    "gsocket_bridge_reconnects": "counter",
    "gsocket_web_call_duration_seconds": "histogram",
}


class Scrape:
    """One parsed scrape: sample values by name and labels, family types by name."""

    def __init__(self, proc: GsocketProcess) -> None:
        response = requests.get(f"{proc.url}/metrics", timeout=5)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        self.types: dict[str, str] = {}
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(response.text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(k)[label] for (n, k) in self.values if n == name and label in dict(k)}


def _until(proc: GsocketProcess, condition, message: str) -> Scrape:
    found: list[Scrape] = []

    def check() -> bool:
        scrape = Scrape(proc)
        if condition(scrape):
            found.append(scrape)
            return True
        return False

    wait_until(check, 10, message)
    return found[0]


def test_every_family_parses_with_its_type(gsocket):
    scrape = Scrape(gsocket)
    for name, kind in FAMILIES.items():
        assert scrape.types.get(name) == kind, (name, scrape.types.get(name))


def test_counters_move_with_what_they_count(start_gsocket, web, clients, redis_client):
    web.installed_apps[SITE] = ["frappe", "opsapp"]
    proc = start_gsocket(**OPS_APPS)
    before = Scrape(proc)

    client = clients().connect(proc.url, f"/{SITE}", desk_headers(SITE, "sid-admin"))
    after = _until(
        proc, lambda s: s("gsocket_sockets_connected", site=SITE) == 1, "socket gauge did not move"
    )
    connects = after("gsocket_connects_total", site=SITE)
    assert connects == before("gsocket_connects_total", site=SITE) + 1
    user_info = {"method": "get_user_info", "outcome": "200"}
    assert after("gsocket_web_call_duration_seconds_count", **user_info) >= 1
    assert after("gsocket_web_call_duration_seconds_sum", **user_info) > 0

    try:
        clients().connect(proc.url, f"/{SITE}", desk_headers(SITE, None), timeout=5)
    except Exception:  # noqa: BLE001 - the refusal is the point
        pass
    _until(
        proc,
        lambda s: s("gsocket_connect_refusals_total", reason="no_credentials") == 1,
        "refusal not counted",
    )

    assert client.call("ops_join", "crew") == client.sid
    client.emit("ping")
    client.wait_for("pong")
    client.emit("ops_fail")
    for n in range(20):
        client.emit(f"made-up-{n}")
    redis_client.publish(
        "events", json.dumps({"event": "hello", "message": 1, "room": "all", "namespace": SITE})
    )
    client.wait_for("hello")
    redis_client.publish("events", "not json")
    scrape = _until(
        proc,
        lambda s: (
            s("gsocket_events_received_total", event="(unknown)") == 20
            and s("gsocket_handler_errors_total", event="ops_fail") == 1
            and s("gsocket_redis_messages_total", outcome="malformed") == 1
        ),
        "event counters did not move",
    )
    assert scrape("gsocket_events_received_total", event="ping") == 1
    assert scrape("gsocket_events_received_total", event="ops_join") == 1
    assert scrape("gsocket_handler_duration_seconds_count", event="ping") == 1
    assert scrape("gsocket_handler_duration_seconds_bucket", event="ping", le="+Inf") == 1
    assert scrape("gsocket_handler_duration_seconds_count", event="ops_fail") == 1
    assert scrape("gsocket_redis_messages_total", outcome="delivered") == 1
    # Event names a client makes up do not become series: cardinality stays bounded.
    events = scrape.label_values("gsocket_events_received_total", "event")
    assert not [e for e in events if e.startswith("made-up")]

    client.disconnect()
    _until(
        proc,
        lambda s: s("gsocket_sockets_connected", site=SITE) == 0,
        "socket gauge did not drop",
    )


def test_bridge_reconnects_are_counted(start_gsocket, tmp_path):
    own = RedisServer(tmp_path / "own-redis").start()
    try:
        proc = start_gsocket(conf={"redis_queue": own.url}, sites=(SITE,))
        assert Scrape(proc)("gsocket_bridge_reconnects_total") == 0
        own.restart()
        scrape = _until(
            proc,
            lambda s: s("gsocket_bridge_reconnects_total") >= 1,
            "bridge reconnect not counted",
        )
        assert scrape.types["gsocket_bridge_reconnects"] == "counter"
        proc.wait_healthy()
    finally:
        own.stop()
