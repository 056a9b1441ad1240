"""Socket.IO connection state recovery, across the processes of a cluster.

socket.io-client 4.x (the desk's) keeps the ``pid`` a server offers in its CONNECT answer and
the last string argument of every event it receives (its *offset*); when its connection comes
back it sends both in its CONNECT packet.  A server that recognises them gives the socket its
old sid and rooms and sends the events it missed, so a desk that does not subscribe again
after a reconnect (v15's) keeps its form and list views live.  It is on with
``gsocket.recovery_seconds`` (off by default: every published event then carries one more
argument, which a python-socketio client's handler of fixed arity would not accept).

What is kept, all bounded in size and time:

- **Session records** (:class:`Recovery`): for each socket, a Redis key named by a hash of its
  pid holding its sid, site, user, a hash of its credential, its rooms and its position in the
  event log at connect.  Written at connect and when its rooms change, rewritten every third
  of the window while the socket lives, expiring ``recovery_seconds`` after the last write: a
  killed process's sockets stay recoverable for about the window.  A client's own disconnect
  deletes it.
- **Event logs** (:class:`EventLog`): every process numbers the events its bridge delivers
  (the offset is ``<node>:<number>``), keeps the last ``recovery_events`` in memory and
  copies them to a capped Redis stream of its own, written in pipelines off the hot path.

Every process receives every published event in the same order (Redis pub/sub), so two
processes' logs are the same sequence, numbered from different starts.  A client of dead
process P that comes back to process Q with offset ``P:s`` is placed in Q's log by finding the
tail of P's log in Q's (same digests, close in time) and counting on from there; Q then sends,
from memory and before any later event, the logged events of the record's site whose room is
one of its rooms.  A process that started after P's last event (P itself restarted, in a
single-process bench) instead sends what P logged after ``s``, then its own log from its start:
events published while no process was subscribed are lost, as pub/sub keeps nothing.

Security: the client authenticates again as on any connect; the record is only used when the
same credential (compared by hash) gives the same user and site, and is taken atomically, so
a pid alone (forged, or stolen without the credential) gives nothing, and one session is
recovered at most once.  Guests (no credential) are never recovered.

Only published events (``frappe.publish_realtime``) are logged and replayed; answers a handler
emits (``doc_viewers``, acks) are not.

Cost, measured with ``benchmarks/recovery_cost.py`` on this 2-core machine (busy with other
tests): numbering and keeping one published event and appending its offset adds 1-2.5 µs to
the bridge; the copy to Redis, in batches of up to 500 events per XADD gathered for 20 ms,
costs about 1.5 µs of the process's CPU per event under load and 55 µs for an event that
travels alone (a quiet bench: one round trip); about 200 bytes of Redis memory per logged
event, plus the message.  Session records cost one SET per socket at connect, per room change
and every third of the window.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import gevent
import redis
from gevent.event import Event

log = logging.getLogger("gsocket.recovery")

TAIL = 16
"""Entries of another process's log compared to place one of its offsets in this one's."""
ALIGN_WINDOW_MS = 10_000
"""Most milliseconds between two processes' logging of one event."""
ALIGNED_KEPT = 64
"""Other processes' logs whose place in this one is remembered (a cluster restarted many
times while this process lived starts over past that)."""
PIPELINE = 500
"""Log entries or session records written per Redis round trip."""
RETRY_SECONDS = 1.0
GATHER_SECONDS = 0.02
"""How long the writer waits after the first logged event, so that a burst of events is one
round trip."""

_TAKE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Delete a session record only if it is still the one read: taken at most once."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def digest(namespace: str, room: str, body: str) -> bytes:
    """What identifies one published event in every process's log."""
    return hashlib.blake2b(f"{namespace}\0{room}\0{body}".encode(), digest_size=8).digest()


def with_offset(body: str, offset: str) -> str:
    """The JSON array ``body`` with ``offset`` appended (offsets need no escaping)."""
    return f'{body[:-1]},"{offset}"]'


def credential_hash(credential: Any) -> str:
    """A hash of a client's credential, stored instead of the credential itself."""
    return hashlib.sha256(repr(credential).encode()).hexdigest()


@dataclass(slots=True)
class Entry:
    """One logged event: ``namespace`` and ``room`` empty mean every site / every socket.

    Its digest is computed when it is first needed (its copy to Redis, or placing another
    process's log), not in the bridge.
    """

    seq: int
    at: int
    namespace: str
    room: str
    body: str
    digest: bytes = b""

    def identity(self) -> bytes:
        """The event's digest (:func:`digest`), computed once."""
        if not self.digest:
            self.digest = digest(self.namespace, self.room, self.body)
        return self.digest


@dataclass(slots=True)
class Claim:
    """A session record taken for a reconnecting client."""

    sid: str
    pid: str
    rooms: list[str]
    node: str
    seq: int
    first: list[Entry]
    """Events to send before this process's own log (the restarted-process case)."""
    position: int
    """This process's log number the client has seen up to."""


class EventLog:
    """This process's numbered published events, in memory and in a Redis stream.

    :param client: Redis client of the bench's ``redis_queue``.
    :param node: this process's node name.
    :param prefix: key prefix shared by the cluster.
    :param seconds: the recovery window.
    :param cap: entries kept.
    """

    def __init__(
        self, client: redis.Redis, node: str, prefix: str, seconds: float, cap: int
    ) -> None:
        self.client = client
        self.node = node
        self.prefix = prefix
        self.seconds = seconds
        self.cap = cap
        self.seq = 0
        self.started = _now_ms()
        self.ring: collections.deque[Entry] = collections.deque(maxlen=cap)
        self.pending: list[Entry] = []
        self.wake = Event()
        self._aligned: dict[str, tuple[int, int] | None] = {}

    def key(self, node: str) -> str:
        """The Redis stream of ``node``'s log."""
        return f"{self.prefix}log:{node}"

    def start_key(self, node: str) -> str:
        """When ``node`` started logging (milliseconds)."""
        return f"{self.prefix}logstart:{node}"

    def append(self, namespace: str, room: str, body: str) -> str:
        """Log one event about to be delivered; return its offset."""
        self.seq = seq = self.seq + 1
        entry = Entry(seq, _now_ms(), namespace, room, body)
        self.ring.append(entry)
        pending = self.pending
        pending.append(entry)
        if len(pending) > self.cap:
            del pending[: len(pending) - self.cap]
        self.wake.set()
        return f"{self.node}:{seq}"

    def flush(self) -> None:
        """Copy pending entries to Redis, up to :data:`PIPELINE` of them in one stream entry
        (named by the first one's number: entries per XADD cost a tenth of the CPU); on
        failure they stay pending."""
        ttl = int(self.seconds) + 1
        key = self.key(self.node)
        while self.pending:
            batch = self.pending[:PIPELINE]
            rows = [[e.seq, e.at, e.namespace, e.room, e.body, e.identity().hex()] for e in batch]
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(
                key,
                {"e": json.dumps(rows, separators=(",", ":"))},
                id=f"0-{batch[0].seq}",
                minid=f"0-{max(1, batch[-1].seq - self.cap)}",
            )
            pipe.expire(key, ttl)
            pipe.execute()
            del self.pending[: len(batch)]

    def keep_alive(self) -> None:
        """Keep this log's keys for one window past now."""
        ttl = int(self.seconds) + 1
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.start_key(self.node), self.started, ex=ttl)
        pipe.expire(self.key(self.node), ttl)
        pipe.execute()

    # ---- placing another process's offset in this log -----------------------------------

    @staticmethod
    def _entries(rows: list[Any]) -> list[Entry]:
        entries = [
            Entry(seq, at, namespace, room, body, bytes.fromhex(d))
            for _, fields in rows
            for seq, at, namespace, room, body, d in json.loads(fields[b"e"])
        ]
        entries.sort(key=lambda e: e.seq)
        return entries

    def _tail(self, node: str) -> list[Entry]:
        """The last :data:`TAIL` (or more) entries of ``node``'s log, oldest first."""
        return self._entries(self.client.xrevrange(self.key(node), count=2))[-TAIL:]

    def _after(self, node: str, seq: int) -> list[Entry]:
        """The entries of ``node``'s log numbered after ``seq``."""
        key = self.key(node)
        rows = self.client.xrevrange(key, max=f"0-{max(seq, 1)}", count=1)
        rows += self.client.xrange(key, min=f"(0-{max(seq, 1)}", max="+")
        return [e for e in self._entries(rows) if e.seq > seq]

    def place(self, node: str, seq: int, alive_at: int = 0) -> tuple[int, list[Entry]] | None:
        """Where offset ``<node>:<seq>`` is in this log, and what to send before it.

        :param alive_at: a time (ms) ``node`` was known to live at (its client's record was
            written then): a process started before it cannot be its restart.
        :returns: ``(position, first)``: the client has seen this log up to ``position``,
            and ``first`` are events of ``node``'s log to send before this log's; ``None``
            when the offset cannot be placed (its log is gone, or this one moved on).
        """
        if node == self.node:
            return seq, []
        aligned = self._aligned.get(node)
        if aligned is None:
            aligned = self._align(node, alive_at)
            if aligned is None:
                return None
            if aligned[0] >= 0:
                if len(self._aligned) >= ALIGNED_KEPT:
                    self._aligned.clear()
                self._aligned[node] = aligned
        theirs, ours = aligned
        if theirs >= 0:
            return ours + (seq - theirs), []
        return 0, self._after(node, seq)

    def _align(self, node: str, alive_at: int) -> tuple[int, int] | None:
        """``(their number, our number)`` of one event, or ``(-1, 0)`` when this process
        started after ``node``'s last event."""
        start = self.client.get(self.start_key(node))
        if start is None:
            return None
        tail = self._tail(node)
        last_at = tail[-1].at if tail else int(start)
        if self.started > max(last_at, alive_at):
            return -1, 0
        if not tail:
            # Nothing published while it lived: its number 0 is our last event before it
            # started.
            before = [e.seq for e in self.ring if e.at < int(start)]
            if before or not self.ring or self.ring[0].seq == 1:
                return 0, before[-1] if before else (self.ring[0].seq - 1 if self.ring else 0)
            return None
        digests = [e.digest for e in tail]
        ring = list(self.ring)
        best: tuple[int, int] | None = None
        for i in range(len(ring) - 1, -1, -1):
            e = ring[i]
            if e.at < last_at - ALIGN_WINDOW_MS:
                break
            if e.identity() != digests[-1] or abs(e.at - last_at) > ALIGN_WINDOW_MS:
                continue
            n = min(len(digests), i + 1)
            if [x.identity() for x in ring[i - n + 1 : i + 1]] != digests[-n:]:
                continue
            distance = abs(e.at - last_at)
            if best is None or distance < best[0]:
                best = (distance, e.seq)
        if best is None:
            log.warning("cannot place the log of %s in this one: its sessions are new", node)
            return None
        return tail[-1].seq, best[1]

    def since(self, position: int) -> list[Entry] | None:
        """Entries after ``position``, or ``None`` if some were dropped already."""
        ring = self.ring
        if position >= self.seq:
            return []
        if not ring or ring[0].seq > position + 1:
            return None
        start = position + 1 - ring[0].seq
        return [ring[i] for i in range(start, len(ring))]


class Recovery:
    """Session records, the event log, and taking a session back for a reconnecting client.

    :param client: Redis client of the bench's ``redis_queue``.
    :param node: this process's node name.
    :param prefix: key prefix shared by the cluster (``<scale_out_channel>:recovery:``).
    :param seconds: the recovery window (``gsocket.recovery_seconds``).
    :param events: events logged (``gsocket.recovery_events``).
    :param missed: most events replayed to one client (``gsocket.recovery_missed``).
    :param rooms_of: ``rooms_of(namespace, sid)``, the rooms of a live socket, or ``None``
        when it is gone.
    """

    def __init__(
        self,
        client: redis.Redis,
        node: str,
        prefix: str,
        seconds: float,
        events: int,
        missed: int,
        rooms_of: Callable[[str, str], Iterable[str] | None],
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.seconds = seconds
        self.max_missed = missed
        self.rooms_of = rooms_of
        self.log = EventLog(client, node, prefix, seconds, events)
        self._live: dict[str, tuple[str, str, str, str, str]] = {}
        self._dirty: dict[str, None] = {}
        self._gone: list[tuple[str, bool]] = []
        self._take = client.register_script(_TAKE)
        self._greenlets: list[gevent.Greenlet] = []
        self._urgent = Event()
        """Set when a record changed: it is written without waiting for a burst of events."""

    def _key(self, pid: str) -> str:
        return f"{self.prefix}session:{hashlib.sha256(pid.encode()).hexdigest()}"

    # ---- live sockets ----------------------------------------------------------------------

    def connected(
        self, namespace: str, sid: str, user: str, credential: Any, pid: str | None = None
    ) -> str | None:
        """Record a new (or recovered) socket; return the pid to offer, ``None`` for a
        Guest (nothing to bind a session to)."""
        if credential is None:
            return None
        pid = pid or secrets.token_urlsafe(16)
        since = f"{self.log.node}:{self.log.seq}"
        self._live[sid] = (namespace, pid, user, credential_hash(credential), since)
        self.rooms_changed(namespace, sid)
        return pid

    def rooms_changed(self, namespace: str, sid: str) -> None:
        """Have ``sid``'s record written again (its rooms changed)."""
        if sid in self._live:
            self._dirty[sid] = None
            self.log.wake.set()
            self._urgent.set()

    def disconnected(self, sid: str, recoverable: bool) -> None:
        """Keep the record of a lost connection for the window; drop a closed one's."""
        live = self._live.pop(sid, None)
        self._dirty.pop(sid, None)
        if live is not None:
            self._gone.append((live[1], recoverable))
            self.log.wake.set()
            self._urgent.set()

    def _record(self, sid: str) -> str | None:
        namespace, pid, user, cred, since = self._live[sid]
        rooms = self.rooms_of(namespace, sid)
        if rooms is None:
            return None
        body = {"sid": sid, "ns": namespace, "user": user, "cred": cred, "since": since}
        body["at"] = _now_ms()
        body["rooms"] = [r for r in rooms if r != sid]
        return json.dumps(body)

    def flush(self) -> None:
        """Write the event log, then the changed and ended session records."""
        self.log.flush()
        ttl = int(self.seconds) + 1
        while self._dirty or self._gone:
            pipe = self.client.pipeline(transaction=False)
            sids = list(self._dirty)[:PIPELINE]
            for sid in sids:
                del self._dirty[sid]
                value = self._record(sid) if sid in self._live else None
                if value is not None:
                    # rewritten every third of the window while the socket lives
                    pipe.set(self._key(self._live[sid][1]), value, ex=ttl + int(self.seconds / 3))
            gone, self._gone = self._gone[:PIPELINE], self._gone[PIPELINE:]
            for pid, recoverable in gone:
                if recoverable:
                    pipe.expire(self._key(pid), ttl)
                else:
                    pipe.delete(self._key(pid))
            try:
                pipe.execute()
            except redis.RedisError:
                self._dirty.update(dict.fromkeys(sids))
                self._gone[:0] = gone
                raise

    # ---- a reconnecting client ---------------------------------------------------------------

    def claim(
        self, pid: Any, offset: Any, namespace: str, user: str, credential: Any
    ) -> Claim | None:
        """Take the session ``pid`` names, if it is this user's, by this credential.

        Yields to Redis; the caller then checks the client is still there.
        """
        if not isinstance(pid, str) or credential is None or len(pid) > 100:
            return None
        key = self._key(pid)
        try:
            raw = self.client.get(key)
            if raw is None:
                log.info("%s came back with an unknown or expired session: a new one", user)
                return None
            record = json.loads(raw)
            if (
                record.get("ns") != namespace
                or record.get("user") != user
                or record.get("cred") != credential_hash(credential)
            ):
                log.warning(
                    "refused to recover a session of %s for %s: another identity",
                    record.get("user"),
                    user,
                )
                return None
            since = record["since"]
            if not isinstance(offset, str):
                offset = since
            alive_at = int(record.get("at", 0))
            node, _, number = offset.rpartition(":")
            placed = (
                self.log.place(node, int(number), alive_at) if node and number.isdigit() else None
            )
            if placed is None and number.isdigit() and node != since.rpartition(":")[0]:
                # An offset of an earlier process (whose log may be gone): the client got
                # nothing since it (re)connected, or its offset would be of the later one.
                node, _, number = since.rpartition(":")
                placed = self.log.place(node, int(number), alive_at)
            if placed is None:
                log.info("session %s came back with offset %r, not found", record["sid"], offset)
                return None
            if not self._take(keys=[key], args=[raw]):
                log.info("session %s was recovered meanwhile", record["sid"])
                return None
        except (redis.RedisError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning("cannot recover a session of %s: %s", user, e)
            return None
        position, first = placed
        rooms = [r for r in record.get("rooms", ()) if isinstance(r, str)]
        return Claim(record["sid"], pid, rooms, node, int(number), first, position)

    def missed(self, claim: Claim, namespace: str) -> list[str] | None:
        """The event packets the claimed session missed, with this log's offsets; ``None``
        when they are not all known any more or exceed ``recovery_missed``."""
        ours = self.log.since(claim.position)
        if ours is None:
            log.info("session %s missed events no longer kept: a new session", claim.sid)
            return None
        rooms = set(claim.rooms)
        site = namespace[1:]
        packets: list[str] = []
        for e in claim.first:
            if e.namespace in ("", site) and (not e.room or e.room in rooms):
                packets.append(with_offset(e.body, f"{claim.node}:{e.seq}"))
        node = self.log.node
        for e in ours:
            if e.namespace in ("", site) and (not e.room or e.room in rooms):
                packets.append(with_offset(e.body, f"{node}:{e.seq}"))
        if len(packets) > self.max_missed:
            log.info("session %s missed %d events: a new session instead", claim.sid, len(packets))
            return None
        return packets

    # ---- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Start writing in the background, and rewriting live records every third of the
        window."""
        self.log.keep_alive()
        self._greenlets = [gevent.spawn(self._write_loop), gevent.spawn(self._refresh_loop)]
        log.info("connection state recovery on for %g s (node %s)", self.seconds, self.log.node)

    def stop(self) -> None:
        """Write what is pending and stop."""
        gevent.killall(self._greenlets, timeout=1)
        try:
            self.flush()
        except redis.RedisError as e:
            log.warning("could not write the recovery state: %s", e)

    def _write_loop(self) -> None:
        wake = self.log.wake
        while True:
            wake.wait()
            # events only: gather a burst; a socket is recoverable (with its latest rooms)
            # once its record is written, so a changed record ends the wait
            self._urgent.wait(GATHER_SECONDS)
            self._urgent.clear()
            wake.clear()
            try:
                self.flush()
            except redis.RedisError as e:
                log.warning("writing the recovery state failed, retrying: %s", e)
                gevent.sleep(RETRY_SECONDS)
                wake.set()

    def _refresh_loop(self) -> None:
        while True:
            gevent.sleep(max(1.0, self.seconds / 3))
            self._dirty.update(dict.fromkeys(self._live))
            self.log.wake.set()
            try:
                self.log.keep_alive()
            except redis.RedisError as e:
                log.warning("keeping the recovery log failed: %s", e)
