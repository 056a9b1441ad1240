"""``gsocket doctor --url``: walk the path a browser takes to gsocket, through every proxy.

``gsocket doctor --bench`` checks a bench from the inside; this checks it from where a browser
stands.  It sends what the desk sends, in the desk's order, to the site's URL:

1. a request to :data:`~gsocket.ops.arrival.DOCTOR_PATH`, which gsocket answers with the headers
   that arrived, the peer and the site it resolved (and from where);
2. the same request as a websocket upgrade, answered the same way once upgraded, or plainly,
   saying which upgrade headers were missing, when a hop dropped them;
3. the Engine.IO handshake over long-polling, the namespace CONNECT (as Guest, or with
   ``--sid``/``--token``), the websocket upgrade of that session, and a published event
   coming back through Redis (with ``--bench``, whose ``redis_queue`` it publishes on).

Comparing what it sent with what arrived, it names the hop that changed what and prints the
nginx (or compose) line that fixes it.  The exit status is 1 when any check failed.

HTTP is spoken directly over a socket (one request per connection): the checks need the exact
status of an upgrade, the TLS error as the certificate check reports it, and ``--resolve`` to
test a proxy before DNS points at it, none of which a general HTTP client exposes simply.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import redis

from gsocket.config import ConfigError, load_config
from gsocket.contract.bridge import CHANNEL
from gsocket.contract.sites import FROM_HEADER, UNTRUSTED, hostname_of
from gsocket.ops.arrival import DOCTOR_PATH
from gsocket.ops.doctor import Verdict, safe_url

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_RESPONSE = 1 << 20
PROBE_EVENT = "gsocket_doctor_probe"

HOST_FIX = 'in nginx\'s "location /socket.io": proxy_set_header Host $host;'
UPGRADE_FIX = (
    'in nginx\'s "location /socket.io": proxy_http_version 1.1; '
    "proxy_set_header Upgrade $http_upgrade; "
    'proxy_set_header Connection "upgrade";'
)
ORIGIN_FIX = (
    'in nginx\'s "location /socket.io": proxy_set_header Origin $scheme://$http_host; '
    "(frappe_docker's template: Origin $proxy_x_forwarded_proto://$http_host, not "
    "://${FRAPPE_SITE_NAME_HEADER}), or remove the line that sets Origin"
)


class HttpFailure(Exception):
    """The request did not get an HTTP answer; the message says why and what to do."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(detail)
        self.check = check
        self.detail = detail


@dataclass
class Answer:
    """One HTTP answer (the body is complete unless the connection was upgraded)."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    conn: WebSocket | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def text(self, limit: int = 200) -> str:
        return self.body[:limit].decode(errors="replace").strip()


@dataclass
class Target:
    """Where and how to reach the site, as a browser would.

    :param url: the site's URL (``https://site.example.com``).
    :param site: the site (namespace) expected; the URL's host by default.
    :param resolve: connect to this address instead of what DNS says for the URL's host.
    :param ca_bundle: trust this CA file for TLS (a private CA); the system's by default.
    :param sid: a ``sid`` cookie to connect with; ``Guest`` by default.
    :param token: ``api_key:api_secret`` to connect with an Authorization header instead.
    :param timeout: seconds for each step.
    """

    url: str
    site: str | None = None
    resolve: str | None = None
    ca_bundle: str | None = None
    sid: str | None = None
    token: str | None = None
    timeout: float = 5.0
    scheme: str = field(init=False)
    host: str = field(init=False)
    port: int = field(init=False)
    netloc: str = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url if "://" in self.url else f"https://{self.url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url must be http(s)://host[:port], not {self.url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.netloc = parts.netloc.rpartition("@")[2]
        self.site = self.site or self.host

    @property
    def origin(self) -> str:
        """The Origin a page of this site sends."""
        return f"{self.scheme}://{self.netloc}"

    def browser_headers(self) -> dict[str, str]:
        """What the desk's socket.io client sends besides the request line."""
        headers = {"Host": self.netloc, "Origin": self.origin, "User-Agent": "gsocket-doctor"}
        if self.token:
            headers["Authorization"] = f"token {self.token}"
        else:
            headers["Cookie"] = f"sid={self.sid or 'Guest'}"
        return headers

    def connect(self) -> socket.socket:
        """A connected socket to the site (TLS wrapped for https), or :class:`HttpFailure`."""
        address = self.resolve or self.host
        where = f"{address}:{self.port}" + (f" (for {self.host})" if self.resolve else "")
        try:
            sock = socket.create_connection((address, self.port), timeout=self.timeout)
        except socket.gaierror as e:
            raise HttpFailure("reach", f"cannot resolve {address}: {e}") from None
        except OSError as e:
            raise HttpFailure(
                "reach",
                f"cannot connect to {where}: {e.strerror or e}; is the proxy (nginx) running "
                "and listening there, and does a firewall let it through?",
            ) from None
        if self.scheme == "http":
            return sock
        context = ssl.create_default_context(cafile=self.ca_bundle)
        try:
            return context.wrap_socket(sock, server_hostname=self.host)
        except ssl.SSLCertVerificationError as e:
            sock.close()
            raise HttpFailure("tls", _certificate_problem(self.host, e)) from None
        except (ssl.SSLError, OSError) as e:
            sock.close()
            raise HttpFailure(
                "tls",
                f"TLS handshake with {where} failed ({e}); if this port speaks plain HTTP, "
                "use --url http://..., else check the proxy's ssl_certificate lines",
            ) from None


def _certificate_problem(host: str, error: ssl.SSLCertVerificationError) -> str:
    why = error.verify_message or str(error)
    if "self-signed" in why or "self signed" in why or "unable to get local issuer" in why:
        hint = (
            "browsers refuse it too, and the desk then gets no realtime updates; install a "
            "certificate from a public CA (bench setup lets-encrypt) or, for a private CA, "
            "run the doctor with --ca-bundle PATH"
        )
    elif "mismatch" in why or "match" in why:
        hint = (
            f"the certificate is not valid for {host}: the proxy serves another site's "
            "certificate (check ssl_certificate in the server block of this host)"
        )
    elif "expired" in why:
        hint = "renew it (bench renew-lets-encrypt)"
    else:
        hint = "browsers refuse it too"
    return f"the certificate of {host} is not trusted: {why}; {hint}"


def request(
    target: Target,
    method: str,
    path: str,
    body: bytes = b"",
    upgrade: bool = False,
    step: str = "reach",
) -> Answer:
    """Send one request with the browser's headers and read its answer.

    :param upgrade: ask for a websocket; a ``101`` answer keeps the connection open in
        :attr:`Answer.conn`.
    :param step: the check a broken answer is reported under.
    """
    headers = target.browser_headers()
    key = ""
    if upgrade:
        key = base64.b64encode(os.urandom(16)).decode()
        headers.update(
            {
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": key,
                "Sec-WebSocket-Version": "13",
            }
        )
    else:
        headers["Connection"] = "close"
    if body or method == "POST":
        headers["Content-Type"] = "text/plain;charset=UTF-8"
        headers["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock = target.connect()
    handed_over = False
    try:
        sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        reader = _Reader(sock, target.timeout)
        status, reason, answer_headers = reader.head()
        if upgrade and status == 101:
            expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            if answer_headers.get("sec-websocket-accept") != expected:
                raise HttpFailure(step, "the 101 answer's Sec-WebSocket-Accept is wrong")
            handed_over = True
            return Answer(status, reason, answer_headers, b"", WebSocket(sock, reader))
        return Answer(status, reason, answer_headers, reader.body(answer_headers))
    except (OSError, ValueError) as e:
        raise HttpFailure(
            step, f"{method} {path} got no complete HTTP answer from the proxy: {e}"
        ) from None
    finally:
        if not handed_over:
            sock.close()


class _Reader:
    """Buffered reads of one connection: the answer head, then its body or websocket frames."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.buffer = b""
        sock.settimeout(timeout)

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        if len(self.buffer) > MAX_RESPONSE:
            raise ValueError("answer larger than 1 MiB")
        return bool(chunk)

    def head(self) -> tuple[int, str, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            if not self._more():
                raise ValueError("the connection closed before an HTTP answer")
        raw, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), parts[2] if len(parts) > 2 else "", headers

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._more():
                raise ValueError("the connection closed in the middle of an answer")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def body(self, headers: dict[str, str]) -> bytes:
        if "content-length" in headers:
            return self.exactly(int(headers["content-length"]))
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while True:
                while b"\r\n" not in self.buffer:
                    if not self._more():
                        raise ValueError("the connection closed in a chunked answer")
                line, self.buffer = self.buffer.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                chunks.append(self.exactly(size + 2)[:size])
                if not size:
                    return b"".join(chunks)
        while self._more():
            pass
        data, self.buffer = self.buffer, b""
        return data


class WebSocket:
    """The client side of an upgraded connection: text frames, pings answered."""

    def __init__(self, sock: socket.socket, reader: _Reader) -> None:
        self.sock = sock
        self.reader = reader

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = bytes([0x81, 0x80 | size])
        elif size < 1 << 16:
            head = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
        else:
            head = bytes([0x81, 0x80 | 127]) + size.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def receive(self) -> str:
        """The next text message; raises ``ValueError`` when the server closes."""
        parts: list[bytes] = []
        while True:
            first, second = self.reader.exactly(2)
            size = second & 0x7F
            if size == 126:
                size = int.from_bytes(self.reader.exactly(2), "big")
            elif size == 127:
                size = int.from_bytes(self.reader.exactly(8), "big")
            payload = self.reader.exactly(size)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ValueError("the server closed the websocket")
            if opcode in (0x9, 0xA):
                continue  # pings of the websocket layer: Engine.IO has its own
            parts.append(payload)
            if first & 0x80:
                return b"".join(parts).decode(errors="replace")

    def close(self) -> None:
        try:
            self.sock.sendall(bytes([0x88, 0x80]) + os.urandom(4))
        except OSError:
            pass
        self.sock.close()


def _packets(payload: str) -> list[str]:
    """Engine.IO packets of a long-polling answer (v4 separates them with 0x1e)."""
    return [p for p in payload.split("\x1e") if p]


class UrlDoctor:
    """Runs the browser-path checks against one site URL.

    :param target: the URL and how to connect.
    :param bench: a bench folder whose ``redis_queue`` the published-event check uses.
    """

    def __init__(self, target: Target, bench: str | Path | None = None) -> None:
        self.target = target
        self.bench = bench
        self.arrival: dict[str, Any] | None = None

    @property
    def site(self) -> str:
        assert self.target.site is not None
        return self.target.site

    def run(self) -> Iterator[Verdict]:
        """Yield one verdict per check; later checks are skipped when the path is cut."""
        try:
            yield from self.check_reach()
        except HttpFailure as e:
            yield Verdict("fail", e.check, e.detail)
            return
        if self.arrival is None:
            return
        yield from self.check_headers(self.arrival)
        try:
            yield self.check_upgrade()
            yield from self.check_session()
        except HttpFailure as e:
            yield Verdict("fail", e.check, e.detail)

    # ---- 1. reaching gsocket, and what arrived ----------------------------------------

    def check_reach(self) -> Iterator[Verdict]:
        """The doctor's request reaches gsocket (not a redirect, a 502, the web process)."""
        answer = request(self.target, "GET", DOCTOR_PATH)
        if 300 <= answer.status < 400:
            yield Verdict("fail", "redirect", self._redirect(answer))
            return
        report = _json(answer.body) if answer.status == 200 else None
        if isinstance(report, dict) and "gsocket" in report:
            self.arrival = report
            trusted = "a trusted proxy" if report["peer_trusted"] else "not a trusted proxy"
            yield Verdict(
                "ok",
                "reach",
                f"{self.target.origin}/socket.io reaches gsocket {report['gsocket']}; "
                f"its peer is {report['peer']} ({trusted})",
            )
            return
        yield Verdict("fail", "reach", self._not_gsocket(answer))

    def _redirect(self, answer: Answer) -> str:
        location = answer.header("location") or "(no Location)"
        detail = (
            f"{self.target.origin}/socket.io/ answers {answer.status} {answer.reason} to "
            f"{location}: socket.io clients do not follow redirects (a websocket cannot), "
            "they connect to the page's own origin"
        )
        if location.startswith("https://") and self.target.scheme == "http":
            return (
                f"{detail}; the site redirects to https, so browsers load it over https: "
                f"run the doctor with --url {location.split('/socket.io')[0]}"
            )
        return f"{detail}; serve /socket.io at this URL without a redirect (a return/rewrite?)"

    def _not_gsocket(self, answer: Answer) -> str:
        server = answer.header("server") or "unknown server"
        said = f"HTTP {answer.status} {answer.reason} from {server}"
        if answer.status in (502, 504):
            return (
                f"{said}: the proxy cannot reach gsocket; is gsocket running, and does the "
                "proxy's upstream (e.g. upstream <bench>-socketio-server { server "
                "127.0.0.1:<socketio_port>; }) point at the port gsocket listens on?"
            )
        if answer.status == 400 and b"transport" in answer.body.lower():
            return (
                f"{said}: a Socket.IO server answers that is not gsocket (the bench's Node "
                "realtime process still running on that port, or an older gsocket)"
            )
        return (
            f"{said} ({answer.text(120)!r}): /socket.io/ does not reach gsocket; the proxy "
            "needs a location /socket.io { ... proxy_pass http://<gsocket>; } block"
        )

    def check_headers(self, arrival: dict[str, Any]) -> Iterator[Verdict]:
        """Compare what arrived with what was sent: Host, Origin, the site, X-Forwarded-For."""
        got = arrival["headers"]
        host, origin = got.get("Host"), got.get("Origin")
        host_changed = hostname_of(host) != self.target.host
        if arrival["origin_matches_host"]:
            if host_changed:
                yield Verdict(
                    "warn",
                    "Host",
                    f"the browser sent Host {self.target.netloc!r}, gsocket received {host!r} "
                    f"(and a matching Origin): a hop rewrites both; {HOST_FIX} keeps the Host",
                )
            changed = "" if origin == self.target.origin else f" (sent: {self.target.origin!r})"
            yield Verdict("ok", "Origin", f"arrives as {origin!r}{changed}, on the Host's host")
        elif origin is not None and hostname_of(origin) == self.target.host and host_changed:
            yield Verdict(
                "fail",
                "Host",
                f"the browser sent Host {self.target.netloc!r}; a hop replaced it by {host!r}, "
                f"which is not the Origin's host, so every connection is refused (\"Invalid "
                f'origin"); fix {HOST_FIX}',
            )
        else:
            what = "dropped it" if origin is None else f"replaced it by {origin!r}"
            yield Verdict(
                "fail",
                "Origin",
                f"the browser sent Origin {self.target.origin!r}; a hop {what}, whose host "
                f"is not the Host {host!r}, so every connection is refused "
                f'("Invalid origin"); fix {ORIGIN_FIX}',
            )
        yield self._site_verdict(arrival)
        if not got.get("X-Forwarded-For"):
            yield Verdict(
                "warn",
                "X-Forwarded-For",
                "does not arrive: gsocket sees every client as the proxy "
                f"({arrival['peer']}), so gsocket.limits.connections_per_ip cannot tell them "
                "apart; add proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; to "
                'nginx\'s "location /socket.io"',
            )

    def _site_verdict(self, arrival: dict[str, Any]) -> Verdict:
        site, source = arrival["site"], arrival["site_from"]
        header = arrival["headers"].get("X-Frappe-Site-Name")
        if site == self.site:
            return Verdict("ok", "site", f"resolves to {site!r} from {source}")
        expected = f'the namespace /{self.site} is refused ("Invalid namespace")'
        if source == FROM_HEADER:
            return Verdict(
                "fail",
                "site",
                f"the proxy sends X-Frappe-Site-Name {header!r}, another site: {expected}; "
                f"in the server block of {self.target.host}: proxy_set_header "
                f"X-Frappe-Site-Name {self.site}; (frappe_docker: FRAPPE_SITE_NAME_HEADER="
                f"{self.site}), or --site if {site} is right",
            )
        if source.endswith(UNTRUSTED):
            return Verdict(
                "fail",
                "site",
                f"X-Frappe-Site-Name {header!r} arrives from {arrival['peer']}, which gsocket "
                f"does not trust, so the site is {site!r} from {source.removesuffix(UNTRUSTED)}"
                f": {expected}; add {arrival['peer']} (or its network) to "
                'gsocket.trusted_proxies ("gsocket": {"trusted_proxies": [...]} in '
                "common_site_config.json, or GSOCKET_TRUSTED_PROXIES)",
            )
        return Verdict(
            "fail",
            "site",
            f"no X-Frappe-Site-Name arrives, so the site is {site!r} from {source}: "
            f"{expected}; add proxy_set_header X-Frappe-Site-Name {self.site}; to nginx's "
            '"location /socket.io"',
        )

    # ---- 2. the websocket upgrade through the proxy ---------------------------------------

    def check_upgrade(self) -> Verdict:
        """A websocket upgrade reaches gsocket, or the answer says which headers were lost."""
        answer = request(self.target, "GET", DOCTOR_PATH, upgrade=True, step="websocket")
        if answer.conn is not None:
            try:
                report = _json(answer.conn.receive().encode())
            except (OSError, ValueError) as e:
                return Verdict("fail", "websocket", f"upgraded, then no answer: {e}")
            finally:
                answer.conn.close()
            if isinstance(report, dict) and report.get("websocket"):
                return Verdict("ok", "websocket", "the upgrade reaches gsocket (101)")
            return Verdict("fail", "websocket", "upgraded, but not by gsocket")
        report = _json(answer.body) if answer.status == 200 else None
        if isinstance(report, dict) and "headers" in report:
            got = report["headers"]
            return Verdict(
                "fail",
                "websocket",
                "the browser's Upgrade: websocket / Connection: Upgrade arrive at gsocket as "
                f"Upgrade {got.get('Upgrade')!r}, Connection {got.get('Connection')!r}: a hop "
                "drops them, so every client stays on long-polling (slower, more requests; "
                f"Cloudflare: enable WebSockets); fix {UPGRADE_FIX}",
            )
        return Verdict(
            "fail",
            "websocket",
            f"the upgrade is answered HTTP {answer.status} {answer.reason} "
            f"({answer.text(120)!r}); fix {UPGRADE_FIX}",
        )

    # ---- 3. the desk's own sequence -----------------------------------------------------

    def check_session(self) -> Iterator[Verdict]:
        """Handshake, namespace connect, upgrade of the session, a published event back."""
        base = "/socket.io/?EIO=4&transport=polling"
        answer = request(self.target, "GET", f"{base}&t=doctor", step="handshake")
        packets = _packets(answer.body.decode(errors="replace")) if answer.status == 200 else []
        if not packets or not packets[0].startswith("0{"):
            yield Verdict(
                "fail",
                "handshake",
                f"GET {base} answered HTTP {answer.status} ({answer.text(120)!r}), not an "
                "Engine.IO OPEN packet",
            )
            return
        eio_sid = json.loads(packets[0][1:])["sid"]
        yield Verdict("ok", "handshake", "Engine.IO handshake over long-polling")
        session = f"{base}&sid={eio_sid}"
        namespace = f"/{self.site}"
        posted = request(self.target, "POST", session, f"40{namespace},".encode(), step="connect")
        if posted.status != 200:
            yield Verdict("fail", "connect", f"POST of the CONNECT answered HTTP {posted.status}")
            return
        reply = self._poll_until(session, f"44{namespace},", f"40{namespace},")
        if reply is None:
            yield Verdict("fail", "connect", f"no answer to the CONNECT of {namespace}")
            return
        if reply.startswith(f"44{namespace},"):
            message = (_json(reply.split(",", 1)[1].encode()) or {}).get("message")
            yield Verdict(
                "fail",
                "connect",
                f"{namespace} refused: {message!r} (gsocket's log has a WARNING line naming "
                "the values it compared)",
            )
            return
        sid = json.loads(reply.split(",", 1)[1])["sid"]
        who = "token" if self.target.token else f"sid {'cookie' if self.target.sid else 'Guest'}"
        yield Verdict("ok", "connect", f"{namespace} accepts the connection ({who})")
        websocket = self._upgrade_session(eio_sid)
        yield websocket[0]
        conn = websocket[1]
        try:
            yield self.check_published(sid, conn, session)
        finally:
            if conn is not None:
                conn.close()

    def _poll_until(self, session: str, *prefixes: str) -> str | None:
        deadline = time.monotonic() + self.target.timeout
        while time.monotonic() < deadline:
            answer = request(self.target, "GET", session, step="connect")
            if answer.status != 200:
                return None
            for packet in _packets(answer.body.decode(errors="replace")):
                if packet == "2":
                    request(self.target, "POST", session, b"3", step="connect")
                elif packet.startswith(prefixes):
                    return packet
        return None

    def _upgrade_session(self, eio_sid: str) -> tuple[Verdict, WebSocket | None]:
        path = f"/socket.io/?EIO=4&transport=websocket&sid={eio_sid}"
        answer = request(self.target, "GET", path, upgrade=True, step="upgrade")
        conn = answer.conn
        if conn is None:
            return (
                Verdict(
                    "fail",
                    "upgrade",
                    f"the session's websocket upgrade answered HTTP {answer.status}: clients "
                    "stay on long-polling",
                ),
                None,
            )
        try:
            conn.send("2probe")
            if conn.receive() != "3probe":
                raise ValueError("no 3probe answer to 2probe")
            conn.send("5")
        except (OSError, ValueError) as e:
            conn.close()
            return Verdict("fail", "upgrade", f"the websocket upgrade broke off: {e}"), None
        return Verdict("ok", "upgrade", "the session moved to the websocket"), conn

    def check_published(self, sid: str, conn: WebSocket | None, session: str) -> Verdict:
        """An event published on the bench's Redis reaches this socket through the proxy."""
        if self.bench is None:
            return Verdict(
                "skip",
                "published event",
                "pass --bench (the bench whose redis_queue gsocket reads) to check",
            )
        try:
            config = load_config(self.bench)
        except ConfigError as e:
            return Verdict("fail", "published event", str(e))
        nonce = uuid.uuid4().hex
        message = {"event": PROBE_EVENT, "message": {"nonce": nonce}, "room": sid,
                   "namespace": self.site}  # fmt: skip
        client = redis.Redis.from_url(config.redis_url, socket_connect_timeout=self.target.timeout)
        try:
            receivers = int(client.publish(CHANNEL, json.dumps(message)))
        except redis.RedisError as e:
            return Verdict(
                "fail", "published event", f"cannot publish on {safe_url(config.redis_url)}: {e}"
            )
        finally:
            client.close()
        if receivers == 0:
            return Verdict(
                "fail",
                "published event",
                f"no realtime server is subscribed to {CHANNEL!r} on "
                f"{safe_url(config.redis_url)}: gsocket reads another Redis than this bench",
            )
        if self._event_arrives(nonce, conn, session):
            via = "websocket" if conn is not None else "long-polling"
            return Verdict("ok", "published event", f"came back over the {via}")
        return Verdict(
            "fail",
            "published event",
            f"published on {safe_url(config.redis_url)} ({receivers} subscriber(s)) but it did "
            "not arrive: the gsocket behind this URL reads another Redis than --bench's "
            "redis_queue (FRAPPE_REDIS_QUEUE?)",
        )

    def _event_arrives(self, nonce: str, conn: WebSocket | None, session: str) -> bool:
        wanted = f"42/{self.site},"
        deadline = time.monotonic() + self.target.timeout
        while time.monotonic() < deadline:
            try:
                if conn is not None:
                    packets = [conn.receive()]
                else:
                    answer = request(self.target, "GET", session, step="published event")
                    packets = _packets(answer.body.decode(errors="replace"))
            except (OSError, ValueError, HttpFailure):
                return False
            for packet in packets:
                if packet == "2" and conn is not None:
                    conn.send("3")
                elif packet.startswith(wanted) and nonce in packet:
                    return True
        return False


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def run_url_doctor(
    target: Target, bench: str | Path | None = None, out: TextIO = sys.stdout
) -> int:
    """Print every verdict of the browser path to ``target`` and return the exit status."""
    failed = warned = 0
    print(f"checking {target.origin} as a browser would, site {target.site}", file=out)
    for verdict in UrlDoctor(target, bench).run():
        print(verdict.line(), file=out, flush=True)
        failed += verdict.status == "fail"
        warned += verdict.status == "warn"
    summary = f"{failed} check(s) failed, {warned} warning(s)"
    print(("FAILED: " if failed else "healthy: ") + summary, file=out)
    return 1 if failed else 0
