"""Three gsocket processes behind Debian's nginx, as ``gsocket setup nginx`` configures it.

The bench says ``gsocket.processes: 3``; each process is started as supervisord would start it
(``serve --process K``, on ``socketio_port + K``) and nginx runs the complete configuration
``gsocket setup nginx --output`` writes.  Every client comes from 127.0.0.1 with the desk's
default transports (long-polling, then the upgrade), so only the session-id routing keeps their
requests on their own process: a request that reached another one would be answered 400.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gsocket.demo.ports import free_port, free_port_run, wait_for_port
from tests.support.bench import REPO, GsocketProcess, make_bench, wait_until
from tests.support.node_client import NodeClient
from tests.support.pyclient import PyClient

SITE = "localhost"  # the Host nginx sees, hence X-Frappe-Site-Name: the clients connect to it
PROCESSES = 3
PRESENCE_TTL = 2.0
USERS = {"sid-admin": "Administrator", "sid-jane": "jane@example.com"}
# python-engineio's websocket takes the Cookie out of the client's headers, so a reconnect
# would come back as Guest: the desks here authenticate with API tokens instead.  A token
# user's user_type is null in Frappe (so not in the room "all"): events go to "website",
# which every socket of the site is in.
TOKENS = {f"token {sid}:secret": user for sid, user in USERS.items()}


class Cluster:
    """Three gsocket processes of one bench and the nginx in front of them."""

    def __init__(self, bench: Path, processes: list[GsocketProcess], nginx_port: int) -> None:
        self.bench = bench
        self.processes = processes
        self.url = f"http://{SITE}:{nginx_port}"
        self.nginx: subprocess.Popen[bytes] | None = None

    @property
    def access_log(self) -> Path:
        return self.bench / "logs" / "nginx-access.log"

    def statuses(self, with_sid: bool | None = None) -> Counter[str]:
        """HTTP statuses nginx answered /socket.io requests with, by status (only those of
        established sessions with ``with_sid``, only handshakes with ``not with_sid``)."""
        text = self.access_log.read_text() if self.access_log.exists() else ""
        found = re.findall(r'"[A-Z]+ (/socket\.io/[^"]*)" (\d{3}) ', text)
        return Counter(
            status for path, status in found if with_sid is None or ("sid=" in path) == with_sid
        )

    def node(self, k: int) -> str:
        """The node name process ``k`` reports in ``/health``."""
        health = self.processes[k].health()
        assert health is not None
        return str(health.json()["node"])


@pytest.fixture
def cluster(tmp_path: Path, redis_server: Any, web: Any) -> Iterator[Cluster]:
    with running_cluster(tmp_path, redis_server, web) as made:
        yield made


@contextlib.contextmanager
def running_cluster(
    tmp_path: Path, redis_server: Any, web: Any, **gsocket: Any
) -> Iterator[Cluster]:
    """Start the three processes (``gsocket`` adds keys to the bench's ``gsocket`` object)
    and nginx in front of them; stop them all on exit."""
    web.sessions.update(USERS)
    web.tokens.update(TOKENS)
    web.permissions.update({("Administrator", "ToDo", None), ("jane@example.com", "ToDo", None)})
    base = free_port_run(PROCESSES)
    conf = {
        "redis_queue": redis_server.url,
        "webserver_host": "127.0.0.1",
        "webserver_port": web.port,
        "socketio_port": base,
        "gsocket": {"processes": PROCESSES, "presence_ttl": PRESENCE_TTL, **gsocket},
    }
    bench = make_bench(
        tmp_path, conf, sites=(SITE,), apps=("frappe", "opsapp"), copy_apps=("opsapp",)
    )
    web.installed_apps[SITE] = ["frappe", "opsapp"]
    processes = [
        GsocketProcess(bench, port=base + k, args=["--process", str(k)]) for k in range(PROCESSES)
    ]
    nginx_port = free_port()
    conf_file = bench / "config" / "nginx-cluster.conf"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    written = subprocess.run(
        [sys.executable, "-m", "gsocket", "setup", "nginx", "--bench", str(bench)]
        + ["--listen", f"127.0.0.1:{nginx_port}", "--output", str(conf_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert written.returncode == 0, written.stdout + written.stderr
    made = Cluster(bench, processes, nginx_port)
    try:
        for process in processes:
            process.start(wait=False)
        for process in processes:
            process.wait_healthy()
        # As root, nginx's workers would be "nobody", who cannot enter pytest's 0700 folders.
        directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        error_log = bench / "logs" / "nginx-error.log"
        command = ["nginx", "-c", str(conf_file), "-e", str(error_log), "-g", directives]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
        made.nginx = subprocess.Popen(command, stderr=subprocess.PIPE)
        wait_for_port(nginx_port)
        yield made
    finally:
        if made.nginx is not None:
            made.nginx.terminate()
            made.nginx.wait(10)
        for process in processes:
            process.kill()


@pytest.fixture
def desks() -> Iterator[Callable[[str], PyClient]]:
    """Factory of reconnecting clients with the desk's default transports."""
    made: list[PyClient] = []

    def make(user_sid: str) -> PyClient:
        client = PyClient(reconnection=True)
        made.append(client)
        client.user_sid = user_sid  # type: ignore[attr-defined]
        return client

    yield make
    for client in made:
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


def _connect(cluster: Cluster, client: PyClient) -> PyClient:
    headers = {"Authorization": f"token {client.user_sid}:secret"}  # type: ignore[attr-defined]
    return client.connect(cluster.url, f"/{SITE}", headers)


def _process_of(client: PyClient) -> str:
    sid = client.sid
    assert sid is not None
    return sid.split(".", 1)[0]


def _publish(redis_client: Any, event: str, message: object, room: str) -> None:
    payload = {"event": event, "message": message, "room": room, "namespace": SITE}
    redis_client.publish("events", json.dumps(payload))


def _spread(cluster: Cluster, desks: Callable[[str], PyClient], count: int) -> list[PyClient]:
    """Connect ``count`` desks (alternately Administrator and Jane), all upgraded to websocket."""
    clients = [_connect(cluster, desks("sid-admin" if n % 2 else "sid-jane")) for n in range(count)]
    wait_until(
        lambda: all(c.transport == "websocket" for c in clients),
        15,
        lambda: [c.transport for c in clients],
    )
    return clients


def test_desks_from_one_address_spread_over_the_processes_without_a_400(cluster, desks):
    upgraded = _spread(cluster, desks, 9)
    # The desk's own socket.io-client polls a few round trips before its upgrade.
    with NodeClient() as node:
        node_sids = []
        for n in range(6):
            id = f"desk-{n}"
            user = "sid-admin" if n % 2 else "sid-jane"
            node.connect(id, f"{cluster.url}/{SITE}", headers={"Cookie": f"sid={user}"})
            node_sids.append(node.wait_connected(id, timeout=10)["sid"])
            node.wait_type(id, "upgrade", timeout=10)
            seq = node.emit(id, "ops_join", "crew", ack=True)
            node.wait_for(lambda e, seq=seq: e.get("type") == "ack" and e.get("seq") == seq)
            node.close(id)
            node.wait_type(id, "disconnect", timeout=10)
    assert {sid.split(".", 1)[0] for sid in node_sids} == {"0", "1", "2"}, node_sids
    # Long-polling only (a desk whose websocket is blocked): every request names its session.
    polling = []
    for user_sid in ("sid-admin", "sid-jane", "sid-admin"):
        client = PyClient(transports=["polling"])
        client.user_sid = user_sid  # type: ignore[attr-defined]
        polling.append(_connect(cluster, client))
    clients = upgraded + polling
    by_process = Counter(_process_of(c) for c in clients)
    assert set(by_process) == {"0", "1", "2"}, by_process
    nodes = {cluster.node(k) for k in range(PROCESSES)}
    assert {c.sid.rsplit(".", 1)[0] for c in clients} <= nodes
    for _ in range(3):
        for client in clients:
            assert client.call("ops_join", "crew") == client.sid
    for client in polling:
        assert client.transport == "polling"
        client.disconnect()
    for client in upgraded:
        client.disconnect()
    # Upgrades are logged when their websocket closes.
    wait_until(
        lambda: cluster.statuses()["101"] == len(upgraded) + len(node_sids), 10, cluster.statuses
    )
    assert cluster.statuses()["400"] == 0, cluster.statuses()
    handshakes = cluster.statuses(with_sid=False)
    assert handshakes == Counter({"200": len(clients) + len(node_sids)}), handshakes
    # Each polling desk's 3 acknowledged events and its polls went to its own process.
    in_session = cluster.statuses(with_sid=True)
    assert in_session["200"] >= 6 * len(polling) + 2 * len(node_sids), in_session


def test_each_publish_reaches_each_socket_once_whichever_process(cluster, desks, redis_client):
    clients = _spread(cluster, desks, 6)
    for n in range(30):
        _publish(redis_client, "tick", {"n": n}, "website")
    for n in range(5):
        _publish(redis_client, "jane_tick", {"n": n}, "user:jane@example.com")
    _publish(redis_client, "done", None, "website")
    for client in clients:
        client.wait_for("done", timeout=10)
    # A handler's emit to a room travels through the Redis manager: once to each member.
    assert clients[0].call("ops_shout", "website", {"n": "shout"}) is True
    for client in clients:
        client.wait_for("shout", timeout=10)
    for client in clients:
        assert Counter(a[0]["n"] for a in client.events("tick")) == Counter(range(30))
        assert len(client.events("shout")) == 1
        jane = client.user_sid == "sid-jane"  # type: ignore[attr-defined]
        assert len(client.events("jane_tick")) == (5 if jane else 0)
    assert cluster.statuses()["400"] == 0


def _one_on_each(cluster: Cluster, desks: Callable[[str], PyClient]) -> dict[str, PyClient]:
    """Connect desks until one of Jane's is on process 0 and Administrator's on 1 and 2."""
    wanted = {"0": "sid-jane", "1": "sid-admin", "2": "sid-admin"}
    found: dict[str, PyClient] = {}
    for _ in range(30):
        missing = [k for k in wanted if k not in found]
        if not missing:
            return found
        client = _connect(cluster, desks(wanted[missing[0]]))
        process = _process_of(client)
        if process in missing and wanted[process] == client.user_sid:  # type: ignore[attr-defined]
            found[process] = client
        else:
            client.disconnect()
    raise AssertionError(f"nginx never spread the handshakes: {sorted(found)}")


def test_presence_is_one_view_across_the_processes(cluster, desks):
    on = _one_on_each(cluster, desks)
    on["0"].emit("doc_open", "ToDo", "TD-1")
    on["1"].emit("doc_open", "ToDo", "TD-1")
    seen = on["0"].wait_for(
        "doc_viewers", lambda a: sorted(a[0]["users"]) == ["Administrator", "jane@example.com"]
    )
    assert seen[0]["docname"] == "TD-1"
    # An app handler on process 2 sees the room's members on 0 and 1, and their users.
    who = sorted(map(tuple, on["2"].call("ops_who", "open_doc:ToDo/TD-1")))
    assert who == sorted([(on["0"].sid, "jane@example.com"), (on["1"].sid, "Administrator")])
    on["0"].emit("doc_close", "ToDo", "TD-1")
    on["1"].wait_for("doc_viewers", lambda a: a[0]["users"] == ["Administrator"])
    assert on["2"].call("ops_who", "open_doc:ToDo/TD-1") == [[on["1"].sid, "Administrator"]]


def test_kill_9_of_a_process_its_clients_come_back_and_the_others_miss_nothing(
    cluster, desks, redis_client
):
    on = _one_on_each(cluster, desks)
    others = [c for c in _spread(cluster, desks, 6) if _process_of(c) != "0"]
    survivors = [on["1"], on["2"], *others]
    victims = [on["0"]]
    on["0"].emit("doc_open", "ToDo", "TD-9")
    on["1"].emit("doc_open", "ToDo", "TD-9")
    on["1"].wait_for("doc_viewers", lambda a: len(a[0]["users"]) == 2)
    dead_sid = on["0"].sid
    for n in range(10):
        _publish(redis_client, "tick", {"n": n}, "website")

    cluster.processes[0].kill()
    for n in range(10, 20):
        _publish(redis_client, "tick", {"n": n}, "website")
    # The dead process's desk comes back through nginx, on a live process.
    wait_until(
        lambda: on["0"].client.connected and on["0"].sid not in (None, dead_sid),
        20,
        lambda: (
            f"the killed process's client did not reconnect: {on['0'].client.connected} "
            f"{on['0'].sid} {on['0'].received[-5:]}\n"
            + (cluster.bench / "logs" / "nginx-error.log").read_text()[-3000:]
        ),
    )
    assert _process_of(on["0"]) in ("1", "2")
    # Its presence is removed once the process misses its heartbeats; the viewers are told.
    on["1"].wait_for("doc_viewers", lambda a: a[0]["users"] == ["Administrator"], timeout=15)
    assert on["2"].call("ops_who", "open_doc:ToDo/TD-9") == [[on["1"].sid, "Administrator"]]
    jane = {sid for sid, _ in on["2"].call("ops_who", "user:jane@example.com")}
    assert on["0"].sid in jane and dead_sid not in jane
    assert {sid.split(".", 1)[0] for sid in jane} <= {"1", "2"}, jane

    for n in range(20, 30):
        _publish(redis_client, "tick", {"n": n}, "website")
    _publish(redis_client, "done", None, "website")
    for client in survivors + victims:
        client.wait_for("done", timeout=10)
    for client in survivors:
        assert Counter(a[0]["n"] for a in client.events("tick")) == Counter(range(30))
    # The reconnected desk is in its default rooms again: it gets what comes after.
    after = [a[0]["n"] for a in on["0"].events("tick") if a[0]["n"] >= 20]
    assert after == list(range(20, 30))
    assert cluster.statuses()["400"] == 0


def test_a_process_taken_for_dead_writes_its_presence_again(cluster, desks):
    on = _one_on_each(cluster, desks)
    on["0"].emit("doc_open", "ToDo", "TD-5")
    jane_room = "user:jane@example.com"
    viewer = [[on["0"].sid, "jane@example.com"]]

    def seen_from(k: str, room: str) -> bool:
        return on["0"].sid in {sid for sid, _ in on[k].call("ops_who", room)}

    wait_until(lambda: seen_from("1", "open_doc:ToDo/TD-5"), 10, "the viewer is not seen")
    node = cluster.node(0)
    # Process 0 stalls past presence_ttl (as when Redis was away that long): the others take
    # it for dead and remove its presence; it comes back with its clients still connected.
    process = cluster.processes[0].proc
    assert process is not None
    process.send_signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: any(f"process {node} stopped" in p.log() for p in cluster.processes[1:]),
            10,
            "no live process cleaned up after the silent one",
        )
        assert not seen_from("2", jane_room)
    finally:
        process.send_signal(signal.SIGCONT)
    cluster.processes[0].wait_for_log("presence was lost from Redis: writing it again")
    wait_until(lambda: seen_from("2", jane_room), 10, "process 0's socket did not come back")
    wait_until(
        lambda: on["1"].call("ops_who", "open_doc:ToDo/TD-5") == viewer,
        10,
        "process 0's viewer did not come back",
    )


def test_without_the_sid_map_the_same_desks_get_400s(cluster):
    """The control: nginx round-robin over the same processes, as the helm chart's replicas."""
    conf = cluster.bench / "config" / "nginx-cluster.conf"
    name = cluster.bench.name
    text = conf.read_text()
    assert f"proxy_pass http://$gsocket_{name};" in text
    conf.write_text(text.replace(f"$gsocket_{name};", f"{name}-socketio-server;"))
    assert cluster.nginx is not None
    cluster.nginx.send_signal(signal.SIGHUP)  # nginx reloads its configuration (soon)
    before = cluster.statuses()["400"]

    def polling_desk_fails() -> bool:
        client = PyClient(transports=["polling"])
        try:
            headers = {"Authorization": "token sid-admin:secret"}
            client.connect(cluster.url, f"/{SITE}", headers, timeout=3)
            for _ in range(6):
                client.call("ops_join", "crew", timeout=2)
        except Exception:  # noqa: BLE001 - a refused or lost session is what is expected
            return True
        finally:
            try:
                client.disconnect()
            except Exception:  # noqa: BLE001 - already gone is fine
                pass
        return False

    wait_until(lambda: polling_desk_fails() and cluster.statuses()["400"] > before, 30, "no 400")
