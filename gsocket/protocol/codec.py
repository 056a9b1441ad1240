"""The wire codec: what gsocket writes to a client, byte for byte, is built here and only here.

Three layers meet on the wire, and each has one spelling in this module:

- JSON (:func:`encode`): one encoder for every payload gsocket sends, the bridge's published
  messages, handler emits and python-socketio's own packets (:data:`PACKET_JSON`) alike.  It
  writes NaN and Infinity as ``null``, as Node's ``JSON.stringify`` does: the literal text
  ``NaN`` that Python's ``json`` writes by default is no JSON, and a browser's ``JSON.parse``
  of it fails for every client of the room.
- Socket.IO and Engine.IO packet prefixes (:data:`EVENT`, :data:`MESSAGE`,
  :func:`event_text`, :func:`connect_text`, :func:`message_packet`): ``2`` an EVENT, ``0`` a
  CONNECT, ``4`` the Engine.IO MESSAGE that carries either, ``/<namespace>,`` before the
  payload of any namespace but ``/``.
- websocket framing (:func:`frame`, :func:`packet_frame`): unmasked, unfragmented frames
  (RFC 6455 section 5.2), the only kind a server sends.
"""

from __future__ import annotations

import json
import math
from typing import Any

from engineio import json as engineio_json
from engineio import packet as eio_packet

from gsocket.protocol.internals.json_hooks import compact_encoder

TEXT = 0x81
BINARY = 0x82
CLOSE_FRAME = b"\x88\x00"
"""A close frame without a status code: what gevent-websocket sends when python-engineio
closes a websocket, so clients see the same close as before."""
CLOSE_NORMAL_FRAME = b"\x88\x02\x03\xe8"
"""The close frame with status 1000: gevent-websocket's answer to a client's close frame."""
PONG = 0x8A
"""The opcode byte of an unfragmented PONG frame (the answer to a client's PING frame)."""

EVENT = "2"
"""Socket.IO EVENT packet type."""
CONNECT = "0"
"""Socket.IO CONNECT packet type."""
MESSAGE = "4"
"""Engine.IO MESSAGE packet type (what carries every Socket.IO packet)."""


# ---- JSON -----------------------------------------------------------------------------


def _finite(value: Any, seen: set[int]) -> Any:
    """``value`` with every NaN and infinite float replaced by ``None`` (``null``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict | list | tuple):
        if id(value) in seen:
            raise ValueError("Circular reference detected")
        seen.add(id(value))
        try:
            if isinstance(value, dict):
                return {k: _finite(v, seen) for k, v in value.items()}
            return [_finite(v, seen) for v in value]
        finally:
            seen.discard(id(value))
    return value


encode = compact_encoder(check_circular=True, finite=lambda value: _finite(value, set()))
"""Return a value as compact JSON, NaN and Infinity written ``null``.

:raises TypeError: something JSON cannot hold (bytes, an object).
:raises ValueError: a cycle.
"""
encode_acyclic = compact_encoder(check_circular=False, finite=lambda value: _finite(value, set()))
""":func:`encode` without the cycle check, for values decoded from JSON (which hold none)."""


class PacketJSON:
    """The ``json`` module python-socketio and python-engineio encode packets with
    (``socketio.Server(json=...)``), so their packets (acks, connect errors, polling
    payloads) come out of :func:`encode` too; decoding stays python-engineio's (which
    refuses integers of over 100 digits)."""

    @staticmethod
    def dumps(value: Any, **options: Any) -> str:
        """Encode as :func:`encode`; other options than compact separators (python-engineio's
        error bodies) keep :func:`json.dumps`."""
        if not options or options == {"separators": (",", ":")}:
            return encode(value)
        return json.dumps(value, **options)

    loads = staticmethod(engineio_json.loads)


# ---- packet prefixes ------------------------------------------------------------------


def event_text(namespace: str, body: str) -> str:
    """The Socket.IO EVENT packet of ``body`` (a JSON array: event name, then arguments)."""
    return EVENT + body if namespace == "/" else EVENT + namespace + "," + body


def append_argument(body: str, argument: str) -> str:
    """``body`` (a JSON array) with one more string argument (connection state recovery's
    offset, which must come last)."""
    return body[:-1] + ',"' + argument + '"]'


def connect_text(namespace: str, sid: str, pid: str | None = None) -> str:
    """The Socket.IO CONNECT answer: the socket's ``sid``, and the ``pid`` of its recoverable
    session when connection state recovery is on."""
    prefix = "" if namespace == "/" else namespace + ","
    offer = "" if pid is None else ',"pid":' + encode(pid)
    return CONNECT + prefix + '{"sid":' + encode(sid) + offer + "}"


def message_packet(text: str) -> eio_packet.Packet:
    """The Engine.IO MESSAGE packet carrying a Socket.IO packet's ``text`` (for a polling
    session's queue)."""
    return eio_packet.Packet(eio_packet.MESSAGE, text)


# ---- websocket frames -----------------------------------------------------------------


def frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """Return an unmasked, unfragmented websocket frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((opcode, n)) + payload
    if n < 0x10000:
        return bytes((opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((opcode, 127)) + n.to_bytes(8, "big") + payload


def packet_frame(pkt: eio_packet.Packet) -> bytes:
    """The websocket frame of an Engine.IO packet: text, or binary for a binary MESSAGE."""
    if pkt.packet_type == eio_packet.OPEN and type(pkt.data) is dict:
        return frame(("0" + encode_acyclic(pkt.data)).encode("utf-8"), TEXT)
    encoded = pkt.encode()
    if isinstance(encoded, str):
        return frame(encoded.encode("utf-8"), TEXT)
    return frame(bytes(encoded), BINARY)


PING_FRAME = packet_frame(eio_packet.Packet(eio_packet.PING))
