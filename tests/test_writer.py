"""The websocket writer's rules on real sockets: what a broadcast writes to which wire, what a
flush does with a connection that fails, takes part of a frame, or closes, and that a waiter
of ``join`` is woken by the flush that empties its wire."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import gevent
import gevent.socket
import pytest

from gsocket.protocol.codec import CLOSE_FRAME
from gsocket.protocol.writer import CLOSING, DONE, OPEN, Wire, Writer


class Peer:
    """One connection: the server's end on a wire, the client's end read here."""

    def __init__(self, writer: Writer, sid: str) -> None:
        self.server, self.client = gevent.socket.socketpair()
        self.client.settimeout(5)
        self.ws = SimpleNamespace(closed=False)
        self.wire = Wire(writer, sid, self.server, self.ws)
        writer.wires[sid] = self.wire

    def read(self, size: int) -> bytes:
        got = b""
        while len(got) < size:
            chunk = self.client.recv(size - len(got))
            assert chunk, f"connection closed after {len(got)} of {size} bytes"
            got += chunk
        return got

    def nothing_more(self) -> bool:
        self.client.settimeout(0.05)
        try:
            return self.client.recv(100) == b""
        except TimeoutError:
            return True
        finally:
            self.client.settimeout(5)


@pytest.fixture
def stand() -> Iterator[tuple[Writer, list[tuple[str, str]], list[Peer]]]:
    kicked: list[tuple[str, str]] = []
    writer = Writer(SimpleNamespace(sockets={}), 3, lambda sid, why: kicked.append((sid, why)))
    peers: list[Peer] = []
    yield writer, kicked, peers
    for peer in peers:
        peer.server.close()
        peer.client.close()


def test_broadcast_writes_open_wires_and_returns_sessions_without_one(stand):
    writer, kicked, peers = stand
    fresh, busy, closing, ended = (Peer(writer, s) for s in ("fresh", "busy", "closing", "ended"))
    peers += [fresh, busy, closing, ended]
    busy.wire.write(b"1;")
    busy.wire.write(b"2;")  # one more reaches the limit of 3: the client is put out
    closing.wire.close()
    ended.wire.lost()
    room = {"a": "polling", "b": "fresh", "c": "busy", "d": "closing", "e": "ended", "f": "gone"}
    assert writer.broadcast(room.values(), b"ev;") == ["polling", "ended", "gone"]
    assert [w.out for w in (fresh.wire, busy.wire, closing.wire)] == [[b"ev;"], [], [CLOSE_FRAME]]
    assert busy.wire.state == DONE and "busy" not in writer.wires
    writer.flush()
    assert fresh.read(3) == b"ev;"
    assert closing.read(len(CLOSE_FRAME)) == CLOSE_FRAME  # nothing after the close frame
    assert closing.wire.state == DONE and closing.ws.closed and "closing" not in writer.wires
    gevent.sleep(0)  # the kick runs outside the broadcast
    assert kicked == [("busy", "3 packets queued: the client does not read (send_queue)")]
    assert busy.nothing_more() and closing.nothing_more()


def test_broadcast_without_sessions_lacking_a_wire_returns_nothing(stand):
    writer, _, peers = stand
    peers += [Peer(writer, f"s{i}") for i in range(3)]
    assert writer.broadcast(["s0", "s1", "s2"], b"x") == []
    assert writer.queue([None, peers[0].wire, None], b"y") == 2
    writer.flush()
    assert peers[0].read(2) == b"xy" and peers[1].read(1) == b"x"


def test_frames_of_several_events_go_out_in_one_send_in_order(stand):
    writer, _, peers = stand
    peer = Peer(writer, "s")
    peers.append(peer)
    for n in range(2):  # (a third would reach the stand's send_queue of 3)
        writer.broadcast(["s"], b"e%d;" % n)
    sends: list[bytes] = []
    raw = peer.wire.raw
    peer.wire.raw = SimpleNamespace(send=lambda data: sends.append(bytes(data)) or raw.send(data))
    writer.flush()
    assert sends == [b"e0;e1;"]
    assert peer.read(6) == b"e0;e1;"


def test_a_failing_connection_is_dropped_and_the_others_are_still_written(stand, caplog):
    writer, _, peers = stand
    broken, reset, fine = (Peer(writer, s) for s in ("broken", "reset", "fine"))
    peers += [broken, reset, fine]
    ended: list[tuple[str, Any]] = []
    writer.broken = lambda sid, gsock: ended.append((sid, gsock))  # type: ignore[method-assign]

    def fails(data: bytes) -> int:
        raise RuntimeError("not a socket error")

    def resets(data: bytes) -> int:
        raise ConnectionResetError(104, "reset by peer")

    broken.wire.raw = SimpleNamespace(send=fails)
    reset.wire.raw = SimpleNamespace(send=resets)
    writer.broadcast(["broken", "reset", "fine"], b"ev")
    with caplog.at_level(logging.ERROR, logger="gsocket.transport"):
        writer.flush()
    assert fine.read(2) == b"ev"
    assert broken.wire.state == reset.wire.state == DONE
    assert set(writer.wires) == {"fine"}
    assert "flushing websocket broken failed" in caplog.text
    assert ended == [("reset", reset.server)]  # a lost connection ends its session


def test_what_the_kernel_does_not_take_is_drained_in_order(stand):
    writer, _, peers = stand
    peer = Peer(writer, "s")
    peers.append(peer)
    peer.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = bytes(range(256)) * 8192  # 2 MiB: far more than the socket buffers hold
    writer.broadcast(["s"], big)
    writer.flush()
    assert peer.wire.drainer is not None and peer.wire.rest is not None
    writer.broadcast(["s"], b"after")
    assert peer.wire.out == [b"after"]
    writer.flush()  # passes over a draining wire: "after" waits behind the drainer
    assert peer.wire.out == [b"after"]
    got = gevent.spawn(peer.read, len(big) + 5)
    assert got.get(timeout=10) == big + b"after"
    assert peer.wire.join(5) and peer.wire.settled() and peer.wire.drainer is None


def test_join_returns_once_the_flush_emptied_the_wire(stand):
    writer, _, peers = stand
    peer = Peer(writer, "s")
    peers.append(peer)

    def waiter() -> tuple[bool, bool]:
        writer.broadcast(["s"], b"ev")
        pending = not peer.wire.settled()
        return pending, peer.wire.join(5)  # woken by the flush at the end of the loop turn

    assert gevent.spawn(waiter).get(timeout=2) == (True, True)
    assert peer.read(2) == b"ev"


def test_writes_end_of_turn_flush_and_close_states(stand):
    writer, _, peers = stand
    peer = Peer(writer, "s")
    peers.append(peer)
    peer.wire.write(b"one")
    assert peer.wire.state == OPEN
    peer.wire.close()
    assert peer.wire.state == CLOSING
    peer.wire.write(b"ignored")  # after the close frame: dropped
    gevent.sleep(0)  # the end of the loop turn flushes without being asked
    assert peer.read(3 + len(CLOSE_FRAME)) == b"one" + CLOSE_FRAME
    assert peer.wire.state == DONE and peer.nothing_more()
