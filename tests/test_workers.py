"""Kept worker greenlets (gsocket/protocol/workers.py): every job runs, whatever happened to
the workers before it, and nothing of one job reaches the next."""

from __future__ import annotations

import contextvars
import gc
import weakref
from collections.abc import Callable

import gevent
import gevent.event
import pytest

from gsocket.protocol.workers import Workers

MARK: contextvars.ContextVar[str] = contextvars.ContextVar("mark")


def wait_for(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (5 s at most)."""
    with gevent.Timeout(5):
        while not condition():
            gevent.sleep(0.001)


def settle(workers: Workers, idle: int) -> None:
    """Wait until ``idle`` workers wait for a job."""
    wait_for(lambda: len(workers.idle) == idle)


def test_a_job_handed_to_an_idle_worker_runs_in_it() -> None:
    workers = Workers()
    ran: list[object] = []
    workers.spawn(lambda: ran.append(gevent.getcurrent()))
    settle(workers, 1)
    workers.spawn(lambda: ran.append(gevent.getcurrent()))
    wait_for(lambda: len(ran) == 2)
    assert ran[0] is ran[1]


def test_idle_workers_are_bounded() -> None:
    workers = Workers(keep=2)
    release = gevent.event.Event()
    for _ in range(5):
        workers.spawn(release.wait)
    gevent.sleep(0.01)
    assert workers.idle == []  # all five busy
    release.set()
    settle(workers, 2)
    gevent.sleep(0.01)
    assert len(workers.idle) == 2


def test_a_worker_killed_while_idle_is_not_handed_the_next_job() -> None:
    workers = Workers()
    workers.spawn(lambda: None)
    settle(workers, 1)
    idle = workers.idle[0].greenlet
    assert idle is not None
    idle.kill()
    assert workers.idle == []
    ran = gevent.event.Event()
    workers.spawn(ran.set)
    assert ran.wait(5)


def test_a_job_that_raises_ends_its_worker_and_not_the_next_job(
    capsys: pytest.CaptureFixture[str],
) -> None:
    workers = Workers()

    def fail() -> None:
        raise ValueError("job failed")

    workers.spawn(fail)
    ran = gevent.event.Event()
    workers.spawn(ran.set)
    assert ran.wait(5)
    gevent.sleep(0.01)
    assert "job failed" in capsys.readouterr().err  # reported as gevent reports a greenlet's


def test_a_kept_worker_keeps_nothing_of_its_jobs() -> None:
    workers = Workers()

    done: list[int] = []

    class Job:
        def __call__(self) -> None:
            done.append(1)

    first, second = Job(), Job()
    refs = [weakref.ref(first), weakref.ref(second)]
    workers.spawn(first)
    settle(workers, 1)
    workers.spawn(second)
    wait_for(lambda: len(done) == 2)
    settle(workers, 1)
    del first, second
    gc.collect()
    assert [ref() for ref in refs] == [None, None]


def test_context_variables_of_one_job_are_not_seen_by_the_next() -> None:
    workers = Workers()
    seen: list[str] = []
    workers.spawn(MARK.set, "first job's")
    settle(workers, 1)
    workers.spawn(lambda: seen.append(MARK.get("unset")))
    wait_for(lambda: bool(seen))
    assert seen == ["unset"]
