"""The Redis key tracker behind the kept module map and print_sql flag
(gsocket/protocol/internals/frappe_cache_hooks.py), against a real redis-server in a
gevent-patched process as gsocket's is.  What it keeps must go the moment Redis reports its
key changed, and nothing else; closing it ends its Redis connection.  The whole path through
Frappe is tested on both real benches (tests/realbench/test_frappe_ctx_real.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from gsocket.protocol.internals import frappe_cache_hooks

TRACKER = """
from gevent import monkey

monkey.patch_all()

import json, sys, time

import gevent, redis

from gsocket.protocol.internals.frappe_cache_hooks import KeyTracker

url = sys.argv[1]
client = redis.Redis.from_url(url)
MAP, FLAG = b"db1|app_modules", b"db1|flag_print_sql"
pool = redis.ConnectionPool.from_url(url)
tracker = KeyTracker(lambda: pool.connection_class(**pool.connection_kwargs), (MAP, FLAG))


def until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.005)
    return True


out = {"ready": until(lambda: tracker.ready)}
client.set(MAP, "map")  # a key that exists, for its delete to be a change
out["set_reported"] = until(lambda: tracker.changes >= 1)
tracker.kept.update({MAP: "map", FLAG: True})
client.set(b"db1|other", 1)
client.set(b"db2|app_modules", 1)
client.set(b"db1|flag_print_sql", 1)
out["flag_dropped"] = until(lambda: FLAG not in tracker.kept)
out["others_kept"] = sorted(k.decode() for k in tracker.kept)
tracker.kept[FLAG] = True
client.delete(MAP)
out["map_dropped_on_delete"] = until(lambda: MAP not in tracker.kept)
tracker.kept[MAP] = "map"
client.flushall()
out["all_dropped_on_flush"] = until(lambda: not tracker.kept)
own = tracker.client_id
out["listed"] = any(c["id"] == str(own) for c in client.client_list())
tracker.close()
out["gone_after_close"] = until(lambda: all(c["id"] != str(own) for c in client.client_list()))
print(json.dumps(out))
"""


def setup_module_map(include_all_apps: bool = True) -> None:
    """Frappe's signature, for keep_module_map to recognise."""


def test_kept_values_go_when_redis_reports_their_key_changed_and_close_ends_tracking(
    redis_server: Any,
) -> None:
    """With a redis-py the tracker was verified with, what is kept goes when Redis reports a
    change; with another, nothing is kept at all.  CI's lowest lane (redis-py 4.5.5) runs the
    first, its newest lane (8.1.0) the second, and the real-bench lane the tracker through
    Frappe with each version's own pin (4.5.5, 5.0.8: tests/realbench/test_frappe_ctx_real.py)."""
    frappe = SimpleNamespace(__version__="15.44.2", setup_module_map=setup_module_map)
    kept = frappe_cache_hooks.keep_module_map(frappe)  # type: ignore[arg-type]
    if not frappe_cache_hooks.redis_verified():
        assert kept is None and frappe.setup_module_map is setup_module_map
        return
    assert frappe.setup_module_map is kept is not None
    out = subprocess.run(
        [sys.executable, "-c", TRACKER, redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "ready": True,
        "set_reported": True,
        # a write of one tracked key drops that key only; other keys, even of the same name
        # in another site's database prefix, drop nothing
        "flag_dropped": True,
        "others_kept": ["db1|app_modules"],
        "map_dropped_on_delete": True,
        "all_dropped_on_flush": True,
        "listed": True,
        "gone_after_close": True,
    }


@pytest.mark.parametrize(
    ("version", "wrapped"), [("4.5.5", True), ("5.0.8", True), ("5.1.0", False), ("8.1.0", False)]
)
def test_only_a_verified_redis_py_gets_the_kept_module_map(
    monkeypatch: pytest.MonkeyPatch, version: str, wrapped: bool
) -> None:
    """redis-py 5.1 and later hand pub/sub replies to a push handler: the tracker would never
    see a change, so with them nothing may be kept and Frappe's own function stays."""
    import redis

    monkeypatch.setattr(redis, "__version__", version)
    frappe = SimpleNamespace(__version__="16.0.0-dev", setup_module_map=setup_module_map)
    kept = frappe_cache_hooks.keep_module_map(frappe)  # type: ignore[arg-type]
    assert (kept is not None) is wrapped
    assert (frappe.setup_module_map is setup_module_map) is not wrapped


class FakeConnection:
    """A redis-py connection whose Redis answers ``CLIENT TRACKING`` with ``refusal`` (an
    error reply) or is unreachable (``unreachable``)."""

    made = 0

    def __init__(self, refusal: str | None = None, unreachable: bool = False) -> None:
        FakeConnection.made += 1
        self.refusal, self.unreachable, self.last = refusal, unreachable, ""

    def connect(self) -> None:
        if self.unreachable:
            raise ConnectionError("Connection refused")

    def send_command(self, *args: Any) -> None:
        self.last = " ".join(map(str, args[:2]))

    def read_response(self) -> Any:
        import redis

        if self.last == "CLIENT TRACKING" and self.refusal:
            raise redis.exceptions.ResponseError(self.refusal)
        return 7 if self.last == "CLIENT ID" else b"OK"

    def disconnect(self) -> None:
        pass


def test_a_refused_tracking_is_logged_once_and_not_asked_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that refuses (before 6, CLIENT renamed, an ACL user without the channel) would
    refuse every 5 s for good: one WARNING, and nothing kept from then on."""
    import gevent

    monkeypatch.setattr(frappe_cache_hooks, "RETRY_SECONDS", 0.001)
    FakeConnection.made = 0
    caplog.set_level("INFO", "gsocket.frappe_cache")
    tracker = frappe_cache_hooks.KeyTracker(
        lambda: FakeConnection(refusal="ERR unknown command 'CLIENT'"), (b"k",)
    )
    gevent.sleep(0.05)
    assert tracker.closed and not tracker.ready and FakeConnection.made == 1
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "refused to track" in caplog.records[0].getMessage()


def test_a_lost_tracking_connection_is_retried_and_logged_once_per_outage(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreachable Redis is asked again every RETRY_SECONDS, with one line per outage."""
    import gevent

    monkeypatch.setattr(frappe_cache_hooks, "RETRY_SECONDS", 0.001)
    FakeConnection.made = 0
    caplog.set_level("INFO", "gsocket.frappe_cache")
    tracker = frappe_cache_hooks.KeyTracker(lambda: FakeConnection(unreachable=True), (b"k",))
    try:
        for _ in range(400):  # up to ~2 s for five attempts 1 ms apart
            if FakeConnection.made >= 5:
                break
            gevent.sleep(0.005)
        assert FakeConnection.made >= 5 and not tracker.ready and not tracker.closed
        assert [r.levelname for r in caplog.records] == ["INFO"]
    finally:
        tracker.close()


def test_only_inits_own_call_gets_the_kept_map_and_nothing_after_close() -> None:
    """Frappe's ``clear_global_cache`` deletes the key and calls ``setup_module_map`` again in
    the same context: that call must rebuild the map as Frappe does, not get the kept one
    back before Redis's report of the delete is read.  ``frappe.init`` sets ``module_app`` to
    None right before its own call."""
    calls: list[bool] = []

    def original(include_all_apps: bool = True) -> None:
        calls.append(include_all_apps)
        frappe.local.module_app = {"rebuilt": "frappe"}

    client = SimpleNamespace()
    frappe = SimpleNamespace(
        cache=client,
        local=SimpleNamespace(conf=SimpleNamespace(db_name="db1"), cache={}, module_app=None),
    )
    cache = frappe_cache_hooks.ModuleMapCache(original, frappe)  # type: ignore[arg-type]
    tracker = SimpleNamespace(
        ready=True,
        changes=0,
        prefixes=(b"db1|app_modules", b"db1|flag_print_sql"),
        kept={b"db1|app_modules": ({"frappe": ("core",)}, {"core": "frappe"})},
    )
    cache._by_site[(id(client), "db1")] = (client, tracker)  # the site's tracker, set up
    cache()  # init's own call
    assert calls == [] and frappe.local.module_app == {"core": "frappe"}
    cache()  # a second call in the same context, after its own clear_cache
    assert calls == [True] and frappe.local.module_app == {"rebuilt": "frappe"}
    cache.close()
    frappe.local.module_app = None
    cache()  # a context after close: Frappe's own read
    assert calls == [True, True]
