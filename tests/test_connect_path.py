"""What one websocket connect costs on the wire: the upgrade's ``101`` answer is held back and
sent with the session's OPEN packet in one ``send`` (gsocket/protocol/http.py,
``Transport.attach``), and wherever nobody takes it (a refused or upgraded-from-polling
websocket) it still goes out before anything else."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct

import websocket

from gsocket.protocol.session import RANDOM_BATCH, SessionIds
from tests.conftest import SITE
from tests.support.bench import wait_until
from tests.support.hardening.kit import EIO_PATH, RawPolling, desk_headers

NS = f"/{SITE}"
TCP_INFO_DATA_SEGS_IN = 152
"""Offset of ``tcpi_data_segs_in`` in Linux's ``struct tcp_info`` (since 4.6)."""


def data_segments_in(sock: socket.socket) -> int:
    """Segments with data this socket has received (Linux ``TCP_INFO``)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, TCP_INFO_DATA_SEGS_IN)[0]


def upgrade(port: int, query: str, headers: dict[str, str]) -> tuple[socket.socket, bytes]:
    """Send a websocket upgrade request by hand; return the socket and the answer's head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {query} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock, rest


def read_frame(sock: socket.socket, buffered: bytes) -> tuple[int, bytes, bytes]:
    """One unmasked server frame (short payloads only): opcode, payload, the bytes after."""
    data = buffered
    while len(data) < 2 or len(data) < 2 + (data[1] & 0x7F):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    length = data[1] & 0x7F
    assert length < 126, data
    return data[0] & 0x0F, data[2 : 2 + length], data[2 + length :]


def test_upgrade_answer_and_open_packet_arrive_in_one_segment(probed):
    server = probed()
    port = int(server.url.rsplit(":", 1)[1])
    sock, rest = upgrade(port, EIO_PATH + "websocket", desk_headers())
    opcode, payload, rest = read_frame(sock, rest)
    assert (opcode, payload[:1]) == (0x1, b"0"), payload
    assert json.loads(payload[1:])["sid"]
    # Both arrived in one segment: the server wrote them in one send.
    assert data_segments_in(sock) == 1
    # The session works as before.
    sock.sendall(websocket.ABNF.create_frame(f"40{NS},", websocket.ABNF.OPCODE_TEXT).format())
    opcode, payload, _ = read_frame(sock, rest)
    assert payload.startswith(f"40{NS},".encode()), payload
    sock.close()


def test_a_refused_websocket_still_gets_its_upgrade_answer_before_the_close(probed):
    server = probed()
    port = int(server.url.rsplit(":", 1)[1])
    # An Engine.IO version gsocket does not speak: python-engineio refuses it after the
    # upgrade, and the websocket is closed without any session frame.
    sock, rest = upgrade(port, "/socket.io/?EIO=3&transport=websocket", desk_headers())
    opcode, _, _ = read_frame(sock, rest)
    assert opcode == 0x8  # close
    sock.close()


def test_a_websocket_upgrading_a_polling_session_gets_its_answer_before_the_probe(probed):
    server = probed()
    port = int(server.url.rsplit(":", 1)[1])
    polling = RawPolling(server.url, desk_headers()).open()
    assert polling.connect(NS).startswith(f"40{NS},")
    # The client sends its probe only once it has the 101: a held answer would hang here.
    sock, rest = upgrade(port, f"{EIO_PATH}websocket&sid={polling.sid}", desk_headers())
    sock.sendall(websocket.ABNF.create_frame("2probe", websocket.ABNF.OPCODE_TEXT).format())
    opcode, payload, rest = read_frame(sock, rest)
    assert payload == b"3probe"
    sock.sendall(websocket.ABNF.create_frame("5", websocket.ABNF.OPCODE_TEXT).format())
    sock.sendall(websocket.ABNF.create_frame(f'42{NS},["ping"]', 1).format())
    wait_until(lambda: server.probe()["sockets"] == 1, 5, "the upgraded socket is gone")
    sock.close()


def test_session_ids_are_python_engineios_and_no_two_processes_share_them():
    """Ids come from random bytes drawn in batches (gsocket/protocol/session.py SessionIds):
    python-engineio's shape (12 random bytes and a sequence number, URL-safe base64), no
    repeat over several batches, and a forked child draws its own bytes."""
    ids = SessionIds()
    made = [ids() for _ in range(3 * RANDOM_BATCH // 12)]
    assert len(set(made)) == len(made)
    raw = [base64.urlsafe_b64decode(i) for i in made]
    assert all(len(i) == 20 and len(r) == 15 for i, r in zip(made, raw, strict=True))
    sequence = [int.from_bytes(r[12:], "big") for r in raw]
    assert all((b - a) % 2**24 == 1 for a, b in zip(sequence, sequence[1:], strict=False))
    assert len({r[:12] for r in raw}) == len(raw)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only reports its id
        os.write(write, ids().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    in_child = base64.urlsafe_b64decode(os.read(read, 64))
    os.close(read)
    in_parent = base64.urlsafe_b64decode(ids())
    assert in_child[:12] != in_parent[:12]
