"""The socket secret cache: one Redis read per expiry however many connects ask at once."""

from __future__ import annotations

import threading

import redis

from gsocket.contract.secret import SocketSecret


class SlowRedis:
    """Counts reads; each read waits until the test lets it finish."""

    def __init__(self, value):
        self.value = value
        self.reads = 0
        self.release = threading.Event()
        self.fail = False

    def get(self, key):
        self.reads += 1
        self.release.wait(5)
        if self.fail:
            raise redis.ConnectionError("down")
        return self.value


def test_concurrent_readers_share_one_read():
    client = SlowRedis(b"s3cret")
    secret = SocketSecret(client, ttl=60)
    results = []
    threads = [threading.Thread(target=lambda: results.append(secret.get())) for _ in range(20)]
    for t in threads:
        t.start()
    client.release.set()
    for t in threads:
        t.join(5)
    assert results == ["s3cret"] * 20
    assert client.reads == 1


def test_unreadable_redis_keeps_the_last_known_secret():
    client = SlowRedis(b"s3cret")
    client.release.set()
    secret = SocketSecret(client, ttl=0)
    assert secret.get() == "s3cret"
    client.fail = True
    assert secret.get(fresh=True) == "s3cret"
    client.fail, client.value = False, None
    assert secret.get(fresh=True) is None
