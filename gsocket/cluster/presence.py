"""Several gsocket processes of one bench serving as one: process-named sessions and presence.

A cluster is ``gsocket.processes`` processes (or several machines' worth) sharing the bench's
``redis_queue``.  Three things make it one server:

- **Sessions name their process.**  Every Engine.IO and Socket.IO id a process hands out starts
  with its *node name*, ``<K>.<boot>.`` (``K`` the ``--process`` number, ``boot`` random per
  start).  A long-polling request carries its session id in ``?sid=``, so nginx routes it to
  process ``K`` with a ``map`` on ``$arg_sid`` (``gsocket setup nginx``), while handshakes
  spread over every process: no client-IP stickiness.  ``boot`` tells a restarted process K
  from the one that died, which is what presence cleanup (and a later session recovery)
  needs.
- **Emits reach every process** through python-socketio's Redis manager
  (:mod:`gsocket.protocol.scaleout`); published events through each process's own bridge.
- **Presence is cluster-wide** (:class:`Presence`): which sockets are in which room, and whose
  they are, is mirrored in Redis, so ``Socket.participants``, ``Socket.user_of`` and the desk's
  ``doc_viewers`` see every process.  Each process heart-beats; when one stops (``kill -9``, a
  lost machine), the first live process to notice removes its sockets' presence and tells the
  viewers of the forms they had open.

Every entry names the node that holds the socket (in the value, not derived from the sid), so
a socket that one day moves to another process keeps a correct entry.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import redis
from gevent.event import Event
from gevent.lock import Semaphore

log = logging.getLogger("gsocket.cluster")

SEPARATOR = "."
"""Ends the node name in a session id; never part of python-engineio's base64url ids."""

HEARTBEATS_PER_TTL = 3
"""Heartbeats a process sends within one ``presence_ttl``: two may be lost before it counts as
dead."""

MAX_PENDING = 200_000
"""Presence writes kept while Redis is unreachable; the oldest go first past that."""

RETRY_SECONDS = 1.0

LostRooms = Callable[[str, list[str]], None]
"""``lost(namespace, rooms)``: sockets of a dead process were removed from these rooms."""

Members = Callable[[], Iterable[tuple[str, str, str, Iterable[str]]]]
"""``members()``: ``(namespace, sid, user, rooms)`` of every socket of this process."""


def node_name(process: int) -> str:
    """The name of this start of process ``process``: ``<process>.<random>``."""
    return f"{process}{SEPARATOR}{secrets.token_hex(3)}"


def name_sessions(eio: Any, node: str) -> None:
    """Make every id ``eio`` hands out (Engine.IO sessions, Socket.IO sids) start with
    ``node.``, so a proxy can tell the process of a session from its id alone."""
    plain = eio.generate_id

    def generate_id() -> str:
        return f"{node}{SEPARATOR}{plain()}"

    eio.generate_id = generate_id


class Presence:
    """Room membership and users of this process's sockets, mirrored in Redis for the others.

    Writes are queued and sent by one greenlet in pipelines (a burst of connects costs a few
    round trips, not one each); this process's own members are always read from its memory,
    so a handler sees its own join at once.  Reads of the other processes' members are one
    Redis call, filtered of the nodes known dead, after this process's queued writes are sent:
    of two sockets that open one form at once on two processes, the one that reads last then
    sees both, and tells both.

    Keys (``prefix`` is ``<scale_out_channel>:presence:``):

    - ``nodes``: sorted set, node -> time of its last heartbeat (Redis's clock);
    - ``room:<namespace>:<room>``: hash, sid -> node;
    - ``users:<namespace>``: hash, sid -> ``"<node> <user>"``;
    - ``keys:<node>``: set of the ``[namespace, room]`` (room ``null`` for users) a node wrote
      to, so its entries can be found and removed when it dies.

    :param client: Redis client of the bench's ``redis_queue``.
    :param node: this process's node name (:func:`node_name`).
    :param prefix: key prefix shared by the cluster.
    :param ttl: seconds without a heartbeat after which a node counts as dead.
    :param lost: called after a dead node's sockets were removed from rooms.
    :param members: this process's sockets and rooms, written again when its entries were
        lost (Redis restarted empty, or the others took it for dead while Redis was away).
    """

    def __init__(
        self,
        client: redis.Redis,
        node: str,
        prefix: str,
        ttl: float,
        lost: LostRooms,
        members: Members,
    ) -> None:
        self.client = client
        self.node = node
        self.prefix = prefix
        self.ttl = ttl
        self.lost = lost
        self.members = members
        self._registered = False
        self._pending: list[tuple[str, str, str, str | None, str]] = []
        self._indexed: set[str] = set()
        self._dead: frozenset[str] = frozenset()
        self._wake = Event()
        self._flushing = Semaphore()
        self._greenlets: list[gevent.Greenlet] = []

    # ---- keys ----------------------------------------------------------------------------

    def _room_key(self, namespace: str, room: str) -> str:
        return f"{self.prefix}room:{namespace}:{room}"

    def _users_key(self, namespace: str) -> str:
        return f"{self.prefix}users:{namespace}"

    def _index_key(self, node: str) -> str:
        return f"{self.prefix}keys:{node}"

    @property
    def _nodes_key(self) -> str:
        return f"{self.prefix}nodes"

    # ---- writes (this process's sockets) ---------------------------------------------------

    def _queue(self, op: str, key: str, sid: str, value: str | None, member: str) -> None:
        self._pending.append((op, key, sid, value, member))
        if len(self._pending) > MAX_PENDING:
            del self._pending[: len(self._pending) - MAX_PENDING]
            log.error("Redis unreachable: the oldest presence updates were dropped")
        self._wake.set()

    def connected(self, namespace: str, sid: str, user: str) -> None:
        """Record that socket ``sid`` of ``user`` is on this process."""
        member = json.dumps([namespace, None])
        self._queue("hset", self._users_key(namespace), sid, f"{self.node} {user}", member)

    def gone(self, namespace: str, sid: str) -> None:
        """Forget socket ``sid`` (its rooms are left one by one before)."""
        self._queue("hdel", self._users_key(namespace), sid, None, "")

    def joined(self, namespace: str, sid: str, room: str) -> None:
        """Record that ``sid`` entered ``room``."""
        member = json.dumps([namespace, room])
        self._queue("hset", self._room_key(namespace, room), sid, self.node, member)

    def left(self, namespace: str, sid: str, room: str, emptied: bool = False) -> None:
        """Record that ``sid`` left ``room``.

        :param emptied: no socket of this process is in ``room`` any more: the room leaves
            this node's index too.  Rooms come and go for the life of a process (one per task
            followed, per form opened); without this the index, in memory and in Redis, would
            only ever grow.
        """
        self._queue("hdel", self._room_key(namespace, room), sid, None, "")
        if emptied:
            self._queue("srem", "", "", None, json.dumps([namespace, room]))

    def flush(self) -> None:
        """Send the queued writes in one pipeline, in order; on failure they stay queued."""
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        ops, self._pending = self._pending, []
        added: set[str] = set()
        dropped: set[str] = set()
        pipe = self.client.pipeline(transaction=False)
        for op, key, sid, value, member in ops:
            if op == "srem":
                pipe.srem(self._index_key(self.node), member)
                added.discard(member)
                dropped.add(member)
                continue
            indexed = member in self._indexed and member not in dropped
            if member and not indexed and member not in added:
                added.add(member)
                pipe.sadd(self._index_key(self.node), member)
            if op == "hset":
                pipe.hset(key, sid, value)
            else:
                pipe.hdel(key, sid)
        try:
            pipe.execute()
        except redis.RedisError:
            self._pending[:0] = ops
            raise
        self._indexed = (self._indexed - dropped) | added

    # ---- reads (the other processes' sockets) ---------------------------------------------

    def participants(self, namespace: str, room: str) -> list[str]:
        """Sids of the live other processes' sockets in ``room``."""
        try:
            self.flush()
            entries = self.client.hgetall(self._room_key(namespace, room))
        except redis.RedisError as e:
            log.warning("cannot read the members of %s on other processes: %s", room, e)
            return []
        alive = []
        for sid, node in entries.items():
            node = node.decode()
            if node != self.node and node not in self._dead:
                alive.append(sid.decode())
        return alive

    def user_of(self, namespace: str, sid: str) -> str | None:
        """The user of socket ``sid`` on a live other process, else ``None``."""
        try:
            value = self.client.hget(self._users_key(namespace), sid)
        except redis.RedisError as e:
            log.warning("cannot read the user of %s: %s", sid, e)
            return None
        if value is None:
            return None
        node, _, user = value.decode().partition(" ")
        if node == self.node or node in self._dead:
            return None
        return user

    # ---- liveness -----------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Say this node lives; note the nodes that stopped saying so, and clean up after them."""
        seconds, micros = self.client.time()
        now = seconds + micros / 1e6
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self._nodes_key, {self.node: now})
        pipe.zrangebyscore(self._nodes_key, "-inf", now - self.ttl)
        added, dead = pipe.execute()
        if added and self._registered:
            self._write_all_again()
        self._registered = True
        self._dead = frozenset(node.decode() for node in dead)
        for node in self._dead:
            self._reap(node)

    def _write_all_again(self) -> None:
        """This node was gone from Redis while it lived: queue its whole presence again."""
        log.warning("this process's presence was lost from Redis: writing it again")
        self._indexed.clear()
        for namespace, sid, user, rooms in self.members():
            self.connected(namespace, sid, user)
            for room in rooms:
                self.joined(namespace, sid, room)

    def _reap(self, node: str) -> None:
        """Remove a dead node's entries, once in the cluster (whoever takes the lock)."""
        lock = f"{self.prefix}reaping:{node}"
        if not self.client.set(lock, self.node, nx=True, ex=max(60, int(self.ttl * 4))):
            return
        lost = self._remove(node)
        log.warning(
            "process %s stopped: removed the presence of its sockets from %d rooms",
            node,
            sum(map(len, lost.values())),
        )
        for namespace, rooms in lost.items():
            try:
                self.lost(namespace, rooms)
            except Exception:
                log.exception(
                    "telling %s about the rooms of dead process %s failed", namespace, node
                )

    def _remove(self, node: str) -> dict[str, list[str]]:
        """Delete every entry of ``node``; return the rooms it had members in, by namespace."""
        lost: dict[str, list[str]] = {}
        for member in self.client.smembers(self._index_key(node)):
            namespace, room = json.loads(member)
            key = self._users_key(namespace) if room is None else self._room_key(namespace, room)
            stale = [
                sid
                for sid, value in self.client.hscan_iter(key)
                if value.decode().partition(" ")[0] == node
            ]
            if stale:
                self.client.hdel(key, *stale)
                if room is not None:
                    lost.setdefault(namespace, []).append(room)
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self._index_key(node))
        pipe.zrem(self._nodes_key, node)
        pipe.execute()
        return lost

    # ---- running --------------------------------------------------------------------------

    def start(self) -> None:
        """Register this node, then keep writing and heart-beating in the background."""
        self.heartbeat()
        self._greenlets = [gevent.spawn(self._write_loop), gevent.spawn(self._heartbeat_loop)]
        log.info("cluster node %s: presence shared on %s*", self.node, self.prefix)

    def stop(self) -> None:
        """Leave the cluster: flush what is queued, then remove this node's entries."""
        gevent.killall(self._greenlets, timeout=1)
        try:
            self.flush()
            self._remove(self.node)
        except redis.RedisError as e:
            log.warning("could not remove this process's presence (%s): it expires", e)

    def _write_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.flush()
            except redis.RedisError as e:
                log.warning("presence update failed, retrying: %s", e)
                gevent.sleep(RETRY_SECONDS)
                self._wake.set()

    def _heartbeat_loop(self) -> None:
        while True:
            gevent.sleep(self.ttl / HEARTBEATS_PER_TTL)
            try:
                self.heartbeat()
            except redis.RedisError as e:
                log.warning("presence heartbeat failed: %s", e)
