"""What one fan-out delivery costs below gsocket: CPU per ``send`` of one small frame to each
of N loopback TCP connections whose reader is another process.

    python benchmarks/send_floor.py -n 1000 --work 20               # c, py, wire; 3 rounds
    python benchmarks/send_floor.py -n 5000 --events 40 --reader python
    python benchmarks/send_floor.py --senders wire,wire:/tmp/fo-base   # the writer of two trees
    python benchmarks/send_floor.py --senders c --perf /tmp/floor      # + perf record -g of each

run.py's fixed-rate fan-out (20 events/s to a room of every client) gives each client one
frame per event, so every delivery is a ``send`` of its own; its figure is the server's CPU per
delivery.  This stand keeps only the sends.  The connections (TCP_NODELAY on, as gsocket and
Node's ``ws`` set it) are made once; each round, each sender is a fresh child process given
their descriptors, sends ``--events`` frames of ``--size`` bytes to every connection at
``--rate`` events per second, and measures its own utime and stime around the sends (the
waits between events cost nothing measurable).  Senders:

- ``c``: a C loop of ``send(fd, frame, MSG_DONTWAIT)``: the kernel's cost alone (the
  ``sendto``, the loopback receive run in the sender's context, waking the reader);
- ``c-write``: the same with ``write``;
- ``py``: a Python loop of ``sock.send(frame)``: + CPython's call; ``py-write``: ``os.write``;
- ``wire`` or ``wire:TREE``: gsocket's writer from TREE (default: this one), as the bridge
  drives it: ``Writer.broadcast`` over a room's member view, then ``flush_in_steps``.

The readers (``--readers`` processes, 4 as run.py's load generator) hold N/K connections each
and read everything, with libuv (``node``, default) or selectors' epoll (``python``).
Everything sent must arrive: the round fails otherwise.  Senders run interleaved (A, B, A,
B, ...); the figures are medians and spread over rounds, in microseconds per send.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TREE = HERE.parent

C_SENDER = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double cpu(struct timeval t) { return t.tv_sec * 1e6 + t.tv_usec; }

int main(void) {
    int n, events, size, use_write;
    double rate;
    if (scanf("%d %d %lf %d %d", &n, &events, &rate, &size, &use_write) != 5) return 2;
    int *fds = malloc(sizeof(int) * n);
    for (int i = 0; i < n; i++)
        if (scanf("%d", &fds[i]) != 1) return 2;
    char *frame = malloc(size);
    memset(frame, 'x', size);
    long short_sends = 0;
    struct rusage a, b;
    getrusage(RUSAGE_SELF, &a);
    double t0 = now();
    for (int e = 0; e < events; e++) {
        double wait = t0 + e / rate - now();
        if (wait > 0) {
            struct timespec s = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
            nanosleep(&s, NULL);
        }
        for (int i = 0; i < n; i++)
            if ((use_write ? write(fds[i], frame, size) : send(fds[i], frame, size, MSG_DONTWAIT))
                != size)
                short_sends++;
    }
    getrusage(RUSAGE_SELF, &b);
    printf("{\"user_us\": %.0f, \"sys_us\": %.0f, \"short\": %ld, \"nvcsw\": %ld, "
           "\"nivcsw\": %ld}\n",
           cpu(b.ru_utime) - cpu(a.ru_utime), cpu(b.ru_stime) - cpu(a.ru_stime), short_sends,
           b.ru_nvcsw - a.ru_nvcsw, b.ru_nivcsw - a.ru_nivcsw);
    return 0;
}
"""

NODE_READER = r"""
const net = require("net");
const [port, count, work] = process.argv.slice(-3).map(Number);
let total = 0, open = 0;
const burn = (us) => { const end = process.hrtime.bigint() + BigInt(Math.round(us * 1000));
  while (process.hrtime.bigint() < end); };
for (let i = 0; i < count; i++) {
  const s = net.connect(port, "127.0.0.1", () => {
    if (++open === count) process.stdout.write("ready\n");
  });
  s.on("data", (b) => { total += b.length; if (work) burn(work); });
}
process.stdin.on("data", () => process.stdout.write(total + "\n"));
"""


def python_reader(port: int, count: int) -> None:
    """A reader process: ``count`` connections read with epoll; a line on stdin asks for
    the bytes read so far."""
    sel = selectors.EpollSelector()
    conns = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        conns.append(s)
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
    print("ready", flush=True)
    total = 0
    while True:
        for key, _ in sel.select():
            if key.fileobj == sys.stdin.fileno():
                if not os.read(sys.stdin.fileno(), 64):
                    return
                print(total, flush=True)
                continue
            try:
                while data := key.fileobj.recv(65536):  # type: ignore[union-attr]
                    total += len(data)
            except BlockingIOError:
                pass


def usage() -> tuple[float, float, int, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime * 1e6, r.ru_stime * 1e6, r.ru_nvcsw, r.ru_nivcsw


def report(before: tuple[float, float, int, int], short: int) -> None:
    after = usage()
    keys = ("user_us", "sys_us", "nvcsw", "nivcsw")
    out = {k: after[i] - before[i] for i, k in enumerate(keys)}
    print(json.dumps({**out, "short": short}), flush=True)


def paced(spec: dict, sleep: Callable[[float], object]) -> Iterator[int]:
    """The event numbers of ``spec["events"]`` at ``spec["rate"]`` per second, each given at
    its time on an absolute schedule (a late event does not delay the next), waiting with
    SLEEP: ``time.sleep`` in a plain sender, ``gevent.sleep`` in the writer's loop."""
    t0 = time.monotonic()
    for e in range(spec["events"]):
        wait = t0 + e / spec["rate"] - time.monotonic()
        if wait > 0:
            sleep(wait)
        yield e


def python_sender(spec: dict) -> None:
    """The ``py`` sender: a plain loop of non-blocking ``sock.send``s (``py-write``:
    ``os.write`` on the descriptors)."""
    socks = [socket.socket(fileno=fd) for fd in spec["fds"]]
    for s in socks:
        s.setblocking(False)
    if spec["kind"] == "py-write":
        write = os.write
        calls = [functools.partial(write, fd) for fd in spec["fds"]]
    else:
        calls = [s.send for s in socks]
    frame = b"x" * spec["size"]
    short = 0
    before = usage()
    for _ in paced(spec, time.sleep):
        for send in calls:
            try:
                if send(frame) != len(frame):
                    short += 1
            except BlockingIOError:
                short += 1
    report(before, short)
    for s in socks:
        s.detach()


def wire_sender(spec: dict) -> None:
    """The ``wire`` sender: gsocket's writer of ``spec["tree"]`` as the bridge drives it."""
    sys.path.insert(0, spec["tree"])
    import gevent
    import gevent.socket

    from gsocket.protocol import writer as writer_module

    if not writer_module.__file__.startswith(spec["tree"]):
        raise RuntimeError(f"measuring {writer_module.__file__}, not {spec['tree']}'s writer")
    writer = writer_module.Writer(None, 1_000_000, lambda sid, why: None)
    room: dict[str, str] = {}
    socks = []
    for i, fd in enumerate(spec["fds"]):
        gs = gevent.socket.socket(fileno=fd)
        socks.append(gs)
        eio_sid = f"e{i:05d}"
        writer.wires[eio_sid] = writer_module.Wire(writer, eio_sid, gs, None)
        room[f"s{i:05d}"] = eio_sid
    frame = b"x" * spec["size"]

    def run() -> None:
        members = room.values()
        before = usage()
        for _ in paced(spec, gevent.sleep):
            writer.broadcast(members, frame)
            writer.flush_in_steps()
        pending = sum(1 for w in writer.wires.values() if not w.settled())
        report(before, pending)

    gevent.spawn(run).get()
    for gs in socks:
        gs.detach()


def child_main() -> None:
    spec = json.loads(sys.stdin.read())
    {"py": python_sender, "py-write": python_sender, "wire": wire_sender}[spec["kind"]](spec)


class Stand:
    """The listening socket, the readers and the accepted connections."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.expected = 0
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        port = listener.getsockname()[1]
        per = [args.n // args.readers + (i < args.n % args.readers) for i in range(args.readers)]
        self.readers = [self._reader(port, k) for k in per]
        self.conns = []
        for _ in range(args.n):
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if args.sndbuf:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, args.sndbuf)
            self.conns.append(conn)
        listener.close()
        for r in self.readers:
            assert r.proc.stdout is not None
            if r.proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a reader did not connect")
        self.c_binary = self._compile() if shutil.which("gcc") else None

    def _reader(self, port: int, count: int) -> Any:
        """A reader process (gsocket's ``Child``, imported here: the ``wire`` senders import
        gsocket from the tree they measure)."""
        sys.path.insert(0, str(TREE))
        from gsocket.demo.processes import Child

        if self.args.reader == "node":
            argv = ["node", "-e", NODE_READER, str(port), str(count), str(self.args.work)]
        else:
            argv = [sys.executable, __file__, "--read", str(port), str(count)]
        return Child("reader", argv, stdout_pipe=True, stdin=subprocess.PIPE, text=True)

    def _compile(self) -> Path:
        src = self.tmp / "sender.c"
        src.write_text(C_SENDER)
        out = self.tmp / "sender"
        subprocess.run(["gcc", "-O2", "-o", str(out), str(src)], check=True)
        return out

    def received(self) -> int:
        total = 0
        for r in self.readers:
            assert r.proc.stdin is not None and r.proc.stdout is not None
            r.proc.stdin.write("?\n")
            r.proc.stdin.flush()
            total += int(r.proc.stdout.readline())
        return total

    def run(self, sender: str, perf: Path | None) -> dict:
        a = self.args
        fds = [c.fileno() for c in self.conns]
        kind, _, tree = sender.partition(":")
        if kind in ("c", "c-write"):
            if self.c_binary is None:
                raise RuntimeError("no gcc for the c sender")
            argv = [str(self.c_binary)]
            head = f"{a.n} {a.events} {a.rate} {a.size} {int(kind == 'c-write')}\n"
            stdin = head + " ".join(map(str, fds))
        else:
            argv = [sys.executable, __file__, "--child"]
            spec = {"kind": kind, "fds": fds, "events": a.events, "rate": a.rate}
            stdin = json.dumps({**spec, "size": a.size, "tree": tree or str(TREE)})
        if perf is not None:
            name = sender.replace("/", "_").replace(":", "@")
            argv = ["perf", "record", "-q", "-g", "-o", str(perf / f"{name}.data"), "--", *argv]
        done = subprocess.run(
            argv, input=stdin, pass_fds=fds, capture_output=True, text=True, check=True
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        self.expected += a.n * a.events * a.size
        deadline = time.monotonic() + 30
        while (got := self.received()) < self.expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sender}: {self.expected - got} bytes never arrived")
            time.sleep(0.05)
        if got != self.expected:
            raise RuntimeError(f"{sender}: {got - self.expected} bytes more than sent")
        return result

    def close(self) -> None:
        for r in self.readers:
            r.stop(timeout=5)
        for c in self.conns:
            c.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", type=int, default=1000, help="connections (1000)")
    p.add_argument("--events", type=int, default=100, help="frames per connection (100)")
    p.add_argument("--rate", type=float, default=20.0, help="events per second (20)")
    p.add_argument("--size", type=int, default=80, help="frame bytes (80, run.py's fan-out)")
    p.add_argument("--readers", type=int, default=4, help="reader processes (4)")
    p.add_argument("--reader", choices=["node", "python"], default="node")
    p.add_argument(
        "--work", type=float, default=0.0, help="node readers: µs of CPU burnt per read (0)"
    )
    p.add_argument("--senders", default="c,py,wire", help="c, py, wire, wire:TREE (c,py,wire)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sndbuf", type=int, default=0, help="SO_SNDBUF of each connection (kernel's)")
    p.add_argument("--perf", type=Path, help="perf record -g every sender into this folder")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--read", nargs=2, type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child_main()
        return
    if a.read:
        python_reader(*a.read)
        return
    if a.perf:
        a.perf.mkdir(parents=True, exist_ok=True)
    senders = a.senders.split(",")
    figures: dict[str, list[dict]] = {s: [] for s in senders}
    with tempfile.TemporaryDirectory(prefix="send-floor-") as tmp:
        stand = Stand(a, Path(tmp))
        try:
            for round_ in range(a.rounds):
                for s in senders:
                    r = stand.run(s, a.perf)
                    sends = a.n * a.events
                    r["us"] = (r["user_us"] + r["sys_us"]) / sends
                    figures[s].append(r)
                    print(
                        f"round {round_ + 1} {s:>24}: {r['us']:.2f} us/send "
                        f"(user {r['user_us'] / sends:.2f}, sys {r['sys_us'] / sends:.2f}; "
                        f"csw {r['nvcsw']}+{r['nivcsw']}, short/pending {r['short']})",
                        flush=True,
                    )
        finally:
            stand.close()
    print(f"\nN = {a.n}, {a.events} events at {a.rate}/s, {a.size} B, {a.reader} readers")
    for s, rows in figures.items():

        def spread(key: str, rows: list[dict] = rows) -> str:
            vals = [r[key] / (a.n * a.events) if key != "us" else r[key] for r in rows]
            return f"{statistics.median(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})"

        print(f"{s:>24}: {spread('us')} us/send; user {spread('user_us')}, sys {spread('sys_us')}")


if __name__ == "__main__":
    main()
