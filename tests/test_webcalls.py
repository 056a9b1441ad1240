"""Calls to the web process over real TLS and redirects: whose identity a socket gets.

A Debian nginx with a self-signed certificate stands in front of the web stand-in and of
gsocket, as on a production bench.  The stand-in answers like Frappe: it sets ``sid`` on
every answer and believes a ``sid`` cookie before a token, so a client that kept cookies
between calls would hand one user's session to the next caller.  Each test checks who each
socket became from what it receives, and what each call to the web process carried.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import socketio

from gsocket.config import ConfigError, load_config
from gsocket.contract import httpclient
from gsocket.contract.auth import Authenticator, Refused
from gsocket.contract.secret import SocketSecret
from gsocket.contract.webclient import WebClient
from gsocket.demo.ports import free_port
from gsocket.demo.redis_server import RedisServer
from gsocket.metrics import Metrics
from tests.support.bench import GsocketProcess, make_bench, wait_until
from tests.support.nginx import Nginx
from tests.support.pyclient import PyClient
from tests.support.tlsfront import https_redirect, site_front
from tests.support.webstub import WebStub

# the test clients do not check the test nginx's certificate; gsocket's trust is under test
pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

SITE = "site1.local"
NS = f"/{SITE}"
SECRET = "socket-secret-12"

# (user, the credential its client presents)
CREDENTIALS: list[tuple[str, dict[str, str]]] = [
    ("Administrator", {"Cookie": "sid=sid-admin"}),
    ("alice@example.com", {"Cookie": "sid=sid-alice"}),
    ("bob@example.com", {"Cookie": "sid=sid-bob"}),
    ("dave@example.com", {"Authorization": "token dave-key:dave-secret"}),
    ("eve@example.com", {"Authorization": "Bearer eve-oauth-token"}),
    ("Guest", {"Cookie": "sid=Guest"}),
]


@pytest.fixture
def users(web: WebStub) -> WebStub:
    """The web stand-in with the users of :data:`CREDENTIALS`; only bob may read ToDo B-1."""
    web.sessions.update({"sid-alice": "alice@example.com", "sid-bob": "bob@example.com"})
    web.tokens["token dave-key:dave-secret"] = "dave@example.com"
    web.tokens["Bearer eve-oauth-token"] = "eve@example.com"
    web.permissions.add(("bob@example.com", "ToDo", "B-1"))
    return web


@dataclass
class Front:
    """nginx (TLS) serving the site and gsocket, an http nginx redirecting to it, gsocket."""

    tls: Nginx
    redirect: Nginx
    gsocket: GsocketProcess

    @property
    def cert(self) -> Path:
        assert self.tls.cert is not None
        return self.tls.cert


TRUSTS = ("ca_file", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_DIR")


@pytest.fixture
def front(
    tmp_path: Path, redis_server: RedisServer, users: WebStub
) -> Iterator[Callable[..., Front]]:
    """Factory of :class:`Front` stacks.

    :param webserver_host: gsocket's setting, with ``{tls}`` (the TLS port) and ``{redirect}``
        (the redirecting nginx's URL) filled in; ``None`` calls back the desk's Origin.
    :param trust: how gsocket is told to trust the self-signed certificate: one of
        :data:`TRUSTS`, or ``None`` for not at all.
    :param tls_names: host names of the certificate (127.0.0.1 is always one).
    :param settings: more keys of gsocket's ``gsocket`` setting.
    :param env: more environment variables of the gsocket process.
    :param uds: gsocket listens on a Unix socket (``socketio_uds``) behind nginx.
    """
    made: list[Front] = []
    folders: list[Path] = []

    def start(
        webserver_host: str | None = None,
        trust: str | None = "ca_file",
        tls_names: tuple[str, ...] = ("localhost",),
        settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        uds: bool = False,
    ) -> Front:
        root = tmp_path / f"front{len(made)}"
        port = free_port()
        # a short path: Unix socket paths are limited to 107 bytes
        listen = Path(tempfile.mkdtemp(prefix="gs12-")) / "rt.sock" if uds else None
        if listen is not None:
            folders.append(listen.parent)
        tls = site_front(root / "tls", users.port, listen or port, SITE, tls_names)
        assert tls.cert is not None
        redirect = https_redirect(root / "redirect", tls.port)
        ours: dict[str, Any] = dict(settings or {})
        env = dict(env or {})
        if trust == "ca_file":
            ours["ca_file"] = str(tls.cert)
        elif trust == "SSL_CERT_DIR":
            # the system store's mechanism: a hashed folder of CA certificates
            store = root / "ca"
            store.mkdir()
            shutil.copy(tls.cert, store / "front.pem")
            subprocess.run(["openssl", "rehash", str(store)], check=True, capture_output=True)
            env[trust] = str(store)
        elif trust is not None:
            env[trust] = str(tls.cert)
        if webserver_host is not None:
            webserver_host = webserver_host.format(tls=tls.port, redirect=redirect.url)
        conf = {"redis_queue": redis_server.url, "webserver_host": webserver_host, "gsocket": ours}
        if listen is not None:
            conf["socketio_uds"] = str(listen)
        bench = make_bench(root, conf, sites=(SITE,))
        stack = Front(tls, redirect, GsocketProcess(bench, port=port, env=env))
        made.append(stack)
        tls.start()
        redirect.start()
        stack.gsocket.start(wait=listen is None)
        if listen is not None:
            stack.gsocket.wait_for_log("subscribed to Redis channel", timeout=20)
            wait_until(listen.exists, 10, stack.gsocket.log)
        return stack

    yield start
    for stack in made:
        stack.gsocket.kill()
        stack.tls.stop()
        stack.redirect.stop()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def connect_through(front: Front, headers: dict[str, str], **kwargs: Any) -> PyClient:
    """A desk-like client of the site through the TLS nginx (which sets Origin and site)."""
    client = PyClient(ssl_verify=False, **kwargs)
    # a copy: python-socketio's client deletes the Cookie header from the dict it is given
    client.connect(front.tls.url, NS, dict(headers))
    return client


def publish(redis_client: Any, event: str, message: Any, room: str) -> None:
    payload = {"event": event, "message": message, "room": room, "namespace": SITE}
    redis_client.publish("events", json.dumps(payload))


def credential_of(call: dict[str, Any]) -> tuple[str, str]:
    """The one credential a recorded call carried; fails if it carried both kinds."""
    headers = call["headers"]
    assert not ("Cookie" in headers and "Authorization" in headers), headers
    if "Authorization" in headers:
        return "Authorization", headers["Authorization"]
    return "Cookie", headers.get("Cookie", "")


def assert_identities(
    front: Front, users: WebStub, redis_client: Any, rounds: int = 3
) -> list[tuple[str, PyClient]]:
    """Connect every credential ``rounds`` times at once, shuffled, then check who each
    socket is (by its user room), what it may read (ToDo B-1: bob only) and what every call
    to the web process carried."""
    plan = [entry for entry in CREDENTIALS for _ in range(rounds)]
    random.Random(12).shuffle(plan)
    with ThreadPoolExecutor(max_workers=len(CREDENTIALS) * 2) as pool:
        clients = list(pool.map(lambda e: (e[0], connect_through(front, e[1])), plan))
        list(pool.map(lambda c: c[1].call("doc_subscribe", "ToDo", "B-1", timeout=10), clients))
    for user, _ in CREDENTIALS:
        publish(redis_client, "whoami", {"user": user}, f"user:{user}")
    publish(redis_client, "doc_update", {"name": "B-1"}, "doc:ToDo/B-1")
    publish(redis_client, "done", {}, "website")
    for user, client in clients:
        client.wait_for("done", timeout=10)  # the bridge emits in order: nothing is in flight
        assert [args[0]["user"] for args in client.events("whoami")] == [user], (user, client)
        expected = [({"name": "B-1"},)] if user == "bob@example.com" else []
        assert client.events("doc_update") == expected, user

    presented = Counter(next(iter(entry.items())) for _, entry in plan)
    calls = users.calls_to("get_user_info")
    assert Counter(credential_of(call) for call in calls) == presented
    # a Guest's subscription is asked too, as the Node server asks it, with the Guest's cookie
    calls = users.calls_to("has_permission")
    assert Counter(credential_of(call) for call in calls) == presented
    return clients


@pytest.mark.parametrize("path", ["desk", "redirect", "uds"])
def test_each_socket_gets_its_own_identity_over_tls_concurrently(front, users, redis_client, path):
    """The issue's replay scenario: cookie sessions, tokens and Guests interleaved at once.
    ``desk``: no ``webserver_host``, gsocket calls back the desk's Origin ``https://...``
    through nginx; ``redirect``: ``webserver_host`` is an http URL that nginx redirects to
    https, as a site that forces https does; ``uds``: the desk's path with gsocket on a Unix
    socket behind nginx (``socketio_uds``)."""
    stack = front(webserver_host="{redirect}" if path == "redirect" else None, uds=path == "uds")
    clients = assert_identities(stack, users, redis_client)
    for _, client in clients:
        client.disconnect()
    if path == "redirect":
        # followed, and remembered: a permanent redirect is not paid again on later calls
        redirects = stack.redirect.access_log.read_text().splitlines()
        assert redirects and all(" 301 " in line for line in redirects)
        later = connect_through(stack, {"Cookie": "sid=sid-bob"})
        later.call("doc_subscribe", "ToDo", "B-1")
        later.disconnect()
        assert stack.redirect.access_log.read_text().splitlines() == redirects


def test_the_secret_goes_with_every_call(front, users, redis_client):
    users.set_secret(SECRET)
    stack = front()
    client = connect_through(stack, {"Cookie": "sid=sid-bob"})
    client.call("doc_subscribe", "ToDo", "B-1")
    client.call("doctype_subscribe", "ToDo")
    calls = [c for c in users.calls if (c["method"] or "").startswith("frappe.realtime.")]
    assert {c["method"].rsplit(".", 1)[1] for c in calls} == {"get_user_info", "has_permission"}
    assert all(c["headers"].get("X-Frappe-Socket-Secret") == SECRET for c in calls), calls
    client.disconnect()


def test_v15_permission_calls_carry_only_the_sockets_credential(front, users, redis_client):
    users.shape = "v15"
    stack = front()
    bob = connect_through(stack, {"Cookie": "sid=sid-bob"})
    dave = connect_through(stack, {"Authorization": "token dave-key:dave-secret"})
    for client in (bob, dave, bob, dave):
        client.call("doc_subscribe", "ToDo", "B-1")
    calls = users.calls_to("can_subscribe_doc")
    assert [credential_of(c) for c in calls] == [
        ("Cookie", "sid=sid-bob"),
        ("Authorization", "token dave-key:dave-secret"),
    ] * 2
    assert [c["args"] for c in calls] == [{"doctype": "ToDo", "docname": "B-1"}] * 4
    publish(redis_client, "doc_update", {"name": "B-1"}, "doc:ToDo/B-1")
    bob.wait_for("doc_update")
    for client in (bob, dave):
        client.disconnect()


class TestTrust:
    """A self-signed web process is refused unless an operator says to trust it."""

    @staticmethod
    def refused(stack: Front) -> str:
        client = PyClient(ssl_verify=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            client.connect(stack.tls.url, NS, {"Cookie": "sid=sid-admin"})
        return str(client.wait_for("connect_error")[0])

    def test_refused_without_trust(self, front):
        stack = front(trust=None)
        assert "the web process is unavailable" in self.refused(stack)
        stack.gsocket.wait_for_log(r"certificate of 127\.0\.0\.1 is not trusted")

    def test_refused_when_the_certificate_names_another_host(self, front):
        stack = front(webserver_host="https://localhost:{tls}", tls_names=("site.example",))
        assert "the web process is unavailable" in self.refused(stack)
        stack.gsocket.wait_for_log(r"certificate of localhost is not trusted: Hostname mismatch")

    @pytest.mark.parametrize("trust", TRUSTS)
    def test_accepted_with_trust(self, front, trust):
        stack = front(webserver_host="https://localhost:{tls}", trust=trust)
        client = connect_through(stack, {"Cookie": "sid=sid-admin"})
        assert client.sid
        client.disconnect()


def test_with_nothing_configured_the_system_store_is_what_is_trusted():
    context = httpclient.tls_context(env={})
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    system = ssl.create_default_context()
    assert context.cert_store_stats() == system.cert_store_stats()
    with pytest.raises(ConfigError, match="CA certificates for https cannot be loaded"):
        WebClient(SocketSecret(None), Metrics(), ca_file="/nonexistent/ca.pem")  # type: ignore[arg-type]


_REDIRECTS = """
  server {
    listen @LISTEN@;
    ssl_certificate @CERT@;
    ssl_certificate_key @KEY@;
    default_type application/json;
    location = /x { return 200 '{"message": "$http_cookie|$http_authorization"}'; }
    location = /temporary { return 302 /x; }
    location = /down { return 301 http://127.0.0.1:@PORT@/x; }
    location = /away { return 302 https://localhost:@PORT@/x; }
    location = /loop { return 307 /loop; }
  }
"""


@pytest.fixture
def redirecting(tmp_path: Path) -> Iterator[tuple[Nginx, httpclient.Pool]]:
    """A TLS nginx answering with redirects of every kind, and a pool that trusts it."""
    with Nginx(tmp_path / "redirecting", _REDIRECTS, tls=True) as nginx:
        assert nginx.cert is not None
        pool = httpclient.Pool(5, tls=httpclient.tls_context(str(nginx.cert), env={}))
        yield nginx, pool
        pool.close()


def test_redirects_carry_the_callers_headers_and_only_those(redirecting):
    nginx, pool = redirecting
    for headers, seen in (
        ({"Cookie": "sid=a"}, "sid=a|"),
        ({"Authorization": "token k:s"}, "|token k:s"),
        ({"Cookie": "sid=b"}, "sid=b|"),
    ):
        answer = pool.get(nginx.url + "/temporary", None, headers)
        assert (answer.status_code, answer.json()) == (200, {"message": seen})
    # a temporary redirect is followed every time, never remembered
    assert nginx.access_log.read_text().count("GET /temporary ") == 3


@pytest.mark.parametrize(
    ("path", "refusal"),
    [
        ("/down", "from https to http refused"),
        ("/away", r"to another host \(localhost\) refused"),
        ("/loop", "more than 5 redirects"),
    ],
)
def test_redirects_that_would_leak_a_credential_are_refused(redirecting, path, refusal):
    nginx, pool = redirecting
    with pytest.raises(httpclient.HTTPFailure, match=refusal):
        pool.get(nginx.url + path, None, {"Cookie": "sid=a"})
    assert "GET /x " not in nginx.access_log.read_text()


def test_header_values_cannot_add_lines(redirecting):
    nginx, pool = redirecting
    with pytest.raises(httpclient.HTTPFailure, match="line break"):
        pool.get(nginx.url + "/x", None, {"Cookie": "sid=a\r\nAuthorization: token x:y"})


@pytest.mark.parametrize(
    ("setting", "url"),
    [
        ("erp.example.com", "http://erp.example.com:8123"),
        ("10.0.0.2:8001", "http://10.0.0.2:8001"),
        ("[::1]", "http://[::1]:8123"),
        ("[::1]:8001", "http://[::1]:8001"),
        ("https://erp.example.com", "https://erp.example.com"),
        ("https://erp.example.com/", "https://erp.example.com"),
        ("http://erp.example.com:8001", "http://erp.example.com:8001"),
        ("https://app.frappe.cloud", "https://app.frappe.cloud"),
    ],
)
def test_webserver_host_as_host_host_port_or_url(tmp_path, setting, url):
    conf = {"webserver_host": setting, "webserver_port": 8123}
    config = load_config(make_bench(tmp_path, conf))
    assert config.web_url == url
    auth = Authenticator(config, None, lambda site: ())  # type: ignore[arg-type]
    assert auth.web_url({"HTTP_ORIGIN": "https://desk.example"}) == url


@pytest.mark.parametrize(
    "setting", ["ftp://erp.example.com", "https://", "erp.example.com/path", "::1", "https://u:p@x"]
)
def test_a_webserver_host_that_is_none_of_those_stops_the_start(tmp_path, setting):
    with pytest.raises(ConfigError, match="must be a host, host:port or a URL"):
        load_config(make_bench(tmp_path, {"webserver_host": setting}))


@pytest.mark.parametrize(
    ("origin", "developer_mode", "url"),
    [
        ("https://site1.example", False, "https://site1.example"),
        ("http://site1.example:8080", False, "http://site1.example:8080"),
        ("http://site1.example:8080", True, "http://site1.example:8000"),
        ("http://[::1]:8080", True, "http://[::1]:8000"),
    ],
)
def test_without_webserver_host_the_origin_is_the_web_url(tmp_path, origin, developer_mode, url):
    config = load_config(make_bench(tmp_path, {"developer_mode": developer_mode}))
    auth = Authenticator(config, None, lambda site: ())  # type: ignore[arg-type]
    assert auth.web_url({"HTTP_ORIGIN": origin}) == url
    for bad in ("http://127.0.0.1:47039,http://127.0.0.1", "null", "file:///x", "http://h/p"):
        with pytest.raises(Refused, match="must be one http"):
            auth.web_url({"HTTP_ORIGIN": bad})


def test_a_client_sending_two_origins_is_refused_clearly(start_gsocket, clients):
    """python-socketio's websocket-only client sends its own Origin besides the caller's;
    without ``webserver_host`` there is no single web URL to call, and the client is told."""
    proc = start_gsocket(conf={"webserver_host": None})
    client = clients(["websocket"])
    headers = {"Origin": "http://127.0.0.1", "Cookie": "sid=sid-admin"}
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(proc.url, "/127.0.0.1", headers)
    message = client.wait_for("connect_error")[0]
    assert "Invalid origin: the Origin header must be one http(s) origin" in str(message)
    proc.wait_for_log("refused connection to /127.0.0.1 from 127.0.0.1: invalid_origin")
    assert "malformed" not in proc.log() and "Traceback" not in proc.log()


class TunnelProxy:
    """An http proxy that only opens tunnels (``CONNECT``), noting each one's target."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = self.request.recv(4096)
                    if not data:
                        return
                    head += data
                method, target = head.split(b" ", 2)[:2]
                if method != b"CONNECT":
                    self.request.sendall(b"HTTP/1.1 405 Not Allowed\r\n\r\n")
                    return
                proxy.tunnels.append(target.decode())
                host, port = target.decode().rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)))
                self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pipe = threading.Thread(target=_pump, args=(upstream, self.request), daemon=True)
                pipe.start()
                _pump(self.request, upstream)
                pipe.join(5)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@pytest.fixture
def tunnel_proxy() -> Iterator[TunnelProxy]:
    proxy = TunnelProxy()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("asked", [True, False])
def test_environment_proxies_only_when_the_operator_asks(front, tunnel_proxy, asked):
    proxy_env = {"https_proxy": tunnel_proxy.url, "no_proxy": "", "NO_PROXY": ""}
    stack = front(
        webserver_host="https://localhost:{tls}",
        settings={"web_proxy_from_env": asked},
        env=proxy_env,
    )
    client = connect_through(stack, {"Cookie": "sid=sid-admin"})
    client.call("doctype_subscribe", "ToDo")
    client.disconnect()
    expected = [f"localhost:{stack.tls.port}"] if asked else []
    assert tunnel_proxy.tunnels == expected  # one tunnel, reused by the pool for both calls


def test_proxies_of_the_environment():
    env = {"HTTPS_PROXY": "http://u%40x:p@proxy.example:3128", "no_proxy": "localhost,.internal"}
    proxies = httpclient.Proxies(env)
    auth = "Basic " + base64.b64encode(b"u@x:p").decode()
    assert proxies.for_target("https", "erp.example.com", 443) == ("proxy.example", 3128, auth)
    assert proxies.for_target("https", "localhost", 443) is None
    assert proxies.for_target("https", "erp.internal", 443) is None
    assert proxies.for_target("http", "erp.example.com", 80) is None
    with pytest.raises(httpclient.HTTPFailure, match="only http:// proxies"):
        httpclient.Proxies({"http_proxy": "socks5://p:1080"}).for_target("http", "x", 80)


def test_https_settings_are_read_and_checked(tmp_path):
    bench = make_bench(tmp_path, {})
    config = load_config(bench)
    assert (config.ca_file, config.web_proxy_from_env) == (None, False)
    (bench / "sites" / "ca.pem").write_text("not checked until the client is made")
    ours = {"ca_file": "ca.pem", "web_proxy_from_env": True}
    config = load_config(make_bench(tmp_path, {"gsocket": ours}))
    assert config.ca_file == str(bench / "sites" / "ca.pem")  # relative to sites/
    assert config.web_proxy_from_env is True
    with pytest.raises(ConfigError, match="gsocket.ca_file .*missing.pem is not a file"):
        load_config(make_bench(tmp_path, {"gsocket": {"ca_file": "missing.pem"}}))
    with pytest.raises(ConfigError, match="CA certificates for https cannot be loaded"):
        WebClient(SocketSecret(None), Metrics(), ca_file=str(bench / "sites" / "ca.pem"))  # type: ignore[arg-type]
