"""gsocket.protocol.headers: the request-header reader gevent's WSGI handler uses in gsocket.

What gevent reads from it must equal what it read from ``http.client``'s message for the
headers clients send, and a malformed block must come back as a status (a 400), never as
silently dropped headers.
"""

from __future__ import annotations

import io
import socket
from http import client

from gevent import pywsgi

from gsocket.protocol.headers import MAX_HEADERS, read_headers
from tests.conftest import SITE

DESK = (
    b"Host: 127.0.0.1:9000\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Origin: http://site1.local\r\n"
    b"Cookie: sid=abc; system_user=yes\r\n"
    b"cookie: second=1\r\n"
    b"X-Frappe-Site-Name: site1.local\r\n"
    b"Content-Type:text/plain\r\n"
    b"\r\nbody not read"
)


def test_reads_what_http_client_reads_for_a_desk_handshake():
    ours = read_headers(io.BytesIO(DESK), 0)
    theirs = client.parse_headers(io.BytesIO(DESK), _class=pywsgi.OldMessage)
    assert ours.status == ""
    assert list(ours.headers) == list(theirs.headers)
    for name in ("upgrade", "CONNECTION", "Cookie", "x-frappe-site-name", "missing"):
        assert ours.get(name) == theirs.get(name), name
    assert ours.get("missing", "x") == "x" and ours.getheader("HOST") == "127.0.0.1:9000"
    assert ours.typeheader == theirs.typeheader == "text/plain"
    assert "origin" in ours and "referer" not in ours


def test_delete_removes_every_header_of_that_name():
    headers = read_headers(io.BytesIO(b"Content-Length: 3\r\nA: 1\r\ncontent-length: 4\r\n\r\n"))
    del headers["CONTENT-LENGTH"]
    assert headers.get("content-length") is None and list(headers.headers) == ["A: 1\r\n"]
    del headers["absent"]


def test_folded_lines_are_unfolded_and_bare_newlines_accepted():
    headers = read_headers(io.BytesIO(b"X-Long: one\n  two\r\n\tthree \nB:\n\r\n"))
    assert headers.status == ""
    assert headers.get("x-long") == "one two three" and headers.get("b") == ""


def test_malformed_blocks_get_a_status_instead_of_lost_headers():
    for block in (
        b"Host: a\r\nno colon here\r\nOrigin: http://evil\r\n\r\n",
        b"Host : a\r\n\r\n",
        b"Bad Name: a\r\n\r\n",
        b": empty name\r\n\r\n",
        b"Host: a\r\n\r\r\n\r\n",
        b" folded first\r\n\r\n",
        b"X: " + b"a" * 70_000 + b"\r\n\r\n",
        b"".join(b"H%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n",
    ):
        headers = read_headers(io.BytesIO(block))
        assert headers.status, block[:40]
        assert headers.get("origin") is None and list(headers.headers) == []
    assert read_headers(io.BytesIO(b"H: v\r\n" * MAX_HEADERS + b"\r\n")).status == ""


def _raw_request(url: str, head: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return answer


def test_server_answers_a_malformed_header_block_400_and_keeps_serving(gsocket):
    bad = (
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"X-Frappe-Site-Name " + SITE.encode() + b"\r\n\r\n"
    )
    assert _raw_request(gsocket.url, bad).startswith(b"HTTP/1.1 400 ")
    good = (
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Origin: http://127.0.0.1\r\nX-Frappe-Site-Name: " + SITE.encode() + b"\r\n\r\n"
    )
    answer = _raw_request(gsocket.url, good)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
