"""Engine.IO and Socket.IO as specified, where python-engineio alone answers otherwise.

Each test pins one point on which gsocket's layer over python-engineio
(gsocket/protocol/session.py, http.py and the Engine.IO parts of server.py) makes a real
gsocket process answer as Node's reference servers do, and as the official test suites
(socketio/engine.io-protocol and socketio/socket.io-protocol, ``test-suite/``) check: a second
concurrent long-poll, the PONG deadline, the connect timeout, the ``transport`` parameter, the
HTTP methods, ``ok``, the NOOP for the pending poll of a closing client, and ping settings to
the millisecond.

The clients are raw: ``requests`` and sockets for HTTP long-polling, websocket-client for
websockets, so that nothing but gsocket decides what goes over the wire.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket

from gsocket.config import ConfigError, load_config
from tests.conftest import SITE, desk_headers
from tests.support.bench import GsocketProcess, make_bench, wait_until

EIO = "/socket.io/?EIO=4"
HTTP_TIMEOUT = 10.0


def engine(**settings: float) -> dict[str, Any]:
    """A common_site_config fragment with gsocket's Engine.IO settings (seconds)."""
    return {"gsocket": settings}


def handshake(base: str, query: str = "&transport=polling") -> requests.Response:
    return requests.get(f"{base}{EIO}{query}", timeout=HTTP_TIMEOUT)


def open_polling(base: str) -> tuple[str, dict[str, Any]]:
    """Open a long-polling session; return its sid and the OPEN packet's data."""
    response = handshake(base)
    assert response.status_code == 200, response.text
    assert response.text.startswith("0"), response.text
    opened = json.loads(response.text[1:])
    return opened["sid"], opened


def poll_url(base: str, sid: str) -> str:
    return f"{base}{EIO}&transport=polling&sid={sid}"


def open_websocket(base: str, headers: dict[str, str] | None = None) -> websocket.WebSocket:
    """Open a websocket-only session (no Origin unless given) and read its OPEN packet."""
    headers = headers or {}
    origin = headers.get("Origin")
    ws = websocket.create_connection(
        base.replace("http://", "ws://") + EIO + "&transport=websocket",
        header=[f"{k}: {v}" for k, v in headers.items() if k != "Origin"],
        origin=origin,
        suppress_origin=origin is None,
        timeout=HTTP_TIMEOUT,
    )
    opened = ws.recv()
    assert isinstance(opened, str) and opened.startswith("0"), opened
    return ws


def receive(ws: websocket.WebSocket, timeout: float) -> str | bytes:
    """One frame, or ``""`` once the server closed the connection."""
    ws.settimeout(timeout)
    try:
        return ws.recv()
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return ""


def frames_answering_pings(
    ws: websocket.WebSocket, seconds: float, stop: Callable[[str | bytes], bool]
) -> list[str | bytes]:
    """Read for ``seconds`` (or until ``stop(frame)``), answering every PING; return what
    came other than PINGs."""
    got: list[str | bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frame = receive(ws, left)
        except websocket.WebSocketTimeoutException:
            break
        if frame == "2":
            ws.send("3")
            continue
        got.append(frame)
        if stop(frame):
            break
    return got


# ---- configuration ---------------------------------------------------------------------


def test_engine_settings_are_read_in_seconds_with_fractions(tmp_path: Path) -> None:
    bench = make_bench(tmp_path, {})
    defaults = load_config(bench)
    assert (defaults.ping_interval, defaults.ping_timeout, defaults.connect_timeout) == (
        25.0,
        20.0,
        45.0,
    )
    bench = make_bench(tmp_path, engine(ping_interval="0.3", ping_timeout=0.2, connect_timeout=1.5))
    config = load_config(bench)
    assert (config.ping_interval, config.ping_timeout, config.connect_timeout) == (0.3, 0.2, 1.5)


@pytest.mark.parametrize("key", ["ping_interval", "ping_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_engine_settings_must_be_positive_seconds(tmp_path: Path, key: str, value: Any) -> None:
    bench = make_bench(tmp_path, engine(**{key: value}))
    with pytest.raises(ConfigError, match=key if value != "soon" else "bad port or timeout"):
        load_config(bench)


# ---- the handshake -----------------------------------------------------------------------


def test_handshake_announces_ping_settings_to_the_millisecond(
    start_gsocket: Callable[..., GsocketProcess],
) -> None:
    """python-engineio truncates pingInterval to whole seconds (0.3 s became 0 ms)."""
    server = start_gsocket(engine(ping_interval=0.3, ping_timeout=1.001))
    _, opened = open_polling(server.url)
    assert (opened["pingInterval"], opened["pingTimeout"]) == (300, 1001)
    assert opened["upgrades"] == ["websocket"]
    ws = websocket.create_connection(
        server.url.replace("http://", "ws://") + EIO + "&transport=websocket",
        suppress_origin=True,
        timeout=HTTP_TIMEOUT,
    )
    try:
        opened_ws = json.loads(ws.recv()[1:])
    finally:
        ws.close()
    assert (opened_ws["pingInterval"], opened_ws["pingTimeout"]) == (300, 1001)
    assert opened_ws["upgrades"] == []


def test_default_ping_settings_are_socket_io_defaults(gsocket: GsocketProcess) -> None:
    _, opened = open_polling(gsocket.url)
    assert (opened["pingInterval"], opened["pingTimeout"]) == (25000, 20000)


def test_a_request_without_transport_is_refused_and_opens_no_session(
    gsocket: GsocketProcess,
) -> None:
    """python-engineio took a missing ``transport`` for polling and opened a session."""
    refused = handshake(gsocket.url, "")
    assert refused.status_code == 400
    assert not refused.text.startswith("0")
    assert handshake(gsocket.url, "&transport=abc").status_code == 400
    sid, _ = open_polling(gsocket.url)
    assert requests.get(f"{gsocket.url}{EIO}&sid={sid}", timeout=HTTP_TIMEOUT).status_code == 400
    # A websocket without transport: upgraded by gevent-websocket before the check, then
    # closed without an OPEN packet.
    ws = websocket.create_connection(
        gsocket.url.replace("http://", "ws://") + EIO, suppress_origin=True, timeout=HTTP_TIMEOUT
    )
    try:
        assert receive(ws, 5) == ""
    finally:
        ws.close()


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_other_methods_are_answered_400(gsocket: GsocketProcess, method: str) -> None:
    """python-engineio answered 405; Engine.IO's servers answer 400, and the session goes on."""
    assert (
        requests.request(
            method, f"{gsocket.url}{EIO}&transport=polling", timeout=HTTP_TIMEOUT
        ).status_code
        == 400
    )
    sid, _ = open_polling(gsocket.url)
    url = poll_url(gsocket.url, sid)
    assert requests.request(method, url, data="3", timeout=HTTP_TIMEOUT).status_code == 400
    accepted = requests.post(url, data="3", timeout=HTTP_TIMEOUT)
    assert (accepted.status_code, accepted.text) == (200, "ok")


def test_a_post_handshake_is_refused(gsocket: GsocketProcess) -> None:
    refused = requests.post(f"{gsocket.url}{EIO}&transport=polling", timeout=HTTP_TIMEOUT)
    assert refused.status_code == 400


def test_an_accepted_post_is_answered_ok(gsocket: GsocketProcess) -> None:
    """python-engineio answered ``OK``; the protocol's test suite wants ``ok``."""
    sid, _ = open_polling(gsocket.url)
    accepted = requests.post(poll_url(gsocket.url, sid), data="3", timeout=HTTP_TIMEOUT)
    assert (accepted.status_code, accepted.text) == (200, "ok")


def test_an_answer_to_a_request_that_asked_to_close_says_so(gsocket: GsocketProcess) -> None:
    """gevent closes the connection after the answer without saying ``Connection: close``;
    Node 19+'s keep-alive clients then reuse a closed connection ("socket hang up")."""
    with socket.create_connection(("127.0.0.1", gsocket.port), timeout=HTTP_TIMEOUT) as conn:
        conn.sendall(
            b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"connection: close\r\n\r\n"
        )
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode().lower().split("\r\n")
    assert head[0].startswith("http/1.1 200")
    assert "connection: close" in head


# ---- long-polling --------------------------------------------------------------------------


def test_a_second_concurrent_poll_is_refused_and_ends_the_session(
    gsocket: GsocketProcess,
) -> None:
    """python-engineio let two polls share one queue.  Whichever of the two arrives second
    is refused 400; the pending one is answered CLOSE; the session is gone."""
    sid, _ = open_polling(gsocket.url)
    url = poll_url(gsocket.url, sid)
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(
            lambda _: requests.get(url, timeout=HTTP_TIMEOUT), range(2), timeout=HTTP_TIMEOUT
        )
    answers = sorted((r.status_code, r.text) for r in (first, second))
    assert answers[0] == (200, "1"), answers
    assert answers[1][0] == 400, answers
    assert requests.get(url, timeout=HTTP_TIMEOUT).status_code == 400
    gsocket.wait_for_log(f"session {sid} sent a second long-poll")


def test_the_pending_poll_of_a_client_that_closes_gets_noop(gsocket: GsocketProcess) -> None:
    """python-engineio answered it with an empty body, which is no Engine.IO payload.

    The client's CLOSE (a POST) and its pending poll travel on two connections; should the
    CLOSE be served first the poll finds no session, so the exchange is repeated until the
    poll was pending (a /health round trip in between makes that the usual order).
    """
    outcomes = []
    for _ in range(5):
        sid, _ = open_polling(gsocket.url)
        url = poll_url(gsocket.url, sid)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(requests.get, url, timeout=HTTP_TIMEOUT)
            assert gsocket.health() is not None
            closed = requests.post(url, data="1", timeout=HTTP_TIMEOUT)
            poll = pending.result(HTTP_TIMEOUT)
        assert (closed.status_code, closed.text) == (200, "ok")
        outcomes.append((poll.status_code, poll.text))
        if poll.status_code == 200:
            break
    assert outcomes[-1] == (200, "6"), outcomes
    assert requests.get(url, timeout=HTTP_TIMEOUT).status_code == 400


# ---- heartbeat ---------------------------------------------------------------------------

PING_TIMEOUT = 1.5
LATE = 0.5
"""How much later than its deadline a close may come (a busy machine); python-engineio's
service task closed a silent client anywhere up to a whole ping timeout late."""


def test_a_websocket_client_that_misses_its_pong_is_closed_at_the_ping_timeout(
    start_gsocket: Callable[..., GsocketProcess],
) -> None:
    server = start_gsocket(engine(ping_interval=0.3, ping_timeout=PING_TIMEOUT))

    def silent_client(_: int) -> tuple[float, list[str | bytes]]:
        ws = open_websocket(server.url)
        try:
            assert receive(ws, HTTP_TIMEOUT) == "2"
            pinged = time.monotonic()
            waited = -1.0
            frames = []
            while (frame := receive(ws, HTTP_TIMEOUT)) != "":
                frames.append(frame)
                if frame == "1":
                    waited = time.monotonic() - pinged
            frames.append(frame)
            return waited, frames
        finally:
            ws.close()

    # Three at once: a periodic sweep could hit one deadline by chance, not three.
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(silent_client, range(3), timeout=30))
    for waited, frames in results:
        assert frames == ["1", ""], frames  # CLOSE, then the websocket's close
        assert PING_TIMEOUT - 0.1 <= waited < PING_TIMEOUT + LATE, results
    server.wait_for_log("did not answer its ping within 1.5 s")


def test_a_polling_client_that_misses_its_pong_is_closed_at_the_ping_timeout(
    start_gsocket: Callable[..., GsocketProcess],
) -> None:
    server = start_gsocket(engine(ping_interval=0.3, ping_timeout=PING_TIMEOUT))
    sid, _ = open_polling(server.url)
    url = poll_url(server.url, sid)
    assert requests.get(url, timeout=HTTP_TIMEOUT).text == "2"
    pinged = time.monotonic()
    closing = requests.get(url, timeout=HTTP_TIMEOUT)
    waited = time.monotonic() - pinged
    assert (closing.status_code, closing.text) == (200, "1")
    assert PING_TIMEOUT - 0.1 <= waited < PING_TIMEOUT + LATE
    assert requests.get(url, timeout=HTTP_TIMEOUT).status_code == 400


def test_a_client_that_answers_its_pings_stays(
    start_gsocket: Callable[..., GsocketProcess],
) -> None:
    """The deadline is per PING: answered ones never close the session, polling or not."""
    server = start_gsocket(engine(ping_interval=0.2, ping_timeout=0.3))
    ws = open_websocket(server.url)
    with ThreadPoolExecutor(1) as pool:
        ws_frames = pool.submit(frames_answering_pings, ws, 2.0, lambda f: True)
        sid, _ = open_polling(server.url)
        url = poll_url(server.url, sid)
        stop = time.monotonic() + 2.0
        pings = 0
        while time.monotonic() < stop:
            assert requests.get(url, timeout=HTTP_TIMEOUT).text == "2"
            assert requests.post(url, data="3", timeout=HTTP_TIMEOUT).text == "ok"
            pings += 1
        try:
            assert ws_frames.result(HTTP_TIMEOUT) == []
            assert ws.connected
        finally:
            ws.close()
    assert pings >= 5  # a PING every 0.2 s, each answered before the 0.3 s deadline


def wakeups(pid: int) -> int:
    """Times the server's main thread went to sleep and was woken (its voluntary context
    switches: each wait of the event loop that did wait)."""
    status = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_idle_sessions_do_not_wake_the_server_once_each_per_ping_timeout(
    start_gsocket: Callable[..., GsocketProcess],
) -> None:
    """python-engineio's service task visits one session per ``ping_timeout / sessions``
    seconds, a timer wakeup each (500 a second at 10 000 clients); gsocket's sweep looks at
    them a slice at a time: here 120 sessions and a 1 s ping timeout are one wakeup a second
    where the service task made 120.  No PING falls in the window (25 s interval)."""
    server = start_gsocket(engine(ping_interval=25, ping_timeout=1.0))
    sockets = [open_websocket(server.url) for _ in range(120)]
    try:
        assert server.proc is not None
        pid = server.proc.pid
        before, started = wakeups(pid), time.monotonic()
        window = 3.0
        wait_until(lambda: time.monotonic() - started >= window, window + 5, "the window")
        woken = wakeups(pid) - before
        assert woken < 40, woken  # python-engineio's task: 242 here
        assert all(ws.connected for ws in sockets)
    finally:
        for ws in sockets:
            ws.close()


# ---- Socket.IO's connect timeout ------------------------------------------------------------

CONNECT_TIMEOUT = 1.0


def test_a_session_that_joins_no_namespace_is_closed_after_the_connect_timeout(
    start_gsocket: Callable[..., GsocketProcess],
) -> None:
    """python-socketio never closed it (it answered its pings); socket.io closes it after
    ``connectTimeout``.  A session that did connect stays."""
    # The idle client answers its PINGs, and would have 3 s to do so: only the connect
    # timeout can close it at 1 s.
    server = start_gsocket(
        engine(ping_interval=0.5, ping_timeout=3.0, connect_timeout=CONNECT_TIMEOUT)
    )
    connected = open_websocket(server.url, desk_headers(SITE, "sid-admin"))
    connected.send(f"40/{SITE},")
    reply = frames_answering_pings(connected, 5, lambda f: True)
    assert reply and str(reply[0]).startswith(f'40/{SITE},{{"sid"'), reply

    idle = open_websocket(server.url)
    opened = time.monotonic()
    try:
        frames = frames_answering_pings(idle, 5, lambda f: f == "")
        waited = time.monotonic() - opened
        assert frames[0] == "1" and frames[-1] == "", frames
        assert CONNECT_TIMEOUT - 0.1 <= waited < CONNECT_TIMEOUT + LATE
        # the connected session outlives the timeout twice over
        assert frames_answering_pings(connected, CONNECT_TIMEOUT, lambda f: True) == []
        assert connected.connected
    finally:
        idle.close()
        connected.close()
    server.wait_for_log(r"no namespace connected within 1 s")


def test_a_polling_session_that_joins_no_namespace_is_closed_too(
    start_gsocket: Callable[..., GsocketProcess],
) -> None:
    server = start_gsocket(engine(connect_timeout=CONNECT_TIMEOUT))
    sid, _ = open_polling(server.url)
    url = poll_url(server.url, sid)
    opened = time.monotonic()
    closing = requests.get(url, timeout=HTTP_TIMEOUT)
    assert (closing.status_code, closing.text) == (200, "1")
    assert CONNECT_TIMEOUT - 0.1 <= time.monotonic() - opened < CONNECT_TIMEOUT + LATE
    wait_until(
        lambda: requests.get(url, timeout=HTTP_TIMEOUT).status_code == 400,
        5,
        "the closed session still answers",
    )


# ---- upgrade -------------------------------------------------------------------------------


def test_a_second_websocket_for_an_upgraded_session_is_closed_and_the_session_goes_on(
    gsocket: GsocketProcess,
) -> None:
    """python-engineio 4.11 raised on it, and gsocket's guard then ended the whole session."""
    headers = desk_headers(SITE, "sid-admin")
    response = requests.get(f"{gsocket.url}{EIO}&transport=polling", headers=headers, timeout=10)
    sid = json.loads(response.text[1:])["sid"]
    ws_url = gsocket.url.replace("http://", "ws://") + f"{EIO}&transport=websocket&sid={sid}"
    header = [f"{k}: {v}" for k, v in headers.items() if k != "Origin"]
    first = websocket.create_connection(
        ws_url, header=header, origin=headers["Origin"], timeout=HTTP_TIMEOUT
    )
    first.send("2probe")
    assert first.recv() == "3probe"
    first.send("5")
    try:
        second = websocket.create_connection(
            ws_url, header=header, origin=headers["Origin"], timeout=HTTP_TIMEOUT
        )
        try:
            assert receive(second, 5) == ""
        finally:
            second.close()
        first.send(f"40/{SITE},")
        reply = frames_answering_pings(first, 5, lambda f: True)
        assert reply and str(reply[0]).startswith(f'40/{SITE},{{"sid"'), reply
    finally:
        first.close()
