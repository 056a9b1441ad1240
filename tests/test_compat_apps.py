"""Compatibility suite: apps written only from Frappe's realtime documentation run on gsocket.

The fixture apps (``tests/fixture_apps/compat_*``) use nothing but what Frappe documents for
its own Python realtime server: the synchronous API of the seed documentation, the
``async def`` handlers and ``SyncSocket`` of the newer asyncio server, Frappe's module paths
(``frappe.realtime.socket``, ``frappe.realtime.registry``), helpers in a sub-package of the
app and handlers wrapped by decorators.  Each runs here on a real gsocket with real clients.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import SITE, SITE2, desk_headers
from tests.support.bench import REPO, GsocketProcess, make_bench

COMPAT_APPS = ("compat_sync", "compat_async", "compat_mixed", "compat_module")
LIMITS = {"gsocket": {"limits": {"handler_timeout": 2, "events_per_second": 500}}}


@pytest.fixture
def compat_web(web):
    web.installed_apps.update({SITE: ["frappe", *COMPAT_APPS], SITE2: ["frappe", "compat_sync"]})
    return web


@pytest.fixture
def gsock(start_gsocket, compat_web):
    return start_gsocket(conf=LIMITS, apps=("frappe", *COMPAT_APPS), copy_apps=COMPAT_APPS)


def connect(clients, proc, sid, site=SITE):
    return clients().connect(proc.url, f"/{site}", desk_headers(site, sid))


class TestSyncApp:
    def test_documented_example_joins_after_the_permission_check(self, gsock, compat_web, clients):
        compat_web.permissions.add(("Administrator", "Project", "P-1"))
        admin = connect(clients, gsock, "sid-admin")
        jane = connect(clients, gsock, "sid-jane")
        admin.emit("project_subscribe", "P-1")
        assert admin.wait_for("project_subscribed") == ({"project": "P-1"},)
        jane.emit("project_subscribe", "P-1")
        jane.emit("project_comment", "P-1", "hi all")
        (comment,) = admin.wait_for("project_comment")
        assert comment == {"user": "jane@example.com", "text": "hi all"}
        assert jane.events("project_subscribed") == []

    def test_identity_state_and_scoping(self, gsock, clients):
        admin = connect(clients, gsock, "sid-admin")
        admin.emit("whoami")
        (me,) = admin.wait_for("whoami")
        assert me == {
            "site": SITE,
            "user": "Administrator",
            "user_type": "System User",
            "installed_apps": ["frappe", *COMPAT_APPS],
            "connected_as": "Administrator",
        }
        guest = connect(clients, gsock, "Guest", SITE2)
        guest.emit("whoami")
        (visitor,) = guest.wait_for("whoami")
        assert visitor["user"] == "Guest" and visitor["site"] == SITE2
        assert visitor["connected_as"] is None  # the connect handler is not allow_guest

    def test_open_forms_are_in_socket_state_as_in_frappe(self, gsock, compat_web, clients):
        compat_web.permissions.add(("Administrator", "ToDo", None))
        admin = connect(clients, gsock, "sid-admin")
        admin.call("doc_open", "ToDo", "TD-1")
        admin.call("doc_open", "ToDo", "TD-2")
        admin.call("doc_close", "ToDo", "TD-1")
        admin.emit("open_forms")
        assert admin.wait_for("open_forms") == ([["ToDo", "TD-2"]],)


class TestAsyncApp:
    def test_awaited_socket_actions(self, gsock, compat_web, clients):
        compat_web.permissions.add(("Administrator", "Project", "P-1"))
        admin = connect(clients, gsock, "sid-admin")
        jane = connect(clients, gsock, "sid-jane")
        admin.emit("async_subscribe", "P-1")
        assert admin.wait_for("async_subscribed") == ({"project": "P-1", "in": True},)
        jane.emit("async_subscribe", "P-1")
        assert jane.wait_for("async_subscribed") == ({"project": "P-1", "in": False},)
        admin.emit("async_viewers", "project:P-1")
        assert admin.wait_for("async_viewers") == (["Administrator"],)
        admin.emit("async_viewers", "async_user:jane@example.com")  # joined by a connect handler
        assert admin.wait_for("async_viewers", lambda a: a != (["Administrator"],)) == (
            ["jane@example.com"],
        )
        admin.emit("async_state", "k", {"v": [1]})
        assert admin.wait_for("async_state") == ({"v": [1]},)
        admin.emit("async_leave", "P-1")
        admin.wait_for("async_left")
        admin.emit("async_subscribe", "P-2")
        admin.emit("async_viewers", "project:P-1")
        assert admin.wait_for("async_viewers", lambda a: a == ([],)) == ([],)

    def test_asyncio_primitives_run_concurrently_without_holding_the_hub(self, gsock, clients):
        waiters = [connect(clients, gsock, "sid-admin") for _ in range(8)]
        pinger = connect(clients, gsock, "Guest")
        started = time.monotonic()
        for client in waiters:
            client.emit("async_wait", 0.4)
        pinger.emit("ping")
        pinger.wait_for("pong")
        assert time.monotonic() - started < 0.4  # served while the coroutines sleep
        for client in waiters:
            (waited,) = client.wait_for("async_waited")
            assert waited["results"] == ["a", "b"] and waited["timed_out"] is True
            assert 0.75 <= waited["elapsed"] < 1.5
        assert time.monotonic() - started < 3  # concurrently: eight in the time of one

    def test_asyncio_network_io_on_the_loop(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        client.emit("async_redis_ping")
        assert client.wait_for("async_redis") == ("+PONG",)

    def test_async_callable_object_guest_and_plain_handler_with_sync_socket(
        self, gsock, compat_web, clients
    ):
        compat_web.permissions.add(("Administrator", "Project", "P-9"))
        admin = connect(clients, gsock, "sid-admin")
        admin.emit("async_count")
        admin.emit("async_count")
        admin.wait_for("async_counted", lambda a: a == (2,))
        admin.emit("plain_in_async_app", "P-9")
        assert admin.wait_for("plain_said") == ({"text": "P-9", "allowed": True},)
        guest = connect(clients, gsock, "Guest")
        guest.emit("async_guest")
        assert guest.wait_for("async_guest") == ("Guest",)
        guest.emit("async_count")  # not allow_guest
        guest.emit("async_guest")
        guest.wait_for("async_guest", lambda a: len(guest.events("async_guest")) == 2)
        assert guest.events("async_counted") == []

    def test_timeout_cancels_the_coroutine_and_errors_are_logged(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        client.emit("async_slow")
        client.wait_for("async_slow_ended", timeout=6)
        gsock.wait_for_log(r"handler compat_async\.realtime\.handlers\.async_slow .* time limit")
        client.emit("async_raise")
        gsock.wait_for_log(r"handler compat_async\.realtime\.handlers\.async_raise .* raised")
        assert "ValueError: async handler failed on purpose" in gsock.log()
        assert "was never awaited" not in gsock.log()
        client.emit("async_state", "still", "alive")
        assert client.wait_for("async_state") == ("alive",)

    def test_shutdown_cancels_what_async_handlers_left_running(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        client.emit("async_background")
        client.wait_for("async_background_started")
        client.disconnect()
        assert gsock.stop(signal.SIGTERM) == 0
        log = gsock.log()
        assert "background task of compat_async ended" in log
        assert "Traceback" not in log and "destroyed but it is pending" not in log


class TestMixedApp:
    def test_helper_package_handlers_belong_to_the_app(self, gsock, clients):
        admin = connect(clients, gsock, "sid-admin")
        jane = connect(clients, gsock, "sid-jane")
        admin.emit("chat_join", "general")
        admin.wait_for("chat_joined")
        jane.emit("chat_say", "general", "hello")
        assert admin.wait_for("chat_said") == ({"user": "jane@example.com", "text": "hello"},)

    def test_plain_and_async_handlers_of_one_event_run_in_order(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        client.emit("mixed_both")
        client.wait_for("mixed_order", lambda a: len(client.events("mixed_order")) == 2)
        assert client.events("mixed_order") == [("plain",), ("async",)]

    def test_decorated_handlers_run(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        client.emit("mixed_audited", "x")
        assert client.wait_for("mixed_audited") == ("x",)
        client.emit("mixed_async_audited", "y")
        assert client.wait_for("mixed_async_audited") == ("y",)
        assert client.events("audited") == [("audited_plain",), ("audited_async",)]
        client.emit("mixed_traced", "z")
        assert client.wait_for("mixed_traced") == ({"text": "z", "in": True},)

    def test_partials_methods_and_callable_objects(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        client.emit("mixed_partial", "Jane")
        assert client.wait_for("mixed_greeting") == ("hello, Jane",)
        client.emit("mixed_method")
        assert client.wait_for("mixed_lobby") == ("lobby",)
        client.emit("mixed_callable", [1, "two"])
        assert client.wait_for("mixed_echo") == ([1, "two"],)

    def test_a_value_that_is_not_json_is_acked_empty_and_logged_once(self, gsock, clients):
        client = connect(clients, gsock, "sid-admin")
        assert client.call("mixed_not_json") is None
        assert client.call("mixed_not_json") is None
        assert len(client.events("mixed_not_json_ran")) == 2
        gsock.wait_for_log(r"not_json .* returned a value that is not JSON, acked empty")
        assert gsock.log().count("returned a value that is not JSON") == 1
        assert "Traceback" not in gsock.log()

    def test_realtime_module_is_skipped_with_a_log_line(self, gsock):
        gsock.wait_for_log(r"app compat_module has a realtime module .* not a realtime/ package")


def test_async_handler_with_frappe_context_stops_startup_naming_it(tmp_path, redis_server, web):
    conf = {"redis_queue": redis_server.url, "webserver_host": "127.0.0.1"}
    bench = make_bench(
        tmp_path, conf, apps=("frappe", "compat_badasync"), copy_apps=("compat_badasync",)
    )
    proc = GsocketProcess(bench).start(wait=False)
    assert proc.proc.wait(timeout=30) == 2
    log = proc.log()
    assert "compat_badasync.realtime.handlers.needs_the_orm of 'bad_async'" in log
    assert "is 'async def' but asks for frappe_context=True" in log


FRAPPE_PATHS = """
import sys
from gsocket.contract.frappe_shim import install_frappe_realtime
from gsocket.handlers.registry import Registry
from gsocket.handlers.socket import AsyncSocket, Socket

registry = Registry()
install_frappe_realtime(registry)
from frappe.realtime import Socket as A, SyncSocket as B, realtime as C
from frappe.realtime.socket import Socket as D, SyncSocket as E
from frappe.realtime.registry import realtime as F
import frappe.realtime.registry

assert A is B is D is E is Socket, (A, D)
assert C is F is frappe.realtime.registry.realtime is registry
print(sys.modules["frappe"].__file__ if hasattr(sys.modules["frappe"], "__file__") else "stub")
"""

NEWER_FRAPPE = {
    "frappe/__init__.py": "",
    "frappe/realtime/__init__.py": "def publish_to_room(room, event, message=None): pass\n",
    "frappe/realtime/socket.py": "raise ImportError('Frappe server module imported')\n",
    "frappe/realtime/registry.py": "raise ImportError('Frappe server module imported')\n",
}


@pytest.mark.parametrize("frappe", ["none", "v15", "newer"])
def test_frappe_module_paths_resolve_to_gsocket_on_every_frappe(tmp_path, frappe):
    path = [str(REPO)]
    if frappe == "v15":
        path.append(str(REPO / "tests" / "fake_frappe"))  # frappe.realtime is a module there
    elif frappe == "newer":
        for name, text in NEWER_FRAPPE.items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
        path.append(str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", FRAPPE_PATHS],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert ("stub" in out.stdout) == (frappe == "none")


UNIT_TEST_OF_ASYNC_HANDLERS = """
from gsocket.handlers.testing import FakeSocket, call, install_registry
install_registry()
from compat_async.realtime.handlers import async_subscribe, async_wait, plain_in_async_app

socket = FakeSocket(user="jane@example.com", permissions={("Project", "P-1")})
call(async_subscribe, socket, "P-1")
call(async_subscribe, socket, "P-2")
assert socket.rooms == {"project:P-1"}, socket.rooms
call(async_wait, socket, 0.01)
(waited,) = socket.events("async_waited")
assert waited.data["results"] == ["a", "b"] and waited.data["timed_out"]
call(plain_in_async_app, socket, "P-1")
assert socket.events("plain_said")[0].data == {"text": "P-1", "allowed": True}
print("ok")
"""


def test_an_app_author_unit_tests_async_handlers_with_fake_socket():
    path = [str(REPO), str(REPO / "tests" / "fixture_apps" / "compat_async")]
    out = subprocess.run(
        [sys.executable, "-c", UNIT_TEST_OF_ASYNC_HANDLERS],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": ":".join(path), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert out.stdout.strip() == "ok", out.stderr
