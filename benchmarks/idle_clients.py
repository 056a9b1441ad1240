"""Many Socket.IO websocket clients in one gevent process, for the profiling scripts.

``python benchmarks/idle_clients.py URL ORIGIN SITE`` reads commands on stdin, one JSON
object a line, and answers each with one JSON line on stdout:

- ``{"cmd": "open", "first": i, "count": n}``: connect clients ``u<i>`` .. ``u<i+n-1>``
  (websocket only, ``Cookie: sid=u<i>``, Origin and ``X-Frappe-Site-Name`` as a desk sends
  them, namespace ``/SITE``); answers ``{"open": total, "failed": k}`` once every one of them
  got its Socket.IO CONNECT answer or failed;
- ``{"cmd": "counts"}``: ``{"received": r, "duplicates": d, "out_of_order": o, "open": n}``:
  the ``bench`` events received, by ``message.s`` per client;
- ``{"cmd": "close"}``: close every client and exit.

A client answers PINGs and otherwise stays idle.  It is a raw RFC 6455 client written for
this (masked client frames, no extensions), so that thousands of clients cost the machine
little besides their sockets.
"""

from gevent import monkey

monkey.patch_all()

import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from gevent.fileobject import FileObject  # noqa: E402
from gevent.pool import Pool  # noqa: E402

IN_FLIGHT = 200
"""Handshakes at once."""


class Client:
    def __init__(self, index: int, host: str, port: int, origin: str, site: str) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.origin = origin
        self.site = site
        self.sock: socket.socket | None = None
        self.buf = b""
        self.last: tuple | None = None
        self.received = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.seen: set[tuple] = set()

    def open(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {self.origin}\r\nCookie: sid=u{self.index}\r\n"
            f"X-Frappe-Site-Name: {self.site}\r\n\r\n"
        )
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        head, _, self.buf = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
        self.sock = sock
        opened = self.read()
        if not opened.startswith("0"):
            raise ConnectionError(f"no OPEN packet: {opened[:80]}")
        self.send(f"40/{self.site},")
        answer = self.read()
        if not answer.startswith(f"40/{self.site},"):
            raise ConnectionError(f"no CONNECT answer: {answer[:120]}")
        sock.settimeout(None)

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes((0x81, 0x80 | n))
        else:
            head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert self.sock is not None
        self.sock.sendall(head + mask + masked)

    def _need(self, n: int) -> None:
        assert self.sock is not None
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def read(self) -> str:
        """The next text frame (unmasked, unfragmented: what servers send)."""
        while True:
            self._need(2)
            opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            at = 2
            if n == 126:
                self._need(4)
                n, at = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                self._need(10)
                n, at = int.from_bytes(self.buf[2:10], "big"), 10
            self._need(at + n)
            payload, self.buf = self.buf[at : at + n], self.buf[at + n :]
            if opcode == 8:
                raise ConnectionError("close frame")
            if opcode == 1:
                return payload.decode()

    def run(self) -> None:
        prefix = f"42/{self.site},"
        try:
            while True:
                text = self.read()
                if text == "2":
                    self.send("3")
                elif text.startswith(prefix):
                    self.count(json.loads(text[len(prefix) :]))
        except (OSError, ConnectionError):
            pass

    def count(self, args: list) -> None:
        if len(args) < 2 or not isinstance(args[1], dict) or "s" not in args[1]:
            return
        s = (args[1].get("p"), args[1]["s"])
        self.received += 1
        if s in self.seen:
            self.duplicates += 1
        self.seen.add(s)
        if self.last is not None and s[0] == self.last[0] and s[1] < self.last[1]:
            self.out_of_order += 1
        self.last = s


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    url, origin, site = sys.argv[1:4]
    parts = urlsplit(url)
    clients: list[Client] = []
    readers = Pool()
    stdin = FileObject(sys.stdin.buffer, "rb")
    for line in stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "open":
            batch = [
                Client(i, parts.hostname, parts.port, origin, site)
                for i in range(cmd["first"], cmd["first"] + cmd["count"])
            ]
            failed: list[str] = []

            def open_one(c: Client, failed: list[str] = failed) -> None:
                try:
                    c.open()
                except (OSError, ConnectionError) as e:
                    failed.append(str(e))

            Pool(IN_FLIGHT).map(open_one, batch)
            for c in batch:
                if c.sock is not None:
                    clients.append(c)
                    readers.spawn(c.run)
            answer = {"open": len(clients), "failed": len(failed), "errors": failed[:3]}
        elif cmd["cmd"] == "counts":
            answer = {
                "received": sum(c.received for c in clients),
                "duplicates": sum(c.duplicates for c in clients),
                "out_of_order": sum(c.out_of_order for c in clients),
                "open": len(clients),
            }
        else:
            for c in clients:
                if c.sock is not None:
                    c.sock.close()
            print(json.dumps({"closed": len(clients)}), flush=True)
            return
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
