"""A seeded fuzzer of gsocket's client side: malformed Engine.IO and Socket.IO input over both
transports, while a well-behaved witness client checks that deliveries keep flowing.

Every case is one bad client: it opens a session (polling or websocket), usually connects to a
namespace, sends a few generated frames, reads what comes back and leaves.  The generator is a
``random.Random(seed)``, so a failing case is replayed by its seed and index.

What is asserted (by the callers, from :class:`FuzzReport`): no HTTP 5xx, no request that hangs
past its timeout, the witness receives every published event, no traceback in the server log,
and afterwards the server's tables are back to the witness alone.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
import websocket

from tests.support.hardening.kit import (
    EIO_PATH,
    SITE,
    SITE2,
    RawPolling,
    RawWebSocket,
    desk_headers,
)

CORE_EVENTS = (
    "ping",
    "doctype_subscribe",
    "doc_subscribe",
    "doc_open",
    "doc_close",
    "task_subscribe",
    "progress_subscribe",
    "open_in_editor",
    "echo",
    "guest_echo",
    "burn",
)


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return rng.choice([0, -1, 2**63, 1.5, -0.0])
    if kind == 1:
        return rng.choice(["", "ToDo", "x" * rng.randrange(1, 300), "\u202e\u0000é", "../../etc"])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return {"_placeholder": True, "num": rng.randrange(-1, 3)}
    if kind == 4:
        return rng.choice(["doc:ToDo/1", "all", "website", "user:Administrator", "room"])
    if kind == 5:
        return rng.randrange(-(2**31), 2**31)
    if kind in (6, 7):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(_value(rng, 3)): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _json_text(rng: random.Random) -> str:
    """A Socket.IO packet's data part: mostly event arrays, often broken."""
    kind = rng.randrange(12)
    if kind <= 3:
        name = rng.choice(CORE_EVENTS + ("unknown_" + str(rng.randrange(10**6)), "", "connect"))
        args = [_value(rng) for _ in range(rng.randrange(5))]
        return json.dumps([name, *args])
    if kind == 4:
        depth = rng.choice([50, 900, 5000, 200_000])
        return "[" * depth + "]" * depth
    if kind == 5:
        size = rng.choice([10_000, 200_000, 990_000])
        return json.dumps(["echo", "a" * size])
    if kind == 6:
        text = json.dumps(["doc_subscribe", "ToDo", "x"])
        return text[: rng.randrange(len(text))]
    if kind == 7:
        return rng.choice(["{}", "1", '"str"', "null", "[]", "[1,2]", "[null]", "NaN", "[NaN]"])
    if kind == 8:
        return '["echo",' + "9" * 5000 + "]" if rng.random() < 0.5 else "[1e999999]"
    if kind == 9:
        return '["echo","\\ud800\\udfff\\ud800"]'
    if kind == 10:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 40)))
    return json.dumps(["burn", rng.choice([0.001, "x", None])])


def socketio_packet(rng: random.Random, namespace: str) -> str:
    """One Socket.IO packet (the text after Engine.IO's ``4``)."""
    kind = rng.choice("0123456" + "22222" + "x9")
    attachments = ""
    if kind in "56" or rng.random() < 0.05:
        attachments = rng.choice(["0-", "1-", "2-", "11-", "999999999-", "-", "1x-"])
    ns = rng.choice(
        [namespace] * 6
        + [f"/{SITE2}", "/", "", "/nope.local", "/" + "a" * 5000, f"{namespace}?x=1", "/\u0000"]
    )
    ack = rng.choice([""] * 6 + ["1", "99999999999999999999", "0" * 150, "-1"])
    sep = "," if ns else ""
    data = "" if kind in "01" and rng.random() < 0.7 else _json_text(rng)
    return f"{kind}{attachments}{ns}{sep}{ack}{data}"


def engineio_frame(rng: random.Random, namespace: str) -> str | bytes:
    """One Engine.IO packet: mostly MESSAGE carrying Socket.IO, the rest protocol abuse."""
    roll = rng.random()
    if roll < 0.70:
        return "4" + socketio_packet(rng, namespace)
    if roll < 0.80:
        return rng.choice(["", "x", "2", "2probe", "5", "6", "0", "3", "7", "41", "4", "b!!!"])
    if roll < 0.88:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if roll < 0.94:
        return "b" + base64.b64encode(rng.randbytes(rng.randrange(1, 64))).decode()
    if roll < 0.97:
        return "4" + "x" * rng.choice([1_000_001, 2_000_000])
    return "\x1e".join("3" for _ in range(rng.randrange(2, 30)))


@dataclass
class FuzzReport:
    """What a fuzz run did and saw."""

    cases: int = 0
    frames: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    hangs: list[str] = field(default_factory=list)
    witness_checks: int = 0
    witness_misses: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly summary."""
        return {
            "cases": self.cases,
            "frames": self.frames,
            "outcomes": dict(self.outcomes),
            "http_statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "hangs": self.hangs[:20],
            "witness_checks": self.witness_checks,
            "witness_misses": self.witness_misses[:20],
            "seconds": round(self.seconds, 1),
        }


def _handshake_abuse(rng: random.Random, base: str, report: FuzzReport) -> None:
    """A malformed handshake or HTTP request instead of a session."""
    kind = rng.randrange(6)
    headers = desk_headers()
    try:
        if kind == 0:
            url = base + rng.choice(
                [
                    "/socket.io/?EIO=3&transport=polling",
                    "/socket.io/?EIO=4&transport=flash",
                    "/socket.io/?EIO=4&transport=polling&sid=nope",
                    "/socket.io/?EIO=4&transport=websocket",
                    "/socket.io/?EIO=4&transport=polling&j=x",
                ]
            )
            report.statuses[requests.get(url, headers=headers, timeout=5).status_code] += 1
        elif kind == 1:
            r = requests.request(
                rng.choice(["PUT", "DELETE", "PATCH"]),
                base + EIO_PATH + "polling",
                headers=headers,
                timeout=5,
            )
            report.statuses[r.status_code] += 1
        else:
            raw = rng.choice(
                [
                    b"POST /socket.io/?EIO=4&transport=polling&sid=x HTTP/1.1\r\n"
                    b"Host: 127.0.0.1\r\nContent-Length: abc\r\n\r\n40",
                    b"POST /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"
                    b"Host: 127.0.0.1\r\nContent-Length: 99999\r\n\r\n40",
                    b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: "
                    + b"a" * 20000
                    + b"\r\n\r\n",
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(64),
                    b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Version: 99\r\n\r\n",
                ]
            )
            host, port = base.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=3) as s:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(3)
                answer = s.recv(64)
            status = answer.split(b" ")[1] if answer.startswith(b"HTTP/") else b"0"
            report.statuses[int(status) if status.isdigit() else 0] += 1
        report.outcomes["handshake_abuse"] += 1
    except (TimeoutError, requests.Timeout):
        report.hangs.append(f"handshake abuse {kind}")
    except (OSError, requests.RequestException):
        report.outcomes["handshake_abuse_reset"] += 1


def _websocket_case(rng: random.Random, base: str, frames: int, report: FuzzReport) -> None:
    namespace = f"/{SITE}"
    client = RawWebSocket(base, desk_headers(sid=rng.choice(["sid-admin", "Guest"])), timeout=5)
    try:
        client.open()
        if rng.random() < 0.85:
            client.connect(namespace)
        for _ in range(frames):
            client.send(engineio_frame(rng, namespace))
            report.frames += 1
        client.send(f"40{namespace},")  # always answered: shows the session's state
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert client.ws is not None
            client.ws.settimeout(max(0.05, deadline - time.monotonic()))
            frame = client.recv()
            if frame == "":
                report.outcomes["ws_closed_by_server"] += 1
                return
            if isinstance(frame, str) and frame.startswith(("40", "44")) and namespace in frame:
                report.outcomes["ws_alive"] += 1
                return
        report.outcomes["ws_no_answer"] += 1
    except (websocket.WebSocketTimeoutException, TimeoutError):
        # e.g. the CONNECT was taken as a binary attachment the server was still waiting for
        report.outcomes["ws_no_answer"] += 1
    except (websocket.WebSocketConnectionClosedException, ConnectionError, BrokenPipeError):
        report.outcomes["ws_closed_by_server"] += 1
    except AssertionError:
        report.outcomes["ws_closed_by_server"] += 1
    finally:
        client.close()


def _polling_body(rng: random.Random, namespace: str) -> str | bytes:
    roll = rng.random()
    if roll < 0.08:
        return b"4\xff\xfe" + rng.randbytes(8)
    if roll < 0.12:
        return "\x1e".join(["42" + namespace + ',["ping"]'] * rng.randrange(17, 40))
    frames = [engineio_frame(rng, namespace) for _ in range(rng.randrange(1, 4))]
    if any(isinstance(f, bytes) for f in frames):
        return b"\x1e".join(f if isinstance(f, bytes) else f.encode() for f in frames)
    return "\x1e".join(frames)  # type: ignore[arg-type]


def _polling_case(rng: random.Random, base: str, frames: int, report: FuzzReport) -> None:
    namespace = f"/{SITE}"
    client = RawPolling(base, desk_headers(sid=rng.choice(["sid-admin", "Guest"])), timeout=5)
    try:
        client.open()
        if rng.random() < 0.85:
            client.connect(namespace)
        for _ in range(max(1, frames // 2)):
            response = client.post(_polling_body(rng, namespace))
            report.statuses[response.status_code] += 1
            report.frames += 1
            if response.status_code != 200:
                report.outcomes["polling_refused"] += 1
                return
        # A CONNECT is always answered, so a live session's poll returns at once.
        response = client.post(f"40{namespace},")
        if response.status_code == 200:
            try:
                response = client.get()
            except requests.Timeout:
                # A long-poll with nothing to say waits for the next ping (25 s): e.g. the
                # CONNECT was taken as a binary attachment the server still waited for.
                report.outcomes["polling_no_answer"] += 1
                return
        report.statuses[response.status_code] += 1
        report.outcomes["polling_ok" if response.status_code == 200 else "polling_refused"] += 1
    except requests.Timeout:
        report.hangs.append(f"polling case sid={client.sid}")
    except requests.RequestException:
        report.outcomes["polling_reset"] += 1
    finally:
        client.close()


def run_fuzz(
    base: str,
    seed: int,
    cases: int,
    publish: Callable[[str, Any, str], int],
    frames_per_case: int = 6,
    witness_every: int = 20,
    progress: Callable[[int, FuzzReport], None] | None = None,
) -> FuzzReport:
    """Run ``cases`` bad clients against the server at ``base``.

    :param publish: ``publish(event, message, room)`` on the server's Redis, for the witness.
    :param witness_every: cases between two delivery checks through the witness.
    """
    rng = random.Random(seed)
    report = FuzzReport()
    started = time.monotonic()
    witness = RawWebSocket(base, desk_headers(sid="sid-jane"), timeout=5).open()
    witness.connect(f"/{SITE}")
    try:
        for index in range(cases):
            roll = rng.random()
            if roll < 0.05:
                _handshake_abuse(rng, base, report)
            elif roll < 0.55:
                _websocket_case(rng, base, rng.randrange(1, frames_per_case + 1), report)
            else:
                _polling_case(rng, base, rng.randrange(1, frames_per_case + 1), report)
            report.cases += 1
            if (index + 1) % witness_every == 0 or index + 1 == cases:
                marker = f"w{seed}-{index}"
                publish("fuzz_witness", {"marker": marker}, "all")
                report.witness_checks += 1
                try:
                    witness.recv_until(lambda f, m=marker: isinstance(f, str) and m in f, 5)
                except (AssertionError, websocket.WebSocketException, OSError) as e:
                    report.witness_misses.append(f"{marker}: {type(e).__name__}")
                    witness.close()
                    witness = RawWebSocket(base, desk_headers(sid="sid-jane"), timeout=5).open()
                    witness.connect(f"/{SITE}")
            if progress is not None:
                progress(index + 1, report)
    finally:
        witness.close()
        report.seconds = time.monotonic() - started
    return report


def tracebacks_by_exception(log: str) -> Counter[str]:
    """Count the tracebacks of a server log by their final exception line."""
    counts: Counter[str] = Counter()
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        for follow in lines[i + 1 : i + 60]:
            if follow and not follow.startswith((" ", "Traceback")):
                counts[follow[:120]] += 1
                break
    return counts
