"""The sweep of the Engine.IO sessions (gsocket/protocol/session.py ``Sweep``), which does
python-engineio's service task's work since the server runs with ``monitor_clients=False``:
it is the one thing that removes closed websocket sessions from ``eio.sockets``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gevent

from gsocket.protocol import session as session_module


class FakeSession:
    """What the sweep reads of a python-engineio socket."""

    def __init__(self, sid: str, closed: bool = False, closing: bool = False) -> None:
        self.sid, self.closed, self.closing, self.checks = sid, closed, closing, 0

    def check_ping_timeout(self) -> bool:
        self.checks += 1
        if self.sid == "broken":
            raise RuntimeError("a session that fails its check")
        return True


def eio_with(sessions: list[FakeSession], ping_timeout: float = 0.05) -> Any:
    return SimpleNamespace(ping_timeout=ping_timeout, sockets={s.sid: s for s in sessions})


def test_the_sweep_drops_closed_sessions_and_checks_the_others_once_per_ping_timeout(
    monkeypatch: Any,
) -> None:
    """In slices (3 here), every pass: closed sessions leave ``eio.sockets``, open ones have
    their PONG checked, closing ones are left to finish, and one failing session stops no
    other."""
    monkeypatch.setattr(session_module, "SWEEP_SLICE", 10)
    open_ = [FakeSession(f"o{i}") for i in range(15)] + [FakeSession("broken")]
    closed = [FakeSession(f"c{i}", closed=True) for i in range(12)]
    closing = FakeSession("closing", closing=True)
    eio = eio_with([*open_, *closed, closing])
    sweep = session_module.Sweep(eio)
    sweep.start()
    try:
        for _ in range(1000):  # up to ~5 s; the sweep runs while this greenlet sleeps
            if all(s.checks >= 2 for s in open_):
                break
            gevent.sleep(0.005)
        assert all(s.checks >= 2 for s in open_), [s.checks for s in open_]
        assert sorted(eio.sockets) == sorted([s.sid for s in open_] + ["closing"])
        assert closing.checks == 0
    finally:
        sweep.stop()


def test_a_stopped_sweep_does_not_start_again() -> None:
    """A session adopted during the shutdown must not restart the sweep."""
    eio = eio_with([FakeSession("c", closed=True)])
    sweep = session_module.Sweep(eio)
    sweep.stop()
    sweep.start()
    gevent.sleep(0.1)  # two ping timeouts: a running sweep would have dropped the session
    assert "c" in eio.sockets
