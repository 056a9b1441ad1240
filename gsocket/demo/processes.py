"""Child processes of a local stack, and waiting for what they give no signal of.

The demo starts Redis and gsocket as children; the test suite, the hardening scripts and the
benchmarks start those and more (the web stand-ins, MariaDB, nginx, load generators).  They all
need the same two things: a child that is stopped the way supervisord stops one (SIGTERM, a
bounded wait, SIGKILL) with its output kept where its starter can show it, and a bounded poll,
because a child process announces nothing a parent could block on.  This module is the one
implementation of both; it depends on the standard library only, so the installed demo, the
test suite and the benchmarks can all import it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger("gsocket.demo.processes")

STDERR_FD = 2
"""Where a child without a log file writes its stdout: this process's stderr, so that this
process's stdout holds only what it prints for its user (the demo's URL)."""


def wait_until(
    condition: Callable[[], object],
    timeout: float,
    message: str | Callable[[], str] = "condition not met",
    *,
    interval: float = 0.02,
    error: Callable[[str], Exception] = TimeoutError,
) -> None:
    """Poll ``condition()`` until it is true; raise ``error(message)`` after ``timeout`` seconds.

    :param message: what the failure says; a callable is asked only on failure (so that it can
        read a log file as it is then).
    :param interval: seconds between polls (``time.sleep``, which yields to other greenlets in
        a monkey-patched process such as the demo).
    :param error: the exception type (or factory) raised on timeout.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise error(message() if callable(message) else message)
        time.sleep(interval)


def log_tail(path: Path | None, lines: int = 20) -> str:
    """The last ``lines`` lines of a child's log file, for a failure message (``""`` when
    there is none)."""
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _tie_to_parent() -> None:
    """In the child before exec: a process group of its own (the terminal's Ctrl-C reaches only
    the parent, which stops its children in order) and, on Linux, SIGTERM when the parent dies."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Child:
    """One started child process; ``stop()`` ends it and only it.

    :param name: how log lines and failures name it.
    :param argv: the command.
    :param log_path: a file its stdout and stderr are appended to; ``None``: its stdout goes to
        this process's stderr, its stderr is inherited.
    :param stdout_pipe: pipe its stdout to this process instead (``proc.stdout``).
    :param stderr_pipe: pipe its stderr to this process instead (``proc.stderr``).
    :param stdin: ``subprocess.DEVNULL`` (default), ``subprocess.PIPE`` or a file descriptor.
    :param cwd: its working directory.
    :param env: its whole environment (``None``: this process's).
    :param text: pipes in text mode.
    :param tie_to_parent: own process group and, on Linux, death with this process (the demo:
        nothing it started outlives it, even when it is killed outright).  Off by default: the
        death signal follows the starting *thread*, which a test's helper thread is not.
    :param own_session: a session of its own, and every signal to its whole process group
        (a server that forks workers it does not stop itself, such as Frappe's Node server).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path | None = None,
        stdout_pipe: bool = False,
        stderr_pipe: bool = False,
        stdin: int | None = subprocess.DEVNULL,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        text: bool = False,
        tie_to_parent: bool = False,
        own_session: bool = False,
    ) -> None:
        self.name = name
        self.own_session = own_session
        self.log_path = log_path
        self.stop_requested = False
        """Whether a stop, kill or signal was asked for (an exit before that is a failure)."""
        log_file = log_path.open("ab") if log_path is not None else None
        try:
            self.proc: subprocess.Popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=subprocess.PIPE if stdout_pipe else (log_file or STDERR_FD),
                stderr=subprocess.PIPE if stderr_pipe else log_file,
                text=text,
                preexec_fn=_tie_to_parent if tie_to_parent else None,
                start_new_session=own_session,
            )
        finally:
            if log_file is not None:
                log_file.close()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status, ``None`` while it runs."""
        return self.proc.poll()

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of its log, for a failure message."""
        return log_tail(self.log_path, lines)

    def send(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` if it still runs (a stop is then expected)."""
        self.stop_requested = True
        if not self.alive():
            return
        if self.own_session:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)

    def wait_stopped(self, timeout: float) -> bool:
        """Wait for the exit a signal asked for; SIGKILL it when that does not come in time.

        :returns: whether it exited on its own within ``timeout``.
        """
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            self.kill()
            return False

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> bool:
        """Send ``sig`` (SIGTERM: a graceful stop, as supervisord asks), wait, SIGKILL after
        ``timeout``.  A second SIGTERM would cut gsocket's drain short, so several children
        are stopped with :meth:`send` on each, then :meth:`wait_stopped` on each.

        :returns: whether it exited on its own within ``timeout`` (also when it had already).
        """
        self.stop_requested = True
        if not self.alive():
            return True
        self.send(sig)
        return self.wait_stopped(timeout)

    def kill(self) -> None:
        """SIGKILL it at once, as a crash would, and reap it."""
        self.stop_requested = True
        if self.alive():
            self.send(signal.SIGKILL)
        self.proc.wait()

    def __del__(self) -> None:
        """A child nobody holds any more would run on unseen: kill it (no wait, no log)."""
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
